package endpoint

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/msglog"
)

// receiver is a real HTTP server that fails its first requests.
type receiver struct {
	mu       sync.Mutex
	failures int
	got      []WebhookRecord
	requests atomic.Int64
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.requests.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if req.Header.Get("X-Key") != "k1" {
		http.Error(w, "no key", http.StatusUnauthorized)
		return
	}
	if r.failures > 0 {
		r.failures--
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	var batch []WebhookRecord
	if err := json.NewDecoder(req.Body).Decode(&batch); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.got = append(r.got, batch...)
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) bodies() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, g := range r.got {
		out = append(out, string(g.Body)+g.BodyText)
	}
	return out
}

func appendN(t *testing.T, l msglog.Log, n int, tag string) {
	t.Helper()
	for i := range n {
		m := message.Message{Body: []byte(fmt.Sprintf(`{"n":%d,"tag":%q}`, i, tag)), System: map[string]string{message.SysConnectionDevice: "d1"}, Properties: map[string]string{"tag": tag}, Enqueued: time.Now()}
		rec, err := msglog.EncodeMessage(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Append(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWorkerRetriesSelectsEnrichesAndCommits(t *testing.T) {
	rcv := &receiver{failures: 3}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	log := msglog.NewMemory()
	appendN(t, log, 10, "a")
	appendN(t, log, 5, "skip")
	w := NewWorker(Config{
		Name: "hook", Log: log, BatchSize: 4, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		Sink: NewWebhook(WebhookConfig{Name: "hook", URL: srv.URL, Headers: map[string]string{"X-Key": "k1"}}, nil),
		Select: func(m message.Message) (bool, map[string]string) {
			return m.Properties["tag"] == "a", map[string]string{"site": "berlin"}
		},
	})
	if h := w.Health(); h.HealthStatus != Unknown {
		t.Fatalf("initial health %s", h.HealthStatus)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	waitFor(t, "10 deliveries", func() bool { return len(rcv.bodies()) >= 10 })
	waitFor(t, "cursor past the skipped messages", func() bool {
		c, _ := log.Cursor(context.Background(), w.Consumer())
		return c == 16
	})
	got := rcv.bodies()
	for i, b := range got[:10] {
		if b != fmt.Sprintf(`{"n":%d,"tag":"a"}`, i) {
			t.Fatalf("delivery %d = %s (in order, skipped ones excluded)", i, b)
		}
	}
	rcv.mu.Lock()
	if rcv.got[0].Properties["site"] != "berlin" || rcv.got[0].Properties["tag"] != "a" {
		t.Fatalf("enrichment missing: %v", rcv.got[0].Properties)
	}
	rcv.mu.Unlock()
	h := w.Health()
	if h.HealthStatus != Degraded || h.LastKnownError == "" || h.LastSuccessfulSendAttemptTime.IsZero() {
		t.Fatalf("after recovery: %+v", h)
	}
	// More traffic brings it back to healthy.
	appendN(t, log, 40, "a")
	waitFor(t, "healthy", func() bool { return w.Health().HealthStatus == Healthy })
	waitFor(t, "cursor at the end", func() bool {
		c, _ := log.Cursor(context.Background(), w.Consumer())
		return c == log.Last()+1
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}

	// A new worker resumes from the committed cursor: nothing is sent twice.
	before := rcv.requests.Load()
	ctx2, cancel2 := context.WithCancel(context.Background())
	w2 := NewWorker(Config{Name: "hook", Log: log, Sink: NewWebhook(WebhookConfig{URL: srv.URL, Headers: map[string]string{"X-Key": "k1"}}, nil),
		Select: func(message.Message) (bool, map[string]string) { return true, nil }})
	go func() { done <- w2.Run(ctx2) }()
	time.Sleep(100 * time.Millisecond)
	if n := rcv.requests.Load(); n != before {
		t.Fatalf("resumed worker sent %d requests for already delivered messages", n-before)
	}
	cancel2()
	<-done
}

func TestWorkerDeadLettersAfterRetryPeriod(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down", http.StatusBadGateway)
	}))
	defer srv.Close()
	log, dead := msglog.NewMemory(), msglog.NewMemory()
	appendN(t, log, 3, "a")
	w := NewWorker(Config{
		Name: "hook", Log: log, DeadLetters: dead, RetryPeriod: 50 * time.Millisecond,
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond,
		Sink:   NewWebhook(WebhookConfig{Name: "hook", URL: srv.URL}, nil),
		Select: func(message.Message) (bool, map[string]string) { return true, nil },
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	waitFor(t, "dead letters", func() bool { return dead.Last() == 3 })
	waitFor(t, "cursor past the dead letters", func() bool {
		c, _ := log.Cursor(context.Background(), w.Consumer())
		return c == 4
	})
	h := w.Health()
	if h.HealthStatus != Dead || h.LastKnownError == "" {
		t.Fatalf("health %+v", h)
	}
	recs, _ := dead.Read(context.Background(), 1, 10)
	m, err := msglog.DecodeMessage(recs[0].Data)
	if err != nil || string(m.Body) != `{"n":0,"tag":"a"}` {
		t.Fatalf("dead letter 1: %s %v", m.Body, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestWebhookBodies(t *testing.T) {
	var got []WebhookRecord
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewDecoder(r.Body).Decode(&got)
	}))
	defer srv.Close()
	h := NewWebhook(WebhookConfig{URL: srv.URL}, nil)
	err := h.Send(context.Background(), []message.Message{{Body: []byte(`{"a":1}`)}, {Body: []byte("plain text")}, {Body: []byte{0xff, 0x00}}})
	if err != nil {
		t.Fatal(err)
	}
	if string(got[0].Body) != `{"a":1}` || got[1].BodyText != "plain text" || len(got[2].BodyBase64) != 2 {
		t.Fatalf("got %+v", got)
	}
}

func TestTrimBehindSlowestWorker(t *testing.T) {
	ctx := context.Background()
	log := msglog.NewMemory()
	appendN(t, log, 10, "a")
	fast := NewWorker(Config{Name: "fast", Log: log})
	slow := NewWorker(Config{Name: "slow", Log: log})
	if first, err := TrimBehind(ctx, log, []*Worker{fast, slow}); err != nil || first != 1 {
		t.Fatalf("nothing delivered yet: %d %v", first, err)
	}
	if recs, _ := log.Read(ctx, 1, 1); len(recs) != 1 || recs[0].Offset != 1 {
		t.Fatalf("trimmed before anything was delivered: %+v", recs)
	}
	if err := log.Commit(ctx, fast.Consumer(), 11); err != nil {
		t.Fatal(err)
	}
	if err := log.Commit(ctx, slow.Consumer(), 4); err != nil {
		t.Fatal(err)
	}
	first, err := TrimBehind(ctx, log, []*Worker{fast, slow})
	if err != nil || first != 4 {
		t.Fatalf("trim: %d %v", first, err)
	}
	recs, _ := log.Read(ctx, 1, 100)
	if len(recs) != 7 || recs[0].Offset != 4 {
		t.Fatalf("after trim the log starts at %d with %d records", recs[0].Offset, len(recs))
	}
}
