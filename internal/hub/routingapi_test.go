package hub_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/endpoint"
	"github.com/moat-iot/moat/internal/hub"
	"github.com/moat-iot/moat/internal/routing"
	"github.com/moat-iot/moat/internal/sas"
)

// TestRouteTestAPI: IoT Hub's route tests against the running routes — one
// route by name or inline (true, false, undefined, a compilation error) and
// all routes of a source — and the routing view behind route/endpoint list.
func TestRouteTestAPI(t *testing.T) {
	dir := t.TempDir()
	loop, off := hostName+":0", ""
	cfg := &config.Config{
		Properties: config.Properties{HostName: hostName, Routing: config.Routing{
			Endpoints: config.RoutingEndpoints{WebHooks: []endpoint.WebhookConfig{{Name: "alerts", URL: "http://127.0.0.1:9/"}}},
			Routes: []routing.Route{
				{Name: "hot", Source: routing.SourceDeviceMessages, Condition: "$body.temperature > 30", EndpointNames: []string{"alerts"}, IsEnabled: true},
				{Name: "critical", Source: routing.SourceDeviceMessages, Condition: "level = 'critical'", EndpointNames: []string{"alerts"}, IsEnabled: true},
				{Name: "berlin", Source: routing.SourceDeviceMessages, Condition: "$twin.tags.site = 'berlin'", EndpointNames: []string{"events"}, IsEnabled: true},
			},
		}},
		Moat: config.Moat{DataDir: dir, Listeners: config.Listeners{MQTT: &loop, HTTPS: &loop, Metrics: &off}},
	}
	_, th, _ := runHub(t, cfg)
	pols, _ := hub.LoadPolicies(dir)
	var readOnly sas.Policy
	for _, p := range pols {
		if p.KeyName == "registryRead" {
			readOnly = p
		}
	}
	tok, err := sas.Sign(hostName, readOnly.KeyName, readOnly.PrimaryKey, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: th.tlsConfig()}}
	post := func(path string, in, out any) int {
		t.Helper()
		var body *bytes.Reader
		method := http.MethodGet
		if in != nil {
			b, _ := json.Marshal(in)
			body, method = bytes.NewReader(b), http.MethodPost
		}
		req, _ := http.NewRequest(method, "https://"+th.httpsAddr+path, nil)
		if body != nil {
			req, _ = http.NewRequest(method, "https://"+th.httpsAddr+path, body)
		}
		req.Header.Set("Authorization", tok)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode
	}
	one := func(in hub.TestRouteInput) hub.TestRouteResult {
		t.Helper()
		var out hub.TestRouteResult
		if code := post(hub.RoutingPath+"/routes/$test", in, &out); code != http.StatusOK {
			t.Fatalf("$test %+v: HTTP %d", in, code)
		}
		return out
	}
	for _, tc := range []struct {
		in       hub.TestRouteInput
		want     string
		compErrs int
	}{
		{hub.TestRouteInput{RouteName: "hot", Message: hub.TestMessage{Body: `{"temperature":35}`}}, "true", 0},
		{hub.TestRouteInput{RouteName: "hot", Message: hub.TestMessage{Body: `{"temperature":20}`}}, "false", 0},
		{hub.TestRouteInput{RouteName: "hot", Message: hub.TestMessage{Body: `{"pressure":2}`}}, "undefined", 0},
		// $body is only JSON with a UTF encoding: plain text makes it undefined.
		{hub.TestRouteInput{RouteName: "hot", Message: hub.TestMessage{Body: `{"temperature":35}`, SystemProperties: map[string]string{"contentType": "text/plain"}}}, "undefined", 0},
		{hub.TestRouteInput{RouteName: "critical", Message: hub.TestMessage{Body: "x", AppProperties: map[string]string{"level": "critical"}}}, "true", 0},
		{hub.TestRouteInput{RouteName: "berlin", Message: hub.TestMessage{Body: "x"}, Twin: json.RawMessage(`{"tags":{"site":"berlin"}}`)}, "true", 0},
		{hub.TestRouteInput{Route: &routing.Route{Name: "bad", Source: routing.SourceDeviceMessages, Condition: "temperature >", EndpointNames: []string{"events"}}, Message: hub.TestMessage{Body: "x"}}, "undefined", 1},
	} {
		got := one(tc.in)
		if got.Result != tc.want || len(got.Details.CompilationErrors) != tc.compErrs {
			t.Errorf("%s %+v: got %+v, want %s with %d compilation errors", tc.in.RouteName, tc.in.Message, got, tc.want, tc.compErrs)
		}
	}
	var none hub.TestRouteResult
	if code := post(hub.RoutingPath+"/routes/$test", hub.TestRouteInput{RouteName: "nope"}, &none); code != http.StatusNotFound {
		t.Errorf("unknown route: HTTP %d", code)
	}
	var all hub.TestAllRoutesResult
	if code := post(hub.RoutingPath+"/routes/$testall", hub.TestAllRoutesInput{RoutingSource: "DeviceMessages",
		Message: hub.TestMessage{Body: `{"temperature":40}`, AppProperties: map[string]string{"level": "critical"}}}, &all); code != http.StatusOK {
		t.Fatalf("$testall: HTTP %d", code)
	}
	if len(all.Routes) != 2 || all.Routes[0].Properties.Name != "hot" || all.Routes[1].Properties.Name != "critical" {
		t.Errorf("$testall matched %+v", all.Routes)
	}
	var view hub.RoutingView
	if code := post(hub.RoutingPath, nil, &view); code != http.StatusOK {
		t.Fatalf("GET routing: HTTP %d", code)
	}
	if len(view.Routes) != 3 || len(view.Endpoints) != 2 || view.Endpoints[1] != (hub.EndpointView{Name: "alerts", Type: "webhook"}) {
		t.Errorf("routing view %+v", view)
	}
	b, _ := json.Marshal(view)
	if bytes.Contains(b, []byte("127.0.0.1:9")) {
		t.Errorf("routing view shows endpoint settings: %s", b)
	}
}
