package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// MQTT 3.1.1 packet types the client speaks.
const (
	pktConnect    = 1
	pktConnack    = 2
	pktPublish    = 3
	pktPuback     = 4
	pktSubscribe  = 8
	pktSuback     = 9
	pktPingreq    = 12
	pktPingresp   = 13
	pktDisconnect = 14
)

// maxPacket bounds what the client reads: a 256 KiB IoT Hub message with a
// long topic fits; anything larger is a broken peer.
const maxPacket = 512 * 1024

var errPacketTooLarge = errors.New("mqtt: packet larger than the client accepts")

// readPacket reads one MQTT control packet: its type, the fixed header's low
// four bits and the rest of the packet (which aliases buf when it fits).
func readPacket(r *bufio.Reader, buf []byte) (typ, flags byte, body []byte, err error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, 0, nil, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return 0, 0, nil, errors.New("mqtt: malformed remaining length")
		}
		b, err := r.ReadByte()
		if err != nil {
			return 0, 0, nil, unexpectedEOF(err)
		}
		n += int(b&0x7f) * mult
		if b&0x80 == 0 {
			break
		}
		mult *= 128
	}
	if n > maxPacket {
		return 0, 0, nil, errPacketTooLarge
	}
	if cap(buf) >= n {
		body = buf[:n]
	} else {
		body = make([]byte, n)
	}
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, 0, nil, unexpectedEOF(err)
	}
	return h >> 4, h & 0x0f, body, nil
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parsePublish splits a PUBLISH body into topic, packet id (0 for QoS 0) and
// payload.
func parsePublish(flags byte, body []byte) (topic []byte, id uint16, payload []byte, err error) {
	if len(body) < 2 {
		return nil, 0, nil, errors.New("mqtt: short PUBLISH")
	}
	tl := int(binary.BigEndian.Uint16(body))
	if len(body) < 2+tl {
		return nil, 0, nil, errors.New("mqtt: PUBLISH topic overruns packet")
	}
	topic, rest := body[2:2+tl], body[2+tl:]
	switch (flags >> 1) & 3 {
	case 0:
	case 1, 2:
		if len(rest) < 2 {
			return nil, 0, nil, errors.New("mqtt: PUBLISH without packet id")
		}
		id, rest = binary.BigEndian.Uint16(rest), rest[2:]
	default:
		return nil, 0, nil, errors.New("mqtt: PUBLISH with QoS 3")
	}
	return topic, id, rest, nil
}

