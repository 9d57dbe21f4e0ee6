package bench

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

func TestStampRoundTrip(t *testing.T) {
	now := time.Now().UnixNano()
	for _, size := range []int{0, 10, 64, 256, 4096} {
		s := stamp{Device: 99999, Seq: 123456, Sent: now}
		b := appendStamp(nil, s, size)
		if len(b) < size {
			t.Fatalf("size %d: payload is %d bytes", size, len(b))
		}
		if size >= 64 && len(b) != size {
			t.Fatalf("size %d: payload is %d bytes", size, len(b))
		}
		if !json.Valid(b) {
			t.Fatalf("payload is not JSON: %s", b)
		}
		got, ok := findStamp(b)
		if !ok || got != s {
			t.Fatalf("findStamp = %+v %v, want %+v", got, ok, s)
		}
		// As Moat's events stream embeds it.
		line := append(append([]byte(`{"deviceId":"bench-000001","body":`), b...), "}\n"...)
		if got, ok := findStamp(line); !ok || got != s {
			t.Fatalf("in a line: findStamp = %+v %v", got, ok)
		}
	}
}

func TestFindStamp(t *testing.T) {
	tests := []struct {
		in   string
		want stamp
		ok   bool
	}{
		{`{"bm":[1,2,3],"p":""}`, stamp{1, 2, 3}, true},
		{`xx{"bm":[0,0,1763900000000000000]`, stamp{0, 0, 1763900000000000000}, true},
		{`{"bm":[1,2]}`, stamp{}, false},
		{`{"bm":[1,2,3,4]}`, stamp{}, false},
		{`{"bm":[-1,2,3]}`, stamp{}, false},
		{`{"bm":[1,2,99999999999999999999]}`, stamp{}, false},
		{`{"bm":[4294967296,2,3]}`, stamp{}, false},
		{`{"bm":[`, stamp{}, false},
		{`hello`, stamp{}, false},
	}
	for _, tc := range tests {
		got, ok := findStamp([]byte(tc.in))
		if ok != tc.ok || got != tc.want {
			t.Errorf("findStamp(%q) = %+v %v, want %+v %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzFindStamp(f *testing.F) {
	f.Add([]byte(`{"bm":[1,2,3],"p":"xx"}`))
	f.Add([]byte(`{"bm":[1,2,`))
	f.Add([]byte(`{"bm":[9223372036854775807,1,1]`))
	f.Fuzz(func(t *testing.T, in []byte) {
		s, ok := findStamp(in)
		if !ok {
			return
		}
		if s.Device < 0 || s.Seq < 0 || s.Sent < 0 {
			t.Fatalf("negative field in %+v", s)
		}
		again, ok := findStamp(appendStamp(nil, s, 0))
		if !ok || again != s {
			t.Fatalf("re-encoded %+v parsed as %+v", s, again)
		}
		_ = bytes.Contains(in, stampOpen)
	})
}
