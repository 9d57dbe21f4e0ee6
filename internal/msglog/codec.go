package msglog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/moat-iot/moat/internal/message"
)

// codecV1 is the leading byte of the record format written by EncodeMessage.
// A new layout gets a new byte, and DecodeMessage keeps reading the old ones
// for as long as logs written by older hubs may still hold them.
const codecV1 = 1

// The range of enqueued times the codec carries: years 1 to 9999, the range
// RFC 3339 text (and so IoT Hub's iothub-enqueuedtime) can express.
const (
	minUnix = -62135596800 // 0001-01-01T00:00:00Z
	maxUnix = 253402300799 // 9999-12-31T23:59:59Z
)

// EncodeMessage turns a hub message into a log record:
//
//	byte    version (1)
//	varint  enqueued time, Unix seconds (zigzag, as binary.AppendVarint)
//	uvarint enqueued time, nanoseconds within the second
//	uvarint body length, body
//	uvarint number of system properties, then per property
//	        uvarint key length, key, uvarint value length, value
//	uvarint number of application properties, the same way
//
// Properties are written in ascending key order, so a message has exactly one
// encoding; DecodeMessage insists on it. The enqueued time keeps its instant
// but not its location (it decodes as UTC).
func EncodeMessage(m message.Message) ([]byte, error) {
	return AppendMessage(nil, m)
}

// AppendMessage is EncodeMessage appending to dst.
func AppendMessage(dst []byte, m message.Message) ([]byte, error) {
	sec := m.Enqueued.Unix()
	if sec < minUnix || sec > maxUnix {
		return nil, fmt.Errorf("msglog: enqueued time %v outside years 1 to 9999", m.Enqueued)
	}
	size := 1 + 2*binary.MaxVarintLen64 + binary.MaxVarintLen64 + len(m.Body) +
		mapSize(m.System) + mapSize(m.Properties)
	dst = slices.Grow(dst, size)
	dst = append(dst, codecV1)
	dst = binary.AppendVarint(dst, sec)
	dst = binary.AppendUvarint(dst, uint64(m.Enqueued.Nanosecond()))
	dst = appendBytes(dst, m.Body)
	dst = appendMap(dst, m.System)
	dst = appendMap(dst, m.Properties)
	return dst, nil
}

func mapSize(m map[string]string) int {
	n := binary.MaxVarintLen64
	for k, v := range m {
		n += 2*binary.MaxVarintLen64 + len(k) + len(v)
	}
	return n
}

func appendBytes[T []byte | string](dst []byte, b T) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

func appendMap(dst []byte, m map[string]string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(m)))
	if len(m) == 0 {
		return dst
	}
	var small [16]string // the SDKs send a handful of properties
	keys := small[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		dst = appendBytes(dst, k)
		dst = appendBytes(dst, m[k])
	}
	return dst
}

// errTruncated and friends describe why a record does not decode; a log
// record that fails to decode is corrupt or from a newer hub.
var (
	errTruncated = errors.New("truncated")
	errTrailing  = errors.New("trailing bytes")
	errOverlong  = errors.New("overlong varint")
)

// DecodeMessage reads a record written by EncodeMessage. The body aliases
// data; System and Properties are never nil. It accepts only the canonical
// encoding (minimal varints, properties in strictly ascending key order, no
// trailing bytes), so EncodeMessage(DecodeMessage(b)) gives b back for every b
// it accepts.
func DecodeMessage(data []byte) (message.Message, error) {
	var m message.Message
	if len(data) == 0 {
		return m, fmt.Errorf("msglog: decode message: empty record")
	}
	if data[0] != codecV1 {
		return m, fmt.Errorf("msglog: decode message: unknown record version %d", data[0])
	}
	d := decoder{b: data[1:]}
	zz, err := d.uvarint()
	if err != nil {
		return m, fmt.Errorf("msglog: decode message: enqueued time: %w", err)
	}
	sec := int64(zz >> 1) // zigzag, as binary.Varint
	if zz&1 != 0 {
		sec = ^sec
	}
	nsec, err := d.uvarint()
	if err != nil {
		return m, fmt.Errorf("msglog: decode message: enqueued time: %w", err)
	}
	if sec < minUnix || sec > maxUnix || nsec >= 1e9 {
		return m, fmt.Errorf("msglog: decode message: enqueued time out of range")
	}
	m.Enqueued = time.Unix(sec, int64(nsec)).UTC()
	if m.Body, err = d.bytes(); err != nil {
		return m, fmt.Errorf("msglog: decode message: body: %w", err)
	}
	if m.System, err = d.props(); err != nil {
		return m, fmt.Errorf("msglog: decode message: system properties: %w", err)
	}
	if m.Properties, err = d.props(); err != nil {
		return m, fmt.Errorf("msglog: decode message: application properties: %w", err)
	}
	if len(d.b) != 0 {
		return m, fmt.Errorf("msglog: decode message: %d %w", len(d.b), errTrailing)
	}
	return m, nil
}

type decoder struct{ b []byte }

func (d *decoder) uvarint() (uint64, error) {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		return 0, errTruncated
	}
	if n > 1 && d.b[n-1] == 0 {
		return 0, errOverlong
	}
	d.b = d.b[n:]
	return v, nil
}

func (d *decoder) bytes() ([]byte, error) {
	l, err := d.uvarint()
	if err != nil {
		return nil, err
	}
	if l > uint64(len(d.b)) {
		return nil, errTruncated
	}
	v := d.b[:l:l]
	d.b = d.b[l:]
	return v, nil
}

func (d *decoder) props() (map[string]string, error) {
	count, err := d.uvarint()
	if err != nil {
		return nil, err
	}
	// Each property takes at least two bytes (two zero lengths), which bounds
	// the map a corrupt count can make us allocate.
	if count > uint64(len(d.b)/2) || count > math.MaxInt32 {
		return nil, errTruncated
	}
	m := make(map[string]string, count)
	prev := ""
	for i := range count {
		k, err := d.bytes()
		if err != nil {
			return nil, fmt.Errorf("property %d name: %w", i+1, err)
		}
		v, err := d.bytes()
		if err != nil {
			return nil, fmt.Errorf("property %d value: %w", i+1, err)
		}
		key := string(k)
		if i > 0 && key <= prev {
			return nil, fmt.Errorf("property %d: names not in ascending order", i+1)
		}
		m[key] = string(v)
		prev = key
	}
	return m, nil
}
