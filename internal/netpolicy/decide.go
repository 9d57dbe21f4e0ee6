package netpolicy

import (
	"crypto/tls"
	"net"
	"net/netip"
)

// Endpoint names for Decision.Endpoint.
const EndpointPublic = "public"

// Reasons a decision names when no rule of the operator's decided.
const (
	ReasonLocalAdministration = "local administration"
	ReasonPublicDisabled      = "publicNetworkAccess disabled"
	ReasonDefaultAllow        = "defaultAction Allow"
	ReasonDefaultDeny         = "defaultAction Deny"
	ReasonNoRules             = "no IP rules"
	ReasonNoClassicMatch      = "no ipFilterRule matched"
	ReasonBadAddress          = "unknown address"
)

// Decision is the verdict on one connection.
type Decision struct {
	Allowed bool
	// Endpoint is "public" or the private endpoint's name.
	Endpoint string
	// Rule is the deciding rule's filterName, or a reason such as
	// "publicNetworkAccess disabled", "defaultAction Deny",
	// "private endpoint Pending".
	Rule string
}

// Decider is a compiled policy; it is immutable and safe for concurrent use.
type Decider struct {
	public        bool
	loopback      bool
	private       map[netip.Addr]*privateEndpoint
	ruleSet       bool // networkRuleSets given
	defaultAllow  bool
	allow         []compiledRule // networkRuleSets.ipRules
	classic       []compiledRule // ipFilterRules, in order
	minTLSVersion uint16
}

type compiledRule struct {
	name   string
	prefix netip.Prefix
	accept bool
}

type privateEndpoint struct {
	name     string
	status   string
	approved bool
}

// Compile validates p and prepares it for Decide.
func (p *Policy) Compile() (*Decider, error) {
	return p.compile(false)
}

func (p *Policy) compile(loopback bool) (*Decider, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	d := &Decider{
		public:        p.PublicNetworkAccess != Disabled,
		loopback:      loopback,
		private:       map[netip.Addr]*privateEndpoint{},
		minTLSVersion: tls.VersionTLS12,
	}
	if p.MinTLSVersion == "1.3" {
		d.minTLSVersion = tls.VersionTLS13
	}
	if rs := p.NetworkRuleSets; rs != nil {
		d.ruleSet = true
		d.defaultAllow = rs.DefaultAction == ActionAllow
		for _, r := range rs.IPRules {
			pfx, _ := ParseIPMask(r.IPMask) // validated
			d.allow = append(d.allow, compiledRule{name: r.FilterName, prefix: pfx, accept: true})
		}
	}
	for _, r := range p.IPFilterRules {
		pfx, _ := ParseIPMask(r.IPMask)
		d.classic = append(d.classic, compiledRule{name: r.FilterName, prefix: pfx, accept: r.Action == ActionAccept})
	}
	for _, c := range p.PrivateEndpointConnections {
		st := c.Properties.PrivateLinkServiceConnectionState.Status
		pe := &privateEndpoint{name: c.Name, status: st, approved: st == StatusApproved}
		for _, s := range c.Properties.PrivateEndpoint.IPAddresses {
			a, _ := netip.ParseAddr(s)
			d.private[a.Unmap()] = pe
		}
	}
	return d, nil
}

// MinTLSVersion is the lowest TLS version the policy admits (a crypto/tls
// constant).
func (d *Decider) MinTLSVersion() uint16 { return d.minTLSVersion }

// Decide classifies a connection by the local address it arrived on and
// decides it. The listener's name does not change the verdict today (every
// listener gets the same policy); it is there so that per-listener rules can
// come without changing callers.
func (d *Decider) Decide(listener string, local, remote netip.AddrPort) Decision {
	la, ra := local.Addr().Unmap().WithZone(""), remote.Addr().Unmap().WithZone("")
	if pe, ok := d.private[la]; ok {
		if pe.approved {
			return Decision{Allowed: true, Endpoint: pe.name, Rule: "private endpoint " + pe.status}
		}
		return Decision{Endpoint: pe.name, Rule: "private endpoint " + pe.status}
	}
	if !ra.IsValid() || !la.IsValid() {
		return Decision{Endpoint: EndpointPublic, Rule: ReasonBadAddress}
	}
	if d.loopback && la.IsLoopback() && ra.IsLoopback() {
		return Decision{Allowed: true, Endpoint: EndpointPublic, Rule: ReasonLocalAdministration}
	}
	if !d.public {
		return Decision{Endpoint: EndpointPublic, Rule: ReasonPublicDisabled}
	}
	switch {
	case d.ruleSet:
		if d.defaultAllow {
			return Decision{Allowed: true, Endpoint: EndpointPublic, Rule: ReasonDefaultAllow}
		}
		for _, r := range d.allow {
			if r.prefix.Contains(ra) {
				return Decision{Allowed: true, Endpoint: EndpointPublic, Rule: r.name}
			}
		}
		return Decision{Endpoint: EndpointPublic, Rule: ReasonDefaultDeny}
	case len(d.classic) > 0:
		for _, r := range d.classic {
			if r.prefix.Contains(ra) {
				return Decision{Allowed: r.accept, Endpoint: EndpointPublic, Rule: r.name}
			}
		}
		return Decision{Allowed: true, Endpoint: EndpointPublic, Rule: ReasonNoClassicMatch}
	}
	return Decision{Allowed: true, Endpoint: EndpointPublic, Rule: ReasonNoRules}
}

// AddrPort converts a socket address to netip form; anything that is not a
// TCP or UDP address gives the zero AddrPort, which Decide refuses.
func AddrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	case nil:
		return netip.AddrPort{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return ap
}
