package mqttframe

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

type packetCase struct {
	name    string
	level   byte   // protocol level of the CONNECT sent first
	pkt     []byte // sent after the CONNECT
	wantErr string // "" if valid
}

var (
	// The two frames that crash mochi-mqtt 2.7.9 (dependencies.md).
	crashEmptyFilter = raw(0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00)
	crashNoOptions   = raw(0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61)
)

var packetCases = []packetCase{
	// MQTT 3.1.1 and 3.1: valid.
	{"v4 subscribe", 4, frame(0x82, u16(1), str("devices/d1/messages/devicebound/#"), raw(1)), ""},
	{"v4 subscribe two filters", 4, frame(0x82, u16(2), str("a"), raw(0), str("b/+"), raw(2)), ""},
	{"v3.1 subscribe", 3, frame(0x82, u16(1), str("a/#"), raw(1)), ""},
	{"v4 unsubscribe", 4, frame(0xa2, u16(3), str("a"), str("b")), ""},
	{"v4 publish qos0", 4, frame(0x30, str("devices/d1/messages/events/a=b"), []byte("payload")), ""},
	{"v4 publish qos0 empty payload", 4, frame(0x30, str("t")), ""},
	{"v4 publish qos1", 4, frame(0x32, str("t"), u16(7), []byte("{}")), ""},
	{"v4 publish qos2 dup retain", 4, frame(0x3d, str("t"), u16(7), []byte("x")), ""},
	{"v4 puback", 4, frame(0x40, u16(1)), ""},
	{"v4 pubrec", 4, frame(0x50, u16(1)), ""},
	{"v4 pubrel", 4, frame(0x62, u16(1)), ""},
	{"v4 pubcomp", 4, frame(0x70, u16(1)), ""},
	{"v4 pingreq", 4, frame(0xc0), ""},
	{"v4 disconnect", 4, frame(0xe0), ""},

	// MQTT 3.1.1: invalid.
	{"v4 subscribe empty filter", 4, frame(0x82, u16(1), str(""), raw(1)), "topic filter 1 is empty"},
	{"v4 crash frame 2", 4, crashNoOptions, "topic filter 1 is empty"},
	{"v4 subscribe no options byte", 4, frame(0x82, u16(1), str("a")), "topic filter 1 has no options byte"},
	{"v4 subscribe second filter no options", 4, frame(0x82, u16(1), str("a"), raw(1), str("b")), "topic filter 2 has no options byte"},
	{"v4 subscribe no filters", 4, frame(0x82, u16(1)), "no topic filters"},
	{"v4 subscribe no packet id", 4, frame(0x82, raw(0)), "no packet identifier"},
	{"v4 subscribe filter past end", 4, frame(0x82, u16(1), u16(10), []byte("abc")), "topic filter 1 out of bounds"},
	{"v4 subscribe qos 3", 4, frame(0x82, u16(1), str("a"), raw(3)), "QoS 3"},
	{"v4 subscribe v5 options", 4, frame(0x82, u16(1), str("a"), raw(0x05)), "reserved bits"},
	{"v4 subscribe flags", 4, frame(0x80, u16(1), str("a"), raw(1)), "flags 0x0, want 0x2"},
	{"v4 unsubscribe flags", 4, frame(0xa0, u16(1), str("a")), "flags"},
	{"v4 unsubscribe no filters", 4, frame(0xa2, u16(1)), "no topic filters"},
	{"v4 unsubscribe empty filter", 4, frame(0xa2, u16(1), str("")), "empty"},
	{"v4 unsubscribe filter past end", 4, frame(0xa2, u16(1), raw(0, 5, 'a')), "out of bounds"},
	{"v4 publish qos3", 4, frame(0x36, str("t"), u16(1)), "QoS 3"},
	{"v4 publish topic past end", 4, frame(0x30, raw(0, 9, 'a')), "topic out of bounds"},
	{"v4 publish no topic length", 4, frame(0x30, raw(0)), "topic out of bounds"},
	{"v4 publish qos1 no packet id", 4, frame(0x32, str("t"), raw(1)), "no packet identifier"},
	{"v4 puback long", 4, frame(0x40, u16(1), raw(0)), "1 bytes after the end"},
	{"v4 puback short", 4, frame(0x40, raw(1)), "no packet identifier"},
	{"v4 pubrel flags", 4, frame(0x60, u16(1)), "flags"},
	{"v4 puback flags", 4, frame(0x42, u16(1)), "flags"},
	{"v4 pingreq body", 4, frame(0xc0, raw(0)), "after the end"},
	{"v4 disconnect body", 4, frame(0xe0, raw(0)), "after the end"},
	{"v4 auth", 4, frame(0xf0), "AUTH before MQTT 5"},
	{"connack from client", 4, frame(0x20, raw(0, 0)), "server packet"},
	{"suback from client", 4, frame(0x90, u16(1), raw(0)), "server packet"},
	{"pingresp from client", 4, frame(0xd0), "server packet"},
	{"type 0", 4, frame(0x00), "reserved packet type 0"},
	{"second connect", 4, connect(4), "second CONNECT"},
	{"remaining length 5 bytes", 4, raw(0x30, 0xff, 0xff, 0xff, 0xff, 0x7f), "longer than 4 bytes"},

	// MQTT 5: valid.
	{"v5 subscribe", 5, frame(0x82, u16(1), props(), str("$iothub/methods/POST/#"), raw(0)), ""},
	{"v5 subscribe with props and options", 5, frame(0x82, u16(1),
		props(raw(0x0b), varint(300), raw(0x26), str("k"), str("v")), str("a/#"), raw(0x2d)), ""},
	{"v5 unsubscribe", 5, frame(0xa2, u16(1), props(raw(0x26), str("k"), str("v")), str("a")), ""},
	{"v5 publish", 5, frame(0x32, str("devices/d1/messages/events/"), u16(9), props(
		raw(0x01, 1), raw(0x02, 0, 0, 0, 60), raw(0x03), str("application/json"), raw(0x08), str("resp"),
		raw(0x09), str("corr"), raw(0x23), u16(1), raw(0x26), str("k"), str("v")), []byte(`{"a":1}`)), ""},
	{"v5 publish empty props", 5, frame(0x30, str("t"), props()), ""},
	{"v5 puback pid only", 5, frame(0x40, u16(1)), ""},
	{"v5 puback reason", 5, frame(0x40, u16(1), raw(0x10)), ""},
	{"v5 puback reason props", 5, frame(0x40, u16(1), raw(0x10), props(raw(0x1f), str("why"))), ""},
	{"v5 pubrel reason", 5, frame(0x62, u16(1), raw(0x92), props()), ""},
	{"v5 disconnect", 5, frame(0xe0), ""},
	{"v5 disconnect reason", 5, frame(0xe0, raw(0x04)), ""},
	{"v5 disconnect reason props", 5, frame(0xe0, raw(0), props(raw(0x11, 0, 0, 0, 0))), ""},
	{"v5 auth", 5, frame(0xf0, raw(0x18), props(raw(0x15), str("SCRAM"), raw(0x16), str("data"))), ""},
	{"v5 auth empty", 5, frame(0xf0), ""},

	// MQTT 5: invalid.
	{"v5 crash frame 1", 5, crashEmptyFilter, "topic filter 1 is empty"},
	{"v5 crash frame 2", 5, crashNoOptions, "topic filter 1 has no options byte"},
	{"v5 subscribe no props", 5, frame(0x82, u16(1)), "property length"},
	{"v5 subscribe props past end", 5, frame(0x82, u16(1), raw(5, 0)), "property length 5 exceeds"},
	{"v5 subscribe props varint past end", 5, frame(0x82, u16(1), raw(0x80)), "property length malformed"},
	{"v5 subscribe unknown prop", 5, frame(0x82, u16(1), props(raw(0x7f, 0)), str("a"), raw(0)), "unknown property 0x7f"},
	{"v5 subscribe prop past its length", 5, frame(0x82, u16(1), raw(2, 0x26, 0), str("a"), raw(0)), "property 0x26 out of bounds"},
	{"v5 subscribe user prop no value", 5, frame(0x82, u16(1), props(raw(0x26), str("k")), str("a"), raw(0)), "property 0x26 out of bounds"},
	{"v5 subscribe sub id varint too long", 5, frame(0x82, u16(1), props(raw(0x0b, 0xff, 0xff, 0xff, 0xff)), str("a"), raw(0)), "out of bounds"},
	{"v5 subscribe retain handling 3", 5, frame(0x82, u16(1), props(), str("a"), raw(0x30)), "invalid options 0x30"},
	{"v5 subscribe reserved option bits", 5, frame(0x82, u16(1), props(), str("a"), raw(0x40)), "invalid options"},
	{"v5 subscribe no filters", 5, frame(0x82, u16(1), props()), "no topic filters"},
	{"v5 unsubscribe options byte", 5, frame(0xa2, u16(1), props(), str("a"), raw(0)), "topic filter 2 out of bounds"},
	{"v5 publish props past end", 5, frame(0x30, str("t"), raw(9, 1)), "exceeds"},
	{"v5 publish no props", 5, frame(0x30, str("t")), "property length"},
	{"v5 publish string prop past end", 5, frame(0x30, str("t"), props(raw(0x03, 0, 9, 'a'))), "property 0x3 out of bounds"},
	{"v5 puback bad props", 5, frame(0x40, u16(1), raw(0), raw(3, 0x1f, 0, 5)), "out of bounds"},
	{"v5 disconnect props past end", 5, frame(0xe0, raw(0, 4, 0x11)), "exceeds"},
	{"v5 auth bad prop", 5, frame(0xf0, raw(0x18), props(raw(0x00))), "unknown property 0x0"},
}

