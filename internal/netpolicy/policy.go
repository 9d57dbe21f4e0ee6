// Package netpolicy decides who may connect to the hub: public network access,
// IP rules (IoT Hub's networkRuleSets and the classic ipFilterRules) and
// private endpoints, from nothing but the listener's name and the connection's
// local and remote addresses. It knows nothing of MQTT or HTTP, so that every
// listener — including ones added later — is covered the same way, before any
// TLS byte is exchanged.
//
// How a connection is classified: by the LOCAL address it arrived on. If that
// address belongs to a private endpoint, the connection is private-endpoint
// traffic and only the endpoint's approval state matters (as in IoT Hub, the
// public IP rules do not apply to it). Otherwise it is public traffic: first
// publicNetworkAccess, then the IP rules. Listeners are expected to listen on
// wildcard addresses so that one listener serves the public address and every
// private endpoint address of the host.
//
// Loopback: a connection whose local address is loopback is public traffic like
// any other, unless that loopback address is listed as a private endpoint
// address. The one exception is local administration: when the engine is built
// with AllowLoopback, a connection whose local AND remote addresses are both
// loopback is admitted (rule "local administration"), so that `moat` commands
// and metrics scrapers on the hub's own host keep working under a Deny policy.
// Only processes on the hub's host can make such connections.
package netpolicy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Values of the model's enumerations (IoT Hub's spelling).
const (
	Enabled  = "Enabled"
	Disabled = "Disabled"

	ActionAllow  = "Allow"
	ActionDeny   = "Deny"
	ActionAccept = "Accept"
	ActionReject = "Reject"

	StatusPending      = "Pending"
	StatusApproved     = "Approved"
	StatusRejected     = "Rejected"
	StatusDisconnected = "Disconnected"
)

// Limits from IoT Hub.
const (
	MaxIPRules       = 100
	MaxIPFilterRules = 10
	maxNameLen       = 128
)

// Policy is the network part of an IoT Hub's resource properties. Every JSON
// name is IoT Hub's.
type Policy struct {
	// PublicNetworkAccess is "Enabled" (default when empty) or "Disabled".
	// Disabled refuses every connection through a public address, whatever
	// the IP rules say.
	PublicNetworkAccess string `json:"publicNetworkAccess,omitempty"`
	// NetworkRuleSets is the current IP filter model.
	NetworkRuleSets *NetworkRuleSets `json:"networkRuleSets,omitempty"`
	// IPFilterRules is the classic, ordered IP filter (first match wins; no
	// match accepts). It cannot be combined with NetworkRuleSets.
	IPFilterRules []IPFilterRule `json:"ipFilterRules,omitempty"`
	// PrivateEndpointConnections are the hub's private endpoints.
	PrivateEndpointConnections []PrivateEndpointConnection `json:"privateEndpointConnections,omitempty"`
	// MinTLSVersion is "1.2" (default when empty) or "1.3".
	MinTLSVersion string `json:"minTlsVersion,omitempty"`
}

// NetworkRuleSets is IoT Hub's networkRuleSets: allow-only, unordered rules
// and a default action for addresses no rule matches.
type NetworkRuleSets struct {
	DefaultAction string `json:"defaultAction"`
	// ApplyToBuiltInEventHubEndpoint is kept for IoT Hub compatibility. Moat
	// serves no Event Hub-compatible endpoint, so it changes nothing.
	ApplyToBuiltInEventHubEndpoint bool     `json:"applyToBuiltInEventHubEndpoint"`
	IPRules                        []IPRule `json:"ipRules"`
}

// IPRule admits the addresses in IPMask; Action is always "Allow".
type IPRule struct {
	FilterName string `json:"filterName"`
	Action     string `json:"action"`
	IPMask     string `json:"ipMask"`
}

// IPFilterRule is a classic rule: Action "Accept" or "Reject".
type IPFilterRule struct {
	FilterName string `json:"filterName"`
	Action     string `json:"action"`
	IPMask     string `json:"ipMask"`
}

