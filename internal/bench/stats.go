package bench

import (
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Latency summarises end-to-end delays in milliseconds.
type Latency struct {
	Samples int     `json:"samples"`
	P50     float64 `json:"p50Ms"`
	P99     float64 `json:"p99Ms"`
	P999    float64 `json:"p999Ms"`
	Max     float64 `json:"maxMs"`
}

// summarize computes percentiles (nearest rank) of durations in nanoseconds;
// it sorts ns.
func summarize(ns []int64) Latency {
	if len(ns) == 0 {
		return Latency{}
	}
	slices.Sort(ns)
	at := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(ns)))) - 1
		i = max(0, min(i, len(ns)-1))
		return float64(ns[i]) / 1e6
	}
	return Latency{Samples: len(ns), P50: at(0.50), P99: at(0.99), P999: at(0.999), Max: float64(ns[len(ns)-1]) / 1e6}
}

// maxSamples caps the latency samples one run keeps (8 MB).
const maxSamples = 1 << 20

// tracker counts what a receiver saw of devices × perDevice stamped messages:
// first receipts, duplicates (by sequence number), stamps it cannot place and
// the latency of each first receipt.
type tracker struct {
	devices, perDevice int

	mu      sync.Mutex
	seen    []uint64 // bitset, devices*perDevice bits
	lat     []int64
	sent    []int64 // send time of each lat sample
	last    time.Time
	unique  atomic.Int64
	dups    atomic.Int64
	foreign atomic.Int64
	dropped atomic.Int64 // gaps the endpoint itself reported
}

func newTracker(devices, perDevice int) *tracker {
	n := devices * perDevice
	return &tracker{
		devices: devices, perDevice: perDevice,
		seen: make([]uint64, (n+63)/64),
		lat:  make([]int64, 0, min(n, maxSamples)),
		sent: make([]int64, 0, min(n, maxSamples)),
	}
}

// record notes one received stamp at time now.
func (t *tracker) record(s stamp, now time.Time) {
	if s.Device < 0 || s.Device >= t.devices || s.Seq < 0 || s.Seq >= t.perDevice {
		t.foreign.Add(1)
		return
	}
	bit := s.Device*t.perDevice + s.Seq
	t.mu.Lock()
	defer t.mu.Unlock()
	w, m := bit/64, uint64(1)<<(bit%64)
	if t.seen[w]&m != 0 {
		t.dups.Add(1)
		return
	}
	t.seen[w] |= m
	t.unique.Add(1)
	t.last = now
	if len(t.lat) < cap(t.lat) {
		t.lat = append(t.lat, now.UnixNano()-s.Sent)
		t.sent = append(t.sent, s.Sent)
	}
}

// lastReceipt is when the latest first receipt arrived.
func (t *tracker) lastReceipt() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last
}

// latency summarises the recorded latencies.
func (t *tracker) latency() Latency {
	t.mu.Lock()
	defer t.mu.Unlock()
	return summarize(slices.Clone(t.lat))
}

// perSecondP99 is the p99 latency (ms) of the messages sent in each second of
// the run, for seconds with at least minSamples: a run's p99 says how bad the
// tail is, these say whether it is everywhere or a few bad moments.
func (t *tracker) perSecondP99(minSamples int) []float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.sent) == 0 {
		return nil
	}
	first := slices.Min(t.sent)
	var secs [][]int64
	for i, at := range t.sent {
		s := int((at - first) / int64(time.Second))
		for len(secs) <= s {
			secs = append(secs, nil)
		}
		secs[s] = append(secs[s], t.lat[i])
	}
	var out []float64
	for _, ns := range secs {
		if len(ns) >= minSamples {
			out = append(out, summarize(ns).P99)
		}
	}
	return out
}

// waitFor polls until want messages are accounted for (received or reported
// dropped), nothing new arrived for idle, or the deadline passes. It reports
// whether all arrived.
func (t *tracker) waitFor(want int64, idle time.Duration, deadline time.Time) bool {
	lastCount, lastChange := int64(-1), time.Now()
	for {
		got := t.unique.Load() + t.dropped.Load()
		if got >= want {
			return true
		}
		now := time.Now()
		if got != lastCount {
			lastCount, lastChange = got, now
		}
		if now.Sub(lastChange) > idle || now.After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}
