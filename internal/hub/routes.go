package hub

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
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

func (e eventsSink) Send(ctx context.Context, batch []message.Message) error {
	e.s.PublishBatch(ctx, batch, eventsReaderWait)
	return nil
}

// eventsReaderWait is how long one batch waits for slow live readers before
// they miss messages.
const eventsReaderWait = 200 * time.Millisecond

func (eventsSink) Close() error { return nil }

// routingFile holds the live routing configuration: endpoints, routes, the
// fallback route and enrichments. The config file's routing properties seed it
// on first start; afterwards it wins, because `moat route`, `moat endpoint`,
// `moat message-enrichment` and the management API change routing while the
// hub runs. Delete it to re-seed from the config file. It holds endpoint
// credentials, so only the owner may read it.
const routingFile = "routing.json"

// routingState is the routing in force. It is replaced whole on every change,
// so a message is routed by one consistent configuration.
type routingState struct {
	cfg       config.Routing
	router    *routing.Router
	needsTwin bool
}

// routedRecords remembers, by log offset, which endpoints the routing in force
// sends a record to. Every endpoint's worker asks about every record; with
// it the routes are evaluated (and the sender's twin fetched) once per record
// instead of once per endpoint. An entry is used only under the routing it
// was computed with, so a routing change takes effect at once.
type routedRecords struct {
	ring *msglog.Ring[*routedEntry]
}

type routedEntry struct {
	st        *routingState
	in        routing.Input
	endpoints []string
}

const routedSlots = 4096

func newRoutedRecords() routedRecords {
	return routedRecords{msglog.NewRing[*routedEntry](routedSlots)}
}

func (c routedRecords) lookup(off uint64, st *routingState, compute func() routedEntry) *routedEntry {
	if e, ok := c.ring.Get(off); ok && e.st == st {
		return e
	}
	e := compute()
	e.st = st
	c.ring.Put(off, &e)
	return &e
}

// routingNow returns the routing in force.
func (h *Hub) routingNow() *routingState { return h.routing.Load() }

// takes says whether the routing in force sends messages of source anywhere;
// events of a source it does not take are not made (none before routing is
// built: the events of a starting hub's own resets go nowhere).
func (h *Hub) takes(source string) bool {
	st := h.routingNow()
	return st != nil && st.router.Takes(source)
}

// compileRouting checks a routing configuration and compiles it.
func (h *Hub) compileRouting(rc config.Routing) (*routingState, error) {
	if err := rc.Validate(); err != nil {
		return nil, err
	}
	router, err := routing.Compile(routing.Config{Routes: rc.Routes, FallbackRoute: rc.FallbackRoute, Enrichments: rc.Enrichments}, h.hubName(), rc.EndpointNames())
	if err != nil {
		return nil, err
	}
	return &routingState{cfg: rc, router: router, needsTwin: routerNeedsTwin(rc)}, nil
}

// buildRouting loads (or seeds) the routing configuration and builds one
// worker per endpoint, including the built-in events endpoint.
func (h *Hub) buildRouting() error {
	var err error
	if h.retryPeriod, err = h.cfg.Moat.Routing.RetryPeriodDuration(); err != nil {
		return fmt.Errorf("moat.routing.retryPeriod: %w", err)
	}
	path := filepath.Join(h.dataDir, routingFile)
	rc, err := config.LoadRouting(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		rc = h.cfg.Properties.Routing
		if err := config.SaveRouting(path, rc); err != nil {
			return err
		}
		h.log.Info("routing seeded from the configuration", "file", path)
	case err != nil:
		return err
	default:
		if cfgR := h.cfg.Properties.Routing; !sameJSON(cfgR, rc) && !sameJSON(cfgR, config.Routing{}) {
			h.log.Warn("the configuration's routing properties differ from the live routing, which wins; delete the file to re-seed it", "file", path)
		}
	}
	st, err := h.compileRouting(rc)
	if err != nil {
		return fmt.Errorf("routing %s: %w", path, err)
	}
	h.routing.Store(st)
	h.delivery = endpoint.NewGroup(h.log.With("component", "endpoint"))
	h.deadLetterLog = map[string]*msglog.PebbleLog{}
	if err := h.delivery.Add(h.newWorker(routing.BuiltInEvents, eventsSink{h.events}, nil)); err != nil {
		return err
	}
	for _, ep := range rc.CustomEndpoints() {
		sink, err := newSink(ep, h.hubName())
		if err != nil {
			return err
		}
		if err := h.startEndpoint(ep.Name, sink); err != nil {
			sink.Close()
			return err
		}
	}
	return nil
}

// startEndpoint opens a custom endpoint's dead letters and adds its worker.
func (h *Hub) startEndpoint(name string, sink endpoint.Sink) error {
	dead, err := h.openDeadLetters(name)
	if err != nil {
		return err
	}
	return h.delivery.Add(h.newWorker(name, sink, dead))
}

// openDeadLetters opens (once) a custom endpoint's dead-letter store.
func (h *Hub) openDeadLetters(name string) (*msglog.PebbleLog, error) {
	h.deadLetterMu.Lock()
	defer h.deadLetterMu.Unlock()
	if d, ok := h.deadLetterLog[name]; ok {
		return d, nil
	}
	d, err := msglog.OpenPebble(h.deadLetterDir(name), msglog.PebbleOptions{Logger: h.log.With("component", "deadletters", "endpoint", name)})
	if err != nil {
		return nil, fmt.Errorf("dead letters of %s: %w", name, err)
	}
	h.deadLetterLog[name] = d
	return d, nil
}