func TestPackets(t *testing.T) {
	for _, tc := range packetCases {
		t.Run(tc.name, func(t *testing.T) {
			next := frame(0xc0) // a valid packet after the one under test
			stream := cat(connect(tc.level), tc.pkt, next)
			var rejects []error
			g := Guard(&chunkConn{data: stream, chunk: len(stream)}, Options{OnReject: func(err error) { rejects = append(rejects, err) }})
			out, err := readAll(g, 4096)
			if tc.wantErr == "" {
				if err != io.EOF {
					t.Fatalf("valid packet % x rejected: %v", tc.pkt, err)
				}
				if !bytes.Equal(out, stream) {
					t.Fatalf("handed out % x, want % x", out, stream)
				}
				if len(rejects) != 0 {
					t.Fatalf("OnReject called for a valid stream: %v", rejects)
				}
				checkMochiDecodes(t, tc.level, out)
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("err %v does not wrap ErrMalformed", err)
			}
			if !bytes.Equal(out, connect(tc.level)) {
				t.Errorf("handed out % x, want only the CONNECT", out)
			}
			if len(rejects) != 1 || rejects[0] != err {
				t.Errorf("OnReject calls = %v, want exactly [%v]", rejects, err)
			}
			// The error is sticky.
			if _, err2 := g.Read(make([]byte, 10)); err2 != err {
				t.Errorf("second Read err = %v, want %v", err2, err)
			}
			if len(rejects) != 1 {
				t.Errorf("OnReject called %d times", len(rejects))
			}
		})
	}
}