// PrivateEndpointConnection is one private endpoint, in IoT Hub's shape
// (name, properties.privateEndpoint, properties.privateLinkServiceConnectionState).
type PrivateEndpointConnection struct {
	ID         string                              `json:"id,omitempty"`
	Name       string                              `json:"name"`
	Properties PrivateEndpointConnectionProperties `json:"properties"`
}

// PrivateEndpointConnectionProperties holds the endpoint and its approval.
type PrivateEndpointConnectionProperties struct {
	PrivateEndpoint                   PrivateEndpoint `json:"privateEndpoint"`
	PrivateLinkServiceConnectionState ConnectionState `json:"privateLinkServiceConnectionState"`
}

// PrivateEndpoint names the endpoint. IPAddresses is Moat's addition (in Azure
// the addresses belong to the endpoint's network interface): the hub's own
// addresses that the endpoint's traffic arrives on.
type PrivateEndpoint struct {
	ID          string   `json:"id,omitempty"`
	IPAddresses []string `json:"ipAddresses"`
}

// ConnectionState is the endpoint's approval; only Approved carries traffic.
type ConnectionState struct {
	Status          string `json:"status"`
	Description     string `json:"description,omitempty"`
	ActionsRequired string `json:"actionsRequired,omitempty"`
}

// FieldError is a validation error at a field path relative to the policy
// (e.g. "networkRuleSets.ipRules[2].ipMask").
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

// ParseIPMask reads an ipMask: an IPv4 or IPv6 address (a single host) or a
// CIDR prefix. Host bits after the prefix length are cleared, as IoT Hub does
// with "10.0.0.7/8". Zones are refused: rules are about addresses on the wire.
func ParseIPMask(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Prefix{}, errors.New("is empty")
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR prefix", s)
		}
		if p.Addr().Is4In6() {
			// ::ffff:10.0.0.0/104 would never match: remotes are unmapped.
			return netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0)).Masked(), nil
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR prefix", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// validName follows IoT Hub's rule names: alphanumerics and - : . + % _ # * ? ! ( ) , = @ ; '
func validName(n string) bool {
	if n == "" || len(n) > maxNameLen {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-:.+%_#*?!(),=@;'", r)) {
			return false
		}
	}
	return true
}