func (h *Hub) deadLetterDir(name string) string {
	return filepath.Join(h.dataDir, "deadletters", name)
}

// newWorker builds an endpoint's worker. Its selection reads the routing in
// force for every message, so route and enrichment changes apply to what the
// worker has not yet delivered.
func (h *Hub) newWorker(name string, sink endpoint.Sink, dead msglog.Log) *endpoint.Worker {
	sel := func(off uint64, m message.Message) (bool, map[string]string) {
		if to, ok := endpoint.ReplayTarget(m); ok {
			return to == name, nil // a dead letter put back for one endpoint
		}
		st := h.routingNow()
		r := h.routed.lookup(off, st, func() routedEntry {
			in := routing.Input{Source: routing.SourceOf(m), Message: m}
			if st.needsTwin {
				in.Twin = h.senderTwin(m)
			}
			return routedEntry{in: in, endpoints: st.router.Endpoints(in)}
		})
		for _, e := range r.endpoints {
			if e == name {
				return true, st.router.Enrich(r.in, name)
			}
		}
		return false, nil
	}
	cfg := endpoint.Config{
		Name: name, Log: h.msglog, Decoded: h.decoded, Sink: sink, Select: sel, RetryPeriod: h.retryPeriod,
		Logger: h.log.With("component", "endpoint", "endpoint", name),
	}
	if dead != nil { // a nil *PebbleLog in the interface would not be nil
		cfg.DeadLetters = dead
	}
	if name == routing.BuiltInEvents {
		// The live events stream has nothing to amortise per batch, and its
		// best-effort readers drop what overflows their buffers: smaller
		// batches arrive more evenly.
		cfg.BatchSize = 100
	}
	return endpoint.NewWorker(cfg)
}

func sameJSON(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
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
	workers := h.delivery.Workers()
	out := make([]endpoint.Health, 0, len(workers))
	for _, w := range workers {
		out = append(out, w.Health())
	}
	return out
}

// lifecycleChanged logs IoT Hub's lifecycle event for a created or deleted
// identity, with its twin as the body (just the ids once it is deleted).
func (h *Hub) lifecycleChanged(deviceID, moduleID string, created bool) {
	if !h.takes(routing.SourceDeviceLifecycleEvents) {
		return
	}
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

// wantsTwinChanges says whether a route takes twin change events.
func (h *Hub) wantsTwinChanges() bool { return h.takes(routing.SourceTwinChangeEvents) }

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

// connChange is a device's or module's latest connection change since the
// last snapshot.
type connChange struct {
	connected bool
	seq       uint64
	at        time.Time
}

// connectionChanged records a connection change for IoT Hub's connection
// state events: published at once, or with the next snapshot (the default,
// as IoT Hub does), where only the latest change of each identity counts.
// Events are best effort, like IoT Hub's own: no device waits for them.
func (h *Hub) connectionChanged(deviceID, moduleID string, connected bool) {
	if !h.takes(routing.SourceConnectionStateEvents) {
		return
	}
	c := connChange{connected: connected, seq: h.connSeq.Add(1), at: time.Now()}
	if h.connSnapshot <= 0 {
		h.logEvent(routing.ConnectionStateEvent(h.hubName(), deviceID, moduleID, connected, c.seq, c.at))
		return
	}
	h.connMu.Lock()
	h.connPending[[2]string{deviceID, moduleID}] = c
	h.connMu.Unlock()
}

// publishConnectionStates publishes the pending connection state events every
// snapshot period, and once more when ctx ends.
func (h *Hub) publishConnectionStates(ctx context.Context) {
	if h.connSnapshot <= 0 {
		return
	}
	t := time.NewTicker(h.connSnapshot)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			h.flushConnectionStates()
			return
		case <-t.C:
			h.flushConnectionStates()
		}
	}
}

func (h *Hub) flushConnectionStates() {
	h.connMu.Lock()
	pending := h.connPending
	h.connPending = map[[2]string]connChange{}
	h.connMu.Unlock()
	type ev struct {
		id [2]string
		connChange
	}
	evs := make([]ev, 0, len(pending))
	for id, c := range pending {
		evs = append(evs, ev{id, c})
	}
	slices.SortFunc(evs, func(a, b ev) int { return cmp.Compare(a.seq, b.seq) })
	for _, e := range evs {
		h.logEvent(routing.ConnectionStateEvent(h.hubName(), e.id[0], e.id[1], e.connected, e.seq, e.at))
	}
}

// logTrimInterval is how often the log is trimmed behind the slowest endpoint.
// Often, so that delivered records are deleted while still in the log's
// memtable and never reach disk beyond the WAL (see msglog.PebbleOptions);
// a trim that finds nothing new to delete writes nothing.
const logTrimInterval = 250 * time.Millisecond

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
			// Changes hold this lock while an endpoint's worker is replaced,
			// when its cursor would otherwise be missing from the minimum.
			h.routingChange.Lock()
			_, err := endpoint.TrimBehind(ctx, h.msglog, h.delivery.Workers())
			h.routingChange.Unlock()
			if err != nil && ctx.Err() == nil {
				h.log.Warn("trim message log", "error", err)
			}
		}
	}
}
