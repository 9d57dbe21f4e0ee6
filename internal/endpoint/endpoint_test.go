package endpoint

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
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
		Select: func(_ uint64, m message.Message) (bool, map[string]string) {
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
		Select: func(uint64, message.Message) (bool, map[string]string) { return true, nil }})
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
		Select: func(uint64, message.Message) (bool, map[string]string) { return true, nil },
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

// memBatcher is a Batcher that keeps its units in memory: the worker's
// side of the contract is what these tests exercise (the storage sink's
// side runs against Azurite in blob_azurite_test.go).
type memBatcher struct {
	mu        sync.Mutex
	capacity  int       // messages per unit; 0 is unlimited
	due       time.Time // FlushDue
	pending   []message.Message
	units     [][]message.Message
	stageFail int // the next Stage calls that fail
	flushFail int // the next Flush calls that fail; <0 forever
	flushes   int
	discards  int
	greedy    bool // violates the contract: takes nothing into an empty unit
}

func (b *memBatcher) Send(context.Context, []message.Message) error {
	return fmt.Errorf("Send called on a Batcher")
}
func (b *memBatcher) Close() error { return nil }

func (b *memBatcher) Stage(_ context.Context, batch []message.Message) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stageFail > 0 {
		b.stageFail--
		return 0, fmt.Errorf("stage refused")
	}
	if b.greedy {
		return 0, nil
	}
	n := len(batch)
	if b.capacity > 0 {
		n = min(n, b.capacity-len(b.pending))
	}
	b.pending = append(b.pending, batch[:n]...)
	return n, nil
}

func (b *memBatcher) FlushDue() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.due
}

func (b *memBatcher) Flush(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushes++
	if b.flushFail != 0 {
		if b.flushFail > 0 {
			b.flushFail--
		}
		return fmt.Errorf("commit refused")
	}
	if len(b.pending) > 0 {
		b.units = append(b.units, b.pending)
	}
	b.pending = nil
	b.due = time.Now().Add(time.Hour)
	return nil
}

func (b *memBatcher) Discard() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.discards++
	b.pending = nil
	b.due = time.Now().Add(time.Hour)
}

func (b *memBatcher) set(f func(b *memBatcher)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f(b)
}

func (b *memBatcher) committed() (units [][]message.Message, pending int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][]message.Message(nil), b.units...), len(b.pending)
}

func startWorker(t *testing.T, cfg Config) (*Worker, func() error) {
	t.Helper()
	if cfg.Select == nil {
		cfg.Select = func(_ uint64, m message.Message) (bool, map[string]string) { return m.Properties["tag"] != "skip", nil }
	}
	cfg.Name, cfg.MinBackoff, cfg.MaxBackoff = "batch", time.Millisecond, 5*time.Millisecond
	w := NewWorker(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	stopped := false
	var result error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			result = <-done
		}
		return result
	}
	t.Cleanup(func() { _ = stop() })
	return w, stop
}

