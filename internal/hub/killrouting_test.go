package hub_test

// The routing kill test: devices publish QoS 1 telemetry to the real moat
// binary, which routes it by two routes to a webhook (only alert=yes) and to
// NATS JetStream (everything). The hub is SIGKILLed again and again while the
// webhook is down or slow; at the end every acknowledged message must have
// reached every endpoint its routes name, and nothing else.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/moat-iot/moat/internal/endpoint"
	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/registry"
)

// Webhook behaviours across kill rounds.
const (
	hookUp = iota
	hookDown
	hookSlow
)

// receipts counts deliveries per message id at one endpoint.
type receipts struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *receipts) add(mid string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n[mid]++
}

func (r *receipts) snapshot() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.n))
	for k, v := range r.n {
		out[k] = v
	}
	return out
}

func TestRoutedDeliveryAcrossKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the moat binary")
	}
	bin := buildMoat(t)

	// Endpoint 1: a webhook that can be down (503) or slow.
	var mode atomic.Int32
	alerts := &receipts{n: map[string]int{}}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch mode.Load() {
		case hookDown:
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		case hookSlow:
			time.Sleep(150 * time.Millisecond)
		}
		var batch []endpoint.WebhookRecord
		if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for _, rec := range batch {
			alerts.add(rec.SystemProperties[message.SysMessageID])
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer hook.Close()

	// Endpoint 2: NATS JetStream (the sink waits for the stream's acks); the
	// test counts what the server delivers to a plain subscriber.
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	lake := &receipts{n: map[string]int{}}
	if _, err := nc.Subscribe("telemetry.>", func(m *nats.Msg) { lake.add(m.Header.Get("iothub-" + message.SysMessageID)) }); err != nil {
		t.Fatal(err)
	}
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AddStream(&nats.StreamConfig{Name: "TELEMETRY", Subjects: []string{"telemetry.>"}}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	cfg := map[string]any{"properties": map[string]any{"routing": map[string]any{
		"endpoints": map[string]any{
			"webHooks": []any{map[string]any{"name": "alerts", "url": hook.URL}},
			"nats":     []any{map[string]any{"name": "lake", "url": ns.ClientURL(), "subjectTemplate": "telemetry.{deviceId}", "jetStream": true}},
		},
		"routes": []any{
			map[string]any{"name": "alerts", "source": "DeviceMessages", "condition": "alert = 'yes'", "endpointNames": []string{"alerts"}, "isEnabled": true},
			map[string]any{"name": "everything", "source": "DeviceMessages", "condition": "true", "endpointNames": []string{"lake"}, "isEnabled": true},
		},
	}}}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(t.TempDir(), "moat.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	var devices []registry.Device
	acked := map[string]bool{}
	const rounds = 4
	for round := range rounds {
		mode.Store(int32([]int{hookDown, hookSlow, hookUp, hookDown}[round]))
		hubProc := startMoat(t, bin, dir, "--config", cfgPath)
		if round == 0 {
			devices = createDurableDevices(t, dir, hubProc.https, 4)
		}
		n := publishAndKill(t, hubProc, devices, fmt.Sprintf("k%d", round), acked)
		t.Logf("round %d (webhook %s): killed after %d PUBACKs", round, []string{"up", "down", "slow"}[mode.Load()], n)
	}

	// Recovery: endpoints up, the hub restarted, everything owed arrives.
	mode.Store(hookUp)
	startMoat(t, bin, dir, "--config", cfgPath)
	wantAlerts := 0
	for mid := range acked {
		if isAlert(mid) {
			wantAlerts++
		}
	}
	var gotAlerts, gotLake map[string]int
	deadline := time.Now().Add(60 * time.Second)
	for {
		gotAlerts, gotLake = alerts.snapshot(), lake.snapshot()
		missingA, missingL := missing(acked, gotAlerts, isAlert), missing(acked, gotLake, nil)
		if missingA == 0 && missingL == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 60 s: %d of %d acknowledged alert messages missing at the webhook, %d of %d at NATS",
				missingA, wantAlerts, missingL, len(acked))
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let stragglers (duplicates, wrongly routed) arrive
	gotAlerts, gotLake = alerts.snapshot(), lake.snapshot()
	for mid := range gotAlerts {
		if !isAlert(mid) {
			t.Errorf("message %s (alert=no) reached the alerts webhook", mid)
		}
	}
	t.Logf("%d messages acknowledged over %d kills (%d with alert=yes); webhook: %d received, %d duplicates; NATS: %d received, %d duplicates",
		len(acked), rounds, wantAlerts, len(gotAlerts), dups(gotAlerts), len(gotLake), dups(gotLake))
}

// isAlert says whether publishUntilGone gave message id mid alert=yes (even
// sequence numbers).
func isAlert(mid string) bool {
	i := strings.LastIndexByte(mid, '-')
	var seq int
	if _, err := fmt.Sscanf(mid[i+1:], "%d", &seq); err != nil {
		return false
	}
	return seq%2 == 0
}

// missing counts acknowledged ids (those want selects, or all) not in got.
func missing(acked map[string]bool, got map[string]int, want func(string) bool) int {
	n := 0
	for mid := range acked {
		if (want == nil || want(mid)) && got[mid] == 0 {
			n++
		}
	}
	return n
}

func dups(got map[string]int) int {
	n := 0
	for _, c := range got {
		n += c - 1
	}
	return n
}
