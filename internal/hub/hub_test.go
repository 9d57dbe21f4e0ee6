package hub_test

// These tests run one real hub in-process (TLS MQTT and HTTPS on loopback
// ports chosen by the kernel) and drive it the way devices and services do:
// paho MQTT 3.1.1 and MQTT 5 clients, a raw MQTT client for what paho will not
// send, and the service API client. Each test uses its own devices, so tests
// run in parallel against the one hub.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/hub"
	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/methods"
	"github.com/moat-iot/moat/internal/pki"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/sas"
	"github.com/moat-iot/moat/internal/serviceapi"
)

const hostName = "127.0.0.1"

// testHub is the running hub and what clients need to reach it.
type testHub struct {
	dir       string
	mqttAddr  string
	httpsAddr string
	roots     *x509.CertPool
	ca        *pki.Authority
	policies  map[string]sas.Policy
	svc       *serviceapi.Client
	hub       *hub.Hub
}

var th *testHub

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "moat-hub-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	var err2 error
	th, err2 = startHub(ctx, dir, &wg)
	if err2 != nil {
		fmt.Fprintln(os.Stderr, "start hub:", err2)
		return 1
	}
	return m.Run()
}

func startHub(ctx context.Context, dir string, wg *sync.WaitGroup) (*testHub, error) {
	loop, off := hostName+":0", ""
	cfg := &config.Config{
		Properties: config.Properties{HostName: hostName},
		Moat: config.Moat{
			DataDir:   dir,
			Listeners: config.Listeners{MQTT: &loop, HTTPS: &loop, Metrics: &off},
		},
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var out io.Writer = io.Discard
	if os.Getenv("MOAT_TEST_LOG") != "" {
		out = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h, err := hub.New(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	runErr := make(chan error, 1)
	wg.Add(1)
	go func() { defer wg.Done(); runErr <- h.Run(ctx) }()
	select {
	case <-h.Ready():
	case err := <-runErr:
		return nil, fmt.Errorf("hub stopped before it was ready: %v", err)
	case <-time.After(20 * time.Second):
		return nil, errors.New("hub not ready after 20s")
	}
	addrs := h.Addrs()
	t := &testHub{dir: dir, mqttAddr: addrs["mqtts"], httpsAddr: addrs["https"], ca: h.Authority(), policies: map[string]sas.Policy{}, hub: h}
	if t.mqttAddr == "" || t.httpsAddr == "" {
		return nil, fmt.Errorf("hub reports addresses %v", addrs)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "pki", "ca.pem"))
	if err != nil {
		return nil, err
	}
	t.roots = x509.NewCertPool()
	if !t.roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("ca.pem holds no certificate")
	}
	pols, err := hub.LoadPolicies(dir)
	if err != nil {
		return nil, err
	}
	for _, p := range pols {
		t.policies[p.KeyName] = p
	}
	owner := t.policies["iothubowner"]
	t.svc, err = serviceapi.NewClient(fmt.Sprintf("HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s", hostName, owner.KeyName, owner.PrimaryKey),
		serviceapi.ClientOptions{Address: t.httpsAddr, RootCAs: t.roots})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// ---- registry and credentials ----

var deviceSeq atomic.Int64

func uniqueID(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, deviceSeq.Add(1))
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// newDevice registers a SAS device with generated keys.
func newDevice(t *testing.T, prefix string) registry.Device {
	t.Helper()
	return createDevice(t, registry.Device{DeviceID: uniqueID(prefix), Status: registry.StatusEnabled, Authentication: registry.Authentication{Type: registry.AuthSAS}})
}

func createDevice(t *testing.T, d registry.Device) registry.Device {
	t.Helper()
	out, err := th.svc.CreateDevice(ctxT(t, 10*time.Second), d)
	if err != nil {
		t.Fatalf("create device %s: %v", d.DeviceID, err)
	}
	if d.Authentication.Type == registry.AuthSAS && out.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("device %s created without a primary key", d.DeviceID)
	}
	return out
}

func deviceToken(t *testing.T, d registry.Device, ttl time.Duration) string {
	t.Helper()
	return signToken(t, hostName+"/devices/"+d.DeviceID, "", d.Authentication.SymmetricKey.PrimaryKey, time.Now().Add(ttl))
}

func signToken(t *testing.T, resource, keyName, key string, expiry time.Time) string {
	t.Helper()
	tok, err := sas.Sign(resource, keyName, key, expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func username(clientID string) string {
	return hostName + "/" + clientID + "/?api-version=2021-04-12&DeviceClientType=moat-hub-test"
}

func (h *testHub) tlsConfig(certs ...tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: h.roots, ServerName: hostName, MinVersion: tls.VersionTLS12, Certificates: certs}
}

// ---- paho MQTT 3.1.1 devices ----

type dev3 struct {
	mqtt.Client
	id   string
	msgs chan mqtt.Message
	lost chan struct{}
}

func v3Options(id, password string) *mqtt.ClientOptions {
	return mqtt.NewClientOptions().
		AddBroker("tls://" + th.mqttAddr).
		SetClientID(id).
		SetUsername(username(id)).
		SetPassword(password).
		SetTLSConfig(th.tlsConfig()).
		SetCleanSession(false). // as the Azure SDK
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(30 * time.Second).
		SetConnectTimeout(5 * time.Second).
		SetWriteTimeout(5 * time.Second).
		SetOrderMatters(false)
}

// dial3 connects and returns the client, or the CONNACK return code and error
// when refused.
func dial3(t *testing.T, o *mqtt.ClientOptions) (*dev3, byte, error) {
	t.Helper()
	d := &dev3{id: o.ClientID, msgs: make(chan mqtt.Message, 256), lost: make(chan struct{})}
	var once sync.Once
	o.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { d.msgs <- m })
	o.SetConnectionLostHandler(func(mqtt.Client, error) { once.Do(func() { close(d.lost) }) })
	d.Client = mqtt.NewClient(o)
	tok := d.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("connect %s: no CONNACK within 10s", o.ClientID)
	}
	code := tok.(*mqtt.ConnectToken).ReturnCode()
	if tok.Error() != nil {
		return nil, code, tok.Error()
	}
	t.Cleanup(func() { d.Disconnect(0) })
	return d, code, nil
}

func mustDial3(t *testing.T, o *mqtt.ClientOptions) *dev3 {
	t.Helper()
	d, code, err := dial3(t, o)
	if err != nil {
		t.Fatalf("connect %s: return code %d: %v", o.ClientID, code, err)
	}
	return d
}

func connectDevice(t *testing.T, d registry.Device) *dev3 {
	t.Helper()
	return mustDial3(t, v3Options(d.DeviceID, deviceToken(t, d, time.Hour)))
}

func (d *dev3) subscribe(t *testing.T, filter string, qos byte) byte {
	t.Helper()
	tok := d.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: subscribe %q: %v", d.id, filter, tok.Error())
	}
	code, ok := tok.(*mqtt.SubscribeToken).Result()[filter]
	if !ok {
		t.Fatalf("%s: SUBACK has no code for %q", d.id, filter)
	}
	return code
}

