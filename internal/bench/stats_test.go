package bench

import (
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	var ns []int64
	for i := 1000; i >= 1; i-- {
		ns = append(ns, int64(i)*int64(time.Millisecond))
	}
	l := summarize(ns)
	if l.Samples != 1000 || l.P50 != 500 || l.P99 != 990 || l.P999 != 999 || l.Max != 1000 {
		t.Fatalf("summarize = %+v", l)
	}
	if got := summarize(nil); got != (Latency{}) {
		t.Fatalf("summarize(nil) = %+v", got)
	}
	if got := summarize([]int64{int64(time.Millisecond)}); got.P50 != 1 || got.P999 != 1 {
		t.Fatalf("one sample: %+v", got)
	}
}

func TestTracker(t *testing.T) {
	tr := newTracker(2, 3)
	now := time.Now()
	sent := now.Add(-2 * time.Millisecond).UnixNano()
	for _, s := range []stamp{{0, 0, sent}, {0, 1, sent}, {1, 2, sent}, {0, 1, sent}, {2, 0, sent}, {0, 3, sent}} {
		tr.record(s, now)
	}
	if u, d, f := tr.unique.Load(), tr.dups.Load(), tr.foreign.Load(); u != 3 || d != 1 || f != 2 {
		t.Fatalf("unique %d dups %d foreign %d, want 3 1 2", u, d, f)
	}
	if l := tr.latency(); l.Samples != 3 || l.P50 != 2 {
		t.Fatalf("latency %+v", l)
	}
	if !tr.waitFor(3, time.Second, time.Now().Add(time.Second)) {
		t.Fatal("waitFor(3) = false with 3 received")
	}
	start := time.Now()
	if tr.waitFor(4, 50*time.Millisecond, time.Now().Add(5*time.Second)) {
		t.Fatal("waitFor(4) = true with 3 received")
	}
	if time.Since(start) > 2*time.Second {
		t.Fatal("waitFor did not give up after the idle time")
	}
}

func TestGroup(t *testing.T) {
	for in, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -4500: "-4,500"} {
		if got := group(in); got != want {
			t.Errorf("group(%d) = %q, want %q", in, got, want)
		}
	}
}
