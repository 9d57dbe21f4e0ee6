package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// Routed scenarios measure durable telemetry where a user receives it: at
// routing endpoints. The hub routes messages carrying the application
// property fan=1 to one webhook and fan=3 to three (one route per endpoint),
// and everything else, by the fallback route, to the built-in events
// endpoint that the other scenarios read. The webhooks are served by this
// process; a message counts as delivered once every endpoint its routes name
// has it, and its latency is to the last of them.

const routedEndpoints = 3

// routedConfig is the hub configuration for the routed scenarios.
func routedConfig(urls []string) ([]byte, error) {
	type ep struct {
		Name string `json:"name"`
		URL  string `json:"url"`
	}
	type route struct {
		Name          string   `json:"name"`
		Source        string   `json:"source"`
		Condition     string   `json:"condition"`
		EndpointNames []string `json:"endpointNames"`
		IsEnabled     bool     `json:"isEnabled"`
	}
	var eps []ep
	var routes []route
	for i, u := range urls {
		name := fmt.Sprintf("bench%d", i+1)
		eps = append(eps, ep{Name: name, URL: u})
		cond := "fan = '3'"
		if i == 0 {
			cond = "fan = '1' OR fan = '3'"
		}
		routes = append(routes, route{Name: name, Source: "DeviceMessages", Condition: cond, EndpointNames: []string{name}, IsEnabled: true})
	}
	cfg := map[string]any{"properties": map[string]any{"routing": map[string]any{
		"endpoints":     map[string]any{"webHooks": eps},
		"routes":        routes,
		"fallbackRoute": route{Name: "rest", Source: "DeviceMessages", Condition: "true", EndpointNames: []string{"events"}, IsEnabled: true},
	}}}
	if profiling() {
		// pprof on the hub's (loopback) metrics listener, for profiling a run
		cfg["moat"] = map[string]any{"profiling": true}
	}
	return json.MarshalIndent(cfg, "", "  ")
}

// webhookFanIn is the routed scenarios' receiver: routedEndpoints HTTP
// servers that attribute every stamp in a batch to the current run.
type webhookFanIn struct {
	urls    []string
	servers []*http.Server
	wg      sync.WaitGroup

	mu   sync.Mutex
	t    *tracker
	need int             // endpoints a message must reach
	seen map[int64]uint8 // stamp key → endpoints that have it (bit i)
	// since drops stamps sent before the run began: the durable endpoints
	// still deliver an earlier run's backlog, with the same device and
	// sequence numbers.
	since int64
}

func startWebhookFanIn(ip string) (*webhookFanIn, error) {
	f := &webhookFanIn{}
	for i := range routedEndpoints {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			f.stop()
			return nil, fmt.Errorf("webhook receiver: %w", err)
		}
		srv := &http.Server{Handler: f.handler(i), ReadHeaderTimeout: 10 * time.Second}
		f.servers = append(f.servers, srv)
		f.urls = append(f.urls, "http://"+ln.Addr().String()+"/")
		f.wg.Go(func() { _ = srv.Serve(ln) })
	}
	return f, nil
}

func (f *webhookFanIn) stop() {
	for _, s := range f.servers {
		_ = s.Close()
	}
	f.wg.Wait()
}

func (f *webhookFanIn) handler(endpoint int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		now := time.Now()
		f.mu.Lock()
		t, need := f.t, f.need
		for rest := body; ; {
			i := bytes.Index(rest, stampOpen)
			if i < 0 {
				break
			}
			s, ok := findStamp(rest[i:])
			rest = rest[i+len(stampOpen):]
			if t == nil || endpoint >= need {
				continue
			}
			if !ok {
				t.foreign.Add(1)
				continue
			}
			if s.Sent < f.since {
				continue
			}
			key := int64(s.Device)<<32 | int64(s.Seq)
			m := f.seen[key]
			if m&(1<<endpoint) != 0 {
				t.dups.Add(1) // this endpoint had it already: a redelivery
				continue
			}
			m |= 1 << endpoint
			f.seen[key] = m
			if m == 1<<need-1 {
				t.record(s, now)
			}
		}
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
}

// receive is a d2cTarget receive function for messages routed to need
// endpoints: what arrives from then on is attributed to t.
func (f *webhookFanIn) receive(need int) func(ctx context.Context, t *tracker, _ byte) (func(), error) {
	return func(_ context.Context, t *tracker, _ byte) (func(), error) {
		f.mu.Lock()
		f.t, f.need, f.seen, f.since = t, need, map[int64]uint8{}, time.Now().UnixNano()
		f.mu.Unlock()
		return func() {
			f.mu.Lock()
			f.t, f.seen = nil, nil
			f.mu.Unlock()
		}, nil
	}
}

// writeRoutedConfig writes the routed scenarios' hub configuration.
func writeRoutedConfig(path string, urls []string) error {
	b, err := routedConfig(urls)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}
