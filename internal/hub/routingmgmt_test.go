package hub_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/endpoint"
	"github.com/moat-iot/moat/internal/hub"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/routing"
	"github.com/moat-iot/moat/internal/sas"
)

// collector is a webhook endpoint that keeps what it receives.
type collector struct {
	*httptest.Server
	mu   sync.Mutex
	recs []endpoint.WebhookRecord
}

func newCollector(t *testing.T) *collector {
	c := &collector{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var batch []endpoint.WebhookRecord
		if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		c.recs = append(c.recs, batch...)
		c.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(c.Close)
	return c
}

// bodies returns the bodies received so far (JSON).
func (c *collector) bodies() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, r := range c.recs {
		out = append(out, string(r.Body))
	}
	return out
}

// waitFor waits until body has arrived and returns its record.
func (c *collector) waitFor(t *testing.T, body string) endpoint.WebhookRecord {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		for _, r := range c.recs {
			if string(r.Body) == body {
				c.mu.Unlock()
				return r
			}
		}
		c.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s never received %s; got %v", c.URL, body, c.bodies())
	return endpoint.WebhookRecord{}
}

type mgmtClient struct {
	t    *testing.T
	base string
	hc   *http.Client
	tok  string
}

func (m *mgmtClient) do(method, path string, header http.Header, in any) (int, string) {
	m.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, m.base+path, body)
	req.Header.Set("Authorization", m.tok)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := m.hc.Do(req)
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (m *mgmtClient) want(code int, method, path string, header http.Header, in any) string {
	m.t.Helper()
	got, body := m.do(method, path, header, in)
	if got != code {
		m.t.Fatalf("%s %s: HTTP %d %s, want %d", method, path, got, body, code)
	}
	return body
}