func TestConnect(t *testing.T) {
	v5will := frame(0x10, str("MQTT"), raw(5, 0xee), u16(30),
		props(raw(0x11, 0, 0, 0, 10), raw(0x21), u16(10), raw(0x27, 0, 1, 0, 0), raw(0x22), u16(5), raw(0x17, 1), raw(0x19, 0)),
		str("client"), props(raw(0x18, 0, 0, 0, 5), raw(0x01, 1)), str("will/topic"), str("bye"), str("user"), str("pass"))
	tests := []struct {
		name    string
		pkt     []byte
		wantErr string
	}{
		{"v3.1.1 minimal", connect(4), ""},
		{"v3.1", connect(3), ""},
		{"v5 minimal", connect(5), ""},
		{"v5 everything", v5will, ""},
		{"v4 will user pass (IoT Hub SAS)", frame(0x10, str("MQTT"), raw(4, 0xc6|0x08), u16(180), str("d1"), str("devices/d1/messages/events/"), str("gone"),
			str("hub/d1/?api-version=2021-04-12"), str("SharedAccessSignature sr=hub%2Fdevices%2Fd1&sig=x&se=1")), ""},
		{"v4 empty client id", frame(0x10, str("MQTT"), raw(4, 2), u16(0), str("")), ""},
		{"bad protocol name", frame(0x10, str("MQTX"), raw(4, 2), u16(0), str("c")), `unsupported protocol "MQTX" level 4`},
		{"MQTT level 3", frame(0x10, str("MQTT"), raw(3, 2), u16(0), str("c")), "unsupported protocol"},
		{"MQIsdp level 4", frame(0x10, str("MQIsdp"), raw(4, 2), u16(0), str("c")), "unsupported protocol"},
		{"level 6", frame(0x10, str("MQTT"), raw(6, 2), u16(0), str("c")), "level 6"},
		{"name past end", frame(0x10, raw(0, 10), []byte("MQTT")), "protocol name out of bounds"},
		{"no level", frame(0x10, str("MQTT")), "no protocol level"},
		{"no flags", frame(0x10, str("MQTT"), raw(4)), "no connect flags"},
		{"no keepalive", frame(0x10, str("MQTT"), raw(4, 2, 0)), "no keep alive"},
		{"reserved flag", frame(0x10, str("MQTT"), raw(4, 3), u16(0), str("c")), "reserved connect flag"},
		{"will qos 3", frame(0x10, str("MQTT"), raw(4, 0x1e), u16(0), str("c"), str("t"), str("p")), "will QoS 3"},
		{"will retain without will", frame(0x10, str("MQTT"), raw(4, 0x22), u16(0), str("c")), "without will flag"},
		{"will qos without will", frame(0x10, str("MQTT"), raw(4, 0x0a), u16(0), str("c")), "without will flag"},
		{"no client id", frame(0x10, str("MQTT"), raw(4, 2), u16(0)), "client identifier out of bounds"},
		{"will topic missing", frame(0x10, str("MQTT"), raw(4, 6), u16(0), str("c")), "will topic out of bounds"},
		{"will payload missing", frame(0x10, str("MQTT"), raw(4, 6), u16(0), str("c"), str("t")), "will payload out of bounds"},
		{"username missing", frame(0x10, str("MQTT"), raw(4, 0x82), u16(0), str("c")), "user name out of bounds"},
		{"password past end", frame(0x10, str("MQTT"), raw(4, 0xc2), u16(0), str("c"), str("u"), raw(0, 3, 'p')), "password out of bounds"},
		{"trailing bytes", frame(0x10, str("MQTT"), raw(4, 2), u16(0), str("c"), raw(0)), "1 bytes after the end"},
		{"v5 props past end", frame(0x10, str("MQTT"), raw(5, 2), u16(0), raw(20), str("c")), "exceeds"},
		{"v5 no props", frame(0x10, str("MQTT"), raw(5, 2), u16(0)), "property length"},
		{"v5 will props past end", frame(0x10, str("MQTT"), raw(5, 6), u16(0), props(), str("c"), raw(30)), "will property length"},
		{"connect flags in header", cat([]byte{0x11}, connect(4)[1:]), "flags 0x1, want 0x0"},
		{"first packet publish", frame(0x30, str("t")), "first packet is PUBLISH, not CONNECT"},
		{"first packet subscribe (crash frame)", crashNoOptions, "first packet is SUBSCRIBE"},
		{"first packet pingreq", frame(0xc0), "first packet is PINGREQ"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rejects := 0
			g := Guard(&chunkConn{data: tt.pkt, chunk: 1}, Options{OnReject: func(error) { rejects++ }})
			out, err := readAll(g, 3)
			if tt.wantErr == "" {
				if err != io.EOF || !bytes.Equal(out, tt.pkt) || rejects != 0 {
					t.Fatalf("valid CONNECT: out % x, err %v, rejects %d", out, err, rejects)
				}
				checkMochiDecodes(t, 0, out)
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
			if len(out) != 0 || rejects != 1 {
				t.Fatalf("handed out % x and rejected %d times", out, rejects)
			}
		})
	}
}