func appendLength(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func connectPacket(cfg DialConfig) []byte {
	var v []byte
	v = appendString(v, "MQTT")
	flags := byte(0)
	if cfg.CleanSession {
		flags |= 0x02
	}
	if cfg.Username != "" {
		flags |= 0x80
	}
	if cfg.Password != "" {
		flags |= 0x40
	}
	v = append(v, 4, flags)
	v = binary.BigEndian.AppendUint16(v, cfg.KeepAlive)
	v = appendString(v, cfg.ClientID)
	if cfg.Username != "" {
		v = appendString(v, cfg.Username)
	}
	if cfg.Password != "" {
		v = appendString(v, cfg.Password)
	}
	out := appendLength([]byte{pktConnect << 4}, len(v))
	return append(out, v...)
}

// DialConfig says how to reach a broker and who to be.
type DialConfig struct {
	Addr string
	// LocalIP, if set, is the source address (many source addresses spread
	// 100k connections over more ephemeral ports).
	LocalIP string
	// TLS, if set, wraps the connection (ServerName must be set in it).
	TLS          *tls.Config
	ClientID     string
	Username     string
	Password     string
	KeepAlive    uint16
	CleanSession bool
	// Timeout bounds dial, handshake and CONNACK together (0: 30 s).
	Timeout time.Duration
}

// Conn is one MQTT 3.1.1 client connection. Publish and Flush may be called
// from one goroutine while the reader (Start) runs in another.
type Conn struct {
	nc net.Conn
	br *bufio.Reader

	wmu sync.Mutex
	bw  *bufio.Writer
	wb  []byte // scratch for one packet header

	nextID uint16
	window chan struct{} // one token per QoS 1 publish in flight
	acked  atomic.Int64
	// sentAt holds the send times of the publishes in flight, oldest first
	// (PUBACKs come in publish order), when TimeAcks asked for them; ackLat
	// collects the delays to their PUBACKs.
	sentAt chan int64
	ackMu  sync.Mutex
	ackLat []int64

	subacks chan struct{}
	done    chan struct{}
	readErr error
}

// ConnackError is a CONNACK with a non-zero return code.
type ConnackError struct{ Code byte }

func (e *ConnackError) Error() string { return fmt.Sprintf("mqtt: CONNACK return code %d", e.Code) }

// Dial connects, sends CONNECT and waits for a successful CONNACK. window is
// how many QoS 1 publishes may await their PUBACK at once (0 for a connection
// that only subscribes or idles).
func Dial(ctx context.Context, cfg DialConfig, window int) (*Conn, error) {
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := net.Dialer{}
	if cfg.LocalIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(cfg.LocalIP)}
	}
	nc, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", cfg.Addr, err)
	}
	deadline, _ := ctx.Deadline()
	_ = nc.SetDeadline(deadline)
	if cfg.TLS != nil {
		tc := tls.Client(nc, cfg.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("tls handshake with %s: %w", cfg.Addr, err)
		}
		nc = tc
	}
	if _, err := nc.Write(connectPacket(cfg)); err != nil {
		nc.Close()
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	c := &Conn{
		nc:      nc,
		br:      bufio.NewReaderSize(nc, 512),
		subacks: make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	typ, _, body, err := readPacket(c.br, nil)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("read CONNACK: %w", err)
	}
	if typ != pktConnack || len(body) != 2 {
		nc.Close()
		return nil, fmt.Errorf("mqtt: expected CONNACK, got packet type %d", typ)
	}
	if body[1] != 0 {
		nc.Close()
		return nil, &ConnackError{Code: body[1]}
	}
	_ = nc.SetDeadline(time.Time{})
	if window > 0 {
		c.window = make(chan struct{}, window)
	}
	return c, nil
}

// Start runs the reader until the connection closes: it releases the in-flight
// window on PUBACK, hands each incoming PUBLISH to onPublish (which must not
// keep the slices) and acknowledges QoS 1 deliveries. The returned channel is
// closed when the reader has stopped.
func (c *Conn) Start(onPublish func(topic, payload []byte)) <-chan struct{} {
	c.wmu.Lock()
	if c.bw == nil {
		c.bw = bufio.NewWriterSize(c.nc, 32*1024)
	}
	c.wmu.Unlock()
	go func() {
		defer close(c.done)
		c.readErr = c.readLoop(onPublish)
	}()
	return c.done
}

func (c *Conn) readLoop(onPublish func(topic, payload []byte)) error {
	c.br = bufio.NewReaderSize(c.br, 64*1024)
	buf := make([]byte, 4096)
	for {
		typ, flags, body, err := readPacket(c.br, buf)
		if err != nil {
			return err
		}
		switch typ {
		case pktPuback:
			c.acked.Add(1)
			if c.sentAt != nil {
				select {
				case at := <-c.sentAt:
					c.ackMu.Lock()
					if len(c.ackLat) < cap(c.ackLat) {
						c.ackLat = append(c.ackLat, time.Now().UnixNano()-at)
					}
					c.ackMu.Unlock()
				default:
				}
			}
			if c.window != nil {
				select {
				case <-c.window:
				default:
					return errors.New("mqtt: PUBACK with nothing in flight")
				}
			}
		case pktPublish:
			topic, id, payload, err := parsePublish(flags, body)
			if err != nil {
				return err
			}
			if onPublish != nil {
				onPublish(topic, payload)
			}
			if id != 0 {
				c.wmu.Lock()
				c.bw.Write([]byte{pktPuback << 4, 2, byte(id >> 8), byte(id)})
				var err error
				// Acks go out in batches: flush only when nothing more is
				// already waiting to be read.
				if c.br.Buffered() == 0 {
					err = c.bw.Flush()
				}
				c.wmu.Unlock()
				if err != nil {
					return err
				}
			}
		case pktSuback:
			select {
			case c.subacks <- struct{}{}:
			default:
			}
		case pktPingresp:
		default:
			return fmt.Errorf("mqtt: unexpected packet type %d", typ)
		}
	}
}

