package serviceapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/sas"
)

var trackingRE = regexp.MustCompile(`^Tracking ID:[0-9a-f]{32}-G:0-TimeStamp:[0-9]{2}/[0-9]{2}/[0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2}$`)

func TestAuthRefusals(t *testing.T) {
	h := newTestHub(t, hubParts{connected: func() int { return 3 }})
	sign := func(resource, keyName, key string, exp time.Time) string {
		tok, err := sas.Sign(resource, keyName, key, exp)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	hour := time.Now().Add(time.Hour)
	svc := h.policy(t, "service")
	cases := []struct {
		name, method, path, auth string
	}{
		{"no header", "GET", "/statistics/service", ""},
		{"bearer", "GET", "/statistics/service", "Bearer abc.def.ghi"},
		{"garbage", "GET", "/statistics/service", "SharedAccessSignature nonsense"},
		{"wrong key", "GET", "/statistics/service", sign(testHost, "service", mustKey(t), hour)},
		{"expired", "GET", "/statistics/service", sign(testHost, "service", svc.PrimaryKey, time.Now().Add(-time.Minute))},
		{"unknown policy", "GET", "/statistics/service", sign(testHost, "nobody", svc.PrimaryKey, hour)},
		{"other hub", "GET", "/statistics/service", sign("other.example.com", "service", svc.PrimaryKey, hour)},
		{"device token", "GET", "/statistics/service", sign(testHost+"/devices/d1", "", mustKey(t), hour)},
		{"registryRead lacks ServiceConnect", "GET", "/statistics/service", h.token(t, "registryRead")},
		{"DeviceConnect lacks RegistryRead", "GET", "/devices/d1", h.token(t, "device")},
		{"registryRead lacks RegistryWrite", "PUT", "/devices/d1", h.token(t, "registryRead")},
		{"registryRead lacks RegistryWrite (delete)", "DELETE", "/devices/d1", h.token(t, "registryRead")},
		{"service lacks RegistryRead", "GET", "/devices/d1", h.token(t, "service")},
		{"service lacks RegistryWrite (bulk)", "POST", "/devices", h.token(t, "service")},
		{"registryReadWrite lacks ServiceConnect (twin patch)", "PATCH", "/twins/d1", h.token(t, "registryReadWrite")},
		{"registryReadWrite lacks ServiceConnect (method)", "POST", "/twins/d1/methods", h.token(t, "registryReadWrite")},
		{"registryReadWrite lacks ServiceConnect (c2d)", "POST", "/devices/d1/messages/deviceBound", h.token(t, "registryReadWrite")},
		{"registryReadWrite lacks ServiceConnect (purge)", "DELETE", "/devices/d1/commands", h.token(t, "registryReadWrite")},
		{"registryReadWrite lacks ServiceConnect (events)", "GET", "/moat/events", h.token(t, "registryReadWrite")},
		{"device lacks twin read", "GET", "/twins/d1", h.token(t, "device")},
		{"device lacks query", "POST", "/devices/query", h.token(t, "device")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var hdr http.Header
			if tc.auth != "" {
				hdr = authHeader(tc.auth)
			}
			resp, body := h.raw(t, tc.method, tc.path, "", hdr, `{}`)
			wantError(t, resp, body, http.StatusUnauthorized, "IotHubUnauthorizedAccess")
			// The answer never says which check failed.
			if !strings.Contains(string(body), `"Message":"ErrorCode:IotHubUnauthorizedAccess;Unauthorized"`) {
				t.Errorf("body %s", body)
			}
		})
	}

	// Both keys of the right policy work.
	for _, key := range []string{svc.PrimaryKey, svc.SecondaryKey} {
		resp, body := h.raw(t, "GET", "/statistics/service", "", authHeader(sign(testHost, "service", key, hour)), "")
		if resp.StatusCode != http.StatusOK || string(body) != `{"connectedDeviceCount":3}` {
			t.Fatalf("statistics/service: %d %s", resp.StatusCode, body)
		}
	}
}

