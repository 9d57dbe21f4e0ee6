// Package mqttframe checks MQTT control packets before the broker core decodes
// them: it cuts a byte stream into whole packets, enforces the size limit and
// rejects malformed frames (such as the SUBSCRIBE forms that crash mochi-mqtt
// 2.7.9) by closing the connection instead of letting the decoder panic.
//
// The checks are structural: every length field must lie within its packet,
// every packet must be consumed exactly, and the fixed-header flags, protocol
// name and level must be valid. Meaning (UTF-8 of topics, packet id zero,
// which property may appear in which packet, authorization) stays with the
// broker, which reports those as protocol errors without crashing.
package mqttframe

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// DefaultMaxPacketSize is IoT Hub's 256 KiB message limit plus room for the
// topic, property bag and MQTT 5 properties around the payload.
const DefaultMaxPacketSize = 256*1024 + 8*1024

// Rejection errors; Read's errors wrap one of them.
var (
	// ErrMalformed: the packet breaks the MQTT framing rules.
	ErrMalformed = errors.New("malformed MQTT packet")
	// ErrTooLarge: the packet exceeds Options.MaxPacketSize.
	ErrTooLarge = errors.New("MQTT packet too large")
)

// Options configures Guard.
type Options struct {
	// MaxPacketSize bounds a whole packet (fixed header included); 0 means
	// DefaultMaxPacketSize.
	MaxPacketSize int
	// OnReject, if set, is called once, from Read, with the reason the
	// connection's stream was refused (for logs and metrics).
	OnReject func(reason error)
}

// Packet types (MQTT 3.1.1 §2.2.1, MQTT 5 §2.1.2).
const (
	typeConnect     = 1
	typeConnack     = 2
	typePublish     = 3
	typePuback      = 4
	typePubrec      = 5
	typePubrel      = 6
	typePubcomp     = 7
	typeSubscribe   = 8
	typeSuback      = 9
	typeUnsubscribe = 10
	typeUnsuback    = 11
	typePingreq     = 12
	typePingresp    = 13
	typeDisconnect  = 14
	typeAuth        = 15
)

var typeNames = [16]string{"reserved type 0", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC",
	"PUBREL", "PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP",
	"DISCONNECT", "AUTH"}

const (
	// defaultBufSize holds many small packets per read from the socket; a
	// guard borrows such a buffer from a pool only while data is flowing.
	defaultBufSize = 8 * 1024
	// idleBufSize is what a guard keeps of its own: an idle connection
	// waits in Read on this, so ten thousand idle devices do not pin ten
	// thousand 8 KiB buffers. A PINGREQ or a short publish fits.
	idleBufSize = 256
	// maxEmptyReads guards against an inner conn that returns (0, nil)
	// forever.
	maxEmptyReads = 100
)

// Guard wraps c so that Read hands out only whole, structurally valid MQTT
// control packets. The first packet must be CONNECT; its protocol level
// decides how later packets are checked. On the first invalid packet Read
// returns an error wrapping ErrMalformed or ErrTooLarge (after the valid
// packets before it), and keeps returning it, so the broker closes the
// connection. Everything but Read goes straight to c.
func Guard(c net.Conn, opts Options) net.Conn {
	if opts.MaxPacketSize <= 0 {
		opts.MaxPacketSize = DefaultMaxPacketSize
	}
	g := &guard{Conn: c, max: opts.MaxPacketSize, onReject: opts.OnReject}
	g.buf = g.idle[:]
	return g
}

// bufPool holds the default-size buffers of connections that are receiving.
var bufPool = sync.Pool{New: func() any { b := make([]byte, defaultBufSize); return &b }}

// Unwrap returns the connection under a Guard (for example the *tls.Conn, for
// its ConnectionState), or c itself if c is not guarded.
func Unwrap(c net.Conn) net.Conn {
	if g, ok := c.(*guard); ok {
		return g.Conn
	}
	return c
}

