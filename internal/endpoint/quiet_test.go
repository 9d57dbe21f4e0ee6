package endpoint

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/msglog"
)

func TestQuietnessHold(t *testing.T) {
	now := time.Unix(1000, 0)
	q := newQuietness(func() time.Time { return now })
	ctx := context.Background()
	held := func() time.Duration {
		t.Helper()
		start := time.Now()
		if err := q.hold(ctx); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	q.read(5, 0)
	if d := held(); d > QuietPoll/2 {
		t.Fatalf("held %v right after start, which counts as delivering", d)
	}
	now = now.Add(QuietAfter)
	q.read(5, 0) // nothing of ours for QuietAfter: quiet
	if d := held(); d < QuietPoll*3/4 {
		t.Fatalf("quiet worker held only %v right after a read, want about %v", d, QuietPoll)
	}
	now = now.Add(QuietPoll)
	if d := held(); d > QuietPoll/2 {
		t.Fatalf("quiet worker held %v although its last read was %v ago", d, QuietPoll)
	}
	q.read(5, 1) // one of ours: reads at every commit again
	if d := held(); d > QuietPoll/2 {
		t.Fatalf("held %v right after a delivery", d)
	}
	q.read(0, 0) // an empty read changes nothing
	if !q.lastRead.Equal(now) {
		t.Fatalf("an empty read moved lastRead to %v", q.lastRead)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	now = now.Add(QuietAfter)
	q.read(5, 0)
	if err := q.hold(cctx); err == nil {
		t.Fatal("hold ignored its context")
	}
}

// readCountingLog counts reads that return records.
type readCountingLog struct {
	msglog.Log
	reads atomic.Int64
}

func (l *readCountingLog) Read(ctx context.Context, from uint64, max int) ([]msglog.Record, error) {
	recs, err := l.Log.Read(ctx, from, max)
	if len(recs) > 0 {
		l.reads.Add(1)
	}
	return recs, err
}

// A worker with nothing to deliver reads the log about every QuietPoll
// however often records come, and still delivers the first one for it.
func TestQuietWorkerReadsSeldom(t *testing.T) {
	log := msglog.NewMemory()
	rl := &readCountingLog{Log: log}
	sink := &countingSink{}
	w := NewWorker(Config{Name: "x", Log: rl, Sink: sink,
		Select: func(_ uint64, m message.Message) (bool, map[string]string) { return m.Properties["tag"] == "mine", nil }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	time.Sleep(QuietAfter + 100*time.Millisecond) // a new worker counts as delivering
	before := rl.reads.Load()
	start := time.Now()
	for time.Since(start) < 400*time.Millisecond {
		appendN(t, log, 1, "elsewhere")
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	if n, most := rl.reads.Load()-before, int64(elapsed/QuietPoll)+3; n > most {
		t.Fatalf("quiet worker read %d times in %v of appends, want at most %d", n, elapsed, most)
	}
	appendN(t, log, 1, "mine")
	waitFor(t, "delivery to a quiet endpoint", func() bool { return sink.count() == 1 })
}
