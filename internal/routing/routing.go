// Package routing decides where each accepted message goes: IoT Hub's routes
// (source, condition, endpoint), the fallback route, and enrichments. It is
// pure decision logic over a message and its sender's twin; delivery, cursors
// and retries belong to the endpoint workers that call it.
package routing

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"

	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/query"
)

// Sources of messages, as IoT Hub names them.
const (
	SourceDeviceMessages        = "DeviceMessages"
	SourceTwinChangeEvents      = "TwinChangeEvents"
	SourceDeviceLifecycleEvents = "DeviceLifecycleEvents"
	SourceConnectionStateEvents = "DeviceConnectionStateEvents"
	// SourceMQTTTopics is Moat's source for plain MQTT topics (the IoT
	// Operations dataflow case); its routes select topics with TopicFilter.
	SourceMQTTTopics = "MqttTopics"
)

// BuiltInEvents is the built-in endpoint that the fallback route targets.
const BuiltInEvents = "events"

// Limits of IoT Hub's paid tiers.
const (
	MaxRoutes      = 100
	MaxEnrichments = 10
	maxNameLen     = 64
)

// Route is one route in IoT Hub's resource shape.
type Route struct {
	Name          string   `json:"name"`
	Source        string   `json:"source"`
	Condition     string   `json:"condition,omitempty"`
	EndpointNames []string `json:"endpointNames"`
	IsEnabled     bool     `json:"isEnabled"`
	// TopicFilter is an MQTT topic filter ('+' and '#' wildcards) for
	// MqttTopics routes; empty matches every plain topic.
	TopicFilter string `json:"topicFilter,omitempty"`
}

// Enrichment stamps an application property on messages to some endpoints.
type Enrichment struct {
	Key           string   `json:"key"`
	Value         string   `json:"value"`
	EndpointNames []string `json:"endpointNames"`
}

// Config is the routing part of the hub's properties.
type Config struct {
	Routes        []Route      `json:"routes,omitempty"`
	FallbackRoute *Route       `json:"fallbackRoute,omitempty"`
	Enrichments   []Enrichment `json:"enrichments,omitempty"`
}

var (
	nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
	keyRE  = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
)

// compiled is a route ready to evaluate.
type compiled struct {
	Route
	cond *query.Condition // nil means true
}

// Router evaluates a Config. It is immutable and safe for concurrent use.
type Router struct {
	hubName     string
	routes      []compiled
	fallback    *compiled
	enrichments []Enrichment
}

// Compile validates c against the endpoints that exist (plus the built-in
// events endpoint) and compiles every condition once. Errors name the route
// and, for a condition, its position.
func Compile(c Config, hubName string, endpoints []string) (*Router, error) {
	known := map[string]bool{BuiltInEvents: true}
	for _, e := range endpoints {
		known[e] = true
	}
	if len(c.Routes) > MaxRoutes {
		return nil, fmt.Errorf("routing: %d routes, at most %d", len(c.Routes), MaxRoutes)
	}
	r := &Router{hubName: hubName}
	seen := map[string]bool{}
	compile := func(path string, rt Route) (compiled, error) {
		if !nameRE.MatchString(rt.Name) {
			return compiled{}, fmt.Errorf("%s.name: %q must be 1 to %d letters, digits, '-', '_' or '.'", path, rt.Name, maxNameLen)
		}
		switch rt.Source {
		case SourceDeviceMessages, SourceTwinChangeEvents, SourceDeviceLifecycleEvents, SourceConnectionStateEvents, SourceMQTTTopics:
		default:
			return compiled{}, fmt.Errorf("%s.source: unknown source %q", path, rt.Source)
		}
		if rt.TopicFilter != "" && (rt.Source != SourceMQTTTopics || !validFilter(rt.TopicFilter)) {
			return compiled{}, fmt.Errorf("%s.topicFilter: %q is not an MQTT topic filter of a MqttTopics route", path, rt.TopicFilter)
		}
		if len(rt.EndpointNames) != 1 {
			return compiled{}, fmt.Errorf("%s.endpointNames: a route names exactly one endpoint", path)
		}
		if !known[rt.EndpointNames[0]] {
			return compiled{}, fmt.Errorf("%s.endpointNames: no endpoint %q", path, rt.EndpointNames[0])
		}
		out := compiled{Route: rt}
		if strings.TrimSpace(rt.Condition) != "" && !strings.EqualFold(strings.TrimSpace(rt.Condition), "true") {
			cond, err := query.ParseCondition(rt.Condition)
			if err != nil {
				return compiled{}, fmt.Errorf("%s.condition: %w", path, err)
			}
			out.cond = cond
		}
		return out, nil
	}
	for i, rt := range c.Routes {
		path := fmt.Sprintf("routing.routes[%d]", i)
		if seen[strings.ToLower(rt.Name)] {
			return nil, fmt.Errorf("%s.name: duplicate route %q", path, rt.Name)
		}
		seen[strings.ToLower(rt.Name)] = true
		cr, err := compile(path, rt)
		if err != nil {
			return nil, err
		}
		r.routes = append(r.routes, cr)
	}
	if c.FallbackRoute != nil {
		cr, err := compile("routing.fallbackRoute", *c.FallbackRoute)
		if err != nil {
			return nil, err
		}
		r.fallback = &cr
	}
	if len(c.Enrichments) > MaxEnrichments {
		return nil, fmt.Errorf("routing: %d enrichments, at most %d", len(c.Enrichments), MaxEnrichments)
	}
	for i, e := range c.Enrichments {
		path := fmt.Sprintf("routing.enrichments[%d]", i)
		if !keyRE.MatchString(e.Key) {
			return nil, fmt.Errorf("%s.key: %q must be letters, digits, '-', '_' or '.'", path, e.Key)
		}
		if e.Value == "" {
			return nil, fmt.Errorf("%s.value: is required", path)
		}
		for _, n := range e.EndpointNames {
			if !known[n] {
				return nil, fmt.Errorf("%s.endpointNames: no endpoint %q", path, n)
			}
		}
		r.enrichments = append(r.enrichments, e)
	}
	return r, nil
}