// Validate checks the policy and returns every problem, each a *FieldError,
// joined.
func (p *Policy) Validate() error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	switch p.PublicNetworkAccess {
	case "", Enabled, Disabled:
	default:
		bad("publicNetworkAccess", "must be %q or %q, not %q", Enabled, Disabled, p.PublicNetworkAccess)
	}
	switch p.MinTLSVersion {
	case "", "1.2", "1.3":
	default:
		bad("minTlsVersion", "must be \"1.2\" or \"1.3\", not %q", p.MinTLSVersion)
	}
	if p.NetworkRuleSets != nil && len(p.IPFilterRules) > 0 {
		bad("ipFilterRules", "cannot be combined with networkRuleSets: give one IP filter model, not both")
	}
	if rs := p.NetworkRuleSets; rs != nil {
		switch rs.DefaultAction {
		case ActionAllow, ActionDeny:
		default:
			bad("networkRuleSets.defaultAction", "must be %q or %q, not %q", ActionAllow, ActionDeny, rs.DefaultAction)
		}
		if len(rs.IPRules) > MaxIPRules {
			bad("networkRuleSets.ipRules", "has %d rules; at most %d are allowed", len(rs.IPRules), MaxIPRules)
		}
		seen := map[string]bool{}
		for i, r := range rs.IPRules {
			path := fmt.Sprintf("networkRuleSets.ipRules[%d]", i)
			checkName(bad, path, r.FilterName, seen)
			if r.Action != ActionAllow {
				bad(path+".action", "must be %q (rules only allow; defaultAction decides the rest), not %q", ActionAllow, r.Action)
			}
			if _, err := ParseIPMask(r.IPMask); err != nil {
				bad(path+".ipMask", "%v", err)
			}
		}
	}
	if len(p.IPFilterRules) > MaxIPFilterRules {
		bad("ipFilterRules", "has %d rules; at most %d are allowed", len(p.IPFilterRules), MaxIPFilterRules)
	}
	seen := map[string]bool{}
	for i, r := range p.IPFilterRules {
		path := fmt.Sprintf("ipFilterRules[%d]", i)
		checkName(bad, path, r.FilterName, seen)
		if r.Action != ActionAccept && r.Action != ActionReject {
			bad(path+".action", "must be %q or %q, not %q", ActionAccept, ActionReject, r.Action)
		}
		if _, err := ParseIPMask(r.IPMask); err != nil {
			bad(path+".ipMask", "%v", err)
		}
	}
	names := map[string]bool{}
	owner := map[netip.Addr]string{}
	for i, c := range p.PrivateEndpointConnections {
		path := fmt.Sprintf("privateEndpointConnections[%d]", i)
		switch {
		case !validName(c.Name):
			bad(path+".name", "must be 1 to %d characters of letters, digits and - : . + %% _ # * ? ! ( ) , = @ ; '", maxNameLen)
		case names[strings.ToLower(c.Name)]:
			bad(path+".name", "duplicate private endpoint %q", c.Name)
		}
		names[strings.ToLower(c.Name)] = true
		addrs := c.Properties.PrivateEndpoint.IPAddresses
		if len(addrs) == 0 {
			bad(path+".properties.privateEndpoint.ipAddresses", "needs at least one address of the hub's host")
		}
		for j, s := range addrs {
			apath := fmt.Sprintf("%s.properties.privateEndpoint.ipAddresses[%d]", path, j)
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				bad(apath, "%q is not an IP address", s)
				continue
			}
			a = a.Unmap()
			if a.IsUnspecified() || a.IsMulticast() {
				bad(apath, "%q cannot be an endpoint address", s)
				continue
			}
			if o, dup := owner[a]; dup {
				bad(apath, "%s is already an address of private endpoint %q", a, o)
				continue
			}
			owner[a] = c.Name
		}
		switch c.Properties.PrivateLinkServiceConnectionState.Status {
		case StatusPending, StatusApproved, StatusRejected, StatusDisconnected:
		default:
			bad(path+".properties.privateLinkServiceConnectionState.status", "must be Pending, Approved, Rejected or Disconnected, not %q", c.Properties.PrivateLinkServiceConnectionState.Status)
		}
	}
	return errors.Join(errs...)
}

func checkName(bad func(string, string, ...any), path, name string, seen map[string]bool) {
	switch {
	case !validName(name):
		bad(path+".filterName", "must be 1 to %d characters of letters, digits and - : . + %% _ # * ? ! ( ) , = @ ; '", maxNameLen)
	case seen[strings.ToLower(name)]:
		bad(path+".filterName", "duplicate rule name %q (names are case-insensitive)", name)
	}
	seen[strings.ToLower(name)] = true
}

// Clone returns a deep copy.
func (p Policy) Clone() Policy {
	out := p
	if p.NetworkRuleSets != nil {
		rs := *p.NetworkRuleSets
		rs.IPRules = append([]IPRule{}, rs.IPRules...)
		out.NetworkRuleSets = &rs
	}
	out.IPFilterRules = append([]IPFilterRule(nil), p.IPFilterRules...)
	out.PrivateEndpointConnections = nil
	for _, c := range p.PrivateEndpointConnections {
		c.Properties.PrivateEndpoint.IPAddresses = append([]string{}, c.Properties.PrivateEndpoint.IPAddresses...)
		out.PrivateEndpointConnections = append(out.PrivateEndpointConnections, c)
	}
	return out
}
