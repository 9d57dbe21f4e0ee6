// Package gcpace paces Go's garbage collector for a long-running hub: under
// load it keeps at least a fixed headroom between the live heap and the heap
// goal, and when the load ends it hands the garbage back at once.
//
// With the default GOGC=100 the collector starts a cycle whenever the heap has
// grown by as much as is live. A hub routing telemetry keeps 30–80 MiB live
// (more after a day of use: the registry's record cache fills) and allocates a
// few hundred MiB/s, so it collected every ~100 ms; keeping 128 MiB of
// headroom cut its CPU per message by a tenth (37 against 40 µs at 30,000
// msg/s on two cores). A fixed goal (the first version) did not hold up once
// the live heap grew: at 78 MiB live the headroom shrank to 78 MiB and the
// collector's share of the hub's CPU doubled. That memory is only worth
// spending while the hub is busy: once allocation slows down, GOGC goes back
// to 100 and one collection returns what the busy period left, so that an
// idle hub's memory is what it holds (memory per idle device would otherwise
// carry the garbage of the connect storm). With a live heap larger than the
// headroom (many connected devices) GOGC stays 100, and the collection at the
// end of a busy period still runs, and two more follow a few seconds apart
// (see SettleCollections). During a connect storm, while the live heap
// grows, the goal is not raised (GrowthHold, StormRate). Setting GOGC in the
// environment turns pacing off.
package gcpace

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// DefaultHeadroom is how far above the live heap the goal is kept at least
// while the hub is busy.
const DefaultHeadroom = 128 << 20

// Percent is the GOGC that puts the next collection headroom bytes above live
// bytes: 100 or more, and at most 1000.
func Percent(live, headroom uint64) int {
	if live == 0 || live >= headroom {
		return 100
	}
	return min(1000, max(100, int(headroom*100/live)))
}

// Busy reports whether an allocation rate (bytes per second) is worth a
// raised goal: at least the headroom every ten seconds.
func Busy(allocRate, headroom uint64) bool { return allocRate >= headroom/10 }

// Options tune Run.
type Options struct {
	// Headroom is how far above the live heap the goal is kept at least
	// while the program is busy (default DefaultHeadroom).
	Headroom uint64
	// Interval is how often Run looks at the heap (default 500 ms).
	Interval time.Duration
	// Arrivals, if set, counts what the program has taken on to keep (for
	// the hub: device sessions established). GOGC is then held at 100
	// (GrowthHold) while arrivals come at StormRate or faster, and other
	// growth of the live heap does not hold it; without Arrivals, any
	// growth a collection finds does.
	Arrivals func() uint64
}

// StormRate is how many arrivals a second make a connect storm, which
// GrowthHold is for. Growth of the live heap alone does not tell one: a
// telemetry stream starting grows it too, once (the hub's working set: 3 →
// 12 MiB), and holding on that kept GOGC at 100 for the first three seconds
// of every burst, fourteen collections a second (p99 at 30,000 msg/s over
// 5 s runs: 13.7–17.0 ms with that hold, 9.5–12.8 without, five pairs).
const StormRate = 500

// Run adjusts GOGC every interval until ctx ends, then puts back 100. It does
// nothing when GOGC is set in the environment.
func Run(ctx context.Context, o Options) {
	if os.Getenv("GOGC") != "" {
		return
	}
	headroom, interval := o.Headroom, o.Interval
	if headroom == 0 {
		headroom = DefaultHeadroom
	}
	if interval <= 0 {
		interval = 500 * time.Millisecond
	}
	var arrived uint64
	if o.Arrivals != nil {
		arrived = o.Arrivals()
	}
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/heap/allocs:bytes"}}
	read := func() (live, allocs uint64, ok bool) {
		metrics.Read(samples)
		for _, s := range samples {
			if s.Value.Kind() != metrics.KindUint64 {
				return 0, 0, false // the runtime no longer offers the metric
			}
		}
		return samples[0].Value.Uint64(), samples[1].Value.Uint64(), true
	}
	_, prevAllocs, ok := read()
	if !ok {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	set, busy := 100, false
	// freedAt is the allocation count at the last collection Run forced.
	freedAt := prevAllocs
	// settle counts the follow-up collections still due after a busy
	// period, the next at settleAt.
	settle, settleAt := 0, time.Time{}
	// lastLive is the live heap the last collection left; grewAt, the last
	// sign of a storm (GrowthHold).
	lastLive, grewAt := uint64(0), time.Time{}
	// collect forces a collection that hands memory back, and leaves left
	// follow-up collections due.
	collect := func(allocs uint64, left int) {
		debug.FreeOSMemory()
		freedAt = allocs
		settle, settleAt = left, time.Now().Add(settleGap)
	}
	defer func() { debug.SetGCPercent(100) }()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		live, allocs, ok := read()
		if !ok {
			return
		}
		rate := uint64(float64(allocs-prevAllocs) / interval.Seconds())
		prevAllocs = allocs
		wasBusy := busy
		busy = Busy(rate, headroom)
		if live != lastLive {
			if o.Arrivals == nil && lastLive > 0 && live > lastLive+lastLive/10 {
				grewAt = time.Now()
			}
			lastLive = live
		}
		if o.Arrivals != nil {
			// A storm holds at once, without waiting for a collection to
			// find the heap grown: under a raised goal that collection
			// could be the headroom away, the storm's state spread over
			// all of it.
			n := o.Arrivals()
			if float64(n-arrived) >= StormRate*interval.Seconds() {
				grewAt = time.Now()
			}
			arrived = n
		}
		p := 100
		if busy && time.Since(grewAt) > GrowthHold {
			p = Percent(live, headroom)
		}
		if p != set && (p == 100 || p > set*11/10 || p < set*9/10) { // small moves are not worth it
			debug.SetGCPercent(p)
			set = p
		}
		if wasBusy && !busy && allocs-freedAt >= live {
			// The busy period's garbage, back now, whether or not GOGC was
			// raised (it is not when the live heap exceeds the headroom,
			// as with many connected devices). The collection also halves
			// the stacks that connection setup grew and idle connections
			// no longer use. Only once a live heap's worth has been
			// allocated since the last one: a load hovering around the
			// busy threshold then costs at most one extra collection per
			// collection the runtime would make anyway, however short its
			// busy stretches.
			collect(allocs, SettleCollections)
		}
		if !busy && settle > 0 && !time.Now().Before(settleAt) {
			// Connections that went quiet with the load now wait under a
			// small stack (mqttdevice.IdleProbe), and a collection halves
			// a parked goroutine's stack at most once: 8 KiB to 2 takes
			// two more.
			collect(allocs, settle-1)
		}
	}
}

// GrowthHold is how long GOGC stays 100 after the last sign of a storm:
// arrivals at StormRate (with Options.Arrivals), or else a collection that
// found the live heap grown by a tenth. Headroom pays for churn: garbage
// made and dropped while the live heap holds still, as under telemetry.
// While the live heap grows — a connect storm adding each device's
// connection state — a raised goal spread the new long-lived objects over spans that the storm's
// garbage shared with them, and those stayed part-used for good: 2.5 KB of
// RSS more per idle TLS device after a storm of 10,000 (21.6-22.8 KB
// against 19.4 with no headroom).
const GrowthHold = 2 * time.Second

// SettleCollections follow the collection at the end of a busy period,
// settleGap apart while the hub stays quiet. The gap is longer than
// mqttdevice.IdleProbe, so that the devices of a connect storm are waiting
// quietly by the first one.
const SettleCollections = 2

var settleGap = 3 * time.Second // a variable for the tests