func TestTooLarge(t *testing.T) {
	big := frame(0x30, str("t"), make([]byte, 200))
	var got error
	g := Guard(&chunkConn{data: cat(connect(4), frame(0xc0), big), chunk: 1 << 20}, Options{MaxPacketSize: 200, OnReject: func(err error) { got = err }})
	out, err := readAll(g, 1024)
	if !errors.Is(err, ErrTooLarge) || got != err {
		t.Fatalf("err = %v (OnReject %v), want ErrTooLarge", err, got)
	}
	if !bytes.Equal(out, cat(connect(4), frame(0xc0))) {
		t.Errorf("handed out % x", out)
	}
	if !strings.Contains(err.Error(), "PUBLISH of 206 bytes exceeds the limit of 200") {
		t.Errorf("err = %v", err)
	}
	// Refused from the header alone, without waiting for the body (else
	// this stream would end in EOF).
	g2 := Guard(&chunkConn{data: cat(connect(4), raw(0x30, 0xff, 0xff, 0xff, 0x7f)), chunk: 1 << 20}, Options{})
	if _, err := readAll(g2, 1024); !errors.Is(err, ErrTooLarge) {
		t.Errorf("256 MiB header: err = %v", err)
	}

	// The default admits a 256 KiB telemetry message with its topic.
	msg := frame(0x32, str("devices/d1/messages/events/%24.ct=application%2Fjson"), u16(1), make([]byte, 256*1024))
	g = Guard(&chunkConn{data: cat(connect(4), msg), chunk: 1500}, Options{})
	if out, err := readAll(g, 2048); err != io.EOF || len(out) != len(connect(4))+len(msg) {
		t.Fatalf("256 KiB message: %d bytes, err %v", len(out), err)
	}
}

