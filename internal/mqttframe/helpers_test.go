package mqttframe

import (
	"bytes"
	"io"
	"net"
	"time"
)

// Packet builders for tests.

func frame(b0 byte, parts ...[]byte) []byte {
	body := bytes.Join(parts, nil)
	out := []byte{b0}
	out = append(out, varint(len(body))...)
	return append(out, body...)
}

func varint(n int) []byte {
	var out []byte
	for {
		c := byte(n % 128)
		n /= 128
		if n > 0 {
			c |= 0x80
		}
		out = append(out, c)
		if n == 0 {
			return out
		}
	}
}

func str(s string) []byte {
	return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...)
}

func u16(v int) []byte { return []byte{byte(v >> 8), byte(v)} }

func raw(b ...byte) []byte { return b }

// props wraps encoded properties with their length.
func props(p ...[]byte) []byte {
	body := bytes.Join(p, nil)
	return append(varint(len(body)), body...)
}

func connect(level byte) []byte {
	name := "MQTT"
	if level == 3 {
		name = "MQIsdp"
	}
	parts := [][]byte{str(name), raw(level, 0x02), u16(60)}
	if level == 5 {
		parts = append(parts, props())
	}
	parts = append(parts, str("client-1"))
	return frame(0x10, parts...)
}

func cat(pkts ...[]byte) []byte { return bytes.Join(pkts, nil) }

// chunkConn is a net.Conn whose Read returns the stream at most chunk bytes
// at a time (the inner socket's segmentation), then io.EOF.
type chunkConn struct {
	data  []byte
	chunk int
	// errAt, if > 0, makes Read return errOnce once when this many bytes
	// have been read.
	errAt   int
	errOnce error
	pos     int
	closed  bool
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if c.errOnce != nil && c.pos == c.errAt {
		err := c.errOnce
		c.errOnce = nil
		return 0, err
	}
	if c.pos >= len(c.data) {
		return 0, io.EOF
	}
	n := min(len(p), c.chunk, len(c.data)-c.pos)
	if c.errOnce != nil && c.pos < c.errAt {
		n = min(n, c.errAt-c.pos)
	}
	copy(p, c.data[c.pos:c.pos+n])
	c.pos += n
	return n, nil
}

func (c *chunkConn) Write(p []byte) (int, error) { return len(p), nil }
func (c *chunkConn) Close() error                { c.closed = true; return nil }
func (c *chunkConn) LocalAddr() net.Addr         { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8883} }
func (c *chunkConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000}
}
func (c *chunkConn) SetDeadline(t time.Time) error      { return nil }
func (c *chunkConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *chunkConn) SetWriteDeadline(t time.Time) error { return nil }

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// readAll reads g with buffers of size bufSize until an error, and returns
// what was handed out and the error.
func readAll(g net.Conn, bufSize int) ([]byte, error) {
	var out []byte
	p := make([]byte, bufSize)
	for {
		n, err := g.Read(p)
		out = append(out, p[:n]...)
		if err != nil {
			return out, err
		}
	}
}
