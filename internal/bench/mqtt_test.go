package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func TestReadPacket(t *testing.T) {
	tests := []struct {
		name      string
		in        []byte
		typ       byte
		flags     byte
		body      []byte
		wantErr   error
		anyErr    bool
		remaining int // bytes left unread after the packet
	}{
		{name: "connack", in: []byte{0x20, 2, 0, 0}, typ: pktConnack, body: []byte{0, 0}},
		{name: "puback", in: []byte{0x40, 2, 0x12, 0x34}, typ: pktPuback, body: []byte{0x12, 0x34}},
		{name: "publish qos1 flags", in: []byte{0x32, 5, 0, 1, 'a', 0, 7}, typ: pktPublish, flags: 2, body: []byte{0, 1, 'a', 0, 7}},
		{name: "empty body then more", in: []byte{0xd0, 0, 0x20}, typ: pktPingresp, body: []byte{}, remaining: 1},
		{name: "two-byte length", in: append([]byte{0x30, 0x80, 0x01}, make([]byte, 128)...), typ: pktPublish, body: make([]byte, 128)},
		{name: "eof before header", in: nil, wantErr: io.EOF},
		{name: "eof in length", in: []byte{0x30, 0x80}, wantErr: io.ErrUnexpectedEOF},
		{name: "eof in body", in: []byte{0x30, 5, 1}, wantErr: io.ErrUnexpectedEOF},
		{name: "five length bytes", in: []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}, anyErr: true},
		{name: "too large", in: []byte{0x30, 0xff, 0xff, 0xff, 0x7f}, wantErr: errPacketTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := bufio.NewReader(bytes.NewReader(tc.in))
			typ, flags, body, err := readPacket(r, make([]byte, 16))
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			case tc.anyErr:
				if err == nil {
					t.Fatal("want an error")
				}
				return
			case err != nil:
				t.Fatalf("unexpected error %v", err)
			}
			if typ != tc.typ || flags != tc.flags || !bytes.Equal(body, tc.body) {
				t.Fatalf("got type %d flags %d body %x, want %d %d %x", typ, flags, body, tc.typ, tc.flags, tc.body)
			}
			if r.Buffered() != tc.remaining {
				t.Fatalf("%d bytes left, want %d", r.Buffered(), tc.remaining)
			}
		})
	}
}

func TestParsePublish(t *testing.T) {
	tests := []struct {
		name    string
		flags   byte
		body    []byte
		topic   string
		id      uint16
		payload string
		wantErr bool
	}{
		{name: "qos0", flags: 0, body: []byte{0, 2, 'a', 'b', 'x', 'y'}, topic: "ab", payload: "xy"},
		{name: "qos1", flags: 2, body: []byte{0, 1, 'a', 0x01, 0x02, 'p'}, topic: "a", id: 0x0102, payload: "p"},
		{name: "qos1 empty payload", flags: 2, body: []byte{0, 1, 'a', 0, 9}, topic: "a", id: 9},
		{name: "short", body: []byte{0}, wantErr: true},
		{name: "topic overruns", body: []byte{0, 5, 'a'}, wantErr: true},
		{name: "qos1 without id", flags: 2, body: []byte{0, 1, 'a', 1}, wantErr: true},
		{name: "qos3", flags: 6, body: []byte{0, 1, 'a', 0, 1}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			topic, id, payload, err := parsePublish(tc.flags, tc.body)
			if tc.wantErr {
				if err == nil {
					t.Fatal("want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(topic) != tc.topic || id != tc.id || string(payload) != tc.payload {
				t.Fatalf("got %q %d %q", topic, id, payload)
			}
		})
	}
}

func FuzzReadPacket(f *testing.F) {
	for _, s := range [][]byte{
		{0x20, 2, 0, 0},
		{0x32, 5, 0, 1, 'a', 0, 7},
		{0x30, 0x80, 0x01},
		{0x30, 0xff, 0xff, 0xff, 0x7f},
		{0x90, 3, 0, 1, 1},
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bufio.NewReader(bytes.NewReader(in))
		for range 8 {
			_, flags, body, err := readPacket(r, make([]byte, 8))
			if err != nil {
				return
			}
			if len(body) > maxPacket {
				t.Fatalf("body of %d bytes exceeds the limit", len(body))
			}
			topic, _, payload, err := parsePublish(flags, body)
			if err == nil && len(topic)+len(payload) > len(body) {
				t.Fatal("parsed more than the packet holds")
			}
		}
	})
}

// fakeBroker accepts one connection on loopback and answers CONNECT, PUBLISH
// (QoS 1) and SUBSCRIBE like a broker, then publishes back each payload it
// received at QoS 1 to the same client.
func fakeBroker(t *testing.T, code byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			typ, flags, body, err := readPacket(r, nil)
			if err != nil {
				return
			}
			switch typ {
			case pktConnect:
				c.Write([]byte{0x20, 2, 0, code})
			case pktSubscribe:
				c.Write([]byte{0x90, 3, body[0], body[1], 1})
			case pktPublish:
				topic, id, payload, err := parsePublish(flags, body)
				if err != nil {
					return
				}
				c.Write([]byte{0x40, 2, byte(id >> 8), byte(id)})
				echo := appendString(nil, string(topic))
				echo = append(echo, 0, 42)
				echo = append(echo, payload...)
				c.Write(append(appendLength([]byte{0x32}, len(echo)), echo...))
			case pktPuback, pktDisconnect:
			}
		}
	}()
	return ln.Addr().String()
}

func TestConnPublishAndReceive(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr := fakeBroker(t, 0)
	c, err := Dial(ctx, DialConfig{Addr: addr, ClientID: "d1", Username: "u", Password: "p", CleanSession: true}, 2)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 10)
	c.TimeAcks(10)
	done := c.Start(func(topic, payload []byte) { got <- string(topic) + "=" + string(payload) })
	if err := c.Subscribe(ctx, "t/#", 1); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"one", "two", "three"} {
		if err := c.Publish(ctx, "t/a", []byte(p), 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"t/a=one", "t/a=two", "t/a=three"} {
		select {
		case g := <-got:
			if g != want {
				t.Fatalf("received %q, want %q", g, want)
			}
		case <-ctx.Done():
			t.Fatal("timed out waiting for the echo")
		}
	}
	if c.Acked() != 3 || c.InFlight() != 0 {
		t.Fatalf("acked %d in flight %d, want 3 and 0", c.Acked(), c.InFlight())
	}
	if lat := c.AckLatencies(); len(lat) != 3 || lat[0] <= 0 || lat[2] <= 0 {
		t.Fatalf("PUBACK delays %v, want three positive ones", lat)
	}
	if err := c.Disconnect(); err != nil {
		t.Fatal(err)
	}
	<-done
}

func TestDialRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Dial(ctx, DialConfig{Addr: fakeBroker(t, 5), ClientID: "d1"}, 0)
	var ce *ConnackError
	if !errors.As(err, &ce) || ce.Code != 5 {
		t.Fatalf("err = %v, want CONNACK code 5", err)
	}
}