func (d *dev3) mustSubscribe(t *testing.T, filters ...string) {
	t.Helper()
	for _, f := range filters {
		if code := d.subscribe(t, f, 1); code >= 0x80 {
			t.Fatalf("%s: subscribe %q refused with 0x%02x", d.id, f, code)
		}
	}
}

func (d *dev3) publish(t *testing.T, topic string, qos byte, payload []byte) {
	t.Helper()
	tok := d.Publish(topic, qos, false, payload)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: publish %q: %v", d.id, topic, tok.Error())
	}
}

// next returns the next message whose topic has prefix, skipping others.
func (d *dev3) next(t *testing.T, prefix string, timeout time.Duration) mqtt.Message {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m := <-d.msgs:
			if strings.HasPrefix(m.Topic(), prefix) {
				return m
			}
		case <-deadline:
			t.Fatalf("%s: no message on %s* within %s", d.id, prefix, timeout)
			return nil
		}
	}
}

// none asserts that no message with prefix arrives within d.
func (d *dev3) none(t *testing.T, prefix string, wait time.Duration) {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case m := <-d.msgs:
			if strings.HasPrefix(m.Topic(), prefix) {
				t.Fatalf("%s: unexpected message on %s: %q", d.id, m.Topic(), m.Payload())
			}
		case <-deadline:
			return
		}
	}
}

func (d *dev3) waitLost(t *testing.T, within time.Duration, why string) {
	t.Helper()
	select {
	case <-d.lost:
	case <-time.After(within):
		t.Fatalf("%s: still connected %s after %s", d.id, why, within)
	}
}

func (d *dev3) stillConnected(t *testing.T) {
	t.Helper()
	select {
	case <-d.lost:
		t.Fatalf("%s: connection lost", d.id)
	default:
	}
	// A twin GET round trip proves the connection serves.
	d.mustSubscribe(t, "$iothub/twin/res/#")
	rid := uniqueID("alive")
	d.publish(t, "$iothub/twin/GET/?$rid="+rid, 0, []byte(" "))
	d.next(t, "$iothub/twin/res/200/?$rid="+rid, 5*time.Second)
}

// ---- paho MQTT 5 ----

func dial5(t *testing.T, id, password string, certs ...tls.Certificate) (*paho.Client, *paho.Connack, error) {
	t.Helper()
	conn, err := tls.Dial("tcp", th.mqttAddr, th.tlsConfig(certs...))
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: packets.NewThreadSafeConn(conn)})
	cp := &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true, Username: username(id), UsernameFlag: true}
	if password != "" {
		cp.Password, cp.PasswordFlag = []byte(password), true
	}
	ca, err := c.Connect(ctxT(t, 10*time.Second), cp)
	if err == nil {
		t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	}
	return c, ca, err
}

// ---- raw MQTT ----

// rawClient writes MQTT packets byte for byte and reads whole packets.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialRaw(t *testing.T, certs ...tls.Certificate) *rawClient {
	t.Helper()
	c, err := tls.Dial("tcp", th.mqttAddr, th.tlsConfig(certs...))
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, conn: c, r: bufio.NewReader(c)}
}

func (r *rawClient) write(b []byte) {
	r.t.Helper()
	_ = r.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.conn.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

type rawPacket struct {
	typ, flags byte
	body       []byte
}

func (r *rawClient) read(timeout time.Duration) (rawPacket, error) {
	_ = r.conn.SetReadDeadline(time.Now().Add(timeout))
	b0, err := r.r.ReadByte()
	if err != nil {
		return rawPacket{}, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		c, err := r.r.ReadByte()
		if err != nil {
			return rawPacket{}, err
		}
		n += int(c&0x7f) * mult
		if c&0x80 == 0 {
			break
		}
		if i == 3 {
			return rawPacket{}, errors.New("bad remaining length")
		}
		mult *= 128
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r.r, body); err != nil {
		return rawPacket{}, err
	}
	return rawPacket{typ: b0 >> 4, flags: b0 & 0x0f, body: body}, nil
}

// expect reads packets until one of type typ, failing on anything else that
// is not skippable.
func (r *rawClient) expect(typ byte, timeout time.Duration) rawPacket {
	r.t.Helper()
	p, err := r.read(timeout)
	if err != nil {
		r.t.Fatalf("waiting for packet type %d: %v", typ, err)
	}
	if p.typ != typ {
		r.t.Fatalf("got packet type %d (body % x), want %d", p.typ, p.body, typ)
	}
	return p
}

// expectClosed asserts that the hub closes the connection within timeout
// (a DISCONNECT before the close is allowed).
func (r *rawClient) expectClosed(timeout time.Duration, why string) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p, err := r.read(time.Until(deadline))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				r.t.Fatalf("connection still open %s %s later", why, timeout)
			}
			return
		}
		if p.typ != 14 { // DISCONNECT
			r.t.Logf("packet type %d before close", p.typ)
		}
	}
}

func mqttString(s string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(s)))
	return append(b, s...)
}

func packet(b0 byte, body ...[]byte) []byte {
	var all []byte
	for _, b := range body {
		all = append(all, b...)
	}
	out := []byte{b0}
	n := len(all)
	for {
		c := byte(n % 128)
		n /= 128
		if n > 0 {
			c |= 0x80
		}
		out = append(out, c)
		if n == 0 {
			break
		}
	}
	return append(out, all...)
}

func connectPacket(version byte, id, user, pass string, clean bool) []byte {
	return connectWillPacket(version, id, user, pass, clean, "", nil)
}

// connectWillPacket is a CONNECT with a QoS 0 will when willTopic is set.
func connectWillPacket(version byte, id, user, pass string, clean bool, willTopic string, willPayload []byte) []byte {
	flags := byte(0x80) // user name
	if pass != "" {
		flags |= 0x40
	}
	if clean {
		flags |= 0x02
	}
	if willTopic != "" {
		flags |= 0x04
	}
	vh := append(mqttString("MQTT"), version, flags, 0, 60)
	if version == 5 {
		vh = append(vh, 0) // no properties
	}
	payload := mqttString(id)
	if willTopic != "" {
		if version == 5 {
			payload = append(payload, 0) // no will properties
		}
		payload = append(payload, mqttString(willTopic)...)
		payload = append(payload, mqttString(string(willPayload))...)
	}
	payload = append(payload, mqttString(user)...)
	if pass != "" {
		payload = append(payload, mqttString(pass)...)
	}
	return packet(0x10, vh, payload)
}

func u16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func subscribePacket(version byte, pid uint16, filter string) []byte {
	var props []byte
	if version == 5 {
		props = []byte{0}
	}
	return packet(0x82, u16(pid), props, mqttString(filter), []byte{1})
}

func publishPacket(version byte, topic string, qos byte, pid uint16, payload []byte) []byte {
	var id, props []byte
	if qos > 0 {
		id = u16(pid)
	}
	if version == 5 {
		props = []byte{0}
	}
	return packet(0x30|qos<<1, mqttString(topic), id, props, payload)
}

func pubackPacket(pid uint16) []byte { return packet(0x40, u16(pid)) }

