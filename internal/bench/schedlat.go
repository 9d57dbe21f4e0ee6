package bench

import (
	"math"
	"os"
	"runtime/metrics"
	"time"
)

// The generator shares the cores with the hub it measures: a latency it
// reports includes the time its own goroutines waited for a core before
// stamping a receipt. Paced runs note that wait and the generator's CPU, so
// that a tail can be told apart from the hub's.

const schedLatencies = "/sched/latencies:seconds"

// selfSnapshot is the generator's scheduling-latency histogram and CPU time
// at one moment.
type selfSnapshot struct {
	counts  []uint64
	buckets []float64
	cpu     time.Duration
}

func readSelf() selfSnapshot {
	s := []metrics.Sample{{Name: schedLatencies}}
	metrics.Read(s)
	var snap selfSnapshot
	if s[0].Value.Kind() == metrics.KindFloat64Histogram {
		h := s[0].Value.Float64Histogram()
		snap.counts = append([]uint64(nil), h.Counts...)
		snap.buckets = h.Buckets
	}
	if u, err := readUsage(os.Getpid()); err == nil {
		snap.cpu = u.CPU
	}
	return snap
}

// schedQuantile is the q-quantile, in milliseconds, of the waits between two
// snapshots: the upper bound of the first histogram bucket by which at least
// a fraction q of them are counted.
func schedQuantile(before, after selfSnapshot, q float64) (float64, bool) {
	if len(before.counts) != len(after.counts) || len(after.counts) == 0 {
		return 0, false
	}
	var total uint64
	for i := range after.counts {
		total += after.counts[i] - before.counts[i]
	}
	if total == 0 {
		return 0, false
	}
	want := max(1, uint64(math.Ceil(q*float64(total))))
	var seen uint64
	for i := range after.counts {
		seen += after.counts[i] - before.counts[i]
		if seen >= want {
			return after.buckets[i+1] * 1e3, true
		}
	}
	return after.buckets[len(after.buckets)-1] * 1e3, true
}
