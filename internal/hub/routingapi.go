package hub

import (
	"encoding/json"
	"io"
	"net/http"
	"time"

	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/routing"
)

// RoutingPath serves the running routing configuration, route tests and
// (routingmgmt.go) changes to routes, endpoints and enrichments:
//
//	GET  /moat/routing                      routes, fallback, enrichments, endpoint names and kinds (RegistryRead)
//	POST /moat/routing/routes/$test         evaluate one route against a sample message (RegistryRead)
//	POST /moat/routing/routes/$testall      the routes a sample message matches (RegistryRead)
//
// Endpoint settings are never shown: they hold credentials.
const RoutingPath = "/moat/routing"

// RoutingView is the answer to GET RoutingPath.
type RoutingView struct {
	Routes        []routing.Route      `json:"routes"`
	FallbackRoute *routing.Route       `json:"fallbackRoute,omitempty"`
	Enrichments   []routing.Enrichment `json:"enrichments"`
	Endpoints     []EndpointView       `json:"endpoints"`
}

// EndpointView names an endpoint and its kind.
type EndpointView struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// TestMessage is a sample message, as IoT Hub's route tests take it.
type TestMessage struct {
	Body             string            `json:"body"`
	AppProperties    map[string]string `json:"appProperties,omitempty"`
	SystemProperties map[string]string `json:"systemProperties,omitempty"`
}

// TestRouteInput is the body of POST .../routes/$test: a route by name or
// given whole.
type TestRouteInput struct {
	RouteName string          `json:"routeName,omitempty"`
	Route     *routing.Route  `json:"route,omitempty"`
	Message   TestMessage     `json:"message"`
	Twin      json.RawMessage `json:"twin,omitempty"`
}

// TestRouteResult is IoT Hub's TestRouteResult.
type TestRouteResult struct {
	Result  string           `json:"result"` // "true", "false" or "undefined"
	Details TestRouteDetails `json:"details"`
}

// TestRouteDetails carries compilation errors.
type TestRouteDetails struct {
	CompilationErrors []CompilationError `json:"compilationErrors"`
}

// CompilationError is one condition error.
type CompilationError struct {
	Message  string `json:"message"`
	Severity string `json:"severity"`
}

// TestAllRoutesInput is the body of POST .../routes/$testall.
type TestAllRoutesInput struct {
	RoutingSource string          `json:"routingSource"`
	Message       TestMessage     `json:"message"`
	Twin          json.RawMessage `json:"twin,omitempty"`
}

// TestAllRoutesResult is IoT Hub's TestAllRoutesResult.
type TestAllRoutesResult struct {
	Routes []MatchedRoute `json:"routes"`
}

// MatchedRoute wraps a route like IoT Hub's MatchedRoute.
type MatchedRoute struct {
	Properties routing.Route `json:"properties"`
}

func (h *Hub) routingHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.routingMgmt(w, r) {
			return
		}
		// Tests change nothing, so RegistryRead is enough for all of this.
		if err := h.authorizeRead(r); err != nil {
			mgmtError(w, http.StatusUnauthorized, "IotHubUnauthorizedAccess", "Unauthorized")
			return
		}
		switch {
		case r.URL.Path == RoutingPath && r.Method == http.MethodGet:
			st := h.routingNow()
			routes, fb := st.router.Routes()
			enr := st.cfg.Enrichments
			if enr == nil {
				enr = []routing.Enrichment{}
			}
			writeMgmtJSON(w, RoutingView{Routes: routes, FallbackRoute: fb, Enrichments: enr, Endpoints: endpointViews(st.cfg)})
		case r.URL.Path == RoutingPath+"/routes/$test" && r.Method == http.MethodPost:
			var in TestRouteInput
			if !readMgmtJSON(w, r, &in) {
				return
			}
			rt := in.Route
			if rt == nil {
				routes, _ := h.routingNow().router.Routes()
				for i := range routes {
					if routes[i].Name == in.RouteName {
						rt = &routes[i]
					}
				}
				if rt == nil {
					mgmtError(w, http.StatusNotFound, "RouteNotFound", "no route named "+in.RouteName)
					return
				}
			}
			input, ok := testInput(w, rt.Source, in.Message, in.Twin)
			if !ok {
				return
			}
			res := TestRouteResult{Details: TestRouteDetails{CompilationErrors: []CompilationError{}}}
			truth, err := routing.TestRoute(*rt, input)
			res.Result = truth.String()
			if err != nil {
				res.Result = "undefined"
				res.Details.CompilationErrors = append(res.Details.CompilationErrors, CompilationError{Message: err.Error(), Severity: "error"})
			}
			writeMgmtJSON(w, res)
		case r.URL.Path == RoutingPath+"/routes/$testall" && r.Method == http.MethodPost:
			var in TestAllRoutesInput
			if !readMgmtJSON(w, r, &in) {
				return
			}
			if in.RoutingSource == "" {
				in.RoutingSource = routing.SourceDeviceMessages
			}
			input, ok := testInput(w, in.RoutingSource, in.Message, in.Twin)
			if !ok {
				return
			}
			out := TestAllRoutesResult{Routes: []MatchedRoute{}}
			for _, rt := range h.routingNow().router.Matching(input) {
				out.Routes = append(out.Routes, MatchedRoute{Properties: rt})
			}
			writeMgmtJSON(w, out)
		default:
			mgmtError(w, http.StatusNotFound, "NotFound", r.Method+" "+r.URL.Path+" is not a routing resource")
		}
	})
}

// authorizeRead checks a management request for read rights whatever its
// method.
func (h *Hub) authorizeRead(r *http.Request) error {
	get := r.Clone(r.Context())
	get.Method = http.MethodGet
	return h.authorizeManagement(get)
}

func readMgmtJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		mgmtError(w, http.StatusBadRequest, "ArgumentInvalid", "request body: "+err.Error())
		return false
	}
	return true
}

// testInput builds the routing input for a sample message. A JSON body
// without a content type is taken as UTF-8 JSON, so that $body queries can
// be tried without spelling the system properties out.
func testInput(w http.ResponseWriter, source string, tm TestMessage, twinDoc json.RawMessage) (routing.Input, bool) {
	sys := map[string]string{}
	for k, v := range tm.SystemProperties {
		sys[routing.SystemPropertyName(k)] = v
	}
	if _, ok := sys[message.SysContentType]; !ok && json.Valid([]byte(tm.Body)) {
		sys[message.SysContentType] = "application/json"
		sys[message.SysContentEncoding] = "utf-8"
	}
	m := message.Message{Body: []byte(tm.Body), System: sys, Properties: tm.AppProperties, Enqueued: time.Now()}
	in := routing.Input{Source: source, Message: m}
	if len(twinDoc) > 0 {
		if err := json.Unmarshal(twinDoc, &in.Twin); err != nil {
			mgmtError(w, http.StatusBadRequest, "ArgumentInvalid", "twin: "+err.Error())
			return routing.Input{}, false
		}
	}
	return in, true
}

// endpointViews lists every endpoint with its type.
func endpointViews(rc config.Routing) []EndpointView {
	out := []EndpointView{{Name: routing.BuiltInEvents, Type: "builtInEvents"}}
	for _, e := range rc.CustomEndpoints() {
		out = append(out, EndpointView{Name: e.Name, Type: e.Type})
	}
	return out
}
