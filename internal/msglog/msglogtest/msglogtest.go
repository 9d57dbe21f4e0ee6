// Package msglogtest is the conformance suite every msglog.Log implementation
// must pass: the embedded pebble log, the in-memory log, and the JetStream log
// of clustered hubs. Run checks the semantics any Log has; RunDurable adds
// what must survive closing and reopening.
package msglogtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/msglog"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Run checks a Log implementation. open returns a new, empty log each call;
// the suite closes it (a second Close is allowed to fail).
func Run(t *testing.T, open func(t *testing.T) msglog.Log) {
	fresh := func(t *testing.T) msglog.Log {
		l := open(t)
		t.Cleanup(func() { _ = l.Close() })
		return l
	}
	t.Run("OrderAndRead", func(t *testing.T) { testOrder(t, fresh(t)) })
	t.Run("ConcurrentAppendsNoGaps", func(t *testing.T) { testConcurrent(t, fresh(t)) })
	t.Run("Wait", func(t *testing.T) { testWait(t, fresh(t)) })
	t.Run("Cursors", func(t *testing.T) { testCursors(t, fresh(t)) })
	t.Run("Trim", func(t *testing.T) { testTrim(t, fresh(t)) })
	t.Run("CancelledContext", func(t *testing.T) { testCancelled(t, fresh(t)) })
	t.Run("Close", func(t *testing.T) { testClose(t, open(t)) })
	if _, ok := fresh(t).(msglog.AsyncAppender); ok {
		t.Run("AppendAsync", func(t *testing.T) { testAsync(t, fresh(t)) })
	}
}

// RunDurable checks what must survive a reopen. open opens the log called
// name, creating it empty the first time; opening the same name again after
// Close gives back its records, last offset and cursors.
func RunDurable(t *testing.T, open func(t *testing.T, name string) msglog.Log) {
	t.Run("Reopen", func(t *testing.T) { testReopen(t, open) })
	t.Run("TrimmedEmptyReopen", func(t *testing.T) { testTrimmedReopen(t, open) })
}

func appendN(t *testing.T, l msglog.Log, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		off, err := l.Append(ctxT(t), payload(i))
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		if off != uint64(i) {
			t.Fatalf("append %d got offset %d", i, off)
		}
	}
}

func payload(i int) []byte { return fmt.Appendf(nil, "record-%d", i) }

// checkRange asserts recs are offsets from..to with their payloads.
func checkRange(t *testing.T, recs []msglog.Record, from, to int) {
	t.Helper()
	if len(recs) != to-from+1 {
		t.Fatalf("read %d records, want %d (offsets %d..%d)", len(recs), to-from+1, from, to)
	}
	for i, r := range recs {
		want := from + i
		if r.Offset != uint64(want) || string(r.Data) != string(payload(want)) {
			t.Fatalf("record %d: offset %d data %q, want %d %q", i, r.Offset, r.Data, want, payload(want))
		}
	}
}

func read(t *testing.T, l msglog.Log, from uint64, max int) []msglog.Record {
	t.Helper()
	recs, err := l.Read(ctxT(t), from, max)
	if err != nil {
		t.Fatalf("read from %d: %v", from, err)
	}
	return recs
}

func testOrder(t *testing.T, l msglog.Log) {
	if l.Last() != 0 {
		t.Fatalf("empty log: Last = %d", l.Last())
	}
	if recs := read(t, l, 1, 10); len(recs) != 0 {
		t.Fatalf("empty log read %d records", len(recs))
	}
	appendN(t, l, 1, 100)
	if l.Last() != 100 {
		t.Fatalf("Last = %d, want 100", l.Last())
	}
	checkRange(t, read(t, l, 1, 1000), 1, 100)
	checkRange(t, read(t, l, 0, 5), 1, 5)
	checkRange(t, read(t, l, 50, 10), 50, 59)
	checkRange(t, read(t, l, 95, 10), 95, 100)
	if recs := read(t, l, 101, 10); len(recs) != 0 {
		t.Fatalf("read past the end returned %d records", len(recs))
	}
	if recs := read(t, l, 1, 0); len(recs) != 0 {
		t.Fatalf("read of max 0 returned %d records", len(recs))
	}
	// Records returned may be shared with other readers (Log.Read): they are
	// not the caller's to change, so nothing here writes to them.
	// Empty records are records too.
	off, err := l.Append(ctxT(t), nil)
	if err != nil || off != 101 {
		t.Fatalf("append empty: %d %v", off, err)
	}
	if recs := read(t, l, 101, 1); len(recs) != 1 || len(recs[0].Data) != 0 {
		t.Fatalf("empty record read back as %v", recs)
	}
}