type guard struct {
	net.Conn
	max      int
	onReject func(error)

	mu sync.Mutex // Read is called from one goroutine, but net.Conn allows more
	// buf[r:v] is validated and not yet handed out; buf[v:w] is read from
	// the socket and not yet validated (at most one partial packet once
	// validate has run).
	buf     []byte
	idle    [idleBufSize]byte // buf between bursts
	pooled  *[]byte           // the pool buffer buf is, if it is one
	flowing bool              // the last read filled most of its space
	r, v, w int

	version byte  // protocol level from CONNECT; 0 before it
	err     error // rejection: returned, for good, once buf[r:v] is drained
	// rerr is the socket's read error, returned once buf[r:v] is drained and
	// the packets read before it are validated; for good unless it is a
	// timeout (the broker may extend the deadline and read again).
	rerr      error
	rerrFatal bool
}

// Unwrap returns the guarded connection.
func (g *guard) Unwrap() net.Conn { return g.Conn }

func (g *guard) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	empty := 0
	for g.r == g.v {
		if g.err != nil {
			return 0, g.err
		}
		need := g.validate()
		if g.r < g.v {
			break
		}
		if g.err != nil {
			return 0, g.err
		}
		if g.rerr != nil {
			err := g.rerr
			if !g.rerrFatal {
				g.rerr = nil
			}
			return 0, err
		}
		if g.fill(need) == 0 && g.rerr == nil {
			if empty++; empty >= maxEmptyReads {
				return 0, io.ErrNoProgress
			}
		}
	}
	n := copy(p, g.buf[g.r:g.v])
	g.r += n
	return n, nil
}

// validate advances v over every complete, valid packet in buf[v:w]. It
// returns how many bytes the next packet needs in total (0 if its header is
// not complete yet), and sets err on a rejected packet.
func (g *guard) validate() (need int) {
	for {
		b := g.buf[g.v:g.w]
		hdr, rem, err := fixedHeader(b)
		if err != nil {
			g.reject(err)
			return 0
		}
		if hdr == 0 {
			return 0 // header incomplete
		}
		total := hdr + rem
		if total > g.max {
			g.reject(fmt.Errorf("mqttframe: %s of %d bytes exceeds the limit of %d: %w",
				typeNames[b[0]>>4], total, g.max, ErrTooLarge))
			return 0
		}
		// Type, flags and order are known from the first byte: refuse
		// before buffering a body we would throw away.
		if err := g.checkFirstByte(b[0]); err != nil {
			g.reject(err)
			return 0
		}
		if len(b) < total {
			return total
		}
		if err := g.checkPacket(b[0], b[hdr:total]); err != nil {
			g.reject(err)
			return 0
		}
		g.v += total
	}
}

// fill reads from the socket into buf, first making room for a packet of
// need bytes (or at least some room) at buf[v:]. Called only when r == v.
func (g *guard) fill(need int) int {
	pending := g.w - g.v
	if pending == 0 {
		// Everything read has been handed out: drop a large packet's
		// buffer, and between bursts give back the pool buffer too and
		// wait on the small one.
		g.r, g.v, g.w = 0, 0, 0
		if !g.flowing {
			g.release()
			g.buf = g.idle[:]
		} else if g.pooled == nil {
			g.borrow(0)
		}
	}
	if want := max(need, pending+1); len(g.buf) < want || (pending > 0 && g.onIdle()) {
		// A packet outgrew buf, or one is arriving in pieces on the small
		// buffer: move to a pool buffer, or an exact one past that size.
		g.borrow(want)
	} else if g.v > 0 && len(g.buf)-g.w < max(need-pending, len(g.buf)/4) {
		// Move the partial packet to the front; each byte moves at most
		// once, since v stays 0 until the packet is complete.
		copy(g.buf, g.buf[g.v:g.w])
		g.r, g.v, g.w = 0, 0, pending
	}
	space := len(g.buf) - g.w
	n, err := g.Conn.Read(g.buf[g.w:])
	g.w += n
	// A read that filled half a pool buffer suggests more is queued behind
	// it. On the small buffer only a full read does: one ordinary packet
	// (a CONNECT with a SAS token is ~200 bytes) must not make an idle
	// connection wait on a pool buffer.
	if g.onIdle() {
		g.flowing = n == space
	} else {
		g.flowing = 2*n >= space
	}
	if err != nil {
		var ne net.Error
		g.rerr, g.rerrFatal = err, !(errors.As(err, &ne) && ne.Timeout())
	}
	return n
}