func newMgmtClient(t *testing.T, th *testHub, dir, policy string) *mgmtClient {
	t.Helper()
	pols, err := hub.LoadPolicies(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pols {
		if p.KeyName == policy {
			tok, err := sas.Sign(hostName, policy, p.PrimaryKey, time.Now().Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			return &mgmtClient{t: t, base: "https://" + th.httpsAddr, hc: &http.Client{Transport: &http.Transport{TLSClientConfig: th.tlsConfig()}}, tok: tok}
		}
	}
	t.Fatalf("no policy %s", policy)
	return nil
}

// TestRoutingManagedLive: endpoints, routes and enrichments change through
// the API while devices publish, without a restart; a new endpoint gets only
// what arrives after it exists; what routes or enrichments use cannot be
// deleted; changes are checked whole and refused with a reason; they survive
// a restart (routing.json wins over the config file).
func TestRoutingManagedLive(t *testing.T) {
	a, a2, b := newCollector(t), newCollector(t), newCollector(t)
	dir := t.TempDir()
	loop, off := hostName+":0", ""
	cfg := &config.Config{
		Properties: config.Properties{HostName: hostName, Routing: config.Routing{
			Endpoints: config.RoutingEndpoints{WebHooks: []endpoint.WebhookConfig{{Name: "a", URL: a.URL}}},
			Routes:    []routing.Route{{Name: "toA", Source: routing.SourceDeviceMessages, EndpointNames: []string{"a"}, IsEnabled: true}},
		}},
		Moat: config.Moat{DataDir: dir, Listeners: config.Listeners{MQTT: &loop, HTTPS: &loop, Metrics: &off}},
	}
	_, th, svc, stop := runHubStoppable(t, cfg)
	d, err := svc.CreateDevice(ctxT(t, 5*time.Second), registry.Device{DeviceID: "line7"})
	if err != nil {
		t.Fatal(err)
	}
	dev := dialTo(t, th)
	dev.mustConnect(4, d.DeviceID, deviceToken(t, d, time.Hour), true)
	pid := uint16(0)
	publish := func(body string) {
		pid++
		dev.write(publishPacket(4, "devices/line7/messages/events/", 1, pid, []byte(body)))
		dev.expect(4, 5*time.Second)
	}
	m := newMgmtClient(t, th, dir, "iothubowner")
	const R = hub.RoutingPath

	publish(`"m1"`)
	a.waitFor(t, `"m1"`)

	// A new endpoint and a route to it.
	m.want(http.StatusCreated, http.MethodPut, R+"/endpoints/b", createOnlyH(), hub.EndpointSpec{Type: config.EndpointWebhook, Properties: json.RawMessage(`{"url":"` + b.URL + `"}`)})
	m.want(http.StatusConflict, http.MethodPut, R+"/endpoints/b", createOnlyH(), hub.EndpointSpec{Type: config.EndpointWebhook, Properties: json.RawMessage(`{"url":"` + b.URL + `"}`)})
	if body := m.want(http.StatusOK, http.MethodGet, R+"/endpoints/b", nil, nil); !strings.Contains(body, `"type":"webhook"`) || strings.Contains(body, b.URL) {
		t.Fatalf("GET endpoint shows %s", body)
	}
	m.want(http.StatusCreated, http.MethodPut, R+"/routes/toB", createOnlyH(), routing.Route{Source: routing.SourceDeviceMessages, EndpointNames: []string{"b"}, IsEnabled: true})
	publish(`"m2"`)
	a.waitFor(t, `"m2"`)
	b.waitFor(t, `"m2"`)
	if got := b.bodies(); len(got) != 1 {
		t.Fatalf("b got %v, want only m2 (it did not exist for m1)", got)
	}
	m.want(http.StatusOK, http.MethodPut, R+"/routes/toB", updateOnlyH(), routing.Route{Source: routing.SourceDeviceMessages, Condition: "kind = 'x'", EndpointNames: []string{"b"}, IsEnabled: true})
	publish(`"m2b"`) // no kind=x: only a
	pid++
	dev.write(publishPacket(4, "devices/line7/messages/events/kind=x", 1, pid, []byte(`"m3"`)))
	dev.expect(4, 5*time.Second)
	a.waitFor(t, `"m3"`)
	b.waitFor(t, `"m3"`)
	if got := b.bodies(); len(got) != 2 {
		t.Fatalf("b got %v, want m2 and m3 (m2b fails the new condition)", got)
	}

	// An enrichment for b only.
	m.want(http.StatusCreated, http.MethodPut, R+"/enrichments/site", nil, hub.EnrichmentSpec{Value: "plant-7", EndpointNames: []string{"b"}})
	m.want(http.StatusNotFound, http.MethodPut, R+"/enrichments/nope", updateOnlyH(), hub.EnrichmentSpec{Value: "v", EndpointNames: []string{"b"}})
	pid++
	dev.write(publishPacket(4, "devices/line7/messages/events/kind=x", 1, pid, []byte(`"m4"`)))
	dev.expect(4, 5*time.Second)
	if rec := b.waitFor(t, `"m4"`); rec.Properties["site"] != "plant-7" {
		t.Fatalf("b's m4 properties %v, want site=plant-7", rec.Properties)
	}
	if rec := a.waitFor(t, `"m4"`); rec.Properties["site"] != "" {
		t.Fatalf("a's m4 properties %v: the enrichment is for b only", rec.Properties)
	}

	// Refusals, each with its reason.
	for _, c := range []struct {
		method, path string
		in           any
		code         int
		reason       string
	}{
		{http.MethodDelete, R + "/endpoints/b", nil, http.StatusConflict, "route toB"},
		{http.MethodPut, R + "/routes/bad", routing.Route{Source: routing.SourceDeviceMessages, EndpointNames: []string{"ghost"}, IsEnabled: true}, http.StatusBadRequest, `no endpoint \"ghost\"`},
		{http.MethodPut, R + "/routes/bad", routing.Route{Source: routing.SourceDeviceMessages, Condition: "a = ", EndpointNames: []string{"a"}, IsEnabled: true}, http.StatusBadRequest, "condition"},
		{http.MethodPut, R + "/endpoints/x", hub.EndpointSpec{Type: "ftp", Properties: json.RawMessage(`{}`)}, http.StatusBadRequest, "unknown endpoint type"},
		{http.MethodPut, R + "/endpoints/x", hub.EndpointSpec{Type: config.EndpointWebhook, Properties: json.RawMessage(`{"url":"ftp://h/"}`)}, http.StatusBadRequest, "url"},
		{http.MethodPut, R + "/endpoints/x", hub.EndpointSpec{Type: config.EndpointWebhook, Properties: json.RawMessage(`{"url":"https://h/","bogus":1}`)}, http.StatusBadRequest, "bogus"},
		{http.MethodPut, R + "/endpoints/a%20b", hub.EndpointSpec{Type: config.EndpointWebhook, Properties: json.RawMessage(`{"url":"https://h/"}`)}, http.StatusBadRequest, "letters, digits"},
		{http.MethodPut, R + "/endpoints/events", hub.EndpointSpec{Type: config.EndpointWebhook, Properties: json.RawMessage(`{"url":"https://h/"}`)}, http.StatusConflict, "built-in"},
		{http.MethodPut, R + "/endpoints/B", hub.EndpointSpec{Type: config.EndpointWebhook, Properties: json.RawMessage(`{"url":"https://h/"}`)}, http.StatusConflict, "regardless of case"},
		{http.MethodPut, R + "/endpoints/b", hub.EndpointSpec{Type: config.EndpointNATS, Properties: json.RawMessage(`{"url":"nats://h:4222","subjectTemplate":"x"}`)}, http.StatusBadRequest, "delete it"},
		{http.MethodDelete, R + "/endpoints/events", nil, http.StatusConflict, "built-in"},
		{http.MethodDelete, R + "/routes/nope", nil, http.StatusNotFound, "nope"},
		{http.MethodPost, R + "/endpoints/b", nil, http.StatusMethodNotAllowed, ""},
	} {
		code, body := m.do(c.method, c.path, nil, c.in)
		if code != c.code || !strings.Contains(body, c.reason) {
			t.Errorf("%s %s: HTTP %d %s, want %d mentioning %q", c.method, c.path, code, body, c.code, c.reason)
		}
	}
	ro := newMgmtClient(t, th, dir, "registryRead")
	ro.want(http.StatusUnauthorized, http.MethodDelete, R+"/routes/toB", nil, nil)
	ro.want(http.StatusOK, http.MethodGet, R+"/routes/toB", nil, nil)

	// Route off: b gets nothing more.
	m.want(http.StatusOK, http.MethodPut, R+"/routes/toB", updateOnlyH(), routing.Route{Source: routing.SourceDeviceMessages, Condition: "kind = 'x'", EndpointNames: []string{"b"}, IsEnabled: false})
	pid++
	dev.write(publishPacket(4, "devices/line7/messages/events/kind=x", 1, pid, []byte(`"m5"`)))
	dev.expect(4, 5*time.Second)
	a.waitFor(t, `"m5"`)

	// Unused now, b goes; a moves to a new URL and keeps its place in the log.
	m.want(http.StatusNoContent, http.MethodDelete, R+"/routes/toB", nil, nil)
	m.want(http.StatusConflict, http.MethodDelete, R+"/endpoints/b", nil, nil) // the enrichment
	m.want(http.StatusNoContent, http.MethodDelete, R+"/enrichments/site", nil, nil)
	m.want(http.StatusNoContent, http.MethodDelete, R+"/endpoints/b", nil, nil)
	m.want(http.StatusNotFound, http.MethodGet, R+"/endpoints/b", nil, nil)
	if _, err := os.Stat(filepath.Join(dir, "deadletters", "b")); !os.IsNotExist(err) {
		t.Fatalf("b's dead letters left behind: %v", err)
	}
	m.want(http.StatusOK, http.MethodPut, R+"/endpoints/a", updateOnlyH(), hub.EndpointSpec{Type: config.EndpointWebhook, Properties: json.RawMessage(`{"url":"` + a2.URL + `"}`)})
	publish(`"m6"`)
	a2.waitFor(t, `"m6"`)
	if got := b.bodies(); len(got) != 3 {
		t.Fatalf("b got %v, want m2, m3 and m4 only", got)
	}
	if got := a2.bodies(); len(got) != 1 {
		t.Fatalf("a's new URL got %v, want only m6 (a's cursor carried over)", got)
	}
	m.want(http.StatusOK, http.MethodPut, R+"/fallbackRoute", nil, routing.Route{Name: "fb", Condition: "true", IsEnabled: true})

	// The changes are the hub's routing from now on, over the config file.
	stop()
	dev.conn.Close()
	_, th2, _, _ := runHubStoppable(t, cfg)
	m2 := newMgmtClient(t, th2, dir, "iothubowner")
	var view hub.RoutingView
	if err := json.Unmarshal([]byte(m2.want(http.StatusOK, http.MethodGet, R, nil, nil)), &view); err != nil {
		t.Fatal(err)
	}
	if len(view.Routes) != 1 || view.Routes[0].Name != "toA" || view.FallbackRoute == nil || view.FallbackRoute.Name != "fb" || len(view.Endpoints) != 2 {
		t.Fatalf("after restart: %+v", view)
	}
	dev2 := dialTo(t, th2)
	dev2.mustConnect(4, d.DeviceID, deviceToken(t, d, time.Hour), true)
	dev2.write(publishPacket(4, "devices/line7/messages/events/", 1, 1, []byte(`"m7"`)))
	dev2.expect(4, 5*time.Second)
	a2.waitFor(t, `"m7"`)
	if got := a.bodies(); strings.Contains(strings.Join(got, ","), "m7") {
		t.Fatalf("the old URL got m7 after the restart: %v", got)
	}
	if fi, err := os.Stat(filepath.Join(dir, "routing.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("routing.json: %v %v, want mode 0600", fi, err)
	}
}

func createOnlyH() http.Header { return http.Header{"If-None-Match": {"*"}} }
func updateOnlyH() http.Header { return http.Header{"If-Match": {"*"}} }