func testConcurrent(t *testing.T, l msglog.Log) {
	const writers, each = 32, 100
	type ack struct {
		off  uint64
		data string
	}
	acks := make([][]ack, writers)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var prev uint64
			for i := range each {
				data := fmt.Sprintf("w%d-%d", w, i)
				off, err := l.Append(context.Background(), []byte(data))
				if err != nil {
					errs <- err
					return
				}
				if off <= prev {
					errs <- fmt.Errorf("writer %d: offset %d after %d", w, off, prev)
					return
				}
				prev = off
				acks[w] = append(acks[w], ack{off, data})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	want := map[uint64]string{}
	for _, as := range acks {
		for _, a := range as {
			if _, dup := want[a.off]; dup {
				t.Fatalf("offset %d handed out twice", a.off)
			}
			want[a.off] = a.data
		}
	}
	if l.Last() != writers*each {
		t.Fatalf("Last = %d, want %d", l.Last(), writers*each)
	}
	recs := read(t, l, 1, writers*each+10)
	if len(recs) != writers*each {
		t.Fatalf("read %d records, want %d", len(recs), writers*each)
	}
	for i, r := range recs {
		if r.Offset != uint64(i+1) {
			t.Fatalf("gap: record %d has offset %d", i, r.Offset)
		}
		if string(r.Data) != want[r.Offset] {
			t.Fatalf("offset %d holds %q, its appender got %q", r.Offset, r.Data, want[r.Offset])
		}
	}
}

func testWait(t *testing.T, l msglog.Log) {
	appendN(t, l, 1, 3)
	if err := l.Wait(ctxT(t), 2); err != nil {
		t.Fatalf("Wait for an existing record: %v", err)
	}
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := l.Wait(short, 3); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with nothing new returned %v, want the context's deadline", err)
	}
	const waiters = 5
	woke := make(chan error, waiters)
	started := make(chan struct{}, waiters)
	for range waiters {
		go func() {
			started <- struct{}{}
			woke <- l.Wait(context.Background(), 3)
		}()
	}
	for range waiters {
		<-started
	}
	select {
	case err := <-woke:
		t.Fatalf("Wait returned %v before anything was appended", err)
	default:
	}
	appendN(t, l, 4, 1)
	for range waiters {
		select {
		case err := <-woke:
			if err != nil {
				t.Fatalf("woken Wait: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Wait not woken by an append")
		}
	}
}

func testCursors(t *testing.T, l msglog.Log) {
	ctx := ctxT(t)
	for _, c := range []string{"events", "route/a", ""} {
		if n, err := l.Cursor(ctx, c); err != nil || n != 1 {
			t.Fatalf("new cursor %q = %d, %v; want 1", c, n, err)
		}
	}
	appendN(t, l, 1, 10)
	if err := l.Commit(ctx, "events", 5); err != nil {
		t.Fatal(err)
	}
	if err := l.Commit(ctx, "route/a", 11); err != nil {
		t.Fatal(err)
	}
	if n, _ := l.Cursor(ctx, "events"); n != 5 {
		t.Fatalf("cursor events = %d, want 5", n)
	}
	if n, _ := l.Cursor(ctx, "route/a"); n != 11 {
		t.Fatalf("cursor route/a = %d, want 11", n)
	}
	if n, _ := l.Cursor(ctx, "route"); n != 1 {
		t.Fatalf("cursor route (a prefix of another) = %d, want 1", n)
	}
	if err := l.Commit(ctx, "events", 8); err != nil {
		t.Fatal(err)
	}
	if n, _ := l.Cursor(ctx, "events"); n != 8 {
		t.Fatalf("cursor events = %d after commit 8", n)
	}
	if err := l.Commit(ctx, "events", 0); err == nil {
		t.Fatal("commit of offset 0 accepted")
	}
}

func testTrim(t *testing.T, l msglog.Log) {
	ctx := ctxT(t)
	appendN(t, l, 1, 10)
	if err := l.Trim(ctx, 5); err != nil {
		t.Fatal(err)
	}
	checkRange(t, read(t, l, 1, 100), 5, 10)
	checkRange(t, read(t, l, 3, 2), 5, 6)
	if l.Last() != 10 {
		t.Fatalf("Last = %d after trim", l.Last())
	}
	if err := l.Trim(ctx, 3); err != nil { // below the floor: nothing to do
		t.Fatal(err)
	}
	checkRange(t, read(t, l, 1, 100), 5, 10)
	appendN(t, l, 11, 2)
	if err := l.Trim(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	if recs := read(t, l, 1, 100); len(recs) != 0 {
		t.Fatalf("read %d records after trimming everything", len(recs))
	}
	if l.Last() != 12 {
		t.Fatalf("Last = %d after trimming everything, want 12", l.Last())
	}
	appendN(t, l, 13, 2)
	checkRange(t, read(t, l, 1, 100), 13, 14)
}

func testCancelled(t *testing.T, l msglog.Log) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Append(ctx, []byte("x")); err == nil {
		t.Fatal("append with a cancelled context succeeded")
	}
	if err := l.Wait(ctx, 0); err == nil {
		t.Fatal("Wait with a cancelled context on an empty log succeeded")
	}
	appendN(t, l, 1, 1) // the cancelled append took no offset
}

func testClose(t *testing.T, l msglog.Log) {
	ctx := ctxT(t)
	appendN(t, l, 1, 2)
	woke := make(chan error, 1)
	go func() { woke <- l.Wait(context.Background(), 2) }()
	if err := l.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	select {
	case err := <-woke:
		if !errors.Is(err, msglog.ErrClosed) {
			t.Fatalf("Wait on a closing log returned %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not wake a waiter")
	}
	if _, err := l.Append(ctx, []byte("x")); !errors.Is(err, msglog.ErrClosed) {
		t.Errorf("Append after Close: %v", err)
	}
	if _, err := l.Read(ctx, 1, 10); !errors.Is(err, msglog.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
	if err := l.Wait(ctx, 2); !errors.Is(err, msglog.ErrClosed) {
		t.Errorf("Wait after Close: %v", err)
	}
	if _, err := l.Cursor(ctx, "c"); !errors.Is(err, msglog.ErrClosed) {
		t.Errorf("Cursor after Close: %v", err)
	}
	if err := l.Commit(ctx, "c", 2); !errors.Is(err, msglog.ErrClosed) {
		t.Errorf("Commit after Close: %v", err)
	}
	if err := l.Trim(ctx, 2); !errors.Is(err, msglog.ErrClosed) {
		t.Errorf("Trim after Close: %v", err)
	}
	if err := l.Close(); err != nil && !errors.Is(err, msglog.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
}

// testReopen: records, the last offset and cursors survive a reopen, and so
// does every Append that returned an offset while Close was racing it.
func testReopen(t *testing.T, open func(t *testing.T, name string) msglog.Log) {
	ctx := ctxT(t)
	l := open(t, "reopen")
	appendN(t, l, 1, 20)
	if err := l.Commit(ctx, "events", 7); err != nil {
		t.Fatal(err)
	}
	if err := l.Commit(ctx, "route/x", 21); err != nil {
		t.Fatal(err)
	}
	if err := l.Trim(ctx, 3); err != nil {
		t.Fatal(err)
	}

	// Appends racing Close: each either fails or is there after reopening.
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := map[uint64]string{}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				data := fmt.Sprintf("race-%d-%d", w, i)
				off, err := l.Append(context.Background(), []byte(data))
				if err != nil {
					return
				}
				mu.Lock()
				acked[off] = data
				mu.Unlock()
			}
		}()
	}
	time.Sleep(10 * time.Millisecond) // let the racers get going; correctness does not depend on it
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	l = open(t, "reopen")
	defer l.Close()
	want := uint64(20 + len(acked))
	if l.Last() != want {
		t.Fatalf("Last after reopen = %d, want %d", l.Last(), want)
	}
	recs := read(t, l, 1, 100000)
	checkRange(t, recs[:18], 3, 20)
	for _, r := range recs[18:] {
		if acked[r.Offset] != string(r.Data) {
			t.Fatalf("offset %d holds %q after reopen, acked %q", r.Offset, r.Data, acked[r.Offset])
		}
	}
	offs := make([]uint64, 0, len(acked))
	for o := range acked {
		offs = append(offs, o)
	}
	slices.Sort(offs)
	for i, o := range offs {
		if o != uint64(21+i) {
			t.Fatalf("acknowledged offsets are not 21..: %v", offs)
		}
	}
	if n, err := l.Cursor(ctx, "events"); err != nil || n != 7 {
		t.Fatalf("cursor events after reopen = %d, %v", n, err)
	}
	if n, err := l.Cursor(ctx, "route/x"); err != nil || n != 21 {
		t.Fatalf("cursor route/x after reopen = %d, %v", n, err)
	}
	off, err := l.Append(ctx, []byte("after"))
	if err != nil || off != want+1 {
		t.Fatalf("append after reopen: %d %v, want offset %d", off, err, want+1)
	}
}

func testTrimmedReopen(t *testing.T, open func(t *testing.T, name string) msglog.Log) {
	ctx := ctxT(t)
	l := open(t, "trimmed")
	appendN(t, l, 1, 5)
	if err := l.Trim(ctx, 6); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = open(t, "trimmed")
	defer l.Close()
	if l.Last() != 5 {
		t.Fatalf("Last of a log trimmed empty = %d after reopen, want 5", l.Last())
	}
	appendN(t, l, 6, 1)
}

func testAsync(t *testing.T, l msglog.Log) {
	a := l.(msglog.AsyncAppender)
	const writers, each = 8, 200
	type res struct {
		off uint64
		err error
		i   int
	}
	results := make([][]res, writers)
	var wg sync.WaitGroup
	for w := range writers {
		var mu sync.Mutex
		wg.Add(each)
		go func() {
			for i := range each {
				a.AppendAsync([]byte(fmt.Sprintf("a%d-%d", w, i)), func(off uint64, err error) {
					mu.Lock()
					results[w] = append(results[w], res{off, err, i})
					mu.Unlock()
					wg.Done()
				})
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("AppendAsync callbacks missing")
	}
	seen := map[uint64]string{}
	for w, rs := range results {
		var prev uint64
		for k, r := range rs {
			if r.err != nil {
				t.Fatalf("writer %d append %d: %v", w, r.i, r.err)
			}
			if r.i != k || r.off <= prev {
				t.Fatalf("writer %d: callback %d was for append %d at offset %d after %d: out of order", w, k, r.i, r.off, prev)
			}
			prev = r.off
			seen[r.off] = fmt.Sprintf("a%d-%d", w, r.i)
		}
	}
	recs := read(t, l, 1, writers*each+1)
	if len(recs) != writers*each || l.Last() != writers*each {
		t.Fatalf("%d records, Last %d; want %d", len(recs), l.Last(), writers*each)
	}
	for _, r := range recs {
		if seen[r.Offset] != string(r.Data) {
			t.Fatalf("offset %d holds %q, callback said %q", r.Offset, r.Data, seen[r.Offset])
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	a.AppendAsync([]byte("late"), func(_ uint64, err error) { errc <- err })
	if err := <-errc; !errors.Is(err, msglog.ErrClosed) {
		t.Fatalf("AppendAsync after Close: %v", err)
	}
}
