package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/endpoint"
	"github.com/moat-iot/moat/internal/routing"
)

// Routing management, under RoutingPath (GET needs RegistryRead, the rest
// RegistryWrite):
//
//	GET/PUT/DELETE .../routes/{name}        one route
//	PUT/DELETE     .../fallbackRoute        the fallback route
//	PUT/DELETE     .../enrichments/{key}    one message enrichment
//	GET/PUT/DELETE .../endpoints/{name}     one custom endpoint (GET: name and type only)
//
// PUT creates or replaces; with "If-None-Match: *" it only creates (409 if
// the resource exists), with "If-Match: *" it only replaces (404 if not).
// DELETE of an endpoint that routes or enrichments name is refused, and so is
// one with dead letters unless ?force=true. Every change is checked whole,
// written to routing.json and then put in force; the hub keeps running.

// EndpointSpec is the body of PUT .../endpoints/{name}: the endpoint's type
// and its properties as the config file's properties.routing.endpoints lists
// take them.
type EndpointSpec struct {
	Type       string          `json:"type"`
	Properties json.RawMessage `json:"properties"`
}

// EnrichmentSpec is the body of PUT .../enrichments/{key}.
type EnrichmentSpec struct {
	Value         string   `json:"value"`
	EndpointNames []string `json:"endpointNames"`
}

// routingConflict and routingMissing are a change's refusals that are not
// validation errors.
var (
	errRoutingConflict = errors.New("conflict")
	errRoutingMissing  = errors.New("not found")
	// errRoutingStore is a failure to save routing.json.
	errRoutingStore = errors.New("routing not saved")
)

func (h *Hub) saveRouting(rc config.Routing) error {
	if err := config.SaveRouting(filepath.Join(h.dataDir, routingFile), rc); err != nil {
		h.log.Error("save routing", "error", err)
		return fmt.Errorf("%w: %w", errRoutingStore, err)
	}
	return nil
}

// routingMgmt serves the management resources; it reports false when the
// path is not one of them.
func (h *Hub) routingMgmt(w http.ResponseWriter, r *http.Request) bool {
	rest, ok := strings.CutPrefix(r.URL.Path, RoutingPath+"/")
	if !ok {
		return false
	}
	kind, name, _ := strings.Cut(rest, "/")
	if strings.HasPrefix(name, "$") { // routes/$test and $testall are actions
		return false
	}
	switch {
	case kind == "routes" && name != "",
		kind == "enrichments" && name != "",
		kind == "endpoints" && name != "",
		kind == "fallbackRoute" && name == "":
	default:
		return false
	}
	allowed := []string{http.MethodPut, http.MethodDelete}
	if kind == "routes" || kind == "endpoints" {
		allowed = append(allowed, http.MethodGet)
	}
	if !slices.Contains(allowed, r.Method) {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		mgmtError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", r.Method+" is not allowed here")
		return true
	}
	if err := h.authorizeManagement(r); err != nil {
		mgmtError(w, http.StatusUnauthorized, "IotHubUnauthorizedAccess", "Unauthorized")
		return true
	}
	if r.Method == http.MethodGet {
		st := h.routingNow()
		switch kind {
		case "routes":
			rt, ok := st.cfg.Route(name)
			if !ok {
				mgmtError(w, http.StatusNotFound, "RouteNotFound", "no route named "+strconv.Quote(name))
				return true
			}
			writeMgmtJSON(w, rt)
		case "endpoints":
			ep, ok := st.cfg.Endpoint(name)
			if !ok {
				mgmtError(w, http.StatusNotFound, "EndpointNotFound", "no custom endpoint named "+strconv.Quote(name))
				return true
			}
			writeMgmtJSON(w, EndpointView{Name: ep.Name, Type: ep.Type})
		}
		return true
	}
	var (
		status  = http.StatusOK
		out     any
		err     error
		created bool // a PUT made the resource: 201
	)
	switch kind + " " + r.Method {
	case "routes PUT":
		var rt routing.Route
		if !readMgmtJSON(w, r, &rt) {
			return true
		}
		if rt.Name != "" && rt.Name != name {
			mgmtError(w, http.StatusBadRequest, "ArgumentInvalid", fmt.Sprintf("route name %q in the body differs from %q in the path", rt.Name, name))
			return true
		}
		rt.Name = name
		created, err = h.putRoute(r, rt)
		out = rt
	case "routes DELETE":
		err = h.changeRouting(func(rc *config.Routing) error {
			return remove(&rc.Routes, func(rt routing.Route) bool { return rt.Name == name }, "no route named "+strconv.Quote(name))
		})
		status = http.StatusNoContent
	case "fallbackRoute PUT":
		var rt routing.Route
		if !readMgmtJSON(w, r, &rt) {
			return true
		}
		if rt.Source == "" {
			rt.Source = routing.SourceDeviceMessages
		}
		if len(rt.EndpointNames) == 0 {
			rt.EndpointNames = []string{routing.BuiltInEvents}
		}
		err = h.changeRouting(func(rc *config.Routing) error {
			rc.FallbackRoute = &rt
			return nil
		})
		out = rt
	case "fallbackRoute DELETE":
		err = h.changeRouting(func(rc *config.Routing) error {
			if rc.FallbackRoute == nil {
				return fmt.Errorf("%w: there is no fallback route", errRoutingMissing)
			}
			rc.FallbackRoute = nil
			return nil
		})
		status = http.StatusNoContent
	case "enrichments PUT":
		var spec EnrichmentSpec
		if !readMgmtJSON(w, r, &spec) {
			return true
		}
		e := routing.Enrichment{Key: name, Value: spec.Value, EndpointNames: spec.EndpointNames}
		err = h.changeRouting(func(rc *config.Routing) (err error) {
			created, err = upsert(r, &rc.Enrichments, e, func(x routing.Enrichment) bool { return x.Key == name })
			return err
		})
		out = e
	case "enrichments DELETE":
		err = h.changeRouting(func(rc *config.Routing) error {
			return remove(&rc.Enrichments, func(e routing.Enrichment) bool { return e.Key == name }, "no enrichment with key "+strconv.Quote(name))
		})
		status = http.StatusNoContent
	case "endpoints PUT":
		var spec EndpointSpec
		if !readMgmtJSON(w, r, &spec) {
			return true
		}
		created, err = h.putEndpoint(r, name, spec)
		if err == nil {
			ep, _ := h.routingNow().cfg.Endpoint(name)
			out = EndpointView{Name: ep.Name, Type: ep.Type}
		}
	case "endpoints DELETE":
		err = h.deleteEndpoint(r.Context(), name, r.URL.Query().Get("force") == "true")
		status = http.StatusNoContent
	}
	if created {
		status = http.StatusCreated
	}
	switch {
	case errors.Is(err, errRoutingMissing):
		mgmtError(w, http.StatusNotFound, "NotFound", err.Error())
	case errors.Is(err, errRoutingStore):
		mgmtError(w, http.StatusInternalServerError, "ServerError", err.Error())
	case errors.Is(err, errRoutingConflict):
		mgmtError(w, http.StatusConflict, "Conflict", err.Error())
	case err != nil:
		mgmtError(w, http.StatusBadRequest, "ArgumentInvalid", err.Error())
	case status == http.StatusNoContent:
		w.WriteHeader(status)
	default:
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(out)
	}
	return true
}