// c2dLeftInFlight makes a device with a clean=false session subscribed to its
// cloud-to-device messages, delivers one ("one") to it and drops the
// connection without acknowledging it.
func c2dLeftInFlight(t *testing.T, name string) (dev registry.Device, tok, filter string, first rawPublish) {
	t.Helper()
	dev = newDevice(t, name)
	tok = deviceToken(t, dev, time.Hour)
	filter = "devices/" + dev.DeviceID + "/messages/devicebound/#"
	mustSendC2D(t, dev.DeviceID, name+"-1", nil, []byte("one"))
	r := dialRaw(t)
	r.mustConnect(4, dev.DeviceID, tok, false)
	r.write(subscribePacket(4, 1, filter))
	r.expect(9, 5*time.Second)
	if first = r.nextPublish(5 * time.Second); string(first.payload) != "one" || first.qos != 1 {
		t.Fatalf("first delivery %+v", first)
	}
	r.conn.Close()
	return dev, tok, filter, first
}

// ackDrains acknowledges a cloud-to-device message and checks that it was the
// last one queued and that nothing more is sent.
func ackDrains(t *testing.T, r *rawClient, pid uint16, deviceID string) {
	t.Helper()
	r.write(pubackPacket(pid))
	r.ping()
	if n := purge(t, deviceID); n != 0 {
		t.Fatalf("%d messages still queued after PUBACK", n)
	}
	r.noPublish(300 * time.Millisecond)
}

// connectRaw sends CONNECT and returns the CONNACK return (reason) code.
func (r *rawClient) connect(version byte, id, pass string, clean bool) byte {
	r.t.Helper()
	r.write(connectPacket(version, id, username(id), pass, clean))
	p := r.expect(2, 10*time.Second)
	if len(p.body) < 2 {
		r.t.Fatalf("short CONNACK % x", p.body)
	}
	return p.body[1]
}

func (r *rawClient) mustConnect(version byte, id, pass string, clean bool) {
	r.t.Helper()
	if code := r.connect(version, id, pass, clean); code != 0 {
		r.t.Fatalf("CONNACK 0x%02x for %s", code, id)
	}
}

// ping makes a round trip: the hub handles one client's packets in order, so
// everything sent before has been processed when PINGRESP arrives.
func (r *rawClient) ping() {
	r.t.Helper()
	r.write([]byte{0xc0, 0})
	for {
		p, err := r.read(5 * time.Second)
		if err != nil {
			r.t.Fatalf("waiting for PINGRESP: %v", err)
		}
		if p.typ == 13 {
			return
		}
	}
}

// rawPublish is a received PUBLISH (MQTT 3.1.1).
type rawPublish struct {
	topic   string
	pid     uint16
	dup     bool
	qos     byte
	payload []byte
}

func parsePublish(t *testing.T, p rawPacket) rawPublish {
	t.Helper()
	if p.typ != 3 || len(p.body) < 2 {
		t.Fatalf("not a PUBLISH: type %d", p.typ)
	}
	n := int(binary.BigEndian.Uint16(p.body))
	out := rawPublish{topic: string(p.body[2 : 2+n]), qos: p.flags >> 1 & 3, dup: p.flags&8 != 0}
	rest := p.body[2+n:]
	if out.qos > 0 {
		out.pid = binary.BigEndian.Uint16(rest)
		rest = rest[2:]
	}
	out.payload = rest
	return out
}

func (r *rawClient) nextPublish(timeout time.Duration) rawPublish {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p, err := r.read(time.Until(deadline))
		if err != nil {
			r.t.Fatalf("waiting for PUBLISH: %v", err)
		}
		if p.typ == 3 {
			return parsePublish(r.t, p)
		}
	}
}

// noPublish asserts that no PUBLISH arrives within wait.
func (r *rawClient) noPublish(wait time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(wait)
	for {
		p, err := r.read(time.Until(deadline))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return
			}
			r.t.Fatalf("connection failed: %v", err)
		}
		if p.typ == 3 {
			pp := parsePublish(r.t, p)
			r.t.Fatalf("unexpected PUBLISH %q pid %d dup %v", pp.topic, pp.pid, pp.dup)
		}
	}
}

// ---- events ----

// monitor collects a device's telemetry from the service API's events stream.
type monitor struct {
	ch chan serviceapi.EventRecord
}

func monitorEvents(t *testing.T, deviceID string) *monitor {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m := &monitor{ch: make(chan serviceapi.EventRecord, 64)}
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- th.svc.MonitorEventsReady(ctx, deviceID, func() { close(ready) }, func(r serviceapi.EventRecord) error {
			select {
			case m.ch <- r:
			case <-ctx.Done():
			}
			return nil
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("events stream: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("events stream not open after 10s")
	}
	return m
}

func (m *monitor) next(t *testing.T, timeout time.Duration) serviceapi.EventRecord {
	t.Helper()
	select {
	case r := <-m.ch:
		return r
	case <-time.After(timeout):
		t.Fatalf("no telemetry within %s", timeout)
		return serviceapi.EventRecord{}
	}
}

func wantCode(t *testing.T, err error, c errcode.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("succeeded, want %s", c.Name)
	}
	if !errcode.Is(err, c) {
		t.Fatalf("error %v, want %s (%d)", err, c.Name, c.Number)
	}
}

// ================= 1. ACL =================

// The GC pacer tells connect storms by the count of sessions established.
func TestSessionsEstablished(t *testing.T) {
	t.Parallel()
	before := th.hub.SessionsEstablished()
	connectDevice(t, newDevice(t, "established"))
	// Counted just after the CONNACK is written: possibly after Dial returns.
	for deadline := time.Now().Add(5 * time.Second); th.hub.SessionsEstablished() <= before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("sessions established still %d after a connect", before)
		}
	}
}

