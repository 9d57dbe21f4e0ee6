package hub_test

// The durability test runs the real moat binary, publishes QoS 1 telemetry,
// kills the hub with SIGKILL mid-stream, and checks in the hub's message log
// (opened directly) that every message the hub acknowledged is there.

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/hub"
	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/msglog"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/sas"
	"github.com/moat-iot/moat/internal/serviceapi"
)

const durableIP = "127.0.0.61"

func TestDurableAcrossKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the moat binary")
	}
	bin := buildMoat(t)
	dir := t.TempDir()
	var devices []registry.Device
	acked := map[string]bool{} // message ids the hub PUBACKed, over all rounds
	for round := range 3 {
		hubProc := startMoat(t, bin, dir)
		if round == 0 {
			devices = createDurableDevices(t, dir, hubProc.https, 4)
		}
		roundAcks := publishAndKill(t, hubProc, devices, fmt.Sprintf("r%d", round), acked)

		l, err := msglog.OpenPebble(filepath.Join(dir, "log"), msglog.PebbleOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatalf("round %d: open the killed hub's log: %v", round, err)
		}
		recs, err := l.Read(context.Background(), 1, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		inLog := map[string]bool{}
		for _, r := range recs {
			m, err := msglog.DecodeMessage(r.Data)
			if err != nil {
				t.Fatalf("round %d: record %d: %v", round, r.Offset, err)
			}
			if m.System[message.SysMessageSource] != message.SourceTelemetry {
				continue // a connection state event, not telemetry
			}
			mid := m.System[message.SysMessageID]
			if string(m.Body) != "payload of "+mid {
				t.Fatalf("round %d: record %d: body %q for message id %q", round, r.Offset, m.Body, mid)
			}
			inLog[mid] = true
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		missing := 0
		for mid := range acked {
			if !inLog[mid] {
				missing++
				if missing <= 5 {
					t.Errorf("round %d: acknowledged message %s is not in the log", round, mid)
				}
			}
		}
		if missing > 0 {
			t.Fatalf("round %d: %d of %d acknowledged messages lost", round, missing, len(acked))
		}
		t.Logf("round %d: killed after %d PUBACKs; log holds %d messages, all %d acknowledged ones among them", round, roundAcks, len(recs), len(acked))
	}
}

// buildMoat builds the moat binary (without -race: the test kills it, and
// measures the real thing).
func buildMoat(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "moat")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/moat-iot/moat/cmd/moat").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// publishAndKill has every device publish QoS 1 telemetry (message ids
// prefix-d<i>-<seq>) and SIGKILLs the hub after a random number of PUBACKs.
// acked collects every acknowledged id; it returns this round's count.
func publishAndKill(t *testing.T, hubProc *moatProc, devices []registry.Device, prefix string, acked map[string]bool) int {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	roundAcks := 0
	killAt := 300 + rand.IntN(700)
	killed := make(chan struct{})
	var once sync.Once
	kill := func() {
		once.Do(func() {
			if err := hubProc.cmd.Process.Kill(); err != nil {
				t.Errorf("kill: %v", err)
			}
			close(killed)
		})
	}
	var wg sync.WaitGroup
	for i, d := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := publishUntilGone(ctx, hubProc.mqtt, d, fmt.Sprintf("%s-d%d", prefix, i), func(mid string) {
				mu.Lock()
				defer mu.Unlock()
				acked[mid] = true
				if roundAcks++; roundAcks == killAt {
					kill()
				}
			})
			if err != nil {
				t.Errorf("device %s: %v", d.DeviceID, err)
				kill()
			}
		}()
	}
	select {
	case <-killed:
	case <-time.After(30 * time.Second):
		kill()
		t.Errorf("%s: only %d PUBACKs in 30s", prefix, roundAcks)
	}
	_ = hubProc.cmd.Wait()
	cancel()
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return roundAcks
}

type moatProc struct {
	cmd         *exec.Cmd
	mqtt, https string
}

// startMoat starts `moat serve` on durableIP with kernel-chosen ports and
// waits for its ready line.
func startMoat(t *testing.T, bin, dir string, extra ...string) *moatProc {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--data-dir", dir, "--hostname", durableIP,
		"--mqtt-addr", durableIP+":0", "--https-addr", durableIP+":0", "--mqtt-plain-addr", durableIP+":0",
		"--metrics-addr", "", "--log-level", "info")
	cmd.Args = append(cmd.Args, extra...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan map[string]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			if os.Getenv("MOAT_TEST_LOG") != "" {
				fmt.Fprintln(os.Stderr, "moat:", line)
			}
			if !sent && strings.Contains(line, `msg="moat hub ready"`) {
				kv := map[string]string{}
				for f := range strings.FieldsSeq(line) {
					if k, v, ok := strings.Cut(f, "="); ok {
						kv[k] = v
					}
				}
				ready <- kv
				sent = true
			}
		}
		if !sent {
			close(ready)
		}
	}()
	select {
	case kv, ok := <-ready:
		if !ok || kv["mqtt"] == "" || kv["https"] == "" {
			t.Fatalf("moat serve did not report its addresses (%v)", kv)
		}
		return &moatProc{cmd: cmd, mqtt: kv["mqtt"], https: kv["https"]}
	case <-time.After(20 * time.Second):
		t.Fatal("moat serve not ready after 20s")
	}
	return nil
}

