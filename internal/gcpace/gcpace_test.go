package gcpace

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name           string
		live, headroom uint64
		want           int
	}{
		{"nothing live yet", 0, 128 * mib, 100},
		{"small heap: headroom kept", 32 * mib, 128 * mib, 400},
		{"heap grown past half the headroom: still kept", 78 * mib, 128 * mib, 164},
		{"tiny heap: capped", 1 * mib, 128 * mib, 1000},
		{"just under the headroom", 127 * mib, 128 * mib, 100},
		{"live as large as the headroom: default", 128 * mib, 128 * mib, 100},
		{"large heap: default", 1024 * mib, 128 * mib, 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Percent(tc.live, tc.headroom)
			if got != tc.want {
				t.Fatalf("Percent(%d MiB, %d MiB) = %d, want %d", tc.live/mib, tc.headroom/mib, got, tc.want)
			}
			if tc.live > 0 && got < 1000 {
				// The goal leaves at least the headroom (within rounding).
				if room := tc.live * uint64(got) / 100; room < tc.headroom-tc.headroom/50 {
					t.Fatalf("goal %d MiB above live, want at least %d MiB", room/mib, tc.headroom/mib)
				}
			}
		})
	}
}

func TestBusy(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		rate uint64
		want bool
	}{{0, false}, {12 * mib, false}, {13 * mib, true}, {300 * mib, true}} {
		if got := Busy(tc.rate, 128*mib); got != tc.want {
			t.Errorf("Busy(%d MiB/s) = %v, want %v", tc.rate/mib, got, tc.want)
		}
	}
}

var sink [][]byte

// allocBurst allocates 1 MiB in 1 KiB pieces, keeping at most 4 MiB of them
// reachable: called in a loop, about 1 GiB/s of mostly short-lived garbage.
func allocBurst() {
	for range 1000 {
		sink = append(sink, make([]byte, 1024))
	}
	if len(sink) > 4096 {
		sink = sink[:0]
	}
}

func metric(name string) uint64 {
	s := []metrics.Sample{{Name: name}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func gogc() uint64      { return metric("/gc/gogc:percent") }
func forcedGCs() uint64 { return metric("/gc/cycles/forced:gc-cycles") }

// startRun runs Run in the background until the returned stop is called;
// it skips the test when GOGC is set, which turns pacing off.
func startRun(t *testing.T, headroom uint64) (stop func()) {
	t.Helper()
	return startRunWith(t, Options{Headroom: headroom})
}

func startRunWith(t *testing.T, o Options) (stop func()) {
	t.Helper()
	if os.Getenv("GOGC") != "" {
		t.Skip("GOGC is set: pacing is off")
	}
	o.Interval = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, o)
	}()
	return func() { cancel(); <-done }
}

// Run raises GOGC while the program allocates fast and puts it back to 100
// once allocation stops, and when it ends.
func TestRunFollowsTheLoad(t *testing.T) {
	stop := startRun(t, 64<<20)
	defer func() {
		stop()
		if g := gogc(); g != 100 {
			t.Errorf("GOGC %d after Run ended, want 100", g)
		}
	}()
	waitGOGC := func(busy bool, what string) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if busy { // ~1 GiB/s: far above the 6.4 MiB/s that 64 MiB of headroom needs
				allocBurst()
			}
			if g := gogc(); (g > 100) == busy {
				return
			}
			time.Sleep(time.Millisecond)
		}
		t.Fatalf("GOGC still %d: %s", gogc(), what)
	}
	waitGOGC(true, "not raised while allocating fast")
	sink = nil
	waitGOGC(false, "not back to 100 once allocation stopped")
}