// Input is one message to route: its source and, for $twin references and
// twin enrichments, the sender's twin (nil when unknown).
type Input struct {
	Source  string
	Message message.Message
	Twin    map[string]any
}

// Endpoints returns the endpoints a message goes to, each once however many
// routes name it. A message that no enabled route of its source matches goes
// where the fallback route sends it. As in IoT Hub, once any route exists the
// built-in events endpoint gets only what a route or the fallback sends it;
// with no routes at all, device messages go to events.
func (r *Router) Endpoints(in Input) []string {
	env := newEnv(in)
	var out []string
	add := func(e string) {
		for _, x := range out {
			if x == e {
				return
			}
		}
		out = append(out, e)
	}
	matched := false
	for i := range r.routes {
		if rt := &r.routes[i]; rt.matches(in, env) {
			matched = true
			add(rt.EndpointNames[0])
		}
	}
	if matched {
		return out
	}
	switch {
	case r.fallback != nil:
		if r.fallback.IsEnabled && r.fallback.Source == in.Source && (r.fallback.cond == nil || r.fallback.cond.Match(env)) {
			add(r.fallback.EndpointNames[0])
		}
	case len(r.routes) == 0 && in.Source == SourceDeviceMessages:
		add(BuiltInEvents)
	}
	return out
}

// Enrich returns the application properties to add to a message sent to
// endpoint: static values, $iothubname, and $twin paths (a missing path stamps
// the value as written, as IoT Hub does).
func (r *Router) Enrich(in Input, endpoint string) map[string]string {
	var out map[string]string
	for _, e := range r.enrichments {
		if !contains(e.EndpointNames, endpoint) {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[e.Key] = r.enrichmentValue(e.Value, in.Twin)
	}
	return out
}

func (r *Router) enrichmentValue(v string, tw map[string]any) string {
	switch {
	case strings.EqualFold(v, "$iothubname"):
		return r.hubName
	case strings.HasPrefix(v, "$twin."):
		if x, ok := lookup(tw, strings.Split(strings.TrimPrefix(v, "$twin."), ".")); ok {
			if s, ok := x.(string); ok {
				return s
			}
			if b, err := json.Marshal(x); err == nil {
				return string(b)
			}
		}
	}
	return v
}

func lookup(doc map[string]any, path []string) (any, bool) {
	var cur any = doc
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[p]; !ok {
			return nil, false
		}
	}
	return cur, cur != nil
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

// env adapts a message to the query language. Property names in conditions
// follow IoT Hub's query names ($contentType, $connectionDeviceId, …); the
// message keeps IoT Hub's wire names (content-type, iothub-connection-device-id).
type env struct {
	in       Input
	bodyOnce sync.Once
	body     any
	bodyOK   bool
}

func newEnv(in Input) *env { return &env{in: in} }

var systemNames = map[string]string{
	"contenttype":        message.SysContentType,
	"contentencoding":    message.SysContentEncoding,
	"connectiondeviceid": message.SysConnectionDevice,
	"connectionmoduleid": message.SysConnectionModule,
	"enqueuedtime":       message.SysEnqueuedTime,
	"correlationid":      message.SysCorrelationID,
	"messageid":          message.SysMessageID,
	"userid":             message.SysUserID,
	"dt-dataschema":      message.SysDataSchema,
	"dt-subject":         message.SysSubject,
	"to":                 message.SysTo,
}

func (e *env) SystemProperty(name string) (string, bool) {
	n := strings.ToLower(name)
	if wire, ok := systemNames[n]; ok {
		n = wire
	}
	for k, v := range e.in.Message.System {
		if strings.EqualFold(k, n) {
			return v, true
		}
	}
	return "", false
}

func (e *env) AppProperty(name string) (string, bool) {
	if v, ok := e.in.Message.Properties[name]; ok {
		return v, true
	}
	for k, v := range e.in.Message.Properties {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return "", false
}

// Body decodes once, and only JSON in a UTF encoding, as IoT Hub requires.
func (e *env) Body() (any, bool) {
	e.bodyOnce.Do(func() {
		ct, _ := e.SystemProperty("contentType")
		ce, _ := e.SystemProperty("contentEncoding")
		if !strings.EqualFold(strings.TrimSpace(strings.Split(ct, ";")[0]), "application/json") {
			return
		}
		switch strings.ToLower(ce) {
		case "utf-8", "utf-16", "utf-32":
		default:
			return
		}
		if json.Unmarshal(e.in.Message.Body, &e.body) == nil {
			e.bodyOK = true
		}
	})
	return e.body, e.bodyOK
}

func (e *env) Twin() (map[string]any, bool) { return e.in.Twin, e.in.Twin != nil }

// validFilter reports whether f is a well-formed MQTT topic filter.
func validFilter(f string) bool {
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return false
		}
		if strings.Contains(l, "+") && l != "+" {
			return false
		}
	}
	return true
}