func createDurableDevices(t *testing.T, dir, httpsAddr string, n int) []registry.Device {
	t.Helper()
	pols, err := hub.LoadPolicies(dir)
	if err != nil {
		t.Fatal(err)
	}
	var owner sas.Policy
	for _, p := range pols {
		if p.KeyName == "iothubowner" {
			owner = p
		}
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "pki", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	svc, err := serviceapi.NewClient(fmt.Sprintf("HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s", durableIP, owner.KeyName, owner.PrimaryKey),
		serviceapi.ClientOptions{Address: httpsAddr, RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []registry.Device
	for i := range n {
		d, err := svc.CreateDevice(ctx, registry.Device{DeviceID: fmt.Sprintf("durable-%d", i), Status: registry.StatusEnabled, Authentication: registry.Authentication{Type: registry.AuthSAS}})
		if err != nil {
			t.Fatalf("create device: %v", err)
		}
		out = append(out, d)
	}
	return out
}

// publishUntilGone connects d over plain MQTT 3.1.1 and publishes QoS 1
// telemetry, up to 16 unacknowledged at a time, calling onAck with each
// message id the hub acknowledges, until the connection dies (the hub was
// killed) or ctx ends. Only failures before the first PUBACK are errors.
func publishUntilGone(ctx context.Context, addr string, d registry.Device, prefix string, onAck func(mid string)) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	tok, err := sas.Sign(durableIP+"/devices/"+d.DeviceID, "", d.Authentication.SymmetricKey.PrimaryKey, time.Now().Add(time.Hour))
	if err != nil {
		return err
	}
	w := bufio.NewWriter(conn)
	r := bufio.NewReader(conn)
	user := durableIP + "/" + d.DeviceID + "/?api-version=2021-04-12"
	var cbody []byte
	cbody = appendStr(cbody, "MQTT")
	cbody = append(cbody, 4, 0xC2, 0, 60) // 3.1.1, username+password+clean session, keepalive 60
	cbody = appendStr(cbody, d.DeviceID)
	cbody = appendStr(cbody, user)
	cbody = appendStr(cbody, tok)
	writePacket(w, 0x10, cbody)
	if err := w.Flush(); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	typ, body, err := readPacket(r)
	if err != nil || typ != 2 || len(body) != 2 || body[1] != 0 {
		return fmt.Errorf("CONNACK: type %d body % x: %v", typ, body, err)
	}

	const window = 16
	var mu sync.Mutex
	inflight := map[uint16]string{}
	slots := make(chan struct{}, window)
	readErr := make(chan error, 1)
	go func() {
		for {
			typ, body, err := readPacket(r)
			if err != nil {
				readErr <- err
				return
			}
			if typ != 4 || len(body) != 2 {
				readErr <- fmt.Errorf("unexpected packet type %d", typ)
				return
			}
			pid := binary.BigEndian.Uint16(body)
			mu.Lock()
			mid, ok := inflight[pid]
			delete(inflight, pid)
			mu.Unlock()
			if !ok {
				readErr <- fmt.Errorf("PUBACK for unknown packet id %d", pid)
				return
			}
			onAck(mid)
			<-slots
		}
	}()
	for seq := 0; ; seq++ {
		select {
		case slots <- struct{}{}:
		case err := <-readErr:
			return gone(err)
		}
		pid := uint16(seq%65535 + 1)
		mid := fmt.Sprintf("%s-%d", prefix, seq)
		mu.Lock()
		inflight[pid] = mid
		mu.Unlock()
		var pbody []byte
		// Every other message carries alert=yes, for tests that route on it.
		pbody = appendStr(pbody, "devices/"+d.DeviceID+"/messages/events/$.mid="+mid+"&alert="+[]string{"yes", "no"}[seq%2])
		pbody = binary.BigEndian.AppendUint16(pbody, pid)
		pbody = append(pbody, "payload of "+mid...)
		writePacket(w, 0x32, pbody)
		if len(slots) == window || seq%4 == 0 {
			if err := w.Flush(); err != nil {
				return gone(<-readErr)
			}
		}
	}
}

// gone turns the connection's end into nil: once the hub is killed every
// read fails, and that is the expected way out.
func gone(err error) error {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(err.Error(), "connection reset") {
		return nil
	}
	return err
}

func appendStr(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func writePacket(w *bufio.Writer, b0 byte, body []byte) {
	w.WriteByte(b0)
	n := len(body)
	for {
		c := byte(n % 128)
		n /= 128
		if n > 0 {
			c |= 0x80
		}
		w.WriteByte(c)
		if n == 0 {
			break
		}
	}
	w.Write(body)
}

func readPacket(r *bufio.Reader) (byte, []byte, error) {
	b0, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		c, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(c&0x7f) * mul
		if c&0x80 == 0 {
			break
		}
		if mul *= 128; i == 3 {
			return 0, nil, errors.New("malformed remaining length")
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return b0 >> 4, body, nil
}
