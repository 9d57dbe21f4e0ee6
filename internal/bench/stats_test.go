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

func TestPerSecondP99(t *testing.T) {
	tr := newTracker(1, 400)
	base := time.Unix(1000, 0)
	// Second 0: 200 messages at 2 ms, second 1: 199 at 3 ms and one at 50 ms
	// (its p99), second 2: too few to count.
	for i := range 400 {
		sent := base.Add(time.Duration(i/200) * time.Second).Add(time.Duration(i%200) * time.Millisecond)
		lat := 2 * time.Millisecond
		if i >= 200 {
			lat = 3 * time.Millisecond
		}
		if i == 399 {
			lat = 50 * time.Millisecond
		}
		tr.record(stamp{0, i, sent.UnixNano()}, sent.Add(lat))
	}
	tr.record(stamp{0, 0, base.Add(2 * time.Second).UnixNano()}, base.Add(3*time.Second)) // a duplicate: not counted
	got := tr.perSecondP99(100)
	if len(got) != 2 || got[0] != 2 || got[1] != 3 {
		t.Fatalf("perSecondP99 = %v, want [2 3]", got)
	}
	if got := tr.perSecondP99(201); len(got) != 0 {
		t.Fatalf("with 201 samples required: %v", got)
	}
}

func TestSteady(t *testing.T) {
	for _, tc := range []struct {
		xs   []int64
		want bool
	}{
		{[]int64{100, 100, 100}, true},
		{[]int64{1000, 995, 1000, 991}, true},
		{[]int64{1000, 989}, false},
		{[]int64{300, 420, 420, 420}, false}, // the collection after a connect storm has not come yet
		{[]int64{5}, true},
	} {
		if got := steady(tc.xs, 0.01); got != tc.want {
			t.Errorf("steady(%v) = %v, want %v", tc.xs, got, tc.want)
		}
	}
}