func TestACL(t *testing.T) {
	t.Parallel()
	a, b := newDevice(t, "acl-a"), newDevice(t, "acl-b")
	// One stream per device: a stream of every device would carry the
	// shared hub's other tests' telemetry too, and the live stream skips
	// records for a reader that falls behind (CI once lost the marker so).
	monA, monB := monitorEvents(t, a.DeviceID), monitorEvents(t, b.DeviceID)
	da := connectDevice(t, a)

	t.Run("subscribe outside own namespace", func(t *testing.T) {
		for _, f := range []string{
			"devices/" + b.DeviceID + "/messages/devicebound/#",
			"devices/" + b.DeviceID + "/messages/events/#",
			"devices/#",
			"devices/+/messages/devicebound/#",
			"#",
			"+/" + b.DeviceID + "/messages/devicebound/#",
			"+/#",
			"$iothub/#",
			"$SYS/#",
		} {
			if code := da.subscribe(t, f, 1); code != 0x80 {
				t.Errorf("SUBACK for %q = 0x%02x, want 0x80", f, code)
			}
		}
		// The device's own filters are granted.
		da.mustSubscribe(t, "devices/"+a.DeviceID+"/messages/devicebound/#", "$iothub/methods/POST/#", "$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#")
	})

	t.Run("own telemetry with properties", func(t *testing.T) {
		bag := "%24.mid=mid-1&%24.cid=cid-1&%24.uid=u1&%24.ct=application%2Fjson&%24.ce=utf-8&temperatureAlert=true&sp%20ace%2F%26%3D=v%26%3D%2F%20x"
		da.publish(t, "devices/"+a.DeviceID+"/messages/events/"+bag, 1, []byte(`{"t":21}`))
		var r serviceapi.EventRecord
		for r = monA.next(t, 5*time.Second); r.DeviceID != a.DeviceID; r = monA.next(t, 5*time.Second) {
		}
		sys := r.SystemProperties
		for k, want := range map[string]string{
			message.SysMessageID:        "mid-1",
			message.SysCorrelationID:    "cid-1",
			message.SysUserID:           "u1",
			message.SysContentType:      "application/json",
			message.SysContentEncoding:  "utf-8",
			message.SysConnectionDevice: a.DeviceID,
			message.SysConnectionAuth:   "sas",
		} {
			if sys[k] != want {
				t.Errorf("system property %s = %q, want %q (all: %v)", k, sys[k], want, sys)
			}
		}
		if got := r.Properties["temperatureAlert"]; got != "true" {
			t.Errorf("property temperatureAlert = %q", got)
		}
		if got := r.Properties["sp ace/&="]; got != "v&=/ x" {
			t.Errorf("percent-decoded property = %q (all: %v)", got, r.Properties)
		}
		if string(r.Body) != `{"t":21}` {
			t.Errorf("body %s", r.Body)
		}
	})

	t.Run("publish to another device's events", func(t *testing.T) {
		forged := []byte(`"forged-by-` + a.DeviceID + `"`)
		for _, qos := range []byte{1, 0} {
			d := connectDevice(t, a)
			d.Publish("devices/"+b.DeviceID+"/messages/events/", qos, false, forged)
			d.waitLost(t, 3*time.Second, fmt.Sprintf("after a QoS %d publish to another device's events", qos))
		}
		// b's own telemetry marks the end: the forged messages were
		// refused before it was sent, so they would have come first.
		db := connectDevice(t, b)
		db.publish(t, "devices/"+b.DeviceID+"/messages/events/", 1, []byte(`"marker"`))
		for {
			r := monB.next(t, 5*time.Second)
			if string(r.Body) == string(forged) {
				t.Fatalf("forged message reached the events stream as %s: %+v", r.DeviceID, r)
			}
			if string(r.Body) == `"marker"` {
				if r.DeviceID != b.DeviceID {
					t.Fatalf("marker from %q", r.DeviceID)
				}
				break
			}
		}
		// Accepted under a's identity, a forged message would be in a's
		// stream, written before the marker was written to b's.
		deadline := time.After(time.Second)
		for {
			select {
			case r := <-monA.ch:
				if string(r.Body) == string(forged) {
					t.Fatalf("forged message reached the events stream as %s: %+v", r.DeviceID, r)
				}
				continue
			case <-deadline:
			}
			break
		}
	})
}

// ================= 2. Auth =================

func TestAuthRefusals(t *testing.T) {
	t.Parallel()
	dev := newDevice(t, "auth")
	other := newDevice(t, "auth-other")
	disabled := createDevice(t, registry.Device{DeviceID: uniqueID("auth-disabled"), Status: registry.StatusDisabled, Authentication: registry.Authentication{Type: registry.AuthSAS}})
	key, err := sas.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	svcPolicy := th.policies["service"]
	cases := []struct {
		name, clientID, token string
	}{
		{"wrong key", dev.DeviceID, signToken(t, hostName+"/devices/"+dev.DeviceID, "", key, time.Now().Add(time.Hour))},
		{"expired token", dev.DeviceID, signToken(t, hostName+"/devices/"+dev.DeviceID, "", dev.Authentication.SymmetricKey.PrimaryKey, time.Now().Add(-time.Minute))},
		{"token of another device", dev.DeviceID, deviceToken(t, other, time.Hour)},
		{"unknown device", "ghost-" + dev.DeviceID, signToken(t, hostName+"/devices/ghost-"+dev.DeviceID, "", key, time.Now().Add(time.Hour))},
		{"disabled device", disabled.DeviceID, deviceToken(t, disabled, time.Hour)},
		{"policy without DeviceConnect", dev.DeviceID, signToken(t, hostName+"/devices/"+dev.DeviceID, svcPolicy.KeyName, svcPolicy.PrimaryKey, time.Now().Add(time.Hour))},
	}
	for _, c := range cases {
		t.Run(c.name+"/v3", func(t *testing.T) {
			t.Parallel()
			_, code, err := dial3(t, v3Options(c.clientID, c.token))
			if err == nil || code != 5 {
				t.Fatalf("CONNACK return code %d (err %v), want 5", code, err)
			}
		})
		t.Run(c.name+"/v5", func(t *testing.T) {
			t.Parallel()
			_, ca, err := dial5(t, c.clientID, c.token)
			if err == nil || ca == nil || ca.ReasonCode != 0x87 {
				t.Fatalf("CONNACK %+v (err %v), want reason 0x87", ca, err)
			}
		})
	}
}

func TestAuthAccepted(t *testing.T) {
	t.Parallel()
	t.Run("device policy token", func(t *testing.T) {
		t.Parallel()
		dev := newDevice(t, "auth-policy")
		p := th.policies["device"]
		tok := signToken(t, hostName+"/devices/"+dev.DeviceID, p.KeyName, p.PrimaryKey, time.Now().Add(time.Hour))
		d := mustDial3(t, v3Options(dev.DeviceID, tok))
		d.stillConnected(t)
		_, ca, err := dial5(t, dev.DeviceID, tok)
		if err != nil || ca.ReasonCode != 0 {
			t.Fatalf("v5 CONNACK %+v: %v", ca, err)
		}
	})
	t.Run("disable connected device", func(t *testing.T) {
		t.Parallel()
		dev := newDevice(t, "auth-disable")
		d := connectDevice(t, dev)
		d.stillConnected(t)
		upd := dev
		upd.Status = registry.StatusDisabled
		if _, err := th.svc.UpdateDevice(ctxT(t, 5*time.Second), upd, "*"); err != nil {
			t.Fatal(err)
		}
		d.waitLost(t, time.Second, "after the device was disabled")
		if _, code, err := dial3(t, v3Options(dev.DeviceID, deviceToken(t, dev, time.Hour))); err == nil || code != 5 {
			t.Fatalf("reconnect of disabled device: code %d, err %v", code, err)
		}
	})
	t.Run("token expiry disconnects", func(t *testing.T) {
		t.Parallel()
		dev := newDevice(t, "auth-expiry")
		// se has second resolution: the token runs out 2 to 3 s from now.
		exp := time.Now().Add(3 * time.Second).Truncate(time.Second)
		d := mustDial3(t, v3Options(dev.DeviceID, signToken(t, hostName+"/devices/"+dev.DeviceID, "", dev.Authentication.SymmetricKey.PrimaryKey, exp)))
		select {
		case <-d.lost:
			t.Fatalf("disconnected %s before the token expired", time.Until(exp))
		case <-time.After(time.Until(exp) - 500*time.Millisecond):
		}
		d.waitLost(t, 2*time.Second, "after its token expired")
	})
}

// ================= 3. X.509 =================

func selfSigned(t *testing.T, cn string) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, cert
}

func x509Options(id string, cert tls.Certificate) *mqtt.ClientOptions {
	return v3Options(id, "").SetTLSConfig(th.tlsConfig(cert))
}