func TestWorkerBatcherCommitsCursorWithTheUnit(t *testing.T) {
	log := msglog.NewMemory()
	b := &memBatcher{due: time.Now().Add(time.Hour)}
	appendN(t, log, 5, "a")
	appendN(t, log, 3, "skip")
	appendN(t, log, 4, "a")
	w, stop := startWorker(t, Config{Log: log, Sink: b, BatchSize: 4})
	waitFor(t, "9 staged", func() bool { _, p := b.committed(); return p == 9 })
	time.Sleep(50 * time.Millisecond)
	if c, _ := log.Cursor(context.Background(), w.Consumer()); c != 1 {
		t.Fatalf("cursor %d before the unit was flushed", c)
	}
	// The worker reads FlushDue before it waits: a new record wakes it.
	b.set(func(b *memBatcher) { b.due = time.Now() })
	appendN(t, log, 1, "skip")
	waitFor(t, "the cursor past the unit", func() bool {
		c, _ := log.Cursor(context.Background(), w.Consumer())
		return c == 14
	})
	units, _ := b.committed()
	if len(units) != 1 || len(units[0]) != 9 {
		t.Fatalf("units %v", units)
	}
	// With nothing pending, skipped records move the cursor at once.
	appendN(t, log, 2, "skip")
	waitFor(t, "the cursor past skipped records", func() bool {
		c, _ := log.Cursor(context.Background(), w.Consumer())
		return c == 16
	})
	// Shutdown does not flush a half unit; the cursor stays at its start.
	appendN(t, log, 3, "a")
	waitFor(t, "3 staged", func() bool { _, p := b.committed(); return p == 3 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if c, _ := log.Cursor(context.Background(), w.Consumer()); c != 16 {
		t.Fatalf("cursor %d after shutdown mid-unit", c)
	}
	if b.flushes != 1 {
		t.Fatalf("%d flushes; shutdown must not flush", b.flushes)
	}
	if h := w.Health(); h.HealthStatus != Healthy {
		t.Fatalf("health %+v", h)
	}
}

func TestWorkerBatcherFullUnits(t *testing.T) {
	log := msglog.NewMemory()
	b := &memBatcher{capacity: 4, due: time.Now().Add(time.Hour)}
	appendN(t, log, 3, "a")
	appendN(t, log, 2, "skip")
	appendN(t, log, 8, "a")
	w, _ := startWorker(t, Config{Log: log, Sink: b, BatchSize: 7})
	// 11 messages in units of 4: two full units flushed, 3 pending.
	waitFor(t, "two full units", func() bool { u, p := b.committed(); return len(u) == 2 && p == 3 })
	units, _ := b.committed()
	var got []string
	for _, u := range units {
		for _, m := range u {
			got = append(got, string(m.Body))
		}
	}
	want := []string{`{"n":0,"tag":"a"}`, `{"n":1,"tag":"a"}`, `{"n":2,"tag":"a"}`, `{"n":0,"tag":"a"}`,
		`{"n":1,"tag":"a"}`, `{"n":2,"tag":"a"}`, `{"n":3,"tag":"a"}`, `{"n":4,"tag":"a"}`}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("units %v", got)
	}
	// The cursor is just past the second unit's last message (offset 10).
	time.Sleep(20 * time.Millisecond)
	if c, _ := log.Cursor(context.Background(), w.Consumer()); c != 11 {
		t.Fatalf("cursor %d, want 11", c)
	}
}

func TestWorkerBatcherRetriesAndDeadLetters(t *testing.T) {
	log, dead := msglog.NewMemory(), msglog.NewMemory()
	b := &memBatcher{due: time.Now().Add(time.Hour), stageFail: 3, flushFail: 2}
	appendN(t, log, 6, "a")
	tags := map[string]string{}
	var tagsMu sync.Mutex
	w, _ := startWorker(t, Config{Log: log, Sink: b, DeadLetters: dead, RetryPeriod: 100 * time.Millisecond,
		Select: func(_ uint64, m message.Message) (bool, map[string]string) {
			tagsMu.Lock()
			defer tagsMu.Unlock()
			return m.Properties["tag"] != "skip", map[string]string{"route": tags["route"]}
		}})
	waitFor(t, "6 staged after failed stages", func() bool { _, p := b.committed(); return p == 6 })
	if h := w.Health(); h.HealthStatus != Degraded || !strings.Contains(h.LastKnownError, "stage refused") {
		t.Fatalf("health after failed stages: %+v", h)
	}
	// Failed flushes are retried with the same unit.
	b.set(func(b *memBatcher) { b.due = time.Now() })
	appendN(t, log, 1, "skip") // wakes the worker
	waitFor(t, "the unit after failed flushes", func() bool { u, _ := b.committed(); return len(u) == 1 })
	if units, _ := b.committed(); len(units[0]) != 6 {
		t.Fatalf("unit of %d", len(units[0]))
	}
	// A flush that fails for the retry period dead-letters the unit, read
	// again from the log and routed again (the enrichment is the current one).
	tagsMu.Lock()
	tags["route"] = "second"
	tagsMu.Unlock()
	appendN(t, log, 2, "skip")
	appendN(t, log, 4, "b")
	waitFor(t, "4 staged", func() bool { _, p := b.committed(); return p == 4 })
	b.set(func(b *memBatcher) { b.flushFail, b.due = -1, time.Now() })
	appendN(t, log, 1, "skip")
	waitFor(t, "dead letters", func() bool { return dead.Last() == 4 })
	waitFor(t, "cursor past the dead letters", func() bool {
		c, _ := log.Cursor(context.Background(), w.Consumer())
		return c == 15
	})
	recs, _ := dead.Read(context.Background(), 1, 10)
	for i, r := range recs {
		m, _ := msglog.DecodeMessage(r.Data)
		if m.Properties["tag"] != "b" || m.Properties["route"] != "second" || string(m.Body) != fmt.Sprintf(`{"n":%d,"tag":"b"}`, i) {
			t.Fatalf("dead letter %d: %s %v", i, m.Body, m.Properties)
		}
	}
	if h := w.Health(); h.HealthStatus != Dead || b.discards != 1 {
		t.Fatalf("health %+v, %d discards", h, b.discards)
	}
	// A stage that fails for the retry period dead-letters the batch too.
	b.set(func(b *memBatcher) { b.flushFail, b.stageFail, b.due = 0, 1<<30, time.Now().Add(time.Hour) })
	appendN(t, log, 3, "c")
	waitFor(t, "dead letters of the batch", func() bool { return dead.Last() == 7 })
	waitFor(t, "cursor past them", func() bool {
		c, _ := log.Cursor(context.Background(), w.Consumer())
		return c == 18
	})
}

func TestWorkerBatcherContract(t *testing.T) {
	log := msglog.NewMemory()
	appendN(t, log, 1, "a")
	w := NewWorker(Config{Name: "batch", Log: log, Sink: &memBatcher{greedy: true},
		Select: func(uint64, message.Message) (bool, map[string]string) { return true, nil }})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.Run(ctx); err == nil || !strings.Contains(err.Error(), "staged nothing into an empty unit") {
		t.Fatalf("Run: %v", err)
	}
}

// TestBatchBytesBound: a batch stops at MaxBatchBytes (but holds at least one
// message), so large messages do not make huge requests; all are delivered.
func TestBatchBytesBound(t *testing.T) {
	log := msglog.NewMemory()
	body := bytes.Repeat([]byte("x"), 1000)
	for range 10 {
		rec, err := msglog.EncodeMessage(message.Message{Body: body})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := log.Append(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var sizes []int
	sink := sinkFunc(func(batch []message.Message) error {
		mu.Lock()
		sizes = append(sizes, len(batch))
		mu.Unlock()
		return nil
	})
	w := NewWorker(Config{Name: "big", Log: log, Sink: sink, MaxBatchBytes: 2500, Logger: slog.New(slog.DiscardHandler),
		Select: func(uint64, message.Message) (bool, map[string]string) { return true, nil }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, _ := log.Cursor(context.Background(), w.Consumer())
		if c == 11 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cursor at %d, want 11", c)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for _, n := range sizes {
		if n > 2 {
			t.Fatalf("batch sizes %v: over 2500 bytes in one batch", sizes)
		}
		total += n
	}
	if total != 10 {
		t.Fatalf("delivered %d of 10 (batches %v)", total, sizes)
	}
}

// sinkFunc is a Sink made of a function.
type sinkFunc func(batch []message.Message) error

func (f sinkFunc) Send(_ context.Context, batch []message.Message) error { return f(batch) }
func (sinkFunc) Close() error                                            { return nil }