func (g *guard) onIdle() bool { return len(g.buf) > 0 && &g.buf[0] == &g.idle[0] }

// borrow moves buf[v:w] into a pool buffer, or a new one of want bytes when
// that is larger.
func (g *guard) borrow(want int) {
	var nb []byte
	var p *[]byte
	if want <= defaultBufSize {
		p = bufPool.Get().(*[]byte)
		nb = *p
	} else {
		nb = make([]byte, want)
	}
	pending := copy(nb, g.buf[g.v:g.w])
	g.release()
	g.pooled = p
	g.buf = nb
	g.r, g.v, g.w = 0, 0, pending
}

// release returns buf to the pool if it came from there. The caller has
// copied out what it still needs.
func (g *guard) release() {
	if g.pooled != nil {
		bufPool.Put(g.pooled)
		g.pooled = nil
	}
}

func (g *guard) reject(err error) {
	if g.err != nil {
		return
	}
	g.err = err
	if g.onReject != nil {
		g.onReject(err)
	}
}

// fixedHeader decodes the fixed header at the start of b: it returns the
// header length and the remaining length, or hdr == 0 if b does not hold the
// whole header yet.
func fixedHeader(b []byte) (hdr, rem int, err error) {
	mult := 0
	for i := 1; i <= 4; i++ {
		if i >= len(b) {
			return 0, 0, nil
		}
		c := b[i]
		rem |= int(c&0x7f) << mult
		if c&0x80 == 0 {
			return i + 1, rem, nil
		}
		mult += 7
	}
	return 0, 0, fmt.Errorf("mqttframe: remaining length longer than 4 bytes: %w", ErrMalformed)
}

func malformed(typ byte, format string, args ...any) error {
	return fmt.Errorf("mqttframe: malformed %s: %s: %w", typeNames[typ&0xf], fmt.Sprintf(format, args...), ErrMalformed)
}

// checkFirstByte checks the packet type, its reserved flags and the
// CONNECT-first order.
func (g *guard) checkFirstByte(b0 byte) error {
	typ, flags := b0>>4, b0&0x0f
	if g.version == 0 && typ != typeConnect {
		return fmt.Errorf("mqttframe: first packet is %s, not CONNECT: %w", typeNames[typ], ErrMalformed)
	}
	switch typ {
	case typeConnect:
		if g.version != 0 {
			return fmt.Errorf("mqttframe: second CONNECT on a connection: %w", ErrMalformed)
		}
	case typePublish:
		if flags&0x06 == 0x06 {
			return malformed(typ, "QoS 3")
		}
		return nil
	case typeConnack, typeSuback, typeUnsuback, typePingresp:
		return fmt.Errorf("mqttframe: %s is a server packet, sent by a client: %w", typeNames[typ], ErrMalformed)
	case 0:
		return fmt.Errorf("mqttframe: reserved packet type 0: %w", ErrMalformed)
	case typeAuth:
		if g.version != 5 {
			return fmt.Errorf("mqttframe: AUTH before MQTT 5: %w", ErrMalformed)
		}
	}
	want := byte(0)
	if typ == typePubrel || typ == typeSubscribe || typ == typeUnsubscribe {
		want = 0x02
	}
	if flags != want {
		return malformed(typ, "fixed-header flags %#x, want %#x", flags, want)
	}
	return nil
}

// checkPacket checks the variable header and payload of one packet whose
// first byte has passed checkFirstByte.
func (g *guard) checkPacket(b0 byte, body []byte) error {
	typ := b0 >> 4
	r := reader{b: body}
	var what string
	switch typ {
	case typeConnect:
		v, w := checkConnect(&r)
		if w != "" {
			return malformed(typ, "%s", w)
		}
		g.version = v
		return nil
	case typePublish:
		what = g.checkPublish(&r, (b0>>1)&3)
	case typePuback, typePubrec, typePubrel, typePubcomp:
		what = g.checkAck(&r)
	case typeSubscribe:
		what = g.checkSubscribe(&r)
	case typeUnsubscribe:
		what = g.checkUnsubscribe(&r)
	case typePingreq:
	case typeDisconnect, typeAuth:
		if g.version == 5 {
			what = r.reasonAndProps()
		}
	}
	if what == "" && r.left() != 0 {
		what = fmt.Sprintf("%d bytes after the end", r.left())
	}
	if what != "" {
		return malformed(typ, "%s", what)
	}
	return nil
}

