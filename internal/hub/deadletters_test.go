package hub_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/endpoint"
	"github.com/moat-iot/moat/internal/hub"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/routing"
	"github.com/moat-iot/moat/internal/sas"
)

// TestDeadLettersAndReplay: an endpoint down for longer than the retry period
// sends its messages to dead letters (and goes dead); the API lists them;
// once the endpoint is back, a replay delivers every one to it — and only to
// it: the other endpoint the messages were routed to does not get them again.
func TestDeadLettersAndReplay(t *testing.T) {
	var up atomic.Bool
	var mu sync.Mutex
	got := map[string][]string{} // endpoint → bodies
	server := func(name string, always bool) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !always && !up.Load() {
				http.Error(w, "down", http.StatusServiceUnavailable)
				return
			}
			var batch []endpoint.WebhookRecord
			if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			mu.Lock()
			for _, rec := range batch {
				got[name] = append(got[name], string(rec.Body))
			}
			mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		}))
	}
	flaky, steady := server("flaky", false), server("steady", true)
	defer flaky.Close()
	defer steady.Close()

	dir := t.TempDir()
	loop, off := hostName+":0", ""
	cfg := &config.Config{
		Properties: config.Properties{HostName: hostName, Routing: config.Routing{
			Endpoints: config.RoutingEndpoints{WebHooks: []endpoint.WebhookConfig{{Name: "flaky", URL: flaky.URL}, {Name: "steady", URL: steady.URL}}},
			Routes: []routing.Route{
				{Name: "a", Source: routing.SourceDeviceMessages, EndpointNames: []string{"flaky"}, IsEnabled: true},
				{Name: "b", Source: routing.SourceDeviceMessages, EndpointNames: []string{"steady"}, IsEnabled: true},
			},
		}},
		Moat: config.Moat{DataDir: dir, Listeners: config.Listeners{MQTT: &loop, HTTPS: &loop, Metrics: &off},
			Routing: config.MoatRouting{RetryPeriod: "300ms"}},
	}
	h, th, svc := runHub(t, cfg)
	d, err := svc.CreateDevice(ctxT(t, 5*time.Second), registry.Device{DeviceID: "pump1"})
	if err != nil {
		t.Fatal(err)
	}
	c := dialTo(t, th)
	c.mustConnect(4, d.DeviceID, deviceToken(t, d, time.Hour), true)
	for i, body := range []string{`{"n":1}`, `{"n":2}`, `{"n":3}`} {
		c.write(publishPacket(4, "devices/pump1/messages/events/", 1, uint16(i+1), []byte(body)))
		c.expect(4, 5*time.Second)
	}

	pols, _ := hub.LoadPolicies(dir)
	tok, err := sas.Sign(hostName, "iothubowner", pols[0].PrimaryKey, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: th.tlsConfig()}}
	call := func(method, path string, out any) int {
		t.Helper()
		req, _ := http.NewRequest(method, "https://"+th.httpsAddr+path, nil)
		req.Header.Set("Authorization", tok)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if out != nil && resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode
	}

	var dead []hub.DeadLetterView
	deadline := time.Now().Add(10 * time.Second)
	for {
		dead = nil
		if code := call(http.MethodGet, hub.DeadLettersPrefix+"flaky/deadLetters", &dead); code != http.StatusOK {
			t.Fatalf("list: HTTP %d", code)
		}
		if len(dead) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d dead letters after 10 s, want 3", len(dead))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if dead[0].Body != `{"n":1}` || dead[0].SystemProperties["iothub-connection-device-id"] != "pump1" {
		t.Fatalf("first dead letter %+v", dead[0])
	}
	for _, eh := range h.EndpointHealth() {
		if eh.EndpointID == "flaky" && eh.HealthStatus != endpoint.Dead {
			t.Fatalf("flaky endpoint health %+v, want dead", eh)
		}
	}
	var one []hub.DeadLetterView
	if call(http.MethodGet, hub.DeadLettersPrefix+"flaky/deadLetters?top=1", &one); len(one) != 1 {
		t.Fatalf("top=1 listed %d", len(one))
	}
	if code := call(http.MethodGet, hub.DeadLettersPrefix+"nope/deadLetters", nil); code != http.StatusNotFound {
		t.Fatalf("unknown endpoint: HTTP %d", code)
	}
	if code := call(http.MethodGet, hub.DeadLettersPrefix+"flaky/deadLetters/$replay", nil); code != http.StatusMethodNotAllowed {
		t.Fatalf("GET replay: HTTP %d", code)
	}

	up.Store(true)
	var res hub.ReplayResult
	if code := call(http.MethodPost, hub.DeadLettersPrefix+"flaky/deadLetters/$replay", &res); code != http.StatusOK || res.Replayed != 3 {
		t.Fatalf("replay: HTTP %d, %+v", code, res)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(got["flaky"])
		mu.Unlock()
		if n >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("flaky endpoint got %d replayed messages, want 3", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(got["flaky"]) != 3 || got["flaky"][0] != `{"n":1}` || got["flaky"][2] != `{"n":3}` {
		t.Fatalf("flaky endpoint got %v", got["flaky"])
	}
	if len(got["steady"]) != 3 {
		t.Fatalf("steady endpoint got %v, want the 3 originals only", got["steady"])
	}
	dead = nil
	if call(http.MethodGet, hub.DeadLettersPrefix+"flaky/deadLetters", &dead); len(dead) != 0 {
		t.Fatalf("%d dead letters left after replay", len(dead))
	}
}
