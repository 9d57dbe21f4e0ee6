package hub_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/endpoint"
	"github.com/moat-iot/moat/internal/hub"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/routing"
	"github.com/moat-iot/moat/internal/sas"
	"github.com/moat-iot/moat/internal/serviceapi"
)

// TestRoutingToWebhook: a route with a $body condition sends hot readings to a
// webhook with enrichments from the twin; everything else takes the fallback
// route to the built-in events endpoint, and nothing goes to both.
func TestRoutingToWebhook(t *testing.T) {
	var mu sync.Mutex
	var hooked []endpoint.WebhookRecord
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var batch []endpoint.WebhookRecord
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &batch); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		mu.Lock()
		hooked = append(hooked, batch...)
		mu.Unlock()
	}))
	defer srv.Close()

	dir := t.TempDir()
	loop, off := hostName+":0", ""
	cfg := &config.Config{
		Name: "plant1",
		Properties: config.Properties{HostName: hostName, Routing: config.Routing{
			Endpoints:     config.RoutingEndpoints{WebHooks: []endpoint.WebhookConfig{{Name: "alerts", URL: srv.URL}}},
			Routes:        []routing.Route{{Name: "hot", Source: routing.SourceDeviceMessages, Condition: "$body.temperature > 30", EndpointNames: []string{"alerts"}, IsEnabled: true}},
			FallbackRoute: &routing.Route{Name: "rest", Source: routing.SourceDeviceMessages, EndpointNames: []string{routing.BuiltInEvents}, IsEnabled: true},
			Enrichments: []routing.Enrichment{
				{Key: "hub", Value: "$iothubname", EndpointNames: []string{"alerts"}},
				{Key: "site", Value: "$twin.tags.site", EndpointNames: []string{"alerts"}},
			},
		}},
		Moat: config.Moat{DataDir: dir, Listeners: config.Listeners{MQTT: &loop, HTTPS: &loop, Metrics: &off}},
	}
	h, th2, svc := runHub(t, cfg)
	d, err := svc.CreateDevice(ctxT(t, 5*time.Second), registry.Device{DeviceID: "sensor1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.PatchTwin(ctxT(t, 5*time.Second), "sensor1", "", json.RawMessage(`{"tags":{"site":"berlin"}}`), "*"); err != nil {
		t.Fatal(err)
	}
	var monMu sync.Mutex
	var monitored []string
	mctx, mcancel := context.WithCancel(context.Background())
	defer mcancel()
	opened := make(chan struct{})
	go func() {
		_ = svc.MonitorEventsReady(mctx, "", func() { close(opened) }, func(r serviceapi.EventRecord) error {
			monMu.Lock()
			monitored = append(monitored, string(r.BodyBytes()))
			monMu.Unlock()
			return nil
		})
	}()
	<-opened

	c := dialTo(t, th2)
	c.mustConnect(4, d.DeviceID, deviceToken(t, d, time.Hour), true)
	bag := "%24.ct=application%2Fjson&%24.ce=utf-8"
	for i, temp := range []int{20, 35, 25, 41} {
		c.write(publishPacket(4, "devices/sensor1/messages/events/"+bag, 1, uint16(i+1), []byte(`{"temperature":`+itoa(temp)+`}`)))
		c.expect(4, 5*time.Second) // PUBACK: durable
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(hooked)
		mu.Unlock()
		monMu.Lock()
		m := len(monitored)
		monMu.Unlock()
		if n >= 2 && m >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhook got %d, events got %d", n, m)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // nothing more may arrive
	mu.Lock()
	defer mu.Unlock()
	monMu.Lock()
	defer monMu.Unlock()
	if len(hooked) != 2 || string(hooked[0].Body) != `{"temperature":35}` || string(hooked[1].Body) != `{"temperature":41}` {
		t.Fatalf("webhook got %+v", hooked)
	}
	if hooked[0].Properties["hub"] != "plant1" || hooked[0].Properties["site"] != "berlin" {
		t.Fatalf("enrichments: %v", hooked[0].Properties)
	}
	if strings.Join(monitored, ",") != `{"temperature":20},{"temperature":25}` {
		t.Fatalf("events got %v", monitored)
	}
	// The same records over the management API, as `moat endpoint health` reads them.
	pols, _ := hub.LoadPolicies(dir)
	tok, err := sas.Sign(hostName, "iothubowner", pols[0].PrimaryKey, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, "https://"+th2.httpsAddr+hub.EndpointHealthPath, nil)
	req.Header.Set("Authorization", tok)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: th2.tlsConfig()}}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var viaAPI []endpoint.Health
	err = json.NewDecoder(resp.Body).Decode(&viaAPI)
	resp.Body.Close()
	if err != nil || len(viaAPI) != 2 || viaAPI[1].EndpointID != "alerts" || viaAPI[1].HealthStatus != endpoint.Healthy {
		t.Fatalf("health over the API: %+v %v", viaAPI, err)
	}
	req.Header.Del("Authorization")
	if resp, err := hc.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("health without a token: %v %v", resp.StatusCode, err)
	}
	for _, eh := range h.EndpointHealth() {
		if eh.HealthStatus != endpoint.Healthy {
			t.Fatalf("endpoint health %+v", eh)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func poolOf(t *testing.T, h *hub.Hub) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(h.Authority().CACertPEM()) {
		t.Fatal("no CA certificate")
	}
	return p
}

func dialTo(t *testing.T, h *testHub) *rawClient {
	t.Helper()
	c, err := tls.Dial("tcp", h.mqttAddr, h.tlsConfig())
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, conn: c, r: bufio.NewReader(c)}
}

