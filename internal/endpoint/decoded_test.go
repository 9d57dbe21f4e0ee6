package endpoint

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"testing"

	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/msglog"
)

func TestDecodedRecordsRing(t *testing.T) {
	enc := func(body string) []byte {
		rec, err := msglog.EncodeMessage(message.Message{Body: []byte(body), Properties: map[string]string{"k": body}})
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}
	c := NewDecodedRecords()
	mapID := func(m message.Message) uintptr { return reflect.ValueOf(m.Properties).Pointer() }
	tests := []struct {
		name   string
		rec    msglog.Record
		same   bool // the second decode returns the first one's message
		failed bool
	}{
		{"small record shared", msglog.Record{Offset: 7, Data: enc("a")}, true, false},
		{"same slot, later offset decoded anew", msglog.Record{Offset: 7 + decodedSlots, Data: enc("b")}, true, false},
		{"large record not kept", msglog.Record{Offset: 8, Data: enc(string(bytes.Repeat([]byte("x"), decodedMaxBytes)))}, false, false},
		{"undecodable record keeps its error", msglog.Record{Offset: 9, Data: []byte{0xff, 0xff}}, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m1, err1 := c.decode(tc.rec)
			m2, err2 := c.decode(tc.rec)
			if (err1 != nil) != tc.failed || (err2 != nil) != tc.failed {
				t.Fatalf("errors %v, %v; want failure %v", err1, err2, tc.failed)
			}
			if tc.failed {
				return
			}
			want, _ := msglog.DecodeMessage(tc.rec.Data)
			if string(m1.Body) != string(want.Body) || m1.Properties["k"] != want.Properties["k"] {
				t.Fatalf("decoded %q %v, want %q %v", m1.Body, m1.Properties, want.Body, want.Properties)
			}
			if got := mapID(m1) == mapID(m2); got != tc.same {
				t.Fatalf("second decode shared the first: %v, want %v", got, tc.same)
			}
		})
	}
	// The slot now holds offset 7+decodedSlots: offset 7 is decoded again, right.
	if m, err := c.decode(msglog.Record{Offset: 7, Data: enc("a")}); err != nil || string(m.Body) != "a" {
		t.Fatalf("offset 7 after its slot was reused: %q, %v", m.Body, err)
	}
}

// Workers sharing decoded records must not see each other's enrichments.
func TestSharedDecodingKeepsWorkersApart(t *testing.T) {
	log := msglog.NewMemory()
	appendN(t, log, 50, "a")
	shared := NewDecodedRecords()
	var mu sync.Mutex
	got := map[string][]message.Message{}
	run := func(name string, enrich map[string]string) (*Worker, context.CancelFunc, chan error) {
		w := NewWorker(Config{Name: name, Log: log, Decoded: shared, BatchSize: 7, Logger: slog.New(slog.DiscardHandler),
			Sink: sinkFunc(func(batch []message.Message) error {
				mu.Lock()
				got[name] = append(got[name], batch...)
				mu.Unlock()
				return nil
			}),
			Select: func(uint64, message.Message) (bool, map[string]string) { return true, enrich }})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		return w, cancel, done
	}
	_, c1, d1 := run("enriched", map[string]string{"site": "berlin", "tag": "overridden"})
	_, c2, d2 := run("plain", nil)
	waitFor(t, "both endpoints to get 50 messages", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got["enriched"]) == 50 && len(got["plain"]) == 50
	})
	c1()
	c2()
	<-d1
	<-d2
	for i := range 50 {
		e, p := got["enriched"][i], got["plain"][i]
		if e.Properties["site"] != "berlin" || e.Properties["tag"] != "overridden" {
			t.Fatalf("enriched message %d: %v", i, e.Properties)
		}
		if fmt.Sprint(p.Properties) != "map[tag:a]" {
			t.Fatalf("plain message %d carries another endpoint's enrichment: %v", i, p.Properties)
		}
	}
}