// matchFilter matches a topic against an MQTT topic filter.
func matchFilter(filter, topic string) bool {
	if topic == "" {
		return false
	}
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fl {
		switch {
		case f == "#":
			return true
		case i >= len(tl):
			return false
		case f != "+" && f != tl[i]:
			return false
		}
	}
	return len(fl) == len(tl)
}

// TestRoute evaluates one route, compiled on its own, against a sample
// message, as IoT Hub's "test route" does: True, False or Undefined (a
// condition that yields no Boolean). A route of another source, a disabled
// one or a topic filter that does not match is False. A condition that does
// not compile is the error (with its position).
func TestRoute(rt Route, in Input) (query.Truth, error) {
	if rt.Source != in.Source {
		return query.False, nil
	}
	if rt.TopicFilter != "" && !matchFilter(rt.TopicFilter, in.Message.System[message.SysMQTTTopic]) {
		return query.False, nil
	}
	if strings.TrimSpace(rt.Condition) == "" {
		return query.True, nil
	}
	c, err := query.ParseCondition(rt.Condition)
	if err != nil {
		return query.Undefined, err
	}
	return c.Evaluate(newEnv(in)), nil
}

// Routes returns the compiled routes (in order) and the fallback route.
func (r *Router) Routes() ([]Route, *Route) {
	out := make([]Route, len(r.routes))
	for i, c := range r.routes {
		out[i] = c.Route
	}
	if r.fallback == nil {
		return out, nil
	}
	fb := r.fallback.Route
	return out, &fb
}

// Takes says whether any message of source can go anywhere: an enabled route
// or the enabled fallback route has that source (or, with no routes at all,
// it is device messages, which then go to events). The hub makes no event of
// a source nothing takes, as IoT Hub sends none without a route for it.
func (r *Router) Takes(source string) bool {
	for i := range r.routes {
		if rt := &r.routes[i]; rt.IsEnabled && rt.Source == source {
			return true
		}
	}
	if fb := r.fallback; fb != nil && fb.IsEnabled && fb.Source == source {
		return true
	}
	return len(r.routes) == 0 && source == SourceDeviceMessages
}

// Matching returns the enabled routes of in's source that a message
// matches (IoT Hub's "test all routes").
func (r *Router) Matching(in Input) []Route {
	env := newEnv(in)
	var out []Route
	for i := range r.routes {
		if rt := &r.routes[i]; rt.matches(in, env) {
			out = append(out, rt.Route)
		}
	}
	return out
}

// matches says whether an enabled route of in's source takes the message.
func (rt *compiled) matches(in Input, env *env) bool {
	if !rt.IsEnabled || rt.Source != in.Source {
		return false
	}
	if rt.TopicFilter != "" && !matchFilter(rt.TopicFilter, in.Message.System[message.SysMQTTTopic]) {
		return false
	}
	return rt.cond == nil || rt.cond.Match(env)
}

// SystemPropertyName maps a system property as routing queries name it
// (contentType, connectionDeviceId, with or without '$') to its wire name
// (content-type, iothub-connection-device-id); other names are kept.
func SystemPropertyName(name string) string {
	if wire, ok := systemNames[strings.ToLower(strings.TrimPrefix(name, "$"))]; ok {
		return wire
	}
	return name
}
