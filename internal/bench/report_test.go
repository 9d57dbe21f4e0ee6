package bench

import (
	"strings"
	"testing"
)

// The latency bar is judged only for runs paced at half of peak; a fixed
// --paced-rate names its rate and leaves the bar open.
func TestSummaryLatencyRow(t *testing.T) {
	paced := func(target string, p99 float64) Result {
		return Result{Scenario: "d2c qos1 paced", Target: target, Rate: 1000, Latency: &Latency{Samples: 100, P99: p99}}
	}
	for _, tc := range []struct {
		name      string
		rate      float64
		p99       float64
		wantLabel string
		wantMet   string
	}{
		{"half of peak, met", 0, 12, "at half of peak, routed to 1 webhook", "yes"},
		{"half of peak, not met", 0, 25, "at half of peak, routed to 1 webhook", "no"},
		{"fixed rate: not judged", 30000, 12, "at 30000 msg/s, routed to 1 webhook", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := &Report{PacedRate: tc.rate, Results: []Result{paced(TargetMoatRouted1, tc.p99), paced(TargetMosquitto, 1)}}
			var row *Row
			for _, r := range summaryRows(rep) {
				if strings.HasPrefix(r.Scenario, "p99 device→endpoint latency, QoS 1 ") && strings.HasSuffix(r.Scenario, "routed to 1 webhook") && !strings.Contains(r.Scenario, "Mosquitto") {
					row = &r
					break
				}
			}
			if row == nil {
				t.Fatal("no routed-1 latency row")
			}
			if !strings.Contains(row.Scenario, tc.wantLabel) || row.Met != tc.wantMet {
				t.Fatalf("row %q met %q, want label with %q and met %q", row.Scenario, row.Met, tc.wantLabel, tc.wantMet)
			}
		})
	}
}