// Whatever the segmentation of the socket and the size of the broker's
// reads, the guard hands out exactly the input, in order.
func TestSegmentation(t *testing.T) {
	var stream []byte
	stream = append(stream, connect(5)...)
	for i := range 300 {
		stream = append(stream, frame(0x32, str(fmt.Sprintf("devices/d%d/messages/events/", i)), u16(i+1), props(), bytes.Repeat([]byte{byte(i)}, i*7))...)
		if i%50 == 0 {
			stream = append(stream, frame(0x30, str("big"), props(), bytes.Repeat([]byte{'x'}, 20000+i))...)
			stream = append(stream, frame(0x82, u16(i+1), props(), str("a/#"), raw(1))...)
		}
	}
	stream = append(stream, frame(0xe0)...)
	for _, chunk := range []int{1, 2, 5, 7, 100, 1460, 8192, 8193, 65536, len(stream)} {
		for _, bufSize := range []int{1, 3, 2048, 4096, 100000} {
			if chunk == 1 && bufSize == 1 {
				continue // slow, and covered by its neighbours
			}
			g := Guard(&chunkConn{data: stream, chunk: chunk}, Options{})
			out, err := readAll(g, bufSize)
			if err != io.EOF {
				t.Fatalf("chunk %d buf %d: err %v", chunk, bufSize, err)
			}
			if !bytes.Equal(out, stream) {
				t.Fatalf("chunk %d buf %d: output differs from input (%d vs %d bytes)", chunk, bufSize, len(out), len(stream))
			}
		}
	}
}

// A read deadline expiring mid-packet is passed on but does not lose state:
// the broker may read again.
func TestTimeoutIsNotFatal(t *testing.T) {
	pub := frame(0x32, str("t"), u16(1), []byte("hello"))
	stream := cat(connect(4), pub)
	cut := len(connect(4)) + 4
	g := Guard(&chunkConn{data: stream, chunk: 3, errAt: cut, errOnce: timeoutErr{}}, Options{})
	var out []byte
	p := make([]byte, 64)
	sawTimeout := false
	for {
		n, err := g.Read(p)
		out = append(out, p[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("err = %v", err)
			}
			sawTimeout = true
		}
	}
	if !sawTimeout {
		t.Error("timeout not passed on")
	}
	if !bytes.Equal(out, stream) {
		t.Errorf("out % x, want % x", out, stream)
	}
}

