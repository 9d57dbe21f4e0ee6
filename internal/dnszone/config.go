package dnszone

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
)

// Config is the "moat.dns" section of the hub's configuration file.
//
//	moat:
//	  dns:
//	    listen: "10.0.0.5:53"            # off when empty
//	    publicAddresses: ["203.0.113.7"]  # what the public view answers for the hub
//	    privateNetworks: ["10.0.0.0/16"]  # linked to the privatelink zone
//	    upstream: ["10.0.0.2:53"]         # absent: /etc/resolv.conf; []: none
type Config struct {
	Listen          string         `json:"listen,omitempty"`
	PublicAddresses []netip.Addr   `json:"publicAddresses,omitempty"`
	PrivateLinkName string         `json:"privateLinkName,omitempty"`
	PrivateNetworks []netip.Prefix `json:"privateNetworks,omitempty"`
	Upstream        []string       `json:"upstream,omitempty"`
	ForwardFrom     []netip.Prefix `json:"forwardFrom,omitempty"`
}

// Problems lists what is wrong with c, each naming its field relative to the
// section ("listen", "upstream[1]"), for the config package to prefix.
func (c Config) Problems() []*ValidationError {
	var out []*ValidationError
	bad := func(field, format string, args ...any) {
		out = append(out, &ValidationError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			bad("listen", "%q is not host:port", c.Listen)
		}
	}
	for i, a := range c.PublicAddresses {
		if !a.IsValid() || a.Zone() != "" {
			bad(fmt.Sprintf("publicAddresses[%d]", i), "not an IP address")
		}
	}
	if c.PrivateLinkName != "" {
		if n, err := CanonicalName(c.PrivateLinkName); err != nil {
			bad("privateLinkName", "%v", err)
		} else if _, zone, _ := strings.Cut(n, "."); !strings.Contains(zone, ".") {
			bad("privateLinkName", "%q needs at least three labels", c.PrivateLinkName)
		}
	}
	for _, f := range []struct {
		name string
		ps   []netip.Prefix
	}{{"privateNetworks", c.PrivateNetworks}, {"forwardFrom", c.ForwardFrom}} {
		for i, p := range f.ps {
			if p != p.Masked() {
				bad(fmt.Sprintf("%s[%d]", f.name, i), "%s has host bits set; did you mean %s?", p, p.Masked())
			}
		}
	}
	for i, u := range c.Upstream {
		if _, err := ParseUpstream(u); err != nil {
			bad(fmt.Sprintf("upstream[%d]", i), "%v", err)
		}
	}
	return out
}

// Options turns the section into server options for a hub named hubName.
func (c Config) Options(hubName string, store *Store, log *slog.Logger) Options {
	return Options{
		Listen:          c.Listen,
		HubName:         hubName,
		PrivateLinkName: c.PrivateLinkName,
		PublicAddrs:     c.PublicAddresses,
		PrivateNetworks: c.PrivateNetworks,
		Upstream:        c.Upstream,
		ForwardFrom:     c.ForwardFrom,
		Store:           store,
		Log:             log,
	}
}
