package endpoint

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/moat-iot/moat/internal/message"
)

// marshalRecords is the reference encoding: what json.Marshal makes of the
// batch's WebhookRecords.
func marshalRecords(t testing.TB, batch []message.Message) []byte {
	recs := make([]WebhookRecord, len(batch))
	for i, m := range batch {
		r := WebhookRecord{SystemProperties: m.System, Properties: m.Properties, EnqueuedTimeUtc: m.Enqueued.UTC()}
		switch {
		case len(m.Body) > 0 && json.Valid(m.Body):
			r.Body = m.Body
		case utf8.Valid(m.Body):
			r.BodyText = string(m.Body)
		default:
			r.BodyBase64 = m.Body
		}
		recs[i] = r
	}
	b, err := json.Marshal(recs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sameWebhookJSON reports whether two encodings decode to the same records
// (bodies compared compacted).
func sameWebhookJSON(t testing.TB, got, want []byte) {
	t.Helper()
	var g, w []WebhookRecord
	if !utf8.Valid(got) { // JSON is UTF-8; Unmarshal would quietly repair it
		t.Fatalf("not UTF-8: %q", got)
	}
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("not valid JSON: %v\n%s", err, got)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	for _, rs := range [][]WebhookRecord{g, w} {
		for i := range rs {
			if len(rs[i].Body) > 0 {
				var c bytes.Buffer
				if err := json.Compact(&c, rs[i].Body); err != nil {
					t.Fatal(err)
				}
				rs[i].Body = c.Bytes()
			}
		}
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("decoded differently:\n got %s\nwant %s", got, want)
	}
}

func TestWebhookEncoding(t *testing.T) {
	at := time.Date(2026, 12, 6, 3, 4, 5, 123456789, time.FixedZone("x", 3600))
	tests := []struct {
		name  string
		batch []message.Message
	}{
		{"empty batch", nil},
		{"nil maps, no body", []message.Message{{}}},
		{"JSON body with whitespace", []message.Message{{Body: []byte(" {\"a\" : [1, 2,\n3]} "), System: map[string]string{"iothub-connection-device-id": "d1", "contentType": "application/json"}, Enqueued: at}}},
		{"text body with escapes", []message.Message{{Body: []byte("line\n\"quoted\"\t\\ <html> & \u2028 é \x01\x1f\x7f"), Properties: map[string]string{"b": "2", "a": "1", "": "empty key", "k\"ey": "v\\al"}}}},
		{"binary body", []message.Message{{Body: []byte{0xff, 0x00, 0xfe, 'a'}}}},
		{"invalid UTF-8 in properties", []message.Message{{Properties: map[string]string{"p\xff": "v\xc3"}}}},
		{"several", []message.Message{{Body: []byte(`1`)}, {Body: []byte(`"s"`)}, {Body: []byte(`nul`)}, {Body: []byte(`null`)}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := appendWebhookBatch(nil, tc.batch)
			sameWebhookJSON(t, got, marshalRecords(t, tc.batch))
		})
	}
}

func FuzzWebhookEncoding(f *testing.F) {
	f.Add([]byte(`{"a":1}`), "k", "v", int64(0))
	f.Add([]byte("text\n<>&"), "\xff", "\u2028", int64(1796525477291806918))
	f.Add([]byte{0xff, 0}, "", "", int64(-1))
	f.Fuzz(func(t *testing.T, body []byte, k, v string, ns int64) {
		at := time.Unix(0, ns)
		if at.Year() < 0 || at.Year() > 9999 {
			t.Skip() // json.Marshal refuses such times; the hub never stamps one
		}
		batch := []message.Message{{Body: body, Properties: map[string]string{k: v}, System: map[string]string{v: k}, Enqueued: at}, {Body: body}}
		sameWebhookJSON(t, appendWebhookBatch(nil, batch), marshalRecords(t, batch))
	})
}