// EOF in the middle of a packet: the complete packets before it come out,
// the partial one never does.
func TestEOFMidPacket(t *testing.T) {
	pub := frame(0x32, str("t"), u16(1), []byte("hello"))
	stream := cat(connect(4), pub, pub[:5])
	out, err := readAll(Guard(&chunkConn{data: stream, chunk: 1000}, Options{}), 1000)
	if err != io.EOF || !bytes.Equal(out, cat(connect(4), pub)) {
		t.Fatalf("out % x err %v", out, err)
	}
}

func TestUnwrapAndDelegation(t *testing.T) {
	inner := &chunkConn{}
	g := Guard(inner, Options{})
	if Unwrap(g) != net.Conn(inner) {
		t.Error("Unwrap(guarded) is not the inner conn")
	}
	if u, ok := g.(interface{ Unwrap() net.Conn }); !ok || u.Unwrap() != net.Conn(inner) {
		t.Error("guard has no Unwrap method returning the inner conn")
	}
	if Unwrap(inner) != net.Conn(inner) {
		t.Error("Unwrap(unguarded) changed the conn")
	}
	if g.RemoteAddr().String() != "127.0.0.1:50000" {
		t.Errorf("RemoteAddr = %v", g.RemoteAddr())
	}
	if n, err := g.Write([]byte("abc")); n != 3 || err != nil {
		t.Errorf("Write = %d, %v", n, err)
	}
	_ = g.Close()
	if !inner.closed {
		t.Error("Close not delegated")
	}
	if n, err := g.Read(nil); n != 0 || err != nil {
		t.Errorf("Read(nil) = %d, %v", n, err)
	}
}

// An inner conn that returns (0, nil) forever must not hang the reader.
type stuckConn struct{ chunkConn }

func (*stuckConn) Read([]byte) (int, error) { return 0, nil }

func TestNoProgress(t *testing.T) {
	if _, err := Guard(&stuckConn{}, Options{}).Read(make([]byte, 10)); err != io.ErrNoProgress {
		t.Fatalf("err = %v, want io.ErrNoProgress", err)
	}
}

// checkMochiDecodes runs mochi's own decoders over every packet in stream,
// as its Client.ReadPacket does: whatever the guard lets through must not
// make them panic. level 0 takes the level from the CONNECT.
func checkMochiDecodes(t testing.TB, level byte, stream []byte) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(stream))
	for {
		b0, err := br.ReadByte()
		if err != nil {
			return
		}
		var pk packets.Packet
		if err := pk.FixedHeader.Decode(b0); err != nil {
			return // mochi refuses it cleanly (e.g. DUP on QoS 0) and closes
		}
		rem, _, err := packets.DecodeLength(br)
		if err != nil {
			t.Fatalf("mochi cannot read the length the guard accepted: %v", err)
		}
		pk.FixedHeader.Remaining = rem
		pk.ProtocolVersion = level
		body := make([]byte, rem)
		if _, err := io.ReadFull(br, body); err != nil {
			t.Fatalf("short packet after guard: %v", err)
		}
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("mochi panics on a packet the guard accepted (type %d, level %d, body % x): %v", b0>>4, level, body, r)
				}
			}()
			switch pk.FixedHeader.Type {
			case packets.Connect:
				_ = pk.ConnectDecode(body)
				level = pk.ProtocolVersion
			case packets.Disconnect:
				_ = pk.DisconnectDecode(body)
			case packets.Publish:
				_ = pk.PublishDecode(body)
			case packets.Puback:
				_ = pk.PubackDecode(body)
			case packets.Pubrec:
				_ = pk.PubrecDecode(body)
			case packets.Pubrel:
				_ = pk.PubrelDecode(body)
			case packets.Pubcomp:
				_ = pk.PubcompDecode(body)
			case packets.Subscribe:
				_ = pk.SubscribeDecode(body)
			case packets.Unsubscribe:
				_ = pk.UnsubscribeDecode(body)
			case packets.Auth:
				_ = pk.AuthDecode(body)
			}
		}()
	}
}

