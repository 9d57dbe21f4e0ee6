package mqttframe

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// guardListener is a mochi listener that puts Guard between each accepted
// connection and the broker, as the hub's listeners do.
type guardListener struct {
	ln   net.Listener
	opts Options
	wg   sync.WaitGroup // accept loop and establish goroutines
}

func (l *guardListener) Init(*slog.Logger) error { return nil }
func (l *guardListener) ID() string              { return "guarded" }
func (l *guardListener) Address() string         { return l.ln.Addr().String() }
func (l *guardListener) Protocol() string        { return "tcp" }

func (l *guardListener) Serve(establish listeners.EstablishFn) {
	l.wg.Add(1)
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			_ = establish(l.ID(), Guard(c, l.opts))
		}()
	}
}

func (l *guardListener) Close(closeClients listeners.CloseFn) {
	_ = l.ln.Close()
	closeClients(l.ID())
}

// TestMochiSurvivesCrashFrames runs a real mochi-mqtt 2.7.9 broker behind the
// guard and sends the frames that, unguarded, panic in mochi's SUBSCRIBE
// decoder on the connection's goroutine and so kill the whole process (this
// test binary included: nothing in mochi recovers). With the guard the
// offending connection is closed and the broker keeps serving.
func TestMochiSurvivesCrashFrames(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rejected := make(chan error, 10)
	gl := &guardListener{ln: ln, opts: Options{OnReject: func(err error) { rejected <- err }}}

	srv := mqtt.New(&mqtt.Options{InlineClient: false, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(gl); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = srv.Close()
		gl.wg.Wait()
	})

	for _, crash := range [][]byte{crashEmptyFilter, crashNoOptions} {
		c := dialConnect(t, ln.Addr().String(), "attacker")
		if _, err := c.Write(crash); err != nil {
			t.Fatal(err)
		}
		// The broker must close the connection (no SUBACK, no panic).
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if typ, _, err := readPacket(c); err == nil {
			t.Fatalf("broker answered packet type %d to % x", typ, crash)
		} else if errors.Is(err, errDeadline) {
			t.Fatalf("broker did not close the connection after % x", crash)
		}
		_ = c.Close()
		select {
		case err := <-rejected:
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("rejected with %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("OnReject not called")
		}
	}

	// Still serving: a new client subscribes and receives its own publish.
	c := dialConnect(t, ln.Addr().String(), "honest")
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	mustWrite(t, c, frame(0x82, u16(1), props(), str("devices/d1/#"), raw(0)))
	if typ, body, err := readPacket(c); err != nil || typ != 9 || !bytes.Equal(body, []byte{0, 1, 0, 0}) {
		t.Fatalf("SUBACK: type %d body % x err %v", typ, body, err)
	}
	mustWrite(t, c, frame(0x30, str("devices/d1/messages/events/"), props(), []byte("still alive")))
	typ, body, err := readPacket(c)
	if err != nil || typ != 3 || !bytes.HasSuffix(body, []byte("still alive")) {
		t.Fatalf("PUBLISH: type %d body %q err %v", typ, body, err)
	}
}

var errDeadline = errors.New("deadline")

// dialConnect opens a raw MQTT 5 connection and completes CONNECT/CONNACK.
func dialConnect(t *testing.T, addr, clientID string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	mustWrite(t, c, frame(0x10, str("MQTT"), raw(5, 0x02), u16(60), props(), str(clientID)))
	typ, body, err := readPacket(c)
	if err != nil || typ != 2 || len(body) < 2 || body[1] != 0 {
		t.Fatalf("CONNACK: type %d body % x err %v", typ, body, err)
	}
	return c
}

func mustWrite(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

// readPacket reads one MQTT packet: its type and body.
func readPacket(c net.Conn) (byte, []byte, error) {
	var hdr [1]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return 0, nil, deadlineErr(err)
	}
	rem, mult := 0, 0
	for i := 0; i < 4; i++ {
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return 0, nil, deadlineErr(err)
		}
		rem |= int(b[0]&0x7f) << mult
		if b[0]&0x80 == 0 {
			break
		}
		mult += 7
	}
	body := make([]byte, rem)
	if _, err := io.ReadFull(c, body); err != nil {
		return 0, nil, deadlineErr(err)
	}
	return hdr[0] >> 4, body, nil
}

func deadlineErr(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errDeadline
	}
	return err
}
