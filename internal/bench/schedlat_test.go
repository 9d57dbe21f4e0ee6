package bench

import (
	"testing"
	"time"
)

func TestSchedQuantile(t *testing.T) {
	buckets := []float64{0, 1e-4, 1e-3, 1e-2, 1e-1} // four buckets, seconds
	before := selfSnapshot{counts: []uint64{5, 5, 5, 5}, buckets: buckets}
	after := selfSnapshot{counts: []uint64{95, 13, 6, 5}, buckets: buckets} // +90, +8, +1, +0
	for _, tc := range []struct {
		q    float64
		want float64 // ms
	}{{0.5, 0.1}, {0.9, 0.1}, {0.91, 1}, {0.98, 1}, {0.99, 10}, {1, 10}} {
		got, ok := schedQuantile(before, after, tc.q)
		if !ok || got != tc.want {
			t.Errorf("q%.2f = %v, %v; want %v ms", tc.q, got, ok, tc.want)
		}
	}
	if _, ok := schedQuantile(before, before, 0.5); ok {
		t.Error("no waits between the snapshots, yet a quantile")
	}
	if _, ok := schedQuantile(selfSnapshot{}, after, 0.5); ok {
		t.Error("mismatched snapshots, yet a quantile")
	}
	// The process CPU is counted in clock ticks (10 ms): use a few first.
	for end := time.Now().Add(30 * time.Millisecond); time.Now().Before(end); {
	}
	if s := readSelf(); len(s.counts) == 0 || len(s.buckets) != len(s.counts)+1 || s.cpu <= 0 {
		t.Errorf("readSelf: %d counts, %d buckets, cpu %v", len(s.counts), len(s.buckets), s.cpu)
	}
}