func TestX509(t *testing.T) {
	t.Parallel()
	t.Run("self-signed registered thumbprint", func(t *testing.T) {
		t.Parallel()
		id := uniqueID("x509-self")
		cert, leaf := selfSigned(t, id)
		sha1hex, _ := pki.Thumbprint(leaf)
		createDevice(t, registry.Device{DeviceID: id, Status: registry.StatusEnabled, Authentication: registry.Authentication{
			Type: registry.AuthSelfSigned, X509Thumbprint: registry.X509Thumbprint{PrimaryThumbprint: sha1hex},
		}})
		mustDial3(t, x509Options(id, cert)).stillConnected(t)

		id2 := uniqueID("x509-self256")
		cert2, leaf2 := selfSigned(t, id2)
		_, sha256hex := pki.Thumbprint(leaf2)
		createDevice(t, registry.Device{DeviceID: id2, Status: registry.StatusEnabled, Authentication: registry.Authentication{
			Type: registry.AuthSelfSigned, X509Thumbprint: registry.X509Thumbprint{PrimaryThumbprint: "0000000000000000000000000000000000000000", SecondaryThumbprint: sha256hex},
		}})
		mustDial3(t, x509Options(id2, cert2)).stillConnected(t)
	})
	t.Run("unknown certificate completes TLS and gets CONNACK 5", func(t *testing.T) {
		t.Parallel()
		id := uniqueID("x509-unknown")
		_, leaf := selfSigned(t, id)
		sha1hex, _ := pki.Thumbprint(leaf)
		createDevice(t, registry.Device{DeviceID: id, Status: registry.StatusEnabled, Authentication: registry.Authentication{
			Type: registry.AuthSelfSigned, X509Thumbprint: registry.X509Thumbprint{PrimaryThumbprint: sha1hex},
		}})
		stranger, _ := selfSigned(t, id)
		r := dialRaw(t, stranger)
		if err := r.conn.(*tls.Conn).Handshake(); err != nil {
			t.Fatalf("TLS handshake with an unknown client certificate: %v", err)
		}
		if code := r.connect(4, id, "", false); code != 5 {
			t.Fatalf("CONNACK %d, want 5", code)
		}
		if _, code, err := dial3(t, x509Options(id, stranger)); err == nil || code != 5 {
			t.Fatalf("paho: code %d err %v, want 5", code, err)
		}
	})
	t.Run("CA-signed", func(t *testing.T) {
		t.Parallel()
		id := uniqueID("x509-ca")
		createDevice(t, registry.Device{DeviceID: id, Status: registry.StatusEnabled, Authentication: registry.Authentication{Type: registry.AuthCertificateAuthority}})
		certPEM, keyPEM, err := th.ca.IssueClient(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		mustDial3(t, x509Options(id, cert)).stillConnected(t)

		// A CA certificate for another device id is refused.
		otherPEM, otherKey, err := th.ca.IssueClient(id+"-not", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		other, err := tls.X509KeyPair(otherPEM, otherKey)
		if err != nil {
			t.Fatal(err)
		}
		if _, code, err := dial3(t, x509Options(id, other)); err == nil || code != 5 {
			t.Fatalf("certificate for another CN: code %d err %v, want 5", code, err)
		}
	})
}

// ================= 4. Sessions and C2D =================

func sendC2D(t *testing.T, deviceID, mid string, sys map[string]string, body []byte) error {
	t.Helper()
	s := map[string]string{message.SysMessageID: mid}
	for k, v := range sys {
		s[k] = v
	}
	return th.svc.SendC2D(ctxT(t, 10*time.Second), deviceID, message.Message{Body: body, System: s, Properties: map[string]string{"color": "red/blue"}})
}

func mustSendC2D(t *testing.T, deviceID, mid string, sys map[string]string, body []byte) {
	t.Helper()
	if err := sendC2D(t, deviceID, mid, sys, body); err != nil {
		t.Fatalf("send C2D %s: %v", mid, err)
	}
}

func connectionState(t *testing.T, id string) string {
	t.Helper()
	d, err := th.svc.GetDevice(ctxT(t, 5*time.Second), id)
	if err != nil {
		t.Fatal(err)
	}
	return d.ConnectionState
}

func purge(t *testing.T, deviceID string) int {
	t.Helper()
	r, err := th.svc.PurgeC2D(ctxT(t, 5*time.Second), deviceID)
	if err != nil {
		t.Fatal(err)
	}
	return r.TotalMessagesPurged
}

func TestSessions(t *testing.T) {
	t.Parallel()
	t.Run("one connection per device", func(t *testing.T) {
		t.Parallel()
		dev := newDevice(t, "sess-single")
		first := connectDevice(t, dev)
		second := connectDevice(t, dev)
		first.waitLost(t, 2*time.Second, "after a second CONNECT with its client id")
		second.stillConnected(t)
		// The old connection's end must not mark the device disconnected.
		if got := connectionState(t, dev.DeviceID); got != registry.Connected {
			t.Errorf("connectionState %q after takeover, want %q", got, registry.Connected)
		}
		second.Disconnect(100)
		deadline := time.Now().Add(3 * time.Second)
		for connectionState(t, dev.DeviceID) != registry.Disconnected {
			if time.Now().After(deadline) {
				t.Fatalf("connectionState still %q 3s after the last connection ended", connectionState(t, dev.DeviceID))
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("clean=false reconnect keeps subscriptions", func(t *testing.T) {
		t.Parallel()
		dev := newDevice(t, "sess-renew")
		d1 := connectDevice(t, dev)
		d1.mustSubscribe(t, "devices/"+dev.DeviceID+"/messages/devicebound/#", "$iothub/methods/POST/#", "$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#")
		d1.Disconnect(100) // as the SDK renewing its token: DISCONNECT, then CONNECT
		mustSendC2D(t, dev.DeviceID, "renew-0", nil, []byte("between sessions"))
		d2 := connectDevice(t, dev)
		if m := d2.next(t, "devices/"+dev.DeviceID+"/messages/devicebound/", 5*time.Second); string(m.Payload()) != "between sessions" {
			t.Fatalf("C2D payload %q", m.Payload())
		}
		mustSendC2D(t, dev.DeviceID, "renew-1", nil, []byte("after renewal"))
		if m := d2.next(t, "devices/"+dev.DeviceID+"/messages/devicebound/", 5*time.Second); string(m.Payload()) != "after renewal" {
			t.Fatalf("C2D payload %q", m.Payload())
		}
		go func() {
			for m := range d2.msgs {
				if strings.HasPrefix(m.Topic(), "$iothub/methods/POST/") {
					_, q, _ := strings.Cut(m.Topic(), "/?")
					d2.Publish("$iothub/methods/res/201/?"+q, 0, false, m.Payload())
					return
				}
			}
		}()
		res, err := th.svc.InvokeMethod(ctxT(t, 10*time.Second), dev.DeviceID, "", methods.Request{MethodName: "ping", Payload: json.RawMessage(`{"a":1}`), ResponseTimeoutInSeconds: ptr(5)})
		if err != nil || res.Status != 201 || string(res.Payload) != `{"a":1}` {
			t.Fatalf("method after renewal: %+v, %v", res, err)
		}
		if _, err := th.svc.PatchTwin(ctxT(t, 5*time.Second), dev.DeviceID, "", json.RawMessage(`{"properties":{"desired":{"k":"v"}}}`), ""); err != nil {
			t.Fatal(err)
		}
		d2.next(t, "$iothub/twin/PATCH/properties/desired/", 5*time.Second)
		d2.publish(t, "$iothub/twin/GET/?$rid=r1", 0, []byte(" "))
		d2.next(t, "$iothub/twin/res/200/?$rid=r1", 5*time.Second)
	})

	t.Run("C2D sent offline arrives after connect", func(t *testing.T) {
		t.Parallel()
		dev := newDevice(t, "sess-offline")
		mustSendC2D(t, dev.DeviceID, "off-1", map[string]string{message.SysAck: "full"}, []byte("queued"))
		d := connectDevice(t, dev)
		d.mustSubscribe(t, "devices/"+dev.DeviceID+"/messages/devicebound/#")
		m := d.next(t, "devices/"+dev.DeviceID+"/messages/devicebound/", 5*time.Second)
		if string(m.Payload()) != "queued" {
			t.Fatalf("payload %q", m.Payload())
		}
		bag := strings.TrimPrefix(m.Topic(), "devices/"+dev.DeviceID+"/messages/devicebound/")
		for _, want := range []string{"%24.mid=off-1", "color=red%2Fblue", "iothub-ack=full", "%24.to=%2Fdevices%2F" + dev.DeviceID + "%2Fmessages%2FdeviceBound"} {
			if !strings.Contains(bag, want) {
				t.Errorf("property bag %q lacks %q", bag, want)
			}
		}
		if strings.Contains(bag, "/") {
			t.Errorf("property bag %q has an unescaped '/'", bag)
		}
	})

	t.Run("C2D completed exactly on PUBACK", func(t *testing.T) {
		t.Parallel()
		dev, tok, filter, _ := c2dLeftInFlight(t, "sess-ack")

		// The session resumes without SUBSCRIBE and the message comes again.
		r := dialRaw(t)
		r.mustConnect(4, dev.DeviceID, tok, false)
		if p := r.nextPublish(5 * time.Second); string(p.payload) != "one" {
			t.Fatalf("redelivery after clean=false reconnect: %+v", p)
		}
		// Once: the session's resend, not a second copy from the queue.
		r.noPublish(300 * time.Millisecond)
		r.conn.Close()

		// A clean session drops the broker's in-flight copy; the queue still
		// has the message, so it is delivered again.
		r = dialRaw(t)
		r.mustConnect(4, dev.DeviceID, tok, true)
		r.write(subscribePacket(4, 2, filter))
		r.expect(9, 5*time.Second)
		p := r.nextPublish(5 * time.Second)
		if string(p.payload) != "one" {
			t.Fatalf("redelivery after clean=true reconnect: %+v", p)
		}
		ackDrains(t, r, p.pid, dev.DeviceID)
	})

	t.Run("SUBSCRIBE reusing the id of a C2D message in flight", func(t *testing.T) {
		t.Parallel()
		dev, tok, filter, first := c2dLeftInFlight(t, "sess-pid")

		// Reconnect and resubscribe, as mosquitto_sub and mqtt.js do, with the
		// identifier the hub's resent message carries: the two directions'
		// identifiers are separate, so the SUBSCRIBE is granted.
		r := dialRaw(t)
		r.mustConnect(4, dev.DeviceID, tok, false)
		resent := r.nextPublish(5 * time.Second)
		if resent.pid != first.pid || string(resent.payload) != "one" {
			t.Fatalf("resend %+v, first delivery %+v", resent, first)
		}
		r.write(subscribePacket(4, resent.pid, filter))
		suback := r.expect(9, 5*time.Second)
		if want := []byte{byte(resent.pid >> 8), byte(resent.pid), 1}; !bytes.Equal(suback.body, want) {
			t.Fatalf("SUBACK % x, want % x (granted QoS 1)", suback.body, want)
		}
		// The message is still in flight under its identifier: the PUBACK
		// completes it, and nothing is sent again.
		ackDrains(t, r, resent.pid, dev.DeviceID)
	})

	t.Run("C2D not acknowledged stays queued", func(t *testing.T) {
		t.Parallel()
		dev := newDevice(t, "sess-noack")
		mustSendC2D(t, dev.DeviceID, "noack-1", nil, []byte("x"))
		r := dialRaw(t)
		r.mustConnect(4, dev.DeviceID, deviceToken(t, dev, time.Hour), true)
		r.write(subscribePacket(4, 1, "devices/"+dev.DeviceID+"/messages/devicebound/#"))
		r.expect(9, 5*time.Second)
		r.nextPublish(5 * time.Second)
		r.ping()
		if n := purge(t, dev.DeviceID); n != 1 {
			t.Fatalf("queue depth %d before PUBACK, want 1", n)
		}
	})

	t.Run("C2D TTL expiry", func(t *testing.T) {
		t.Parallel()
		dev := newDevice(t, "sess-ttl")
		mustSendC2D(t, dev.DeviceID, "expired", map[string]string{message.SysExpiry: time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)}, []byte("stale"))
		mustSendC2D(t, dev.DeviceID, "live", map[string]string{message.SysExpiry: time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}, []byte("fresh"))
		d := connectDevice(t, dev)
		d.mustSubscribe(t, "devices/"+dev.DeviceID+"/messages/devicebound/#")
		if m := d.next(t, "devices/", 5*time.Second); string(m.Payload()) != "fresh" {
			t.Fatalf("first delivery %q, want the unexpired message", m.Payload())
		}
		d.none(t, "devices/", 300*time.Millisecond)
	})

	t.Run("C2D limits", func(t *testing.T) {
		t.Parallel()
		dev := newDevice(t, "sess-limits")
		wantCode(t, sendC2D(t, dev.DeviceID, "big", nil, make([]byte, 64*1024+1)), errcode.MessageTooLarge)
		for i := range 50 {
			mustSendC2D(t, dev.DeviceID, fmt.Sprintf("q-%d", i), nil, []byte("x"))
		}
		wantCode(t, sendC2D(t, dev.DeviceID, "q-50", nil, []byte("x")), errcode.DeviceMaxQueueDepthExceeded)
		if n := purge(t, dev.DeviceID); n != 50 {
			t.Fatalf("purged %d, want 50", n)
		}
	})
}

func ptr[T any](v T) *T { return &v }

// ================= 5. Protocol limits =================

func TestProtocolLimits(t *testing.T) {
	t.Parallel()
	t.Run("QoS 2 publish closes", func(t *testing.T) {
		t.Parallel()
		dev := newDevice(t, "lim-qos2")
		r := dialRaw(t)
		r.mustConnect(4, dev.DeviceID, deviceToken(t, dev, time.Hour), true)
		r.write(publishPacket(4, "devices/"+dev.DeviceID+"/messages/events/", 2, 7, []byte("x")))
		r.expectClosed(3*time.Second, "after a QoS 2 PUBLISH")
	})
	t.Run("256 KiB is accepted, one byte more closes", func(t *testing.T) {
		t.Parallel()
		dev := newDevice(t, "lim-size")
		tok := deviceToken(t, dev, time.Hour)
		topic := "devices/" + dev.DeviceID + "/messages/events/"
		r := dialRaw(t)
		r.mustConnect(4, dev.DeviceID, tok, true)
		r.write(publishPacket(4, topic, 1, 1, make([]byte, 256*1024)))
		if p := r.expect(4, 5*time.Second); binary.BigEndian.Uint16(p.body) != 1 {
			t.Fatalf("PUBACK for packet %d", binary.BigEndian.Uint16(p.body))
		}
		r.write(publishPacket(4, topic, 1, 2, make([]byte, 256*1024+1)))
		r.expectClosed(3*time.Second, "after a 256 KiB + 1 PUBLISH")
	})
	t.Run("MQTT 5 SUBSCRIBE crash frames", func(t *testing.T) {
		t.Parallel()
		bystanderDev := newDevice(t, "lim-bystander")
		bystander := connectDevice(t, bystanderDev)
		for i, frame := range [][]byte{
			{0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00},
			{0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61},
		} {
			dev := newDevice(t, "lim-crash")
			r := dialRaw(t)
			r.mustConnect(5, dev.DeviceID, deviceToken(t, dev, time.Hour), true)
			r.write(frame)
			r.expectClosed(3*time.Second, fmt.Sprintf("after crash frame %d", i))
			bystander.stillConnected(t)
		}
		// New connections are still served.
		connectDevice(t, newDevice(t, "lim-after")).stillConnected(t)
	})
}

// ================= 6. Twin =================

type twinDoc struct {
	Desired  map[string]any `json:"desired"`
	Reported map[string]any `json:"reported"`
}

func twinGet(t *testing.T, d *dev3, rid string) twinDoc {
	t.Helper()
	d.publish(t, "$iothub/twin/GET/?$rid="+rid, 0, []byte(" "))
	m := d.next(t, "$iothub/twin/res/", 5*time.Second)
	if want := "$iothub/twin/res/200/?$rid=" + rid; m.Topic() != want {
		t.Fatalf("twin GET answered on %q, want %q", m.Topic(), want)
	}
	var doc twinDoc
	if err := json.Unmarshal(m.Payload(), &doc); err != nil {
		t.Fatalf("twin GET body %q: %v", m.Payload(), err)
	}
	if doc.Desired == nil || doc.Reported == nil {
		t.Fatalf("twin GET body %s lacks top-level desired/reported", m.Payload())
	}
	return doc
}

func version(t *testing.T, props map[string]any) int64 {
	t.Helper()
	v, ok := props["$version"].(float64)
	if !ok {
		t.Fatalf("no numeric $version in %v", props)
	}
	return int64(v)
}

func TestTwin(t *testing.T) {
	t.Parallel()
	dev := newDevice(t, "twin")
	d := connectDevice(t, dev)
	d.mustSubscribe(t, "$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#")

	doc := twinGet(t, d, "00000000-0000-4000-8000-000000000001")
	if version(t, doc.Desired) != 1 || version(t, doc.Reported) != 1 {
		t.Errorf("new twin versions desired %v reported %v, want 1 and 1", doc.Desired["$version"], doc.Reported["$version"])
	}

	// Reported patch: 204 with the new version, which the next GET shows.
	d.publish(t, "$iothub/twin/PATCH/properties/reported/?$rid=a", 0, []byte(`{"temp":21,"fw":{"v":"1.0"}}`))
	m := d.next(t, "$iothub/twin/res/", 5*time.Second)
	prefix := "$iothub/twin/res/204/?$rid=a&$version="
	if !strings.HasPrefix(m.Topic(), prefix) {
		t.Fatalf("reported patch answered on %q", m.Topic())
	}
	var n int64
	if _, err := fmt.Sscanf(strings.TrimPrefix(m.Topic(), prefix), "%d", &n); err != nil {
		t.Fatalf("version in %q: %v", m.Topic(), err)
	}
	if len(m.Payload()) != 0 {
		t.Errorf("204 body %q, want empty", m.Payload())
	}
	doc = twinGet(t, d, "b")
	if got := version(t, doc.Reported); got != n {
		t.Errorf("reported $version in GET = %d, 204 said %d", got, n)
	}
	if doc.Reported["temp"] != float64(21) {
		t.Errorf("reported = %v", doc.Reported)
	}

	// Request ids come back byte for byte.
	for _, rid := range []string{"1", "a", "ff", "10", "req%2F1", "x.y-z_~"} {
		d.publish(t, "$iothub/twin/GET/?$rid="+rid, 0, []byte(" "))
		if m := d.next(t, "$iothub/twin/res/", 5*time.Second); m.Topic() != "$iothub/twin/res/200/?$rid="+rid {
			t.Errorf("rid %q answered on %q", rid, m.Topic())
		}
	}

	// A desired patch from the service reaches the device with its version.
	tw, err := th.svc.PatchTwin(ctxT(t, 5*time.Second), dev.DeviceID, "", json.RawMessage(`{"properties":{"desired":{"color":"red"}}}`), "")
	if err != nil {
		t.Fatal(err)
	}
	m = d.next(t, "$iothub/twin/PATCH/properties/desired/", 5*time.Second)
	var patch map[string]any
	if err := json.Unmarshal(m.Payload(), &patch); err != nil {
		t.Fatalf("desired patch %q: %v", m.Payload(), err)
	}
	if patch["color"] != "red" {
		t.Errorf("desired patch %v", patch)
	}
	v := version(t, patch)
	if v != 2 || m.Topic() != fmt.Sprintf("$iothub/twin/PATCH/properties/desired/?$version=%d", v) {
		t.Errorf("desired patch on %q with $version %d, want 2", m.Topic(), v)
	}
	if got := tw.Properties.Desired["$version"]; fmt.Sprint(got) != "2" {
		t.Errorf("service twin desired $version %v", got)
	}

	// An oversize reported patch is refused with an errorCode body.
	big := []byte(`{"big":"` + strings.Repeat("x", 33*1024) + `"}`)
	d.publish(t, "$iothub/twin/PATCH/properties/reported/?$rid=big", 0, big)
	m = d.next(t, "$iothub/twin/res/", 5*time.Second)
	if !strings.HasSuffix(m.Topic(), "/?$rid=big") || strings.HasPrefix(m.Topic(), "$iothub/twin/res/2") {
		t.Fatalf("oversize patch answered on %q", m.Topic())
	}
	var e struct {
		ErrorCode int    `json:"errorCode"`
		Message   string `json:"message"`
	}
	if err := json.Unmarshal(m.Payload(), &e); err != nil || e.ErrorCode == 0 {
		t.Fatalf("error body %q (%v), want an errorCode", m.Payload(), err)
	}
	if got := version(t, twinGet(t, d, "after-big").Reported); got != n {
		t.Errorf("reported $version %d after refused patch, want %d", got, n)
	}
}

// ================= 7. Methods =================

// answerMethods answers every method call except "silent" with status 200
// and the request payload.
func answerMethods(t *testing.T, d *dev3) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case m := <-d.msgs:
				rest, ok := strings.CutPrefix(m.Topic(), "$iothub/methods/POST/")
				if !ok {
					continue
				}
				name, q, _ := strings.Cut(rest, "/?")
				switch name {
				case "silent":
					continue
				case "qos1":
					// Some SDKs answer at QoS 1; the hub must take it and PUBACK.
					if tok := d.Publish("$iothub/methods/res/200/?"+q, 1, false, m.Payload()); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
						t.Errorf("QoS 1 method response not acknowledged: %v", tok.Error())
					}
					continue
				}
				d.Publish("$iothub/methods/res/200/?"+q, 0, false, m.Payload())
			}
		}
	}()
}

