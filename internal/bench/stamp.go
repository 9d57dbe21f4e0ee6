package bench

import (
	"bytes"
	"math"
	"strconv"
)

// A stamp is what the generator writes into every payload so that the receiver
// can attribute it: which device sent it, its sequence number and when it was
// sent. The payload is a JSON object so that Moat's events stream carries it
// verbatim (a JSON body is embedded as is), and padding makes it exactly the
// requested size when that is large enough:
//
//	{"bm":[device,seq,unixNanos],"p":"xxxx…"}
type stamp struct {
	Device int
	Seq    int
	Sent   int64 // Unix nanoseconds
}

var (
	stampOpen = []byte(`{"bm":[`)
	stampPad  = []byte(`],"p":"`)
)

// appendStamp appends a payload of size bytes (or the bare stamp, if size is
// smaller) to b.
func appendStamp(b []byte, s stamp, size int) []byte {
	start := len(b)
	b = append(b, stampOpen...)
	b = strconv.AppendInt(b, int64(s.Device), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(s.Seq), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, s.Sent, 10)
	b = append(b, stampPad...)
	for len(b)-start < size-2 {
		b = append(b, 'x')
	}
	return append(b, '"', '}')
}

// findStamp finds and parses the stamp in b, which may be a bare payload or a
// line of the events stream that embeds it.
func findStamp(b []byte) (stamp, bool) {
	i := bytes.Index(b, stampOpen)
	if i < 0 {
		return stamp{}, false
	}
	b = b[i+len(stampOpen):]
	var v [3]int64
	for k := range v {
		n, rest, ok := parseUint(b)
		if !ok {
			return stamp{}, false
		}
		want := byte(',')
		if k == 2 {
			want = ']'
		}
		if len(rest) == 0 || rest[0] != want {
			return stamp{}, false
		}
		v[k], b = n, rest[1:]
	}
	if v[0] > 1<<31 || v[1] > 1<<31 {
		return stamp{}, false
	}
	return stamp{Device: int(v[0]), Seq: int(v[1]), Sent: v[2]}, true
}

// parseUint reads a non-negative decimal int64.
func parseUint(b []byte) (int64, []byte, bool) {
	var n int64
	i := 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		d := int64(b[i] - '0')
		if n > (math.MaxInt64-d)/10 {
			return 0, nil, false
		}
		n = n*10 + d
	}
	if i == 0 {
		return 0, nil, false
	}
	return n, b[i:], true
}
