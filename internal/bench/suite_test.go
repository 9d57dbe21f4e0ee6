package bench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQuickSuite runs the whole harness in quick mode against a real hub and
// Mosquitto and checks that the figures it reports are coherent.
func TestQuickSuite(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the benchmark smoke run in -short mode")
	}
	mosq, err := FindMosquitto()
	if err != nil {
		t.Skip("skipping: mosquitto is not installed (Debian package mosquitto)")
	}
	bin := os.Getenv("MOAT_BIN")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "moat")
		build := exec.Command("go", "build", "-o", bin, "./cmd/moat")
		build.Dir = filepath.Join("..", "..")
		if out, err := build.CombinedOutput(); err != nil {
			t.Skipf("skipping: cannot build the moat binary (set MOAT_BIN to use a built one): %v\n%s", err, out)
		}
	} else if _, err := os.Stat(bin); err != nil {
		t.Skipf("skipping: MOAT_BIN %s: %v", bin, err)
	}
	port := 443
	if os.Geteuid() != 0 {
		port = 18443
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := t.TempDir()
	var log strings.Builder
	rep, err := Run(ctx, Config{
		MoatBin: bin, MosquittoBin: mosq, OutDir: out, WorkDir: t.TempDir(), Quick: true,
		HubIP: "127.0.0.60", MosquittoIP: "127.0.0.61", HTTPSPort: port, Log: &log,
	})
	t.Log(log.String())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	sizes := QuickSizes()
	want := int64(sizes.D2CDevices * sizes.D2CMessages)
	seen := map[string]bool{}
	for _, r := range rep.Results {
		key := r.Scenario + "/" + r.Target
		seen[key] = true
		if r.Failure != "" {
			t.Errorf("%s failed: %s", key, r.Failure)
			continue
		}
		if r.Rate <= 0 || r.Seconds <= 0 {
			t.Errorf("%s: rate %f over %f s", key, r.Rate, r.Seconds)
		}
		if r.Latency != nil && r.Latency.Samples > 0 {
			if l := r.Latency; !(l.P50 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max && l.P50 >= 0) {
				t.Errorf("%s: incoherent latency %+v", key, l)
			}
		}
		switch {
		case strings.HasPrefix(r.Scenario, "d2c"):
			if r.Errors != 0 || r.Duplicates != 0 {
				t.Errorf("%s: %d errors, %d duplicates", key, r.Errors, r.Duplicates)
			}
			if r.Scenario == "d2c qos1" && (r.Sent != want || r.Acked != want) {
				t.Errorf("%s: sent %d acked %d, want %d", key, r.Sent, r.Acked, want)
			}
			if r.TargetRate > 0 {
				// The pacers send every message, none much before it is due:
				// the run cannot beat its rate by more than the slack allows.
				if n := int64(r.Devices * r.MessagesPerDevice); r.Sent != n || r.Acked != n {
					t.Errorf("%s: sent %d acked %d, want %d", key, r.Sent, r.Acked, n)
				}
				if r.Rate > 1.2*r.TargetRate {
					t.Errorf("%s: %.0f msg/s, paced at %.0f", key, r.Rate, r.TargetRate)
				}
			}
			if r.Received+r.Dropped+r.Lost < r.Acked {
				t.Errorf("%s: received %d + dropped %d + lost %d < acked %d", key, r.Received, r.Dropped, r.Lost, r.Acked)
			}
			if r.Received == 0 || r.Latency == nil || r.Latency.Samples == 0 {
				t.Errorf("%s: nothing received", key)
			}
			if r.QoS == 1 && strings.HasPrefix(r.Target, "mosquitto") && r.Lost != 0 {
				t.Errorf("%s: Mosquitto lost %d QoS 1 messages", key, r.Lost)
			}
		case r.Scenario == "c2d":
			if r.Errors != 0 || r.Received != r.Sent || r.Sent != int64(sizes.C2DMessages) {
				t.Errorf("%s: sent %d received %d errors %d (first %s)", key, r.Sent, r.Received, r.Errors, r.FirstErr)
			}
		case strings.HasPrefix(r.Scenario, "twin"), r.Scenario == "connect storm":
			if r.Errors != 0 || r.Sent == 0 {
				t.Errorf("%s: %d ok, %d errors (first %s)", key, r.Sent, r.Errors, r.FirstErr)
			}
		case strings.HasPrefix(r.Scenario, "idle"):
			if r.RSSPerDevice <= 0 || r.RSSPerDevice > 10<<20 || r.Received != r.Sent {
				t.Errorf("%s: %d B per device, hub counts %d of %d connections", key, r.RSSPerDevice, r.Received, r.Sent)
			}
		}
	}
	for _, k := range []string{"d2c qos0/moat-plain", "d2c qos1/moat-tls", "d2c qos1/mosquitto", "d2c qos1 paced/moat-plain", "twin reads/moat-tls", "twin updates/moat-tls", "c2d/moat-plain", "connect storm/moat-tls", "idle 1000/moat-tls"} {
		if !seen[k] {
			t.Errorf("no result for %s", k)
		}
	}
	if len(rep.Summary) == 0 {
		t.Error("empty summary")
	}
	if err := WriteReport(out, rep); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(out, "results.md"))
	if err != nil || !strings.Contains(string(md), "| scenario | unit | Moat | Mosquitto | ratio | bar | met? |") {
		t.Fatalf("results.md: %v\n%s", err, md)
	}
	if _, err := os.Stat(filepath.Join(out, "results.json")); err != nil {
		t.Fatal(err)
	}
}
