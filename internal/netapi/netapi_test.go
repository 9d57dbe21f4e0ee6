package netapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/netpolicy"
	"github.com/moat-iot/moat/internal/sas"
)

const host = "hub.test"

var policies = []sas.Policy{
	{KeyName: "owner", PrimaryKey: "b3duZXJrZXlvd25lcmtleQ==", Rights: []sas.Right{sas.RegistryRead, sas.RegistryWrite, sas.ServiceConnect}},
	{KeyName: "reader", PrimaryKey: "cmVhZGVycmVhZGVycmVhZGVy", Rights: []sas.Right{sas.RegistryRead}},
}

func signer(t *testing.T, p sas.Policy) func(*http.Request) error {
	return func(r *http.Request) error {
		tok, err := sas.Sign(host, p.KeyName, p.PrimaryKey, time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Authorization", tok)
		return nil
	}
}

func setup(t *testing.T) (*netpolicy.Engine, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "network.json")
	e, err := netpolicy.NewEngine(netpolicy.Policy{}, netpolicy.Options{Save: func(p netpolicy.Policy) error { return netpolicy.SaveFile(path, p) }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Handler(e, ServiceAuth(host, func() []sas.Policy { return policies }, nil), nil))
	t.Cleanup(srv.Close)
	return e, srv.URL
}

func wantCode(t *testing.T, err error, c errcode.Code) {
	t.Helper()
	if !errcode.Is(err, c) {
		t.Fatalf("error = %v, want %s", err, c.Name)
	}
}

func TestAPIChangesTheEngine(t *testing.T) {
	e, url := setup(t)
	ctx := context.Background()
	cl := NewClient(url, nil, signer(t, policies[0]))
	pub, remote := netip.MustParseAddrPort("10.250.1.1:443"), netip.MustParseAddrPort("10.250.1.2:5000")

	p, err := cl.PutIPRule(ctx, "lab", "10.250.1.0/24")
	if err != nil {
		t.Fatal(err)
	}
	if p.NetworkRuleSets == nil || p.NetworkRuleSets.DefaultAction != "Allow" || len(p.NetworkRuleSets.IPRules) != 1 {
		t.Fatalf("after adding a rule: %+v", p.NetworkRuleSets)
	}
	if _, err := cl.SetDefaultAction(ctx, "Deny"); err != nil {
		t.Fatal(err)
	}
	if d := e.Decide("https", pub, remote); !d.Allowed || d.Rule != "lab" {
		t.Errorf("in-rule client: %+v", d)
	}
	if d := e.Decide("https", pub, netip.MustParseAddrPort("10.250.9.2:1")); d.Allowed {
		t.Errorf("out-of-rule client admitted: %+v", d)
	}
	// Replacing a rule by a name differing in case replaces, not adds.
	if p, err = cl.PutIPRule(ctx, "LAB", "10.250.9.0/24"); err != nil || len(p.NetworkRuleSets.IPRules) != 1 || p.NetworkRuleSets.IPRules[0].IPMask != "10.250.9.0/24" {
		t.Fatalf("replace rule: %v %+v", err, p.NetworkRuleSets)
	}
	_, err = cl.PutIPRule(ctx, "bad", "10.0.0.0/99")
	wantCode(t, err, errcode.ArgumentInvalid)
	if !strings.Contains(err.Error(), "networkRuleSets.ipRules[1].ipMask") {
		t.Errorf("validation error lacks the field path: %v", err)
	}
	if _, err := cl.DeleteIPRule(ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	_, err = cl.DeleteIPRule(ctx, "lab")
	wantCode(t, err, IPRuleNotFound)

	pe := netpolicy.PrivateEndpointConnection{Name: "vnet"}
	pe.Properties.PrivateEndpoint.IPAddresses = []string{"10.250.2.1"}
	pe.Properties.PrivateLinkServiceConnectionState.Status = "Pending"
	if _, err := cl.PutPrivateEndpoint(ctx, pe); err != nil {
		t.Fatal(err)
	}
	priv := netip.MustParseAddrPort("10.250.2.1:8883")
	if d := e.Decide("mqtts", priv, remote); d.Allowed || d.Endpoint != "vnet" {
		t.Errorf("pending endpoint: %+v", d)
	}
	pe.Properties.PrivateLinkServiceConnectionState.Status = "Approved"
	if _, err := cl.PutPrivateEndpoint(ctx, pe); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.SetPublicNetworkAccess(ctx, "Disabled"); err != nil {
		t.Fatal(err)
	}
	if d := e.Decide("mqtts", priv, remote); !d.Allowed {
		t.Errorf("approved endpoint with public access disabled: %+v", d)
	}
	if d := e.Decide("mqtts", pub, remote); d.Allowed || d.Rule != netpolicy.ReasonPublicDisabled {
		t.Errorf("public with access disabled: %+v", d)
	}
	_, err = cl.SetPublicNetworkAccess(ctx, "Off")
	wantCode(t, err, errcode.ArgumentInvalid)
	if _, err := cl.SetMinTLSVersion(ctx, "1.3"); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.DeletePrivateEndpoint(ctx, "VNET"); err != nil {
		t.Fatal(err)
	}
	_, err = cl.DeletePrivateEndpoint(ctx, "vnet")
	wantCode(t, err, PrivateEndpointNotFound)

	// The whole document: classic rules, and then the per-rule API refuses.
	_, err = cl.SetPolicy(ctx, netpolicy.Policy{IPFilterRules: []netpolicy.IPFilterRule{{FilterName: "a", Action: "Reject", IPMask: "10.250.1.2"}}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cl.PutIPRule(ctx, "x", "10.0.0.0/8")
	wantCode(t, err, errcode.InvalidOperation)
	got, err := cl.Policy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got.PublicNetworkAccess != "" || len(got.IPFilterRules) != 1 || got.NetworkRuleSets != nil {
		t.Errorf("after PUT of the whole policy: %+v", got)
	}
	// Both models at once is a clear error.
	_, err = cl.SetPolicy(ctx, netpolicy.Policy{NetworkRuleSets: &netpolicy.NetworkRuleSets{DefaultAction: "Deny"}, IPFilterRules: got.IPFilterRules})
	wantCode(t, err, errcode.ArgumentInvalid)
	if !strings.Contains(err.Error(), "not both") {
		t.Errorf("both models: %v", err)
	}
}

func TestAPIAuth(t *testing.T) {
	_, url := setup(t)
	ctx := context.Background()
	reader := NewClient(url, nil, signer(t, policies[1]))
	if _, err := reader.Policy(ctx); err != nil {
		t.Fatalf("RegistryRead cannot read: %v", err)
	}
	_, err := reader.SetPublicNetworkAccess(ctx, "Disabled")
	wantCode(t, err, errcode.IotHubUnauthorizedAccess)
	_, err = NewClient(url, nil, nil).Policy(ctx)
	wantCode(t, err, errcode.IotHubUnauthorizedAccess)
	wrong := policies[0]
	wrong.PrimaryKey = "d3Jvbmd3cm9uZ3dyb25n"
	_, err = NewClient(url, nil, signer(t, wrong)).Policy(ctx)
	wantCode(t, err, errcode.IotHubUnauthorizedAccess)
	if strings.Contains(err.Error(), "sig=") {
		t.Errorf("error leaks the token: %v", err)
	}
}

func TestDecodeField(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		bad      bool
	}{
		{in: `"Disabled"`, want: "Disabled"},
		{in: `{"publicNetworkAccess":"Enabled"}`, want: "Enabled"},
		{in: `{"publicNetworkAccess":"Enabled","x":1}`, bad: true},
		{in: `[1]`, bad: true},
		{in: ``, bad: true},
	} {
		var v struct {
			PublicNetworkAccess string `json:"publicNetworkAccess"`
		}
		err := decodeField([]byte(tc.in), &v, &v.PublicNetworkAccess)
		if tc.bad != (err != nil) || (!tc.bad && v.PublicNetworkAccess != tc.want) {
			t.Errorf("decodeField(%s) = %q, %v", tc.in, v.PublicNetworkAccess, err)
		}
	}
}

func TestParseError(t *testing.T) {
	for _, tc := range []struct {
		status int
		header string
		body   string
		name   string
		msg    string
	}{
		{400, "ArgumentInvalid", `{"Message":"ErrorCode:ArgumentInvalid;bad mask"}`, "ArgumentInvalid", "bad mask"},
		{404, "", `{"Message":"ErrorCode:IPFilterRuleNotFound;no IP rule named \"x\""}`, "IPFilterRuleNotFound", `no IP rule named "x"`},
		{401, "IotHubUnauthorizedAccess", `not json`, "IotHubUnauthorizedAccess", "Unauthorized"},
		{502, "", ``, "HTTP502", "Bad Gateway"},
	} {
		e := parseError(tc.status, tc.header, []byte(tc.body))
		if e.Code.Name != tc.name || e.Message != tc.msg || e.Code.Status != tc.status {
			t.Errorf("parseError(%d, %q, %q) = %+v", tc.status, tc.header, tc.body, e)
		}
	}
}

func FuzzParseError(f *testing.F) {
	f.Add(400, "ArgumentInvalid", `{"Message":"ErrorCode:ArgumentInvalid;x"}`)
	f.Add(500, "", `{"Message":"ErrorCode:"}`)
	f.Add(404, "x", "\x00")
	f.Fuzz(func(t *testing.T, status int, header, body string) {
		e := parseError(status, header, []byte(body))
		if e == nil || e.Code.Name == "" {
			t.Fatalf("parseError gave %+v", e)
		}
	})
}

func FuzzDecodeField(f *testing.F) {
	f.Add(`"Disabled"`)
	f.Add(`{"minTlsVersion":"1.3"}`)
	f.Add(`{`)
	f.Fuzz(func(t *testing.T, in string) {
		var v struct {
			MinTLSVersion string `json:"minTlsVersion"`
		}
		_ = decodeField([]byte(in), &v, &v.MinTLSVersion)
	})
}