// A busy period ends with a collection even when GOGC was never raised
// because the live heap is larger than the headroom.
func TestRunCollectsWhenLoadEnds(t *testing.T) {
	defer func(g time.Duration) { settleGap = g }(settleGap)
	settleGap = 150 * time.Millisecond
	live := make([][]byte, 0, 4096)
	for range 4096 {
		live = append(live, make([]byte, 1024)) // 4 MiB live: above the 1 MiB headroom
	}
	defer startRun(t, 1<<20)()

	// ~1 GiB/s for 200 ms: busy at any interval, while GOGC stays 100.
	for end := time.Now().Add(200 * time.Millisecond); time.Now().Before(end); {
		allocBurst()
		if g := gogc(); g != 100 {
			t.Fatalf("GOGC %d with more live than headroom, want 100", g)
		}
	}
	sink = nil
	before := forcedGCs()
	deadline := time.Now().Add(3 * time.Second)
	for forcedGCs() == before {
		if time.Now().After(deadline) {
			t.Fatal("no collection after the busy period ended")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Then SettleCollections more, settleGap apart, and no others.
	time.Sleep(SettleCollections*settleGap + settleGap/2)
	if n := forcedGCs() - before; n != 1+SettleCollections {
		t.Fatalf("%d collections after the busy period, want 1 and %d to settle", n, SettleCollections)
	}

	// A busy stretch that allocates less than the live heap (busy: 10 MiB/s
	// against the 0.1 MiB/s threshold; 2 MiB in all against 4 MiB live)
	// is not worth a collection of its own.
	after := forcedGCs()
	for end := time.Now().Add(200 * time.Millisecond); time.Now().Before(end); {
		sink = append(sink, make([]byte, 10<<10))
		time.Sleep(time.Millisecond)
	}
	sink = nil
	time.Sleep(200 * time.Millisecond)
	if n := forcedGCs() - after; n != 0 {
		t.Errorf("%d collections after a busy stretch that allocated less than the live heap", n)
	}
	runtime.KeepAlive(live)
}

// While the live heap grows, GOGC is not raised however fast the program
// allocates; once it holds still, it is. With Arrivals, only growth during
// a storm of them holds it.
func TestRunHoldsWhileLiveGrows(t *testing.T) {
	var arrivals atomic.Uint64
	for _, tc := range []struct {
		name   string
		o      Options
		arrive uint64 // per 10 ms
		hold   bool
	}{
		{"any growth", Options{}, 0, true},
		{"connect storm", Options{Arrivals: arrivals.Load}, 100, true}, // 10,000/s
		{"no arrivals", Options{Arrivals: arrivals.Load}, 0, false},
		{"a trickle of arrivals", Options{Arrivals: arrivals.Load}, 1, false}, // 100/s
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Headroom = 512 << 20 // more than the ~100 MiB kept below
			testGrowth(t, tc.o, func() { arrivals.Add(tc.arrive) }, tc.hold)
		})
	}
}

func testGrowth(t *testing.T, o Options, arrive func(), hold bool) {
	debug.SetGCPercent(100)
	runtime.GC()
	defer startRunWith(t, o)()
	var kept [][]byte
	defer func() { runtime.KeepAlive(kept) }()
	start := time.Now()
	for end := start.Add(500 * time.Millisecond); time.Now().Before(end); {
		allocBurst()
		// 2 MiB more kept every 10 ms: the heap grows by far more than a
		// tenth between collections.
		for range 2 {
			kept = append(kept, make([]byte, 1<<20))
		}
		// Growth shows only once two collections have read the live
		// heap, and a raised goal can put the next one far off: collect
		// here, so that the test does not depend on when the runtime
		// would. Until then the load alone counts.
		runtime.GC()
		arrive()
		if g := gogc(); hold && g != 100 && time.Since(start) > 200*time.Millisecond {
			t.Fatalf("GOGC %d while the live heap grows, want 100", g)
		}
		if g := gogc(); !hold && g > 100 && time.Since(start) > 200*time.Millisecond {
			return // raised while the live heap grows: no hold, as wanted
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !hold {
		t.Fatalf("GOGC still %d after 500 ms of growth under load without a storm", gogc())
	}
	deadline := time.Now().Add(GrowthHold + 3*time.Second)
	for gogc() == 100 {
		if time.Now().After(deadline) {
			t.Fatal("GOGC not raised once the live heap held still under load")
		}
		allocBurst()
		time.Sleep(time.Millisecond)
	}
}

// A storm of arrivals brings GOGC down to 100 even before a collection finds
// the live heap grown, and keeps it there while it lasts.
func TestRunStormHoldsAtOnce(t *testing.T) {
	var arrivals atomic.Uint64
	defer startRunWith(t, Options{Headroom: 512 << 20, Arrivals: arrivals.Load})()
	deadline := time.Now().Add(3 * time.Second)
	for gogc() == 100 { // raised first, by the load alone
		if time.Now().After(deadline) {
			t.Fatal("GOGC not raised under load")
		}
		allocBurst()
		time.Sleep(time.Millisecond)
	}
	// Arrivals at 10,000/s and nothing kept: no collection can find the
	// live heap grown, so only the arrivals can bring GOGC down.
	start := time.Now()
	for gogc() != 100 {
		if time.Since(start) > time.Second {
			t.Fatalf("GOGC still %d a second into a storm of arrivals", gogc())
		}
		arrivals.Add(10)
		allocBurst()
		time.Sleep(time.Millisecond)
	}
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
		arrivals.Add(10)
		allocBurst()
		if g := gogc(); g != 100 {
			t.Fatalf("GOGC %d during the storm", g)
		}
		time.Sleep(time.Millisecond)
	}
}