// checkExisting applies the conditional headers: exists says whether the
// resource is there.
func checkExisting(r *http.Request, exists bool) error {
	switch {
	case exists && r.Header.Get("If-None-Match") == "*":
		return fmt.Errorf("%w: %s already exists", errRoutingConflict, r.URL.Path)
	case !exists && r.Header.Get("If-Match") == "*":
		return fmt.Errorf("%w: %s does not exist", errRoutingMissing, r.URL.Path)
	}
	return nil
}

func (h *Hub) putRoute(r *http.Request, rt routing.Route) (created bool, err error) {
	err = h.changeRouting(func(rc *config.Routing) (err error) {
		created, err = upsert(r, &rc.Routes, rt, func(x routing.Route) bool { return x.Name == rt.Name })
		return err
	})
	return created, err
}

// upsert replaces the element of list that same picks with item, or appends
// item, as the request's conditional headers allow; it reports an append.
func upsert[T any](r *http.Request, list *[]T, item T, same func(T) bool) (bool, error) {
	i := slices.IndexFunc(*list, same)
	if err := checkExisting(r, i >= 0); err != nil {
		return false, err
	}
	if i >= 0 {
		(*list)[i] = item
		return false, nil
	}
	*list = append(*list, item)
	return true, nil
}

// remove deletes the element of list that same picks; missing says what is
// not there when none is.
func remove[T any](list *[]T, same func(T) bool, missing string) error {
	i := slices.IndexFunc(*list, same)
	if i < 0 {
		return fmt.Errorf("%w: %s", errRoutingMissing, missing)
	}
	*list = slices.Delete(*list, i, i+1)
	return nil
}

// changeRouting applies a change of routes, the fallback route or
// enrichments: edit changes a copy, which is checked, saved and put in force.
// Endpoint workers pick it up with the next message they select.
func (h *Hub) changeRouting(edit func(*config.Routing) error) error {
	h.routingChange.Lock()
	defer h.routingChange.Unlock()
	next := h.routingNow().cfg.Clone()
	if err := edit(&next); err != nil {
		return err
	}
	st, err := h.compileRouting(next)
	if err != nil {
		return err
	}
	if err := h.saveRouting(next); err != nil {
		return err
	}
	h.routing.Store(st)
	h.log.Info("routing changed", "routes", len(next.Routes), "enrichments", len(next.Enrichments), "fallback", next.FallbackRoute != nil)
	return nil
}

