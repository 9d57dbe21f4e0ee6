package hub

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/routing"
)

// TestEventsOnlyWithARoute: twin change and lifecycle events are made only
// while a route takes their source, as IoT Hub sends none without one; a
// route added later gets the events from then on.
func TestEventsOnlyWithARoute(t *testing.T) {
	loop, off := "127.0.0.1:0", ""
	cfg := &config.Config{
		Properties: config.Properties{HostName: "events.test"},
		Moat:       config.Moat{DataDir: t.TempDir(), Listeners: config.Listeners{MQTT: &loop, HTTPS: &loop, Metrics: &off}},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := New(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	start := h.msglog.Last()
	if _, err := h.registry.CreateDevice(ctx, registry.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	patch := func(v string) {
		t.Helper()
		if _, err := h.registry.PatchTwin(ctx, "d1", "", []byte(`{"properties":{"desired":{"v":`+v+`}}}`), "*"); err != nil {
			t.Fatal(err)
		}
	}
	patch("1")
	if err := h.changeRouting(func(rc *config.Routing) error {
		rc.Routes = append(rc.Routes, routing.Route{Name: "twins", Source: routing.SourceTwinChangeEvents, EndpointNames: []string{routing.BuiltInEvents}, IsEnabled: true})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	patch("2")
	// Events are appended without waiting; the one taken lands soon. Had the
	// creation or the first patch made an event, the log would hold more.
	deadline := time.Now().Add(5 * time.Second)
	for h.msglog.Last() < start+1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := h.msglog.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if got := h.msglog.Last() - start; got != 1 {
		t.Fatalf("log grew by %d records, want 1 (the twin change made while a route took it)", got)
	}
	recs, err := h.msglog.Read(ctx, start+1, 10)
	if err != nil || len(recs) != 1 {
		t.Fatalf("read %d records: %v", len(recs), err)
	}
}