func TestMethods(t *testing.T) {
	t.Parallel()
	dev := newDevice(t, "meth")
	d := connectDevice(t, dev)
	d.mustSubscribe(t, "$iothub/methods/POST/#")
	answerMethods(t, d)

	t.Run("payload passthrough", func(t *testing.T) {
		t.Parallel()
		for _, p := range []string{`null`, `"s"`, `{}`, `""`, `{"a":[1,2,{"b":null}]}`, `42`} {
			res, err := th.svc.InvokeMethod(ctxT(t, 10*time.Second), dev.DeviceID, "", methods.Request{MethodName: "echo", Payload: json.RawMessage(p), ResponseTimeoutInSeconds: ptr(5)})
			if err != nil {
				t.Fatalf("payload %s: %v", p, err)
			}
			got := string(res.Payload)
			if got == "" {
				got = "null"
			}
			if res.Status != 200 || got != p {
				t.Errorf("payload %s came back as status %d payload %s", p, res.Status, res.Payload)
			}
		}
	})
	t.Run("response at QoS 1", func(t *testing.T) {
		t.Parallel()
		res, err := th.svc.InvokeMethod(ctxT(t, 10*time.Second), dev.DeviceID, "", methods.Request{MethodName: "qos1", Payload: json.RawMessage(`{"q":1}`), ResponseTimeoutInSeconds: ptr(5)})
		if err != nil || res.Status != 200 || string(res.Payload) != `{"q":1}` {
			t.Fatalf("%+v, %v", res, err)
		}
	})
	t.Run("not subscribed is DeviceNotOnline", func(t *testing.T) {
		t.Parallel()
		other := newDevice(t, "meth-nosub")
		connectDevice(t, other)
		_, err := th.svc.InvokeMethod(ctxT(t, 10*time.Second), other.DeviceID, "", methods.Request{MethodName: "echo", Payload: json.RawMessage(`{}`), ResponseTimeoutInSeconds: ptr(5)})
		wantCode(t, err, errcode.DeviceNotOnline)
		if e := errcode.From(err); e.Code.Number != 404103 {
			t.Errorf("error number %d", e.Code.Number)
		}
	})
	t.Run("no answer is GatewayTimeout", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		_, err := th.svc.InvokeMethod(ctxT(t, 15*time.Second), dev.DeviceID, "", methods.Request{MethodName: "silent", Payload: json.RawMessage(`{}`), ResponseTimeoutInSeconds: ptr(5)})
		wantCode(t, err, errcode.GatewayTimeout)
		if el := time.Since(start); el < 4500*time.Millisecond || el > 8*time.Second {
			t.Errorf("timed out after %s, want about 5s", el)
		}
	})
}