// Each check returns "" if the packet is valid, or what is wrong; the
// string is built only on failure, so valid packets do not allocate.

func checkConnect(r *reader) (version byte, what string) {
	name, ok := r.str()
	if !ok {
		return 0, "protocol name out of bounds"
	}
	level, ok := r.u8()
	if !ok {
		return 0, "no protocol level"
	}
	switch {
	case string(name) == "MQTT" && (level == 4 || level == 5):
	case string(name) == "MQIsdp" && level == 3:
	default:
		return 0, fmt.Sprintf("unsupported protocol %q level %d", name, level)
	}
	flags, ok := r.u8()
	if !ok {
		return 0, "no connect flags"
	}
	will, willQoS, willRetain := flags&0x04 != 0, (flags>>3)&3, flags&0x20 != 0
	switch {
	case flags&0x01 != 0:
		return 0, "reserved connect flag set"
	case willQoS == 3:
		return 0, "will QoS 3"
	case !will && (willQoS != 0 || willRetain):
		return 0, "will QoS or retain without will flag"
	}
	if !r.skip(2) {
		return 0, "no keep alive"
	}
	if level == 5 {
		if w := r.props(); w != "" {
			return 0, w
		}
	}
	if _, ok := r.str(); !ok {
		return 0, "client identifier out of bounds"
	}
	if will {
		if level == 5 {
			if w := r.props(); w != "" {
				return 0, "will " + w
			}
		}
		if _, ok := r.str(); !ok {
			return 0, "will topic out of bounds"
		}
		if _, ok := r.str(); !ok {
			return 0, "will payload out of bounds"
		}
	}
	if flags&0x80 != 0 {
		if _, ok := r.str(); !ok {
			return 0, "user name out of bounds"
		}
	}
	if flags&0x40 != 0 {
		if _, ok := r.str(); !ok {
			return 0, "password out of bounds"
		}
	}
	if r.left() != 0 {
		return 0, fmt.Sprintf("%d bytes after the end", r.left())
	}
	return level, ""
}

func (g *guard) checkPublish(r *reader, qos byte) string {
	if _, ok := r.str(); !ok {
		return "topic out of bounds"
	}
	if qos > 0 && !r.skip(2) {
		return "no packet identifier"
	}
	if g.version == 5 {
		if w := r.props(); w != "" {
			return w
		}
	}
	r.off = len(r.b) // the rest is payload
	return ""
}

func (g *guard) checkAck(r *reader) string {
	if !r.skip(2) {
		return "no packet identifier"
	}
	if g.version == 5 {
		return r.reasonAndProps()
	}
	return ""
}

func (g *guard) checkSubscribe(r *reader) string {
	if !r.skip(2) {
		return "no packet identifier"
	}
	if g.version == 5 {
		if w := r.props(); w != "" {
			return w
		}
	}
	n := 0
	for r.left() > 0 {
		n++
		f, ok := r.str()
		switch {
		case !ok:
			return fmt.Sprintf("topic filter %d out of bounds", n)
		case len(f) == 0:
			return fmt.Sprintf("topic filter %d is empty", n)
		}
		opts, ok := r.u8()
		if !ok {
			return fmt.Sprintf("topic filter %d has no options byte", n)
		}
		if opts&3 == 3 {
			return fmt.Sprintf("topic filter %d asks for QoS 3", n)
		}
		if g.version == 5 {
			if opts&0xc0 != 0 || (opts>>4)&3 == 3 {
				return fmt.Sprintf("topic filter %d has invalid options %#x", n, opts)
			}
		} else if opts&0xfc != 0 {
			return fmt.Sprintf("topic filter %d has reserved bits set in %#x", n, opts)
		}
	}
	if n == 0 {
		return "no topic filters"
	}
	return ""
}