// Err is why the reader stopped (after its channel closed).
func (c *Conn) Err() error { return c.readErr }

// Acked counts PUBACKs received.
func (c *Conn) Acked() int64 { return c.acked.Load() }

// Subscribe asks for filter at qos and waits for the SUBACK. Start must have
// been called.
func (c *Conn) Subscribe(ctx context.Context, filter string, qos byte) error {
	var v []byte
	v = binary.BigEndian.AppendUint16(v, 1)
	v = appendString(v, filter)
	v = append(v, qos)
	p := appendLength([]byte{pktSubscribe<<4 | 2}, len(v))
	c.wmu.Lock()
	c.bw.Write(append(p, v...))
	err := c.bw.Flush()
	c.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("send SUBSCRIBE: %w", err)
	}
	select {
	case <-c.subacks:
		return nil
	case <-c.done:
		return fmt.Errorf("subscribe %s: connection closed: %w", filter, c.readErr)
	case <-ctx.Done():
		return fmt.Errorf("subscribe %s: %w", filter, ctx.Err())
	}
}

// Publish queues one PUBLISH in the write buffer. For QoS 1 it first takes a
// slot of the in-flight window, flushing and waiting if the window is full.
// Call Flush to push buffered packets out.
func (c *Conn) Publish(ctx context.Context, topic string, payload []byte, qos byte) error {
	var id uint16
	if qos == 1 {
		if c.window == nil {
			return errors.New("publish: QoS 1 on a connection dialled without a window")
		}
		select {
		case c.window <- struct{}{}:
		default:
			if err := c.Flush(); err != nil {
				return err
			}
			select {
			case c.window <- struct{}{}:
			case <-c.done:
				return fmt.Errorf("publish: connection closed: %w", c.readErr)
			case <-ctx.Done():
				return fmt.Errorf("publish: waiting for PUBACK: %w", ctx.Err())
			}
		}
		if c.sentAt != nil {
			c.sentAt <- time.Now().UnixNano()
		}
		c.nextID++
		if c.nextID == 0 {
			c.nextID = 1
		}
		id = c.nextID
	}
	n := 2 + len(topic) + len(payload)
	if qos > 0 {
		n += 2
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	h := append(c.wb[:0], pktPublish<<4|qos<<1)
	h = appendLength(h, n)
	h = appendString(h, topic)
	if qos > 0 {
		h = binary.BigEndian.AppendUint16(h, id)
	}
	c.wb = h
	if _, err := c.bw.Write(h); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	if _, err := c.bw.Write(payload); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	return nil
}

// Flush writes out buffered packets.
func (c *Conn) Flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}

// TimeAcks makes the connection record, for up to max QoS 1 publishes, the
// delay from Publish to its PUBACK. Call it before Start.
func (c *Conn) TimeAcks(max int) {
	if c.window != nil {
		c.sentAt = make(chan int64, cap(c.window))
		c.ackLat = make([]int64, 0, max)
	}
}

// AckLatencies returns a copy of the delays (ns) to PUBACK recorded so far.
func (c *Conn) AckLatencies() []int64 {
	c.ackMu.Lock()
	defer c.ackMu.Unlock()
	return slices.Clone(c.ackLat)
}

// InFlight is the number of QoS 1 publishes awaiting PUBACK.
func (c *Conn) InFlight() int {
	if c.window == nil {
		return 0
	}
	return len(c.window)
}

// Disconnect sends DISCONNECT and closes the connection.
func (c *Conn) Disconnect() error {
	c.wmu.Lock()
	if c.bw != nil {
		_ = c.bw.Flush()
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, err := c.nc.Write([]byte{pktDisconnect << 4, 0})
	c.wmu.Unlock()
	cerr := c.nc.Close()
	if err != nil {
		return fmt.Errorf("send DISCONNECT: %w", err)
	}
	return cerr
}

// Close closes the connection without DISCONNECT.
func (c *Conn) Close() error { return c.nc.Close() }