// putEndpoint creates or replaces a custom endpoint. A new endpoint starts at
// the log's end: what was accepted before it existed was routed without it.
// A replaced endpoint keeps its cursor and dead letters; its worker stops
// (an unflushed blob window is dropped and staged again from the log) and
// starts again with the new settings.
func (h *Hub) putEndpoint(r *http.Request, name string, spec EndpointSpec) (created bool, err error) {
	if strings.EqualFold(name, routing.BuiltInEvents) {
		return false, fmt.Errorf("%w: %q is the built-in endpoint", errRoutingConflict, name)
	}
	h.routingChange.Lock()
	defer h.routingChange.Unlock()
	cur := h.routingNow()
	old, exists := cur.cfg.Endpoint(name)
	if err := checkExisting(r, exists); err != nil {
		return false, err
	}
	if exists && old.Name != name {
		return false, fmt.Errorf("%w: endpoint names are unique regardless of case, and %q exists", errRoutingConflict, old.Name)
	}
	next := cur.cfg.Clone()
	if err := next.SetEndpoint(spec.Type, name, spec.Properties); err != nil {
		return false, err
	}
	st, err := h.compileRouting(next)
	if err != nil {
		return false, err
	}
	ep, _ := next.Endpoint(name)
	sink, err := newSink(ep, h.hubName())
	if err != nil {
		return false, err
	}
	ctx := r.Context()
	if !exists {
		// Before the worker exists and before the file names the
		// endpoint, so that a crash leaves at worst an unused cursor.
		err := h.msglog.Commit(ctx, endpoint.ConsumerName(name), h.msglog.Last()+1)
		if err == nil {
			err = h.msglog.Sync(ctx)
		}
		if err != nil {
			sink.Close()
			return false, fmt.Errorf("endpoint %s: start cursor: %w", name, err)
		}
	}
	if err := h.saveRouting(next); err != nil {
		sink.Close()
		return false, err
	}
	if exists {
		if err := h.stopEndpoint(ctx, name); err != nil {
			// The old worker stops with the hub. Its settings are already
			// replaced in the file, so a restart finishes the change.
			sink.Close()
			return false, fmt.Errorf("endpoint %s saved, but its worker did not stop; restart the hub to apply: %w", name, err)
		}
	}
	h.routing.Store(st)
	if err := h.startEndpoint(name, sink); err != nil {
		sink.Close()
		return false, fmt.Errorf("endpoint %s saved but not started; restart the hub: %w", name, err)
	}
	h.log.Info("endpoint changed", "endpoint", name, "type", spec.Type, "created", !exists)
	return !exists, nil
}

// stopEndpoint stops an endpoint's worker, waiting up to a minute (also when
// the request that asked for it is gone), and closes its sink.
func (h *Hub) stopEndpoint(ctx context.Context, name string) error {
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	w, err := h.delivery.Remove(stopCtx, name)
	if err != nil || w == nil {
		return err
	}
	if err := w.Sink().Close(); err != nil {
		h.log.Warn("closing endpoint", "endpoint", name, "error", err)
	}
	return nil
}

// deleteEndpoint removes a custom endpoint that nothing routes to. Its
// undelivered messages are dropped with it (as in IoT Hub); its dead letters
// too, but only when forced, since they may be all that is left of them.
func (h *Hub) deleteEndpoint(ctx context.Context, name string, force bool) error {
	h.routingChange.Lock()
	defer h.routingChange.Unlock()
	cur := h.routingNow()
	ep, ok := cur.cfg.Endpoint(name)
	if !ok || ep.Name != name {
		if strings.EqualFold(name, routing.BuiltInEvents) {
			return fmt.Errorf("%w: the built-in events endpoint cannot be deleted", errRoutingConflict)
		}
		return fmt.Errorf("%w: no custom endpoint named %q", errRoutingMissing, name)
	}
	if refs := cur.cfg.References(name); len(refs) > 0 {
		return fmt.Errorf("%w: endpoint %q is used by %s; change or delete them first", errRoutingConflict, name, strings.Join(refs, ", "))
	}
	h.deadLetterMu.Lock()
	dead := h.deadLetterLog[name]
	h.deadLetterMu.Unlock()
	if dead != nil && !force {
		list, err := endpoint.ListDeadLetters(ctx, dead, 1)
		if err != nil {
			return fmt.Errorf("endpoint %s: read dead letters: %w", name, err)
		}
		if len(list) > 0 {
			return fmt.Errorf("%w: endpoint %q has dead letters; replay them or delete with force", errRoutingConflict, name)
		}
	}
	next := cur.cfg.Clone()
	next.RemoveEndpoint(name)
	st, err := h.compileRouting(next)
	if err != nil {
		return err
	}
	if err := h.saveRouting(next); err != nil {
		return err
	}
	h.routing.Store(st)
	if err := h.stopEndpoint(ctx, name); err != nil {
		return fmt.Errorf("endpoint %s deleted, but its worker did not stop (it stops with the hub): %w", name, err)
	}
	if dead != nil {
		h.deadLetterMu.Lock()
		delete(h.deadLetterLog, name)
		h.deadLetterMu.Unlock()
		if err := dead.Close(); err != nil {
			h.log.Warn("closing dead letters", "endpoint", name, "error", err)
		}
		if err := os.RemoveAll(h.deadLetterDir(name)); err != nil {
			h.log.Warn("removing dead letters", "endpoint", name, "error", err)
		}
	}
	h.log.Info("endpoint deleted", "endpoint", name, "type", ep.Type)
	return nil
}