func (g *guard) checkUnsubscribe(r *reader) string {
	if !r.skip(2) {
		return "no packet identifier"
	}
	if g.version == 5 {
		if w := r.props(); w != "" {
			return w
		}
	}
	n := 0
	for r.left() > 0 {
		n++
		f, ok := r.str()
		switch {
		case !ok:
			return fmt.Sprintf("topic filter %d out of bounds", n)
		case len(f) == 0:
			return fmt.Sprintf("topic filter %d is empty", n)
		}
	}
	if n == 0 {
		return "no topic filters"
	}
	return ""
}

// reader walks a packet body; every method checks bounds.
type reader struct {
	b   []byte
	off int
}

func (r *reader) left() int { return len(r.b) - r.off }

func (r *reader) skip(n int) bool {
	if r.left() < n {
		return false
	}
	r.off += n
	return true
}

func (r *reader) u8() (byte, bool) {
	if r.left() < 1 {
		return 0, false
	}
	r.off++
	return r.b[r.off-1], true
}

// str reads a two-byte length and that many bytes (UTF-8 string or binary data).
func (r *reader) str() ([]byte, bool) {
	if r.left() < 2 {
		return nil, false
	}
	n := int(r.b[r.off])<<8 | int(r.b[r.off+1])
	if r.left()-2 < n {
		return nil, false
	}
	s := r.b[r.off+2 : r.off+2+n]
	r.off += 2 + n
	return s, true
}

// varint reads a variable byte integer of at most four bytes.
func (r *reader) varint() (int, bool) {
	v, mult := 0, 0
	for i := 0; i < 4; i++ {
		c, ok := r.u8()
		if !ok {
			return 0, false
		}
		v |= int(c&0x7f) << mult
		if c&0x80 == 0 {
			return v, true
		}
		mult += 7
	}
	return 0, false
}

// reasonAndProps reads MQTT 5's optional reason code and optional
// properties (acks, DISCONNECT, AUTH): each may be absent only if nothing
// follows it.
func (r *reader) reasonAndProps() string {
	if r.left() == 0 {
		return ""
	}
	r.off++ // reason code
	if r.left() == 0 {
		return ""
	}
	return r.props()
}

// Property identifiers by value type (MQTT 5 §2.2.2.2).
const (
	propByte = iota + 1
	propU16
	propU32
	propVarint
	propString // UTF-8 string or binary data: two-byte length
	propPair
)

var propKinds = [0x2b]byte{
	0x01: propByte, 0x02: propU32, 0x03: propString, 0x08: propString, 0x09: propString,
	0x0b: propVarint, 0x11: propU32, 0x12: propString, 0x13: propU16, 0x15: propString,
	0x16: propString, 0x17: propByte, 0x18: propU32, 0x19: propByte, 0x1a: propString,
	0x1c: propString, 0x1f: propString, 0x21: propU16, 0x22: propU16, 0x23: propU16,
	0x24: propByte, 0x25: propByte, 0x26: propPair, 0x27: propU32, 0x28: propByte,
	0x29: propByte, 0x2a: propByte,
}

// props reads an MQTT 5 property length and checks that every property lies
// within it and the length is used up exactly.
func (r *reader) props() string {
	n, ok := r.varint()
	if !ok {
		return "property length malformed or out of bounds"
	}
	if n > r.left() {
		return fmt.Sprintf("property length %d exceeds the %d bytes left", n, r.left())
	}
	p := reader{b: r.b[r.off : r.off+n]}
	r.off += n
	for p.left() > 0 {
		id, _ := p.varint()
		if id <= 0 || id >= len(propKinds) || propKinds[id] == 0 {
			return fmt.Sprintf("unknown property %#x", id)
		}
		ok := true
		switch propKinds[id] {
		case propByte:
			ok = p.skip(1)
		case propU16:
			ok = p.skip(2)
		case propU32:
			ok = p.skip(4)
		case propVarint:
			_, ok = p.varint()
		case propString:
			_, ok = p.str()
		case propPair:
			if _, ok = p.str(); ok {
				_, ok = p.str()
			}
		}
		if !ok {
			return fmt.Sprintf("property %#x out of bounds", id)
		}
	}
	return ""
}
