package endpoint

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/msglog"
)

// countingLog counts cursor writes.
type countingLog struct {
	msglog.Log
	commits atomic.Int64
}

func (l *countingLog) Commit(ctx context.Context, consumer string, next uint64) error {
	l.commits.Add(1)
	return l.Log.Commit(ctx, consumer, next)
}

// countingSink takes every batch and counts the messages.
type countingSink struct {
	mu  sync.Mutex
	got int
}

func (s *countingSink) Send(_ context.Context, batch []message.Message) error {
	s.mu.Lock()
	s.got += len(batch)
	s.mu.Unlock()
	return nil
}

func (s *countingSink) Close() error { return nil }

func (s *countingSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got
}

func TestCursorCommitsOncePerInterval(t *testing.T) {
	log := msglog.NewMemory()
	cl := &countingLog{Log: log}
	now := time.Unix(1000, 0)
	c := newCursor(cl, "endpoint/x", func() time.Time { return now }, 1)
	ctx := context.Background()
	for i := uint64(2); i < 50; i++ {
		if err := c.advance(ctx, i); err != nil {
			t.Fatal(err)
		}
		now = now.Add(time.Millisecond)
	}
	if n := cl.commits.Load(); n != 0 {
		t.Fatalf("%d cursor writes within %v, want none", n, CursorInterval)
	}
	if want := time.Unix(1000, 0).Add(CursorInterval); !c.due().Equal(want) {
		t.Fatalf("due %v, want %v (interval after the position first moved)", c.due(), want)
	}
	if err := c.commitDue(ctx); err != nil || cl.commits.Load() != 0 {
		t.Fatalf("commitDue before due: err %v, %d writes", err, cl.commits.Load())
	}
	now = time.Unix(1000, 0).Add(CursorInterval)
	if err := c.advance(ctx, 60); err != nil {
		t.Fatal(err)
	}
	if got, _ := log.Cursor(ctx, "endpoint/x"); got != 60 || cl.commits.Load() != 1 {
		t.Fatalf("after the interval: cursor %d after %d writes, want 60 after 1", got, cl.commits.Load())
	}
	if !c.due().IsZero() {
		t.Fatalf("due %v with nothing pending", c.due())
	}
	if err := c.advance(ctx, 60); err != nil || !c.due().IsZero() {
		t.Fatalf("advance to the same position: err %v, due %v", err, c.due())
	}
	// The next interval counts from the next move, not from the last write.
	now = now.Add(time.Hour)
	if err := c.advance(ctx, 61); err != nil || cl.commits.Load() != 1 {
		t.Fatalf("first move after a quiet hour wrote at once (err %v, %d writes)", err, cl.commits.Load())
	}
	now = now.Add(CursorInterval)
	if err := c.commitDue(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := log.Cursor(ctx, "endpoint/x"); got != 61 {
		t.Fatalf("commitDue when due: cursor %d, want 61", got)
	}
}

// A worker writes its cursor a bounded number of times however many batches
// it handles, writes a position left pending when the log goes quiet, and
// writes its last position when it stops.
func TestWorkerCursorWrites(t *testing.T) {
	log := msglog.NewMemory()
	cl := &countingLog{Log: log}
	sink := &countingSink{}
	w := NewWorker(Config{Name: "x", Log: cl, Sink: sink, BatchSize: 1,
		Select: func(uint64, message.Message) (bool, map[string]string) { return true, nil }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()

	start := time.Now()
	appendN(t, log, 200, "a") // BatchSize 1: 200 batches
	waitFor(t, "200 deliveries", func() bool { return sink.count() == 200 })
	waitFor(t, "the cursor written after the log went quiet", func() bool {
		c, _ := log.Cursor(context.Background(), w.Consumer())
		return c == 201
	})
	elapsed := time.Since(start)
	if n, most := cl.commits.Load(), int64(elapsed/CursorInterval)+2; n > most {
		t.Fatalf("%d cursor writes for 200 batches in %v, want at most %d", n, elapsed, most)
	}

	// Stopping right after a delivery writes the position at once.
	appendN(t, log, 1, "a")
	waitFor(t, "201st delivery", func() bool { return sink.count() == 201 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if c, _ := log.Cursor(context.Background(), w.Consumer()); c != 202 {
		t.Fatalf("cursor %d after stop, want 202", c)
	}
}
