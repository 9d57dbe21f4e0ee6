package msglog

import (
	"bytes"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/message"
)

func sameMessage(a, b message.Message) bool {
	return bytes.Equal(a.Body, b.Body) && a.Enqueued.Equal(b.Enqueued) &&
		maps.Equal(a.System, b.System) && maps.Equal(a.Properties, b.Properties)
}

func TestCodecRoundTrip(t *testing.T) {
	enq := time.Date(2026, 11, 23, 21, 5, 7, 123456789, time.FixedZone("x", 3600))
	tests := []struct {
		name string
		m    message.Message
	}{
		{"empty", message.Message{}},
		{"body only", message.Message{Body: []byte(`{"t":21.5}`), Enqueued: enq}},
		{"binary body", message.Message{Body: []byte{0, 1, 2, 0xff, 0}, Enqueued: enq}},
		{"properties", message.Message{
			Body:       []byte("x"),
			Enqueued:   enq,
			System:     map[string]string{message.SysMessageID: "m1", message.SysContentType: "application/json", "iothub-connection-device-id": "dev1"},
			Properties: map[string]string{"a": "1", "": "empty name", "ü": strings.Repeat("v", 300)},
		}},
		{"before 1970", message.Message{Enqueued: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC)}},
		{"year 9999", message.Message{Enqueued: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)}},
		{"big body", message.Message{Body: bytes.Repeat([]byte("b"), message.MaxSize)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := EncodeMessage(tt.m)
			if err != nil {
				t.Fatal(err)
			}
			if b[0] != codecV1 {
				t.Fatalf("version byte %d", b[0])
			}
			got, err := DecodeMessage(b)
			if err != nil {
				t.Fatal(err)
			}
			if !sameMessage(got, tt.m) {
				t.Fatalf("round trip changed the message:\n got %+v\nwant %+v", got, tt.m)
			}
			if got.System == nil || got.Properties == nil {
				t.Fatal("decoded maps are nil")
			}
			if got.Enqueued.Location() != time.UTC {
				t.Fatalf("enqueued time decodes in %v, want UTC", got.Enqueued.Location())
			}
			again, _ := EncodeMessage(got)
			if !bytes.Equal(again, b) {
				t.Fatalf("encoding not canonical: % x then % x", b, again)
			}
		})
	}
}

func TestCodecDeterministic(t *testing.T) {
	m := message.Message{System: map[string]string{}, Properties: map[string]string{}}
	for _, k := range []string{"z", "a", "m", "b", "y", "c"} {
		m.System[k] = k + "v"
		m.Properties[k] = k
	}
	first, _ := EncodeMessage(m)
	for range 20 {
		if b, _ := EncodeMessage(m); !bytes.Equal(b, first) {
			t.Fatal("two encodings of the same message differ")
		}
	}
}

func TestEncodeRejectsTimeOutOfRange(t *testing.T) {
	for _, tm := range []time.Time{time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(0, 12, 31, 0, 0, 0, 0, time.UTC)} {
		if _, err := EncodeMessage(message.Message{Enqueued: tm}); err == nil {
			t.Errorf("encoded enqueued time %v", tm)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	good, _ := EncodeMessage(message.Message{Body: []byte("hi"), System: map[string]string{"a": "1"}, Properties: map[string]string{"b": "2"}})
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "empty record"},
		{"unknown version", append([]byte{2}, good[1:]...), "unknown record version 2"},
		{"version only", []byte{1}, "enqueued time"},
		{"truncated body", []byte{1, 0, 0, 5, 'a'}, "body: truncated"},
		{"nanoseconds out of range", []byte{1, 0, 0x80, 0x94, 0xeb, 0xdc, 0x03, 0, 0, 0}, "out of range"},
		{"seconds out of range", []byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0}, "out of range"},
		{"overlong varint", []byte{1, 0, 0, 0x80, 0x00, 0, 0}, "overlong"},
		{"huge property count", []byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}, "system properties: truncated"},
		{"unsorted properties", []byte{1, 0, 0, 0, 2, 1, 'b', 0, 1, 'a', 0, 0}, "ascending"},
		{"duplicate property", []byte{1, 0, 0, 0, 0, 2, 1, 'a', 0, 1, 'a', 0}, "ascending"},
		{"missing application properties", []byte{1, 0, 0, 0, 0}, "application properties: truncated"},
		{"trailing bytes", append(append([]byte{}, good...), 0), "trailing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeMessage(tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("DecodeMessage(% x) = %v, want an error containing %q", tt.data, err, tt.want)
			}
		})
	}
}

func FuzzDecodeMessage(f *testing.F) {
	for _, m := range []message.Message{
		{},
		{Body: []byte("hello"), Enqueued: time.Unix(1700000000, 5)},
		{System: map[string]string{"message-id": "1", "content-type": "json"}, Properties: map[string]string{"k": "v", "": ""}},
	} {
		b, err := EncodeMessage(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{1, 0, 0, 0x80, 0x00, 0, 0})
	f.Add([]byte{2})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeMessage(data)
		if err != nil {
			return
		}
		b, err := EncodeMessage(m)
		if err != nil {
			t.Fatalf("decoded message does not encode: %v", err)
		}
		if !bytes.Equal(b, data) {
			t.Fatalf("re-encoding differs:\n in % x\nout % x", data, b)
		}
		m2, err := DecodeMessage(b)
		if err != nil || !sameMessage(m, m2) {
			t.Fatalf("second decode: %v", err)
		}
	})
}
