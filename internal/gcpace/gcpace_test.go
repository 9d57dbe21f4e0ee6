package gcpace

import (
	"context"
	"os"
	"runtime/metrics"
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

func gogc() uint64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// Run raises GOGC while the program allocates fast and puts it back to 100
// once allocation stops, and when it ends.
func TestRunFollowsTheLoad(t *testing.T) {
	if os.Getenv("GOGC") != "" {
		t.Skip("GOGC is set: pacing is off")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, 64<<20, 20*time.Millisecond)
	}()
	defer func() {
		cancel()
		<-done
		if g := gogc(); g != 100 {
			t.Errorf("GOGC %d after Run ended, want 100", g)
		}
	}()
	waitGOGC := func(busy bool, what string) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if busy { // ~1 GiB/s: far above the 6.4 MiB/s that 64 MiB of headroom needs
				for range 1000 {
					sink = append(sink, make([]byte, 1024))
				}
				if len(sink) > 4096 {
					sink = sink[:0]
				}
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