// ================= 8. Plain topics =================

func TestPlainTopics(t *testing.T) {
	t.Parallel()
	sub := connectDevice(t, newDevice(t, "plain-sub"))
	pub := connectDevice(t, newDevice(t, "plain-pub"))
	sub.mustSubscribe(t, "factory/line1/temp")
	pub.publish(t, "factory/line1/temp", 1, []byte("21.5"))
	m := sub.next(t, "factory/", 5*time.Second)
	if m.Topic() != "factory/line1/temp" || string(m.Payload()) != "21.5" {
		t.Fatalf("got %q %q", m.Topic(), m.Payload())
	}
	// Plain wildcards below a first literal level are fine too.
	sub.mustSubscribe(t, "factory/+/pressure")
	pub.publish(t, "factory/line2/pressure", 0, []byte("1.2"))
	if m := sub.next(t, "factory/line2/", 5*time.Second); string(m.Payload()) != "1.2" {
		t.Fatalf("got %q", m.Payload())
	}
}

// ================= Wills =================

// A will is a publish the hub makes for the device later, so it must obey the
// same topic rules as the device's own publishes.
func TestWill(t *testing.T) {
	t.Parallel()
	victim := newDevice(t, "will-victim")
	v := connectDevice(t, victim)
	v.mustSubscribe(t, "devices/"+victim.DeviceID+"/messages/devicebound/#", "$iothub/methods/POST/#", "$iothub/twin/PATCH/properties/desired/#")

	for _, topic := range []string{
		"devices/" + victim.DeviceID + "/messages/devicebound/%24.mid=forged",
		"$iothub/methods/POST/reboot/?$rid=1",
		"$iothub/twin/PATCH/properties/desired/?$version=99",
	} {
		for _, version := range []byte{4, 5} {
			attacker := newDevice(t, "will-attacker")
			r := dialRaw(t)
			r.write(connectWillPacket(version, attacker.DeviceID, username(attacker.DeviceID), deviceToken(t, attacker, time.Hour), true, topic, []byte(`{"forged":true}`)))
			p := r.expect(2, 5*time.Second)
			if p.body[1] == 0 {
				r.conn.Close() // an abrupt end publishes the will
			} else if want := map[byte]byte{4: 5, 5: 0x87}[version]; p.body[1] != want {
				t.Errorf("will on %q (v%d): CONNACK 0x%02x, want 0x%02x or refusal", topic, version, p.body[1], want)
			}
		}
	}
	v.none(t, "", 500*time.Millisecond)

	t.Run("will on own events is telemetry", func(t *testing.T) {
		dev := newDevice(t, "will-own")
		mon := monitorEvents(t, dev.DeviceID)
		r := dialRaw(t)
		r.write(connectWillPacket(4, dev.DeviceID, username(dev.DeviceID), deviceToken(t, dev, time.Hour), true, "devices/"+dev.DeviceID+"/messages/events/kind=will", []byte(`"gone"`)))
		if p := r.expect(2, 5*time.Second); p.body[1] != 0 {
			t.Fatalf("CONNACK %d", p.body[1])
		}
		r.ping()
		r.conn.Close()
		rec := mon.next(t, 5*time.Second)
		if string(rec.Body) != `"gone"` || rec.Properties["kind"] != "will" || rec.DeviceID != dev.DeviceID {
			t.Fatalf("will telemetry %+v", rec)
		}
	})
	t.Run("will on a plain topic", func(t *testing.T) {
		sub := connectDevice(t, newDevice(t, "will-sub"))
		sub.mustSubscribe(t, "status/+")
		dev := newDevice(t, "will-plain")
		r := dialRaw(t)
		r.write(connectWillPacket(4, dev.DeviceID, username(dev.DeviceID), deviceToken(t, dev, time.Hour), true, "status/"+dev.DeviceID, []byte("offline")))
		if p := r.expect(2, 5*time.Second); p.body[1] != 0 {
			t.Fatalf("CONNACK %d", p.body[1])
		}
		r.ping()
		r.conn.Close()
		if m := sub.next(t, "status/", 5*time.Second); string(m.Payload()) != "offline" {
			t.Fatalf("will payload %q", m.Payload())
		}
	})
}
