package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/endpoint"
	"github.com/moat-iot/moat/internal/events"
	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/msglog"
	"github.com/moat-iot/moat/internal/routing"
)

// eventsSink is the built-in events endpoint: what is routed to it is fanned
// out live to monitor-events readers.
type eventsSink struct{ s *events.Stream }

func (e eventsSink) Send(_ context.Context, batch []message.Message) error {
	for _, m := range batch {
		e.s.Publish(m)
	}
	return nil
}

func (eventsSink) Close() error { return nil }

// buildRouting compiles the routes and builds one worker per endpoint,
// including the built-in events endpoint.
func (h *Hub) buildRouting() error {
	rc := h.cfg.Properties.Routing
	router, err := routing.Compile(routing.Config{Routes: rc.Routes, FallbackRoute: rc.FallbackRoute, Enrichments: rc.Enrichments}, h.hubName(), rc.EndpointNames())
	if err != nil {
		return err
	}
	h.router = router
	needsTwin := routerNeedsTwin(rc)
	h.deadLetterLog = map[string]*msglog.PebbleLog{}
	if p := h.cfg.Moat.Routing.RetryPeriod; p != "" {
		d, err := time.ParseDuration(p)
		if err != nil || d <= 0 {
			return fmt.Errorf("moat.routing.retryPeriod %q: want a positive duration such as 1h or 90s", p)
		}
		h.retryPeriod = d
	}
	selectFor := func(name string) endpoint.Select {
		return func(m message.Message) (bool, map[string]string) {
			if to, ok := endpoint.ReplayTarget(m); ok {
				return to == name, nil // a dead letter put back for one endpoint
			}
			in := routing.Input{Source: routing.SourceOf(m), Message: m}
			if needsTwin {
				in.Twin = h.senderTwin(m)
			}
			for _, e := range router.Endpoints(in) {
				if e == name {
					return true, router.Enrich(in, name)
				}
			}
			return false, nil
		}
	}
	add := func(name string, sink endpoint.Sink) error {
		var dead msglog.Log
		if name != routing.BuiltInEvents {
			d, err := msglog.OpenPebble(filepath.Join(h.dataDir, "deadletters", name), msglog.PebbleOptions{Logger: h.log.With("component", "deadletters", "endpoint", name)})
			if err != nil {
				return fmt.Errorf("dead letters of %s: %w", name, err)
			}
			h.deadLetters = append(h.deadLetters, d)
			h.deadLetterLog[name] = d
			dead = d
		}
		h.workers = append(h.workers, endpoint.NewWorker(endpoint.Config{
			Name: name, Log: h.msglog, Sink: sink, Select: selectFor(name), DeadLetters: dead, RetryPeriod: h.retryPeriod,
			Logger: h.log.With("component", "endpoint", "endpoint", name),
		}))
		return nil
	}
	if err := add(routing.BuiltInEvents, eventsSink{h.events}); err != nil {
		return err
	}
	sinks, err := customSinks(rc.Endpoints, h.hubName())
	if err != nil {
		return err
	}
	for _, s := range sinks {
		if err := add(s.name, s.sink); err != nil {
			return err
		}
	}
	return nil
}

// hubName is $iothubname: the configured name, or the host name's first label.
func (h *Hub) hubName() string {
	if h.cfg.Name != "" {
		return h.cfg.Name
	}
	name, _, _ := strings.Cut(h.hostName, ".")
	return name
}

// routerNeedsTwin says whether any condition or enrichment reads $twin, so that
// twins are looked up only when routing uses them.
func routerNeedsTwin(rc config.Routing) bool {
	b, _ := json.Marshal(rc)
	return strings.Contains(string(b), "$twin")
}

// senderTwin returns the twin of a message's sender as a JSON document, or nil.
func (h *Hub) senderTwin(m message.Message) map[string]any {
	d := m.System[message.SysConnectionDevice]
	if d == "" {
		return nil
	}
	tw, err := h.registry.GetTwin(context.Background(), d, m.System[message.SysConnectionModule])
	if err != nil {
		return nil
	}
	b, err := json.Marshal(tw)
	if err != nil {
		return nil
	}
	var doc map[string]any
	if json.Unmarshal(b, &doc) != nil {
		return nil
	}
	return doc
}

// EndpointHealthPath serves every endpoint's health (GET, RegistryRead).
const EndpointHealthPath = "/moat/endpoints/health"

// endpointHealthHandler answers GET EndpointHealthPath.
func (h *Hub) endpointHealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		if err := h.authorizeManagement(r); err != nil {
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.Header().Set("iothub-errorcode", "IotHubUnauthorizedAccess")
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(map[string]string{"Message": "ErrorCode:IotHubUnauthorizedAccess;Unauthorized"})
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_ = json.NewEncoder(w).Encode(h.EndpointHealth())
	})
}

// EndpointHealth returns every endpoint's health record.
func (h *Hub) EndpointHealth() []endpoint.Health {
	out := make([]endpoint.Health, 0, len(h.workers))
	for _, w := range h.workers {
		out = append(out, w.Health())
	}
	return out
}

// lifecycleChanged logs IoT Hub's lifecycle event for a created or deleted
// identity, with its twin as the body (just the ids once it is deleted).
func (h *Hub) lifecycleChanged(deviceID, moduleID string, created bool) {
	body, _ := json.Marshal(map[string]string{"deviceId": deviceID, "moduleId": moduleID})
	if created {
		if tw, err := h.registry.GetTwin(context.Background(), deviceID, moduleID); err == nil {
			if b, err := json.Marshal(tw); err == nil {
				body = b
			}
		}
	}
	h.logEvent(routing.LifecycleEvent(h.hubName(), deviceID, moduleID, created, body, time.Now()))
}

// twinChanged logs IoT Hub's twin change event.
func (h *Hub) twinChanged(deviceID, moduleID, opType string, body map[string]any) {
	b, err := json.Marshal(body)
	if err != nil {
		h.log.Warn("encode twin change event", "error", err)
		return
	}
	h.logEvent(routing.TwinChangeEvent(h.hubName(), deviceID, moduleID, opType, b, time.Now()))
}

// logEvent appends a non-telemetry event to the log for routing, best effort.
func (h *Hub) logEvent(m message.Message) {
	rec, err := msglog.EncodeMessage(m)
	if err != nil {
		h.log.Warn("encode event", "source", m.System[message.SysMessageSource], "error", err)
		return
	}
	h.msglog.AppendAsync(rec, func(_ uint64, err error) {
		if err != nil {
			h.log.Warn("event not logged", "source", m.System[message.SysMessageSource], "error", err)
		}
	})
}

// connectionChanged logs IoT Hub's connection state event for routing. It is
// best effort, like IoT Hub's own: the event is not what a device waits for.
func (h *Hub) connectionChanged(deviceID, moduleID string, connected bool) {
	h.logEvent(routing.ConnectionStateEvent(h.hubName(), deviceID, moduleID, connected, h.connSeq.Add(1), time.Now()))
}

// logTrimInterval is how often the log is trimmed behind the slowest endpoint.
const logTrimInterval = time.Minute

// trimLog keeps the durable log from growing without bound: every interval it
// drops what every endpoint has delivered or dead-lettered.
func (h *Hub) trimLog(ctx context.Context) {
	t := time.NewTicker(logTrimInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := endpoint.TrimBehind(ctx, h.msglog, h.workers); err != nil && ctx.Err() == nil {
				h.log.Warn("trim message log", "error", err)
			}
		}
	}
}
