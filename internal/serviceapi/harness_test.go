package serviceapi

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/c2d"
	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/events"
	"github.com/moat-iot/moat/internal/methods"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/sas"
)

// testHost is the hub name in tokens and TLS; httptest's certificate covers it.
const testHost = "example.com"

type testHub struct {
	srv      *Server
	ts       *httptest.Server
	events   *events.Stream
	policies []sas.Policy
	roots    *x509.CertPool
}

type hubParts struct {
	reg       *registry.Registry
	inv       *methods.Invoker
	c2d       *c2d.Queue
	connected func() int
}

func mustKey(t testing.TB) string {
	t.Helper()
	k, err := sas.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newTestHub(t testing.TB, p hubParts) *testHub {
	t.Helper()
	h := &testHub{events: events.New()}
	for _, pol := range []struct {
		name   string
		rights []sas.Right
	}{
		{"iothubowner", []sas.Right{sas.RegistryRead, sas.RegistryWrite, sas.ServiceConnect, sas.DeviceConnect}},
		{"service", []sas.Right{sas.ServiceConnect}},
		{"device", []sas.Right{sas.DeviceConnect}},
		{"registryRead", []sas.Right{sas.RegistryRead}},
		{"registryReadWrite", []sas.Right{sas.RegistryRead, sas.RegistryWrite}},
	} {
		h.policies = append(h.policies, sas.Policy{KeyName: pol.name, PrimaryKey: mustKey(t), SecondaryKey: mustKey(t), Rights: pol.rights})
	}
	h.srv = New(Config{
		HostName:         testHost,
		Policies:         func() []sas.Policy { return h.policies },
		Registry:         p.reg,
		Methods:          p.inv,
		C2D:              p.c2d,
		Events:           h.events,
		ConnectedDevices: p.connected,
		Log:              slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	h.ts = httptest.NewUnstartedServer(h.srv)
	h.ts.EnableHTTP2 = true
	h.ts.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	h.ts.StartTLS()
	t.Cleanup(h.ts.Close)
	h.roots = x509.NewCertPool()
	h.roots.AddCert(h.ts.Certificate())
	return h
}

func (h *testHub) policy(t testing.TB, name string) sas.Policy {
	t.Helper()
	for _, p := range h.policies {
		if p.KeyName == name {
			return p
		}
	}
	t.Fatalf("no policy %q", name)
	return sas.Policy{}
}

func (h *testHub) connString(t testing.TB, policy string) string {
	p := h.policy(t, policy)
	return "HostName=" + testHost + ";SharedAccessKeyName=" + p.KeyName + ";SharedAccessKey=" + p.PrimaryKey
}

// client returns a Client that reaches the test server through the Address
// override and verifies its certificate for testHost.
func (h *testHub) client(t testing.TB, policy string) *Client {
	t.Helper()
	c, err := NewClient(h.connString(t, policy), ClientOptions{Address: h.ts.Listener.Addr().String(), RootCAs: h.roots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.hc.CloseIdleConnections)
	return c
}

func (h *testHub) token(t testing.TB, policy string) string {
	t.Helper()
	tok, err := sas.Sign(testHost, policy, h.policy(t, policy).PrimaryKey, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// raw sends a hand-made request; rawQuery "" means api-version=2021-04-12.
func (h *testHub) raw(t testing.TB, method, path, rawQuery string, header http.Header, body string) (*http.Response, []byte) {
	t.Helper()
	if rawQuery == "" {
		rawQuery = "api-version=" + APIVersion
	}
	// Bounded, so that a stream opened by mistake fails the test instead of
	// hanging it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, h.ts.URL+path+"?"+rawQuery, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := h.ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func authHeader(tok string) http.Header { return http.Header{"Authorization": {tok}} }

// wantError checks an answer is IoT Hub's legacy error for code.
func wantError(t testing.TB, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d (body %s)", resp.StatusCode, status, body)
	}
	if got := resp.Header.Get("iothub-errorcode"); got != code {
		t.Errorf("iothub-errorcode %q, want %q", got, code)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("content type %q", ct)
	}
	var le struct{ Message, ExceptionMessage string }
	if err := json.Unmarshal(body, &le); err != nil {
		t.Fatalf("error body %s: %v", body, err)
	}
	if !strings.HasPrefix(le.Message, "ErrorCode:"+code+";") {
		t.Errorf("Message %q, want prefix ErrorCode:%s;", le.Message, code)
	}
	if !trackingRE.MatchString(le.ExceptionMessage) {
		t.Errorf("ExceptionMessage %q", le.ExceptionMessage)
	}
}

// wantCode checks err is an *errcode.Error with code.
func wantCode(t testing.TB, err error, c errcode.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %s", c.Name)
	}
	e, ok := err.(*errcode.Error)
	if !ok {
		t.Fatalf("error %v (%T), want *errcode.Error %s", err, err, c.Name)
	}
	if e.Code.Name != c.Name || e.Code.Status != c.Status {
		t.Fatalf("error %v (status %d), want %s (%d)", err, e.Code.Status, c.Name, c.Status)
	}
}