func TestClientAuthErrors(t *testing.T) {
	h := newTestHub(t, hubParts{})
	ctx := context.Background()

	c := h.client(t, "service")
	c.now = func() time.Time { return time.Now().Add(-2 * time.Hour) } // signs expired tokens
	_, err := c.ServiceStatistics(ctx)
	wantCode(t, err, errcode.IotHubUnauthorizedAccess)
	if !strings.HasPrefix(err.Error(), "IotHubUnauthorizedAccess: Unauthorized") {
		t.Errorf("error text %q", err)
	}

	// A connection string with a key the hub does not know.
	bad, err := NewClient("HostName="+testHost+";SharedAccessKeyName=service;SharedAccessKey="+mustKey(t),
		ClientOptions{Address: h.ts.Listener.Addr().String(), RootCAs: h.roots})
	if err != nil {
		t.Fatal(err)
	}
	_, err = bad.ServiceStatistics(ctx)
	wantCode(t, err, errcode.IotHubUnauthorizedAccess)

	// Without the test CA the TLS handshake fails: the client verifies.
	noCA, err := NewClient(h.connString(t, "service"), ClientOptions{Address: h.ts.Listener.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := noCA.ServiceStatistics(ctx); err == nil {
		t.Fatal("request without the hub's CA succeeded")
	}
}

func TestAPIVersion(t *testing.T) {
	h := newTestHub(t, hubParts{})
	auth := authHeader(h.token(t, "service"))
	for _, v := range []string{"2016-11-14", "2018-06-30", "2020-03-13", "2020-09-30", "2021-04-12", "2021-06-30-preview", "2023-06-30"} {
		resp, body := h.raw(t, "GET", "/statistics/service", "api-version="+v, auth, "")
		if resp.StatusCode != http.StatusOK {
			t.Errorf("api-version %s: %d %s", v, resp.StatusCode, body)
		}
	}
	for _, q := range []string{"top=3", "api-version=", "api-version=banana", "api-version=2016-02-03", "api-version=2999-01-01",
		"api-version=2021-13-12", "api-version=2021-04-12-beta", "api-version=2021-04-12%00"} {
		resp, body := h.raw(t, "GET", "/statistics/service", q, auth, "")
		wantError(t, resp, body, http.StatusBadRequest, "InvalidProtocolVersion")
	}
	// The version is checked before credentials.
	resp, body := h.raw(t, "GET", "/statistics/service", "x=1", nil, "")
	wantError(t, resp, body, http.StatusBadRequest, "InvalidProtocolVersion")
}

func TestValidAPIVersion(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	for v, want := range map[string]bool{
		"2016-11-14": true, "2021-04-12": true, "2026-11-22": true, "2026-11-23-preview": true,
		"2016-11-13": false, "2026-11-24": false, "2021-02-30": false, "21-04-12": false,
		"2021-04-12-preview-x": false, "2021-04-12 ": false, "": false, "２０２１-04-12": false,
	} {
		if got := validAPIVersion(v, now); got != want {
			t.Errorf("validAPIVersion(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestUnknownRoute(t *testing.T) {
	h := newTestHub(t, hubParts{})
	for _, tc := range []struct{ method, path string }{
		{"GET", "/nothing"},
		{"GET", "/jobs/v2/x"},
		{"POST", "/statistics/service"},
		{"PATCH", "/devices/d1"},
	} {
		resp, body := h.raw(t, tc.method, tc.path, "", authHeader(h.token(t, "iothubowner")), "")
		wantError(t, resp, body, http.StatusNotFound, "NotFound")
	}
}

func TestMonitorEvents(t *testing.T) {
	h := newTestHub(t, hubParts{})
	c := h.client(t, "service")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	type result struct {
		recs []EventRecord
		err  error
	}
	start := func(deviceID string, n int) <-chan result {
		done := make(chan result, 1)
		go func() {
			var r result
			r.err = c.MonitorEvents(ctx, deviceID, func(rec EventRecord) error {
				r.recs = append(r.recs, rec)
				if len(r.recs) == n {
					return errStop
				}
				return nil
			})
			done <- r
		}()
		return done
	}
	all := start("", 4)
	only := start("d2", 1)
	waitFor(t, func() bool { return h.events.Readers() == 2 })

	enq := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	msg := func(dev string, body []byte) message.Message {
		return message.Message{
			Body:       body,
			System:     map[string]string{message.SysConnectionDevice: dev, message.SysContentType: "application/json"},
			Properties: map[string]string{"k": "v"},
			Enqueued:   enq,
		}
	}
	h.events.Publish(msg("d1", []byte("{\n  \"t\": 21.5\n}")))
	h.events.Publish(msg("d1", []byte("plain text")))
	h.events.Publish(msg("d1", []byte{0xff, 0x00, 0x80}))
	h.events.Publish(msg("d2", nil))

	r := <-all
	if !errors.Is(r.err, errStop) {
		t.Fatalf("MonitorEvents: %v", r.err)
	}
	if got := string(r.recs[0].Body); got != `{"t":21.5}` {
		t.Errorf("JSON body %s", got)
	}
	if got := string(r.recs[1].Body); got != `"plain text"` || string(r.recs[1].BodyBytes()) != "plain text" {
		t.Errorf("text body %s", got)
	}
	if r.recs[2].Body != nil || string(r.recs[2].BodyBytes()) != "\xff\x00\x80" {
		t.Errorf("binary body %q / %q", r.recs[2].Body, r.recs[2].BodyBase64)
	}
	if rec := r.recs[0]; rec.DeviceID != "d1" || !rec.EnqueuedTime.Equal(enq) || rec.Properties["k"] != "v" ||
		rec.SystemProperties[message.SysContentType] != "application/json" {
		t.Errorf("record %+v", rec)
	}
	r = <-only
	if !errors.Is(r.err, errStop) || len(r.recs) != 1 || r.recs[0].DeviceID != "d2" {
		t.Fatalf("filtered: %v %+v", r.err, r.recs)
	}
	waitFor(t, func() bool { return h.events.Readers() == 0 })

	// Cancelling the context ends the stream with ctx's error.
	ctx2, cancel2 := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.MonitorEvents(ctx2, "", func(EventRecord) error { return nil }) }()
	waitFor(t, func() bool { return h.events.Readers() == 1 })
	cancel2()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("after cancel: %v", err)
	}
	waitFor(t, func() bool { return h.events.Readers() == 0 })
}

func TestMonitorEventsRawStream(t *testing.T) {
	h := newTestHub(t, hubParts{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", h.ts.URL+"/moat/events?api-version="+APIVersion, nil)
	req.Header.Set("Authorization", h.token(t, "service"))
	resp, err := h.ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("%d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	waitFor(t, func() bool { return h.events.Readers() == 1 })
	h.events.Publish(message.Message{Body: []byte(`[1,2]`), System: map[string]string{message.SysConnectionDevice: "d"}})
	line := make([]byte, 4096)
	n, err := resp.Body.Read(line) // flushed per line: arrives without more traffic
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]json.RawMessage
	if err := json.Unmarshal(line[:n], &rec); err != nil || string(rec["body"]) != "[1,2]" || line[n-1] != '\n' {
		t.Fatalf("line %q: %v", line[:n], err)
	}
}

func TestMetrics(t *testing.T) {
	h := newTestHub(t, hubParts{})
	reg := prometheus.NewRegistry()
	for _, c := range h.srv.Collectors() {
		if err := reg.Register(c); err != nil {
			t.Fatal(err)
		}
	}
	h.raw(t, "GET", "/statistics/service", "", authHeader(h.token(t, "service")), "")
	h.raw(t, "GET", "/statistics/service", "", nil, "")
	h.raw(t, "GET", "/statistics/service", "", nil, "")
	h.raw(t, "GET", "/no/such/path", "", nil, "")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	var observations uint64
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			switch mf.GetName() {
			case "moat_serviceapi_requests_total":
				got[labels["route"]+" "+labels["code"]] = m.GetCounter().GetValue()
			case "moat_serviceapi_request_duration_seconds":
				observations += m.GetHistogram().GetSampleCount()
			}
		}
	}
	want := map[string]float64{"GET /statistics/service 200": 1, "GET /statistics/service 401": 2, "unmatched 404": 1}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("requests_total{%s} = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	if observations != 4 {
		t.Errorf("latency observations %d, want 4", observations)
	}
}

var errStop = errors.New("stop")

// waitFor polls cond: used only where the condition lives in another
// goroutine's state with no event to wait on (a stream's subscription).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCloseEndsStreams(t *testing.T) {
	h := newTestHub(t, hubParts{})
	c := h.client(t, "service")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.MonitorEvents(ctx, "", func(EventRecord) error { return nil }) }()
	waitFor(t, func() bool { return h.events.Readers() == 1 })
	h.srv.Close()
	if err := <-done; !errors.Is(err, ErrStreamEnded) {
		t.Fatalf("after Close: %v", err)
	}
	// Other requests still work.
	if _, err := c.ServiceStatistics(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestPanicBecomesServerError(t *testing.T) {
	// No registry configured: the handler dereferences nil, as a bug would.
	h := newTestHub(t, hubParts{})
	resp, body := h.raw(t, "GET", "/devices/d1", "", authHeader(h.token(t, "iothubowner")), "")
	wantError(t, resp, body, http.StatusInternalServerError, "ServerError")
	if strings.Contains(string(body), "nil pointer") {
		t.Errorf("panic details leaked: %s", body)
	}
}
