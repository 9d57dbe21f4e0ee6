package netpolicy

import (
	"crypto/tls"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

func TestParseIPMask(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		bad      bool
	}{
		{in: "10.0.0.0/8", want: "10.0.0.0/8"},
		{in: "10.1.2.3/8", want: "10.0.0.0/8"},
		{in: "192.168.1.5", want: "192.168.1.5/32"},
		{in: " 192.168.1.5 ", want: "192.168.1.5/32"},
		{in: "0.0.0.0/0", want: "0.0.0.0/0"},
		{in: "2001:db8::/32", want: "2001:db8::/32"},
		{in: "2001:db8::1", want: "2001:db8::1/128"},
		{in: "::ffff:10.0.0.1", want: "10.0.0.1/32"},
		{in: "::ffff:10.0.0.0/104", want: "10.0.0.0/8"},
		{in: "", bad: true},
		{in: "10.0.0.0/33", bad: true},
		{in: "10.0.0", bad: true},
		{in: "fe80::1%eth0", bad: true},
		{in: "host.example", bad: true},
		{in: "10.0.0.0/-1", bad: true},
		{in: "2001:db8::/129", bad: true},
	} {
		got, err := ParseIPMask(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("ParseIPMask(%q) = %v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("ParseIPMask(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func pe(name, status string, addrs ...string) PrivateEndpointConnection {
	return PrivateEndpointConnection{Name: name, Properties: PrivateEndpointConnectionProperties{
		PrivateEndpoint:                   PrivateEndpoint{IPAddresses: addrs},
		PrivateLinkServiceConnectionState: ConnectionState{Status: status},
	}}
}

func TestValidateFieldPaths(t *testing.T) {
	long := strings.Repeat("a", 129)
	many := make([]IPRule, 101)
	for i := range many {
		many[i] = IPRule{FilterName: "r" + strings.Repeat("x", i), Action: "Allow", IPMask: "10.0.0.1"}
	}
	classic := make([]IPFilterRule, 11)
	for i := range classic {
		classic[i] = IPFilterRule{FilterName: "c" + strings.Repeat("x", i), Action: "Accept", IPMask: "10.0.0.1"}
	}
	for _, tc := range []struct {
		name  string
		p     Policy
		paths []string
	}{
		{name: "empty is valid", p: Policy{}},
		{name: "public access", p: Policy{PublicNetworkAccess: "disabled"}, paths: []string{"publicNetworkAccess"}},
		{name: "tls", p: Policy{MinTLSVersion: "1.1"}, paths: []string{"minTlsVersion"}},
		{name: "both models", p: Policy{NetworkRuleSets: &NetworkRuleSets{DefaultAction: "Deny"}, IPFilterRules: []IPFilterRule{{FilterName: "a", Action: "Accept", IPMask: "10.0.0.0/8"}}}, paths: []string{"ipFilterRules"}},
		{name: "default action", p: Policy{NetworkRuleSets: &NetworkRuleSets{DefaultAction: "Block"}}, paths: []string{"networkRuleSets.defaultAction"}},
		{name: "rules", p: Policy{NetworkRuleSets: &NetworkRuleSets{DefaultAction: "Deny", IPRules: []IPRule{
			{FilterName: "Office", Action: "Allow", IPMask: "10.0.0.0/8"},
			{FilterName: "office", Action: "Allow", IPMask: "10.0.0.0/8"},
			{FilterName: "x", Action: "Deny", IPMask: "10.0.0.0/8"},
			{FilterName: "y", Action: "Allow", IPMask: "10.0.0.0/40"},
			{FilterName: long, Action: "Allow", IPMask: "::1"},
			{FilterName: "bad/name", Action: "Allow", IPMask: "::1"},
		}}}, paths: []string{"networkRuleSets.ipRules[1].filterName", "networkRuleSets.ipRules[2].action", "networkRuleSets.ipRules[3].ipMask", "networkRuleSets.ipRules[4].filterName", "networkRuleSets.ipRules[5].filterName"}},
		{name: "too many rules", p: Policy{NetworkRuleSets: &NetworkRuleSets{DefaultAction: "Deny", IPRules: many}}, paths: []string{"networkRuleSets.ipRules"}},
		{name: "classic", p: Policy{IPFilterRules: []IPFilterRule{{FilterName: "a", Action: "Allow", IPMask: "1.2.3.4"}, {FilterName: "A", Action: "Reject", IPMask: "nope"}}}, paths: []string{"ipFilterRules[0].action", "ipFilterRules[1].filterName", "ipFilterRules[1].ipMask"}},
		{name: "too many classic", p: Policy{IPFilterRules: classic}, paths: []string{"ipFilterRules"}},
		{name: "endpoints", p: Policy{PrivateEndpointConnections: []PrivateEndpointConnection{
			pe("pe1", "Approved", "10.1.0.1"),
			pe("PE1", "Approved", "10.1.0.2"),
			pe("pe2", "Maybe", "10.1.0.1", "x", "0.0.0.0"),
			pe("pe3", "Pending"),
		}}, paths: []string{"privateEndpointConnections[1].name", "privateEndpointConnections[2].properties.privateEndpoint.ipAddresses[0]", "privateEndpointConnections[2].properties.privateEndpoint.ipAddresses[1]", "privateEndpointConnections[2].properties.privateEndpoint.ipAddresses[2]", "privateEndpointConnections[2].properties.privateLinkServiceConnectionState.status", "privateEndpointConnections[3].properties.privateEndpoint.ipAddresses"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate()
			var got []string
			for _, e := range unjoin(err) {
				var fe *FieldError
				if !errors.As(e, &fe) {
					t.Fatalf("error %v is not a *FieldError", e)
				}
				got = append(got, fe.Path)
			}
			if strings.Join(got, ",") != strings.Join(tc.paths, ",") {
				t.Errorf("paths = %q, want %q (err: %v)", got, tc.paths, err)
			}
		})
	}
}

func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestDecide(t *testing.T) {
	const pub = "10.250.1.1:8883"
	const priv = "10.250.2.1:8883"
	endpoints := []PrivateEndpointConnection{
		pe("vnet", "Approved", "10.250.2.1", "fd00:2::1"),
		pe("waiting", "Pending", "10.250.3.1"),
		pe("refused", "Rejected", "10.250.4.1"),
		pe("gone", "Disconnected", "10.250.5.1"),
	}
	rules := &NetworkRuleSets{DefaultAction: "Deny", IPRules: []IPRule{
		{FilterName: "lab", Action: "Allow", IPMask: "10.250.1.0/28"},
		{FilterName: "v6", Action: "Allow", IPMask: "fd00:1::/64"},
	}}
	for _, tc := range []struct {
		name          string
		p             Policy
		loopback      bool
		local, remote string
		allowed       bool
		endpoint      string
		rule          string
	}{
		{name: "empty policy admits", p: Policy{}, local: pub, remote: "203.0.113.9:5000", allowed: true, endpoint: "public", rule: ReasonNoRules},
		{name: "public disabled refuses public", p: Policy{PublicNetworkAccess: Disabled, NetworkRuleSets: rules, PrivateEndpointConnections: endpoints}, local: pub, remote: "10.250.1.2:5000", endpoint: "public", rule: ReasonPublicDisabled},
		{name: "public disabled admits approved private", p: Policy{PublicNetworkAccess: Disabled, PrivateEndpointConnections: endpoints}, local: priv, remote: "10.250.2.2:5000", allowed: true, endpoint: "vnet", rule: "private endpoint Approved"},
		{name: "private ignores ip rules", p: Policy{NetworkRuleSets: rules, PrivateEndpointConnections: endpoints}, local: priv, remote: "198.51.100.1:5000", allowed: true, endpoint: "vnet", rule: "private endpoint Approved"},
		{name: "private v6 mapped local", p: Policy{PrivateEndpointConnections: endpoints}, local: "[::ffff:10.250.2.1]:443", remote: "[::ffff:10.250.2.2]:5000", allowed: true, endpoint: "vnet", rule: "private endpoint Approved"},
		{name: "private v6", p: Policy{PublicNetworkAccess: Disabled, PrivateEndpointConnections: endpoints}, local: "[fd00:2::1]:443", remote: "[fd00:2::2]:5000", allowed: true, endpoint: "vnet", rule: "private endpoint Approved"},
		{name: "pending refuses", p: Policy{PrivateEndpointConnections: endpoints}, local: "10.250.3.1:443", remote: "10.250.3.2:1", endpoint: "waiting", rule: "private endpoint Pending"},
		{name: "rejected refuses", p: Policy{PrivateEndpointConnections: endpoints}, local: "10.250.4.1:443", remote: "10.250.4.2:1", endpoint: "refused", rule: "private endpoint Rejected"},
		{name: "disconnected refuses", p: Policy{PrivateEndpointConnections: endpoints}, local: "10.250.5.1:443", remote: "10.250.5.2:1", endpoint: "gone", rule: "private endpoint Disconnected"},
		{name: "rule admits", p: Policy{NetworkRuleSets: rules}, local: pub, remote: "10.250.1.14:1", allowed: true, endpoint: "public", rule: "lab"},
		{name: "rule boundary", p: Policy{NetworkRuleSets: rules}, local: pub, remote: "10.250.1.16:1", endpoint: "public", rule: ReasonDefaultDeny},
		{name: "mapped remote matches v4 rule", p: Policy{NetworkRuleSets: rules}, local: "[::ffff:10.250.1.1]:1", remote: "[::ffff:10.250.1.3]:1", allowed: true, endpoint: "public", rule: "lab"},
		{name: "v6 rule", p: Policy{NetworkRuleSets: rules}, local: "[fd00:1::1]:443", remote: "[fd00:1::99]:1", allowed: true, endpoint: "public", rule: "v6"},
		{name: "v6 refused", p: Policy{NetworkRuleSets: rules}, local: "[fd00:1::1]:443", remote: "[fd00:9::99]:1", endpoint: "public", rule: ReasonDefaultDeny},
		{name: "default allow", p: Policy{NetworkRuleSets: &NetworkRuleSets{DefaultAction: "Allow", IPRules: rules.IPRules}}, local: pub, remote: "192.0.2.1:1", allowed: true, endpoint: "public", rule: ReasonDefaultAllow},
		{name: "deny with no rules", p: Policy{NetworkRuleSets: &NetworkRuleSets{DefaultAction: "Deny"}}, local: pub, remote: "10.250.1.2:1", endpoint: "public", rule: ReasonDefaultDeny},
		{name: "classic first match reject", p: Policy{IPFilterRules: []IPFilterRule{{FilterName: "no-host", Action: "Reject", IPMask: "10.250.1.2"}, {FilterName: "lab", Action: "Accept", IPMask: "10.250.1.0/24"}}}, local: pub, remote: "10.250.1.2:1", endpoint: "public", rule: "no-host"},
		{name: "classic first match accept", p: Policy{IPFilterRules: []IPFilterRule{{FilterName: "no-host", Action: "Reject", IPMask: "10.250.1.2"}, {FilterName: "lab", Action: "Accept", IPMask: "10.250.1.0/24"}}}, local: pub, remote: "10.250.1.3:1", allowed: true, endpoint: "public", rule: "lab"},
		{name: "classic no match accepts", p: Policy{IPFilterRules: []IPFilterRule{{FilterName: "all", Action: "Reject", IPMask: "10.0.0.0/8"}}}, local: pub, remote: "192.0.2.1:1", allowed: true, endpoint: "public", rule: ReasonNoClassicMatch},
		{name: "loopback admin", p: Policy{PublicNetworkAccess: Disabled}, loopback: true, local: "127.0.0.1:443", remote: "127.0.0.1:5555", allowed: true, endpoint: "public", rule: ReasonLocalAdministration},
		{name: "loopback admin v6", p: Policy{PublicNetworkAccess: Disabled}, loopback: true, local: "[::1]:443", remote: "[::1]:5555", allowed: true, endpoint: "public", rule: ReasonLocalAdministration},
		{name: "loopback without option is public", p: Policy{PublicNetworkAccess: Disabled}, local: "127.0.0.1:443", remote: "127.0.0.1:5555", endpoint: "public", rule: ReasonPublicDisabled},
		{name: "loopback local, remote not loopback", p: Policy{PublicNetworkAccess: Disabled}, loopback: true, local: "127.0.0.1:443", remote: "10.0.0.1:5555", endpoint: "public", rule: ReasonPublicDisabled},
		{name: "loopback private endpoint wins", p: Policy{PrivateEndpointConnections: []PrivateEndpointConnection{pe("lo", "Pending", "127.0.0.5")}}, loopback: true, local: "127.0.0.5:443", remote: "127.0.0.1:5555", endpoint: "lo", rule: "private endpoint Pending"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := tc.p.compile(tc.loopback)
			if err != nil {
				t.Fatal(err)
			}
			got := d.Decide("mqtts", ap(tc.local), ap(tc.remote))
			want := Decision{Allowed: tc.allowed, Endpoint: tc.endpoint, Rule: tc.rule}
			if got != want {
				t.Errorf("Decide = %+v, want %+v", got, want)
			}
		})
	}
}

func TestDecideZeroAddresses(t *testing.T) {
	d, err := (&Policy{}).Compile()
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Decide("x", netip.AddrPort{}, ap("10.0.0.1:1")); got.Allowed {
		t.Errorf("unknown local address admitted: %+v", got)
	}
}

func TestEngineUpdateAndSubscribe(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "network.json")
	var saves atomic.Int32
	e, err := NewEngine(Policy{}, Options{Save: func(p Policy) error { saves.Add(1); return SaveFile(path, p) }})
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	cancel := e.Subscribe(func() { calls.Add(1) })
	remote := ap("10.250.1.2:1")
	if !e.Decide("https", ap("10.250.1.1:443"), remote).Allowed {
		t.Fatal("empty policy refused")
	}
	if err := e.Update(Policy{PublicNetworkAccess: Disabled, MinTLSVersion: "1.3"}); err != nil {
		t.Fatal(err)
	}
	if d := e.Decide("https", ap("10.250.1.1:443"), remote); d.Allowed || d.Rule != ReasonPublicDisabled {
		t.Errorf("after disabling public access: %+v", d)
	}
	if e.MinTLSVersion() != tls.VersionTLS13 {
		t.Errorf("MinTLSVersion = %x", e.MinTLSVersion())
	}
	if calls.Load() != 1 || saves.Load() != 1 {
		t.Errorf("subscriber calls %d, saves %d; want 1, 1", calls.Load(), saves.Load())
	}
	// An invalid policy changes nothing, saves nothing, notifies nobody.
	err = e.Update(Policy{PublicNetworkAccess: "Off"})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Path != "publicNetworkAccess" {
		t.Errorf("invalid update: %v", err)
	}
	if e.Policy().PublicNetworkAccess != Disabled || calls.Load() != 1 || saves.Load() != 1 {
		t.Error("invalid update changed something")
	}
	// A failing save keeps the old policy.
	e2, _ := NewEngine(Policy{}, Options{Save: func(Policy) error { return os.ErrPermission }})
	if err := e2.Update(Policy{PublicNetworkAccess: Disabled}); !errors.Is(err, os.ErrPermission) {
		t.Errorf("save error = %v", err)
	}
	if e2.Policy().PublicNetworkAccess != "" {
		t.Error("policy changed although the save failed")
	}
	cancel()
	if err := e.Update(Policy{}); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 1 {
		t.Error("cancelled subscriber was called")
	}
	loaded, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.PublicNetworkAccess != "" || loaded.MinTLSVersion != "" {
		t.Errorf("saved policy = %+v", loaded)
	}
	if _, err := LoadFile(filepath.Join(dir, "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestEnginePolicyIsACopy(t *testing.T) {
	e, err := NewEngine(Policy{NetworkRuleSets: &NetworkRuleSets{DefaultAction: "Deny", IPRules: []IPRule{{FilterName: "a", Action: "Allow", IPMask: "10.0.0.0/8"}}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := e.Policy()
	p.NetworkRuleSets.IPRules[0].IPMask = "0.0.0.0/0"
	if e.Policy().NetworkRuleSets.IPRules[0].IPMask != "10.0.0.0/8" {
		t.Error("caller's copy aliases the engine's policy")
	}
}

func TestDecodeJSONStrict(t *testing.T) {
	if _, err := DecodeJSON([]byte(`{"publicNetworkAccess":"Enabled","bogus":1}`)); err == nil {
		t.Error("unknown field accepted")
	}
	p, err := DecodeJSON([]byte(`{"networkRuleSets":{"defaultAction":"Deny","applyToBuiltInEventHubEndpoint":true,"ipRules":[{"filterName":"a","action":"Allow","ipMask":"10.0.0.0/8"}]},
	"privateEndpointConnections":[{"name":"pe","properties":{"privateEndpoint":{"ipAddresses":["10.1.1.1"]},"privateLinkServiceConnectionState":{"status":"Approved","description":"ok","actionsRequired":"None"}}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if p.NetworkRuleSets.IPRules[0].FilterName != "a" || p.PrivateEndpointConnections[0].Properties.PrivateLinkServiceConnectionState.ActionsRequired != "None" {
		t.Errorf("decoded %+v", p)
	}
}
