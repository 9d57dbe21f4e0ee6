package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-iot/moat/internal/routing"
)

func TestSetEndpoint(t *testing.T) {
	var r Routing
	for _, c := range []struct {
		typ, name, props string
		wantErr          string
	}{
		{EndpointWebhook, "hook", `{"url":"https://10.0.0.5/in"}`, ""},
		{EndpointWebhook, "hook", `{"url":"https://10.0.0.6/in"}`, ""}, // replaces
		{EndpointNATS, "hook", `{"url":"nats://h:4222","subjectTemplate":"s"}`, "is a webhook endpoint"},
		{EndpointNATS, "bus", `{"url":"nats://h:4222","subjectTemplate":"s"}`, ""},
		{EndpointKafka, "k", `{"brokers":["h:9092"],"topic":"t"}`, ""},
		{EndpointWebhook, "x", `{"url":"https://h/","nope":1}`, "unknown field"},
		{EndpointWebhook, "x", `{"name":"y","url":"https://h/"}`, "differs"},
		{EndpointWebhook, "x", `[1]`, "properties"},
		{"ftp", "x", `{}`, "unknown endpoint type"},
	} {
		err := r.SetEndpoint(c.typ, c.name, json.RawMessage(c.props))
		if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("SetEndpoint(%s, %s, %s) = %v, want %q", c.typ, c.name, c.props, err, c.wantErr)
		}
	}
	if got := r.EndpointNames(); strings.Join(got, ",") != "hook,bus,k" {
		t.Fatalf("endpoints %v", got)
	}
	if r.Endpoints.WebHooks[0].URL != "https://10.0.0.6/in" {
		t.Fatalf("hook not replaced: %+v", r.Endpoints.WebHooks)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	r.Routes = []routing.Route{{Name: "r", Source: routing.SourceDeviceMessages, EndpointNames: []string{"bus"}, IsEnabled: true}}
	r.Enrichments = []routing.Enrichment{{Key: "k", Value: "v", EndpointNames: []string{"bus", "hook"}}}
	if got := strings.Join(r.References("bus"), ";"); got != "route r;enrichment k" {
		t.Fatalf("References(bus) = %q", got)
	}
	c := r.Clone()
	if !c.RemoveEndpoint("HOOK") || c.RemoveEndpoint("hook") {
		t.Fatal("RemoveEndpoint is not case-insensitive or removed twice")
	}
	if len(r.Endpoints.WebHooks) != 1 {
		t.Fatal("Clone shares the endpoint lists")
	}
	if _, ok := c.Endpoint("Bus"); !ok {
		t.Fatal("Endpoint lookup is case-sensitive")
	}
}

func TestEndpointNameRules(t *testing.T) {
	for name, ok := range map[string]bool{"a": true, "line-1.blob_x": true, strings.Repeat("n", 64): true,
		"": false, strings.Repeat("n", 65): false, "..": false, ".": false, "a/b": false, "a b": false, "events": false, "$default": false, "fileNotifications": false} {
		r := Routing{Endpoints: RoutingEndpoints{}}
		_ = r.SetEndpoint(EndpointWebhook, name, json.RawMessage(`{"url":"https://h/"}`))
		if err := r.Validate(); (err == nil) != ok {
			t.Errorf("endpoint name %q: Validate() = %v, want ok=%v", name, err, ok)
		}
	}
}

func TestRoutingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routing.json")
	var r Routing
	if err := r.SetEndpoint(EndpointWebhook, "hook", json.RawMessage(`{"url":"https://h/","headers":{"Authorization":"secret"}}`)); err != nil {
		t.Fatal(err)
	}
	r.Routes = []routing.Route{{Name: "r", Source: routing.SourceDeviceMessages, EndpointNames: []string{"hook"}, IsEnabled: true}}
	if err := SaveRouting(path, r); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v %v, want 0600 (endpoint credentials)", fi, err)
	}
	got, err := LoadRouting(path)
	if err != nil || len(got.Routes) != 1 || got.Endpoints.WebHooks[0].URL != "https://h/" {
		t.Fatalf("LoadRouting = %+v, %v", got, err)
	}
	for _, bad := range []string{`{"routes":[{"name":"r","source":"DeviceMessages","endpointNames":["ghost"],"isEnabled":true}]}`, `{"bogus":1}`, `{`} {
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadRouting(path); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("LoadRouting(%s) = %v, want an error naming the file", bad, err)
		}
	}
}

func FuzzSetEndpoint(f *testing.F) {
	f.Add("webhook", "hook", []byte(`{"url":"https://h/"}`))
	f.Add("storageContainer", "b", []byte(`{"connectionString":"x","containerName":"c"}`))
	f.Add("kafka", "k", []byte(`{"brokers":["h:1"],"topic":"t"}`))
	f.Fuzz(func(t *testing.T, typ, name string, props []byte) {
		var r Routing
		if err := r.SetEndpoint(typ, name, props); err != nil {
			return
		}
		if _, ok := r.Endpoint(name); !ok {
			t.Fatalf("SetEndpoint(%q) succeeded but the endpoint is not there", name)
		}
		_ = r.Validate() // must not panic
	})
}
