package hub_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/hub"
)

// The metrics listener serves the hub's own series and the Go runtime's,
// including the scheduler-latency histogram that tells a hub short of CPU.
func TestMetricsEndpoint(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	loop, off := hostName+":0", ""
	cfg := &config.Config{
		Properties: config.Properties{HostName: hostName},
		Moat: config.Moat{
			DataDir:   t.TempDir(),
			Listeners: config.Listeners{MQTT: &off, HTTPS: &off, Metrics: &loop},
		},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h, err := hub.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = h.Run(ctx) })
	select {
	case <-h.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("hub not ready")
	}
	addr := h.Addrs()["metrics"]
	if addr == "" {
		t.Fatalf("no metrics listener in %v", h.Addrs())
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"moat_log_commits_total", "moat_log_commit_wait_seconds_bucket", "moat_log_sync_seconds_bucket", "moat_connected_devices", "moat_telemetry_messages_total", "go_sched_latencies_seconds_bucket", "process_resident_memory_bytes"} {
		if !strings.Contains(string(body), "\n"+name) {
			t.Errorf("/metrics has no %s", name)
		}
	}
}