// The crash frames really do crash mochi's decoder without the guard; this
// keeps the regression tests honest if mochi is upgraded (then this test
// fails, and the guard may be relaxed).
func TestMochiStillCrashesWithoutGuard(t *testing.T) {
	for _, f := range [][]byte{crashEmptyFilter, crashNoOptions} {
		var pk packets.Packet
		pk.ProtocolVersion = 5
		pk.FixedHeader.Type = packets.Subscribe
		panicked := func() (p bool) {
			defer func() { p = recover() != nil }()
			_ = pk.SubscribeDecode(f[2:])
			return false
		}()
		if !panicked {
			t.Errorf("mochi no longer panics on % x; revisit the guard", f)
		}
	}
}

func FuzzGuard(f *testing.F) {
	for _, tc := range packetCases {
		f.Add(tc.level, tc.pkt, uint16(4096))
	}
	f.Add(byte(5), cat(crashEmptyFilter, crashNoOptions), uint16(1))
	f.Add(byte(4), frame(0x30, str("t"), []byte("x")), uint16(3))
	f.Fuzz(func(t *testing.T, level byte, data []byte, chunk uint16) {
		level = 3 + level%3
		stream := cat(connect(level), data)
		rejects := 0
		g := Guard(&chunkConn{data: stream, chunk: int(chunk%4096) + 1}, Options{MaxPacketSize: 1 << 16, OnReject: func(error) { rejects++ }})
		out, err := readAll(g, 1024)
		if !bytes.HasPrefix(stream, out) {
			t.Fatal("guard handed out bytes that were not sent")
		}
		if err != io.EOF && (!errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) || rejects != 1) {
			t.Fatalf("err = %v, rejects %d", err, rejects)
		}
		checkMochiDecodes(t, level, out)
	})
}

// TestIdleConnectionHoldsNoPoolBuffer: after an IoT Hub CONNECT of under 256
// bytes (SAS credentials), a connection waiting for its next packet waits on
// its own small buffer, not an 8 KiB pool buffer: ten thousand idle devices
// would otherwise pin 80 MiB.
func TestIdleConnectionHoldsNoPoolBuffer(t *testing.T) {
	for _, size := range []int{140, 200, 255} {
		id := strings.Repeat("d", 8)
		user := "hub/" + id + "/?api-version=2021-04-12"
		build := func(pass string) []byte {
			return frame(0x10, str("MQTT"), raw(4, 0xc2), u16(180), str(id), str(user), str(pass))
		}
		pass := "SharedAccessSignature sr=hub%2Fdevices%2F" + id + "&sig=x&se=1"
		pad := size - len(build(pass))
		pkt := build(pass + strings.Repeat("y", pad))
		if len(pkt) > size { // the remaining length took another byte
			pkt = build(pass + strings.Repeat("y", pad-(len(pkt)-size)))
		}
		if len(pkt) != size {
			t.Fatalf("built a %d-byte CONNECT, want %d", len(pkt), size)
		}
		client, server := net.Pipe()
		sizes := make(chan int, 4)
		g := Guard(&readSizes{Conn: server, sizes: sizes}, Options{})
		go func() { _, _ = client.Write(pkt) }()
		if _, err := io.ReadFull(g, make([]byte, len(pkt))); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = g.Read(make([]byte, 16)) // waits for the next packet
		}()
		var last int
		for waiting := false; !waiting; {
			select {
			case last = <-sizes:
			case <-time.After(200 * time.Millisecond):
				waiting = true // no new read: the guard is blocked in the last one
			}
		}
		if last > idleBufSize {
			t.Errorf("%d-byte CONNECT: the idle connection waits on a %d-byte buffer, want at most %d", size, last, idleBufSize)
		}
		client.Close()
		<-done
	}
}

// readSizes reports the size of every Read's buffer.
type readSizes struct {
	net.Conn
	sizes chan<- int
}

func (r *readSizes) Read(p []byte) (int, error) {
	r.sizes <- len(p)
	return r.Conn.Read(p)
}
