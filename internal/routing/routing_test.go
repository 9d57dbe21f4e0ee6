package routing

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/message"
)

func msg(body string, sys, app map[string]string) message.Message {
	if sys == nil {
		sys = map[string]string{}
	}
	return message.Message{Body: []byte(body), System: sys, Properties: app}
}

var jsonSys = map[string]string{
	message.SysContentType:      "application/json",
	message.SysContentEncoding:  "utf-8",
	message.SysConnectionDevice: "dev1",
}

func TestEndpoints(t *testing.T) {
	cfg := Config{
		Routes: []Route{
			{Name: "hot", Source: SourceDeviceMessages, Condition: "$body.temperature > 30", EndpointNames: []string{"alerts"}, IsEnabled: true},
			{Name: "hot-again", Source: SourceDeviceMessages, Condition: "$body.temperature > 40", EndpointNames: []string{"alerts"}, IsEnabled: true},
			{Name: "lines", Source: SourceDeviceMessages, Condition: "line = 'l1' AND $connectionDeviceId = 'dev1'", EndpointNames: []string{"store"}, IsEnabled: true},
			{Name: "off", Source: SourceDeviceMessages, EndpointNames: []string{"store"}, IsEnabled: false},
			{Name: "twins", Source: SourceTwinChangeEvents, EndpointNames: []string{"store"}, IsEnabled: true},
			{Name: "prod", Source: SourceDeviceMessages, Condition: "$twin.tags.env = 'prod'", EndpointNames: []string{"prodsink"}, IsEnabled: true},
		},
		FallbackRoute: &Route{Name: "fallback", Source: SourceDeviceMessages, EndpointNames: []string{BuiltInEvents}, IsEnabled: true},
	}
	r, err := Compile(cfg, "hub1", []string{"alerts", "store", "prodsink"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   Input
		want []string
	}{
		{"two routes to one endpoint deliver once", Input{Source: SourceDeviceMessages, Message: msg(`{"temperature":45}`, jsonSys, nil)}, []string{"alerts"}},
		{"app property and system property", Input{Source: SourceDeviceMessages, Message: msg(`x`, map[string]string{message.SysConnectionDevice: "dev1"}, map[string]string{"LINE": "l1"})}, []string{"store"}},
		{"no match goes to the fallback", Input{Source: SourceDeviceMessages, Message: msg(`{"temperature":20}`, jsonSys, nil)}, []string{BuiltInEvents}},
		{"body of non-JSON content is undefined", Input{Source: SourceDeviceMessages, Message: msg(`{"temperature":45}`, map[string]string{message.SysContentType: "text/plain", message.SysContentEncoding: "utf-8"}, nil)}, []string{BuiltInEvents}},
		{"body without a UTF encoding is undefined", Input{Source: SourceDeviceMessages, Message: msg(`{"temperature":45}`, map[string]string{message.SysContentType: "application/json"}, nil)}, []string{BuiltInEvents}},
		{"other sources use their own routes", Input{Source: SourceTwinChangeEvents, Message: msg(`{}`, nil, nil)}, []string{"store"}},
		{"fallback is only for its source", Input{Source: SourceDeviceLifecycleEvents, Message: msg(`{}`, nil, nil)}, nil},
		{"twin condition", Input{Source: SourceDeviceMessages, Message: msg(`x`, nil, nil), Twin: map[string]any{"tags": map[string]any{"env": "prod"}}}, []string{"prodsink"}},
		{"missing twin is undefined", Input{Source: SourceDeviceMessages, Message: msg(`x`, nil, nil)}, []string{BuiltInEvents}},
	}
	for _, tt := range tests {
		if got := r.Endpoints(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestNoRoutesMeansEvents(t *testing.T) {
	r, err := Compile(Config{}, "hub1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Endpoints(Input{Source: SourceDeviceMessages, Message: msg("x", nil, nil)}); !reflect.DeepEqual(got, []string{BuiltInEvents}) {
		t.Fatalf("got %v", got)
	}
	// Once a route exists, events gets only what a route or fallback sends.
	r, err = Compile(Config{Routes: []Route{{Name: "a", Source: SourceDeviceMessages, Condition: "false", EndpointNames: []string{"s"}, IsEnabled: true}}}, "hub1", []string{"s"})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Endpoints(Input{Source: SourceDeviceMessages, Message: msg("x", nil, nil)}); len(got) != 0 {
		t.Fatalf("got %v", got)
	}
}

func TestCompileErrors(t *testing.T) {
	ok := Route{Name: "a", Source: SourceDeviceMessages, EndpointNames: []string{"s"}, IsEnabled: true}
	with := func(f func(*Route)) Route { r := ok; f(&r); return r }
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"bad name", Config{Routes: []Route{with(func(r *Route) { r.Name = "a b" })}}, "routing.routes[0].name"},
		{"duplicate", Config{Routes: []Route{ok, with(func(r *Route) { r.Name = "A" })}}, "duplicate route"},
		{"source", Config{Routes: []Route{with(func(r *Route) { r.Source = "Telemetry" })}}, "unknown source"},
		{"two endpoints", Config{Routes: []Route{with(func(r *Route) { r.EndpointNames = []string{"s", "events"} })}}, "exactly one endpoint"},
		{"unknown endpoint", Config{Routes: []Route{with(func(r *Route) { r.EndpointNames = []string{"nope"} })}}, `no endpoint "nope"`},
		{"bad condition", Config{Routes: []Route{with(func(r *Route) { r.Condition = "temp >" })}}, "routing.routes[0].condition"},
		{"enrichment key", Config{Enrichments: []Enrichment{{Key: "a b", Value: "v", EndpointNames: []string{"s"}}}}, "routing.enrichments[0].key"},
		{"enrichment endpoint", Config{Enrichments: []Enrichment{{Key: "k", Value: "v", EndpointNames: []string{"x"}}}}, `no endpoint "x"`},
		{"too many enrichments", Config{Enrichments: make([]Enrichment, 11)}, "at most 10"},
	}
	for _, tt := range tests {
		_, err := Compile(tt.cfg, "h", []string{"s"})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want %q", tt.name, err, tt.want)
		}
	}
}

func TestEnrich(t *testing.T) {
	r, err := Compile(Config{Enrichments: []Enrichment{
		{Key: "hub", Value: "$iothubname", EndpointNames: []string{"s"}},
		{Key: "site", Value: "$twin.tags.site", EndpointNames: []string{"s", "t"}},
		{Key: "fw", Value: "$twin.properties.reported.fw.version", EndpointNames: []string{"s"}},
		{Key: "static", Value: "plant-7", EndpointNames: []string{"t"}},
	}}, "hub1", []string{"s", "t"})
	if err != nil {
		t.Fatal(err)
	}
	tw := map[string]any{"tags": map[string]any{"site": "berlin"}, "properties": map[string]any{"reported": map[string]any{}}}
	got := r.Enrich(Input{Twin: tw}, "s")
	want := map[string]string{"hub": "hub1", "site": "berlin", "fw": "$twin.properties.reported.fw.version"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("s: got %v, want %v", got, want)
	}
	if got := r.Enrich(Input{}, "t"); !reflect.DeepEqual(got, map[string]string{"site": "$twin.tags.site", "static": "plant-7"}) {
		t.Fatalf("t: got %v", got)
	}
	if got := r.Enrich(Input{}, "other"); got != nil {
		t.Fatalf("other: %v", got)
	}
}

func FuzzRoute(f *testing.F) {
	f.Add("$body.a > 1 AND b = 'x'", `{"a":2}`, "x")
	f.Add("$twin.tags.x = 1", "not json", "")
	f.Fuzz(func(t *testing.T, cond, body, prop string) {
		r, err := Compile(Config{Routes: []Route{{Name: "r", Source: SourceDeviceMessages, Condition: cond, EndpointNames: []string{"s"}, IsEnabled: true}}}, "h", []string{"s"})
		if err != nil {
			return
		}
		got := r.Endpoints(Input{Source: SourceDeviceMessages, Message: msg(body, jsonSys, map[string]string{"b": prop}), Twin: map[string]any{"tags": map[string]any{"x": 1.0}}})
		if len(got) > 1 || (len(got) == 1 && got[0] != "s") {
			t.Fatalf("endpoints %v", got)
		}
	})
}

func TestMQTTTopicRoutes(t *testing.T) {
	r, err := Compile(Config{Routes: []Route{
		{Name: "lines", Source: SourceMQTTTopics, TopicFilter: "factory/+/temp", EndpointNames: []string{"bridge"}, IsEnabled: true},
		{Name: "all", Source: SourceMQTTTopics, TopicFilter: "factory/#", Condition: "$body.temperature > 30", EndpointNames: []string{"store"}, IsEnabled: true},
	}}, "h", []string{"bridge", "store"})
	if err != nil {
		t.Fatal(err)
	}
	in := func(topic, body string) Input {
		return Input{Source: SourceMQTTTopics, Message: msg(body, map[string]string{message.SysMQTTTopic: topic, message.SysContentType: "application/json", message.SysContentEncoding: "utf-8"}, nil)}
	}
	tests := []struct {
		in   Input
		want []string
	}{
		{in("factory/line1/temp", `{"temperature":25.5}`), []string{"bridge"}},
		{in("factory/line1/temp", `{"temperature":35}`), []string{"bridge", "store"}},
		{in("factory/line1/pressure", `{"temperature":35}`), []string{"store"}},
		{in("factory/line1/temp/x", `{}`), nil},
		{in("office/temp", `{"temperature":99}`), nil},
	}
	for _, tt := range tests {
		if got := r.Endpoints(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s %s: got %v, want %v", tt.in.Message.System[message.SysMQTTTopic], tt.in.Message.Body, got, tt.want)
		}
	}
	for _, f := range []string{"a/#/b", "a+/b", "#x"} {
		_, err := Compile(Config{Routes: []Route{{Name: "x", Source: SourceMQTTTopics, TopicFilter: f, EndpointNames: []string{"s"}, IsEnabled: true}}}, "h", []string{"s"})
		if err == nil {
			t.Errorf("filter %q accepted", f)
		}
	}
	if _, err := Compile(Config{Routes: []Route{{Name: "x", Source: SourceDeviceMessages, TopicFilter: "a", EndpointNames: []string{"s"}, IsEnabled: true}}}, "h", []string{"s"}); err == nil {
		t.Error("topicFilter on a DeviceMessages route accepted")
	}
}

func TestConnectionStateEvent(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m := ConnectionStateEvent("hub1", "d1", "", true, 255, at)
	if SourceOf(m) != SourceConnectionStateEvents || string(m.Body) != `{"sequenceNumber":"00000000000000ff"}` {
		t.Fatalf("got %s %s", SourceOf(m), m.Body)
	}
	want := map[string]string{"hubName": "hub1", "deviceId": "d1", "opType": "deviceConnected", "operationTimestamp": "2026-01-02T03:04:05Z", "iothub-message-schema": "deviceConnectionStateNotification"}
	if !reflect.DeepEqual(m.Properties, want) {
		t.Fatalf("properties %v", m.Properties)
	}
	if mm := ConnectionStateEvent("hub1", "d1", "m1", false, 1, at); mm.Properties["opType"] != "moduleDisconnected" || mm.Properties["moduleId"] != "m1" {
		t.Fatalf("module event %v", mm.Properties)
	}
	// A route on the connection source with a condition on the event's properties.
	r, err := Compile(Config{Routes: []Route{{Name: "conn", Source: SourceConnectionStateEvents, Condition: "opType = 'deviceDisconnected'", EndpointNames: []string{"s"}, IsEnabled: true}}}, "hub1", []string{"s"})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Endpoints(Input{Source: SourceOf(m), Message: m}); len(got) != 0 {
		t.Fatalf("connected event routed: %v", got)
	}
	d := ConnectionStateEvent("hub1", "d1", "", false, 2, at)
	if got := r.Endpoints(Input{Source: SourceOf(d), Message: d}); !reflect.DeepEqual(got, []string{"s"}) {
		t.Fatalf("disconnected event: %v", got)
	}
}

func TestTakes(t *testing.T) {
	eps := []string{"s"}
	route := func(src string, on bool) Route {
		return Route{Name: "r" + src, Source: src, EndpointNames: eps, IsEnabled: on}
	}
	tests := []struct {
		name   string
		cfg    Config
		source string
		want   bool
	}{
		{"no routes: device messages go to events", Config{}, SourceDeviceMessages, true},
		{"no routes: no twin change events", Config{}, SourceTwinChangeEvents, false},
		{"an enabled route of the source", Config{Routes: []Route{route(SourceDeviceMessages, true), route(SourceTwinChangeEvents, true)}}, SourceTwinChangeEvents, true},
		{"a disabled route takes nothing", Config{Routes: []Route{route(SourceTwinChangeEvents, false)}}, SourceTwinChangeEvents, false},
		{"routes of other sources only", Config{Routes: []Route{route(SourceTwinChangeEvents, true)}}, SourceDeviceMessages, false},
		{"the fallback route of the source", Config{Routes: []Route{route(SourceTwinChangeEvents, true)}, FallbackRoute: &Route{Name: "fb", Source: SourceDeviceMessages, EndpointNames: eps, IsEnabled: true}}, SourceDeviceMessages, true},
		{"a disabled fallback route", Config{FallbackRoute: &Route{Name: "fb", Source: SourceDeviceLifecycleEvents, EndpointNames: eps}}, SourceDeviceLifecycleEvents, false},
	}
	for _, tt := range tests {
		r, err := Compile(tt.cfg, "hub1", eps)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := r.Takes(tt.source); got != tt.want {
			t.Errorf("%s: Takes(%s) = %v, want %v", tt.name, tt.source, got, tt.want)
		}
	}
}
