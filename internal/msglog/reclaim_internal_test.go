package msglog

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// A trim that passes a backlog which reached sstables flushes at once, so
// that compaction reclaims it; trims within the memtable do not.
func TestTrimPastSpilledBacklogFlushes(t *testing.T) {
	l, err := OpenPebble(t.TempDir(), PebbleOptions{MemTableSize: 1 << 20, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	appendN := func(n int) {
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			l.AppendAsync(bytes.Repeat([]byte("x"), 200), func(_ uint64, err error) {
				defer wg.Done()
				if err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	flushes := func() int64 { return l.db.Metrics().Flush.Count }
	waitFlushes := func(want int64, within time.Duration) bool {
		deadline := time.Now().Add(within)
		for flushes() < want {
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(10 * time.Millisecond)
		}
		return true
	}

	// A small backlog within one memtable: trimming it flushes nothing.
	appendN(100)
	before := flushes()
	if err := l.Trim(ctx, l.Last()+1); err != nil {
		t.Fatal(err)
	}
	if waitFlushes(before+1, 300*time.Millisecond) {
		t.Fatalf("a trim within the memtable flushed (%d -> %d flushes)", before, flushes())
	}

	// A flush in steady flow spills the last few records: trimming past them
	// flushes nothing more, and the count starts again.
	appendN(1000)
	if err := l.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := l.spilled.Load(); n < 1000 {
		t.Fatalf("spilled %d after a flush of 1000 live records", n)
	}
	before = flushes()
	if err := l.Trim(ctx, l.Last()+1); err != nil {
		t.Fatal(err)
	}
	if waitFlushes(before+1, 300*time.Millisecond) || l.spilled.Load() != 0 {
		t.Fatalf("after trimming past a small spill: %d -> %d flushes, spilled %d", before, flushes(), l.spilled.Load())
	}

	// A backlog of many memtables' worth: it spills to sstables.
	appendN(3 * spillReclaim)
	if l.spilled.Load() < spillReclaim {
		t.Fatalf("spilled %d records after %d appends to 1 MiB memtables", l.spilled.Load(), 3*spillReclaim)
	}
	// A trim short of the spilled records does nothing yet...
	before = flushes()
	if err := l.Trim(ctx, l.spillTop.Load()-10); err != nil {
		t.Fatal(err)
	}
	if l.spilled.Load() == 0 {
		t.Fatal("a trim that did not pass the spilled records reclaimed")
	}
	// ...one past them flushes.
	if err := l.Trim(ctx, l.Last()+1); err != nil {
		t.Fatal(err)
	}
	if !waitFlushes(before+1, 5*time.Second) {
		t.Fatalf("no flush after trimming past the spilled backlog (%d flushes)", flushes())
	}
	if l.spilled.Load() != 0 {
		t.Fatalf("spilled = %d after reclaiming", l.spilled.Load())
	}
}