// TestPlainTopicToMQTTBridge: a plain MQTT publish (the IoT Operations
// dataflow case) is delivered to subscribers as usual and routed by a
// MqttTopics route to an MQTT bridge on Debian's Mosquitto.
func TestPlainTopicToMQTTBridge(t *testing.T) {
	if _, err := exec.LookPath("mosquitto"); err != nil {
		if _, err := os.Stat("/usr/sbin/mosquitto"); err != nil {
			t.Skip("mosquitto is not installed")
		}
	}
	port := freeTCPPort(t)
	conf := filepath.Join(t.TempDir(), "m.conf")
	if err := os.WriteFile(conf, []byte("listener "+strconv.Itoa(port)+" 127.0.0.1\nallow_anonymous true\npersistence false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bin, _ := exec.LookPath("mosquitto")
	if bin == "" {
		bin = "/usr/sbin/mosquitto"
	}
	mq := exec.Command(bin, "-c", conf)
	if err := mq.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = mq.Process.Kill(); _ = mq.Wait() }()
	url := "tcp://127.0.0.1:" + strconv.Itoa(port)
	var sub mqtt.Client
	got := make(chan string, 4)
	deadline := time.Now().Add(5 * time.Second)
	for {
		sub = mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("downstream"))
		if tok := sub.Connect(); tok.WaitTimeout(2*time.Second) && tok.Error() == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("mosquitto not reachable")
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer sub.Disconnect(0)
	if tok := sub.Subscribe("dataflow/#", 1, func(_ mqtt.Client, m mqtt.Message) { got <- m.Topic() + " " + string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal("subscribe downstream")
	}

	dir := t.TempDir()
	loop, off := hostName+":0", ""
	cfg := &config.Config{
		Properties: config.Properties{HostName: hostName, Routing: config.Routing{
			Endpoints: config.RoutingEndpoints{MQTTBridges: []endpoint.MQTTBridgeConfig{{Name: "eg", URL: url, TopicTemplate: "dataflow/{deviceId}/{topic}", QoS: 1}}},
			Routes:    []routing.Route{{Name: "lines", Source: routing.SourceMQTTTopics, TopicFilter: "factory/+/temp", EndpointNames: []string{"eg"}, IsEnabled: true}},
		}},
		Moat: config.Moat{DataDir: dir, Listeners: config.Listeners{MQTT: &loop, HTTPS: &loop, Metrics: &off}},
	}
	_, th2, svc := runHub(t, cfg)
	d, err := svc.CreateDevice(ctxT(t, 5*time.Second), registry.Device{DeviceID: "plc1"})
	if err != nil {
		t.Fatal(err)
	}
	c := dialTo(t, th2)
	c.mustConnect(4, d.DeviceID, deviceToken(t, d, time.Hour), true)
	c.write(publishPacket(4, "factory/line1/temp", 1, 1, []byte(`{"temperature":25.5}`)))
	c.expect(4, 5*time.Second)
	c.write(publishPacket(4, "factory/line1/pressure", 1, 2, []byte(`{"bar":2}`)))
	c.expect(4, 5*time.Second)
	select {
	case m := <-got:
		if m != `dataflow/plc1/factory/line1/temp {"temperature":25.5}` {
			t.Fatalf("downstream got %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing bridged")
	}
	select {
	case m := <-got:
		t.Fatalf("unrouted topic bridged: %q", m)
	case <-time.After(300 * time.Millisecond):
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// runHub starts a hub with cfg for one test and stops it at the test's end.
func runHub(t *testing.T, cfg *config.Config) (*hub.Hub, *testHub, *serviceapi.Client) {
	t.Helper()
	h, th, svc, _ := runHubStoppable(t, cfg)
	return h, th, svc
}

// runHubStoppable is runHub with a stop function that returns once the hub
// has shut down (it also runs at the test's end).
func runHubStoppable(t *testing.T, cfg *config.Config) (*hub.Hub, *testHub, *serviceapi.Client, func()) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h, err := hub.New(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	<-h.Ready()
	th := &testHub{mqttAddr: h.Addrs()["mqtts"], httpsAddr: h.Addrs()["https"], roots: poolOf(t, h)}
	pols, err := hub.LoadPolicies(cfg.Moat.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pols {
		if p.KeyName != "iothubowner" {
			continue
		}
		svc, err := serviceapi.NewClient("HostName="+cfg.Properties.HostName+";SharedAccessKeyName=iothubowner;SharedAccessKey="+p.PrimaryKey,
			serviceapi.ClientOptions{Address: th.httpsAddr, RootCAs: th.roots})
		if err != nil {
			t.Fatal(err)
		}
		return h, th, svc, stop
	}
	t.Fatal("no iothubowner policy")
	return nil, nil, nil, nil
}

// TestNonTelemetryEventsRouted: lifecycle, connection state and twin change
// events are IoT Hub's non-telemetry events, routable like any message.
func TestNonTelemetryEventsRouted(t *testing.T) {
	var mu sync.Mutex
	var got []endpoint.WebhookRecord
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var batch []endpoint.WebhookRecord
		if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		mu.Lock()
		got = append(got, batch...)
		mu.Unlock()
	}))
	defer srv.Close()
	loop, off := hostName+":0", ""
	cfg := &config.Config{
		Name: "plant2",
		Properties: config.Properties{HostName: hostName, Routing: config.Routing{
			Endpoints: config.RoutingEndpoints{WebHooks: []endpoint.WebhookConfig{{Name: "conn", URL: srv.URL}}},
			Routes: []routing.Route{
				{Name: "conn", Source: routing.SourceConnectionStateEvents, EndpointNames: []string{"conn"}, IsEnabled: true},
				{Name: "life", Source: routing.SourceDeviceLifecycleEvents, EndpointNames: []string{"conn"}, IsEnabled: true},
				{Name: "twins", Source: routing.SourceTwinChangeEvents, Condition: "opType = 'updateTwin'", EndpointNames: []string{"conn"}, IsEnabled: true},
			},
		}},
		// Every change at once: the snapshot has its own test.
		Moat: config.Moat{DataDir: t.TempDir(), Listeners: config.Listeners{MQTT: &loop, HTTPS: &loop, Metrics: &off},
			Routing: config.MoatRouting{ConnectionStateSnapshot: "0s"}},
	}
	_, th2, svc := runHub(t, cfg)
	d, err := svc.CreateDevice(ctxT(t, 5*time.Second), registry.Device{DeviceID: "edge1"})
	if err != nil {
		t.Fatal(err)
	}
	c := dialTo(t, th2)
	c.mustConnect(4, d.DeviceID, deviceToken(t, d, time.Hour), true)
	c.ping()
	c.conn.Close()
	waitGot := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			have := len(got)
			mu.Unlock()
			if have >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("webhook got %d events, want %d", have, n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitGot(3)
	if _, err := svc.PatchTwin(ctxT(t, 5*time.Second), "edge1", "", json.RawMessage(`{"tags":{"line":"2"},"properties":{"desired":{"rate":5}}}`), "*"); err != nil {
		t.Fatal(err)
	}
	waitGot(4)
	if err := svc.DeleteDevice(ctxT(t, 5*time.Second), "edge1", ""); err != nil {
		t.Fatal(err)
	}
	waitGot(5)
	mu.Lock()
	defer mu.Unlock()
	want := []struct{ op, schema, body string }{
		{"createDeviceIdentity", "deviceLifecycleNotification", `"deviceId":"edge1"`},
		{"deviceConnected", "deviceConnectionStateNotification", "sequenceNumber"},
		{"deviceDisconnected", "deviceConnectionStateNotification", "sequenceNumber"},
		{"updateTwin", "twinChangeNotification", `"desired":{"rate":5}`},
		{"deleteDeviceIdentity", "deviceLifecycleNotification", `"deviceId":"edge1"`},
	}
	for i, w := range want {
		e := got[i]
		if e.Properties["opType"] != w.op || e.Properties["deviceId"] != "edge1" || e.Properties["hubName"] != "plant2" ||
			e.Properties["iothub-message-schema"] != w.schema || !strings.Contains(string(e.Body), w.body) {
			t.Fatalf("event %d: %+v %s", i, e.Properties, e.Body)
		}
	}
	if !strings.Contains(string(got[0].Body), `"properties"`) {
		t.Fatalf("create event body is not the twin: %s", got[0].Body)
	}
}

// TestConnectionStateSnapshot: as in IoT Hub, connection state events are a
// periodic snapshot: an identity whose state changed during the period gets
// one event with its current state and its latest change's sequence number;
// one that did not change gets none.
func TestConnectionStateSnapshot(t *testing.T) {
	srv := newCollector(t)
	loop, off := hostName+":0", ""
	const period = 700 * time.Millisecond
	cfg := &config.Config{
		Properties: config.Properties{HostName: hostName, Routing: config.Routing{
			Endpoints: config.RoutingEndpoints{WebHooks: []endpoint.WebhookConfig{{Name: "conn", URL: srv.URL}}},
			Routes:    []routing.Route{{Name: "conn", Source: routing.SourceConnectionStateEvents, EndpointNames: []string{"conn"}, IsEnabled: true}},
		}},
		Moat: config.Moat{DataDir: t.TempDir(), Listeners: config.Listeners{MQTT: &loop, HTTPS: &loop, Metrics: &off},
			Routing: config.MoatRouting{ConnectionStateSnapshot: period.String()}},
	}
	_, th2, svc := runHub(t, cfg)
	dev := map[string]registry.Device{}
	for _, id := range []string{"flappy", "steady"} {
		d, err := svc.CreateDevice(ctxT(t, 5*time.Second), registry.Device{DeviceID: id})
		if err != nil {
			t.Fatal(err)
		}
		dev[id] = d
	}
	connect := func(id string) *rawClient {
		c := dialTo(t, th2)
		c.mustConnect(4, id, deviceToken(t, dev[id], time.Hour), true)
		c.ping()
		return c
	}
	events := func() []endpoint.WebhookRecord {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return append([]endpoint.WebhookRecord(nil), srv.recs...)
	}
	waitEvents := func(n int) []endpoint.WebhookRecord {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for len(events()) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d events, want %d: %v", len(events()), n, events())
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(period + 200*time.Millisecond) // and no more
		evs := events()
		if len(evs) != n {
			t.Fatalf("%d events, want exactly %d", len(evs), n)
		}
		return evs
	}
	seqOf := func(e endpoint.WebhookRecord) string {
		var b struct{ SequenceNumber string }
		if err := json.Unmarshal(e.Body, &b); err != nil || len(b.SequenceNumber) != 16 {
			t.Fatalf("body %s: want {\"sequenceNumber\":\"<16 hex digits>\"}", e.Body)
		}
		return b.SequenceNumber
	}

	// flappy connects, drops and comes back within one period: one event,
	// connected; steady connects once: one event.
	start := time.Now()
	f1 := connect("flappy")
	f1.conn.Close()
	time.Sleep(50 * time.Millisecond)
	f2 := connect("flappy")
	s := connect("steady")
	defer s.conn.Close()
	if time.Since(start) > period/2 {
		t.Skip("the machine is too slow to fit the changes into one snapshot period")
	}
	evs := waitEvents(2)
	ops := map[string]string{}
	for _, e := range evs {
		ops[e.Properties["deviceId"]] = e.Properties["opType"]
	}
	if ops["flappy"] != "deviceConnected" || ops["steady"] != "deviceConnected" {
		t.Fatalf("first snapshot %v, want both connected", ops)
	}
	first := map[string]string{}
	for _, e := range evs {
		first[e.Properties["deviceId"]] = seqOf(e)
	}

	// Only flappy changes in the next period.
	f2.conn.Close()
	evs = waitEvents(3)
	last := evs[2]
	if last.Properties["deviceId"] != "flappy" || last.Properties["opType"] != "deviceDisconnected" {
		t.Fatalf("second snapshot %+v, want flappy disconnected", last.Properties)
	}
	if seqOf(last) <= first["flappy"] { // fixed-width hex: string order is numeric order
		t.Fatalf("sequence number %s not after %s", seqOf(last), first["flappy"])
	}
}
