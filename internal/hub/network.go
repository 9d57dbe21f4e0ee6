package hub

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/moat-iot/moat/internal/audit"
	"github.com/moat-iot/moat/internal/netapi"
	"github.com/moat-iot/moat/internal/netpolicy"
	"github.com/moat-iot/moat/internal/transport"
)

// networkFile holds the live network policy. The config file's network
// properties seed it on first start; afterwards it wins, because `moat network`
// and the management API change it while the hub runs. Delete it to re-seed
// from the config file.
const networkFile = "network.json"

// auditFile receives one JSON line per network decision.
const auditFile = "audit.log"

// buildNetwork loads (or seeds) the network policy and opens the audit log.
func (h *Hub) buildNetwork() error {
	path := filepath.Join(h.dataDir, networkFile)
	p, err := netpolicy.LoadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		p = h.cfg.Properties.NetworkPolicy()
		if err := netpolicy.SaveFile(path, p); err != nil {
			return err
		}
		h.log.Info("network policy seeded from the configuration", "file", path)
	case err != nil:
		return err
	default:
		if cfgP := h.cfg.Properties.NetworkPolicy(); !sameJSON(cfgP, p) && !sameJSON(cfgP, netpolicy.Policy{}) {
			h.log.Warn("the configuration's network properties differ from the live network policy, which wins; delete the file to re-seed it", "file", path)
		}
	}
	h.network, err = netpolicy.NewEngine(p, netpolicy.Options{
		AllowLoopback: h.cfg.Moat.LoopbackAdministration(),
		Save:          func(p netpolicy.Policy) error { return netpolicy.SaveFile(path, p) },
	})
	if err != nil {
		return fmt.Errorf("network policy %s: %w", path, err)
	}
	h.audit, err = audit.OpenFile(filepath.Join(h.dataDir, auditFile))
	if err != nil {
		return err
	}
	h.conns = transport.NewConns()
	return nil
}

// admit decides a new connection before TLS and audits the decision.
func (h *Hub) admit(listener string, local, remote net.Addr) bool {
	la, ra := netpolicy.AddrPort(local), netpolicy.AddrPort(remote)
	d := h.network.Decide(listener, la, ra)
	h.audit.Record(d, listener, la, ra)
	return d.Allowed
}

// keep re-decides a live connection after a policy change; refusals are
// audited as closes.
func (h *Hub) keep(listener string, local, remote net.Addr) bool {
	la, ra := netpolicy.AddrPort(local), netpolicy.AddrPort(remote)
	d := h.network.Decide(listener, la, ra)
	if !d.Allowed {
		h.audit.RecordClose(d, listener, la, ra)
	}
	return d.Allowed
}

// recheckConnections closes the live connections a new policy refuses. It runs
// on the goroutine that changed the policy, before the change's caller gets
// its answer.
func (h *Hub) recheckConnections() {
	if n := h.conns.Recheck(h.keep); n > 0 {
		h.log.Info("network policy changed; closed connections it no longer admits", "closed", n)
	}
}

// liveTLS makes minTlsVersion follow the live policy: each handshake gets the
// configuration for the version in force.
func (h *Hub) liveTLS(base *tls.Config) *tls.Config {
	v12 := base.Clone()
	v12.MinVersion = tls.VersionTLS12
	v13 := base.Clone()
	v13.MinVersion = tls.VersionTLS13
	out := base.Clone()
	out.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		if h.network.MinTLSVersion() == tls.VersionTLS13 {
			return v13, nil
		}
		return v12, nil
	}
	return out
}

// networkAPI is the management API of the network policy.
func (h *Hub) networkAPI() http.Handler {
	return netapi.Handler(h.network, netapi.ServiceAuth(h.hostName, h.Policies, nil), h.log.With("component", "netapi"))
}

// Network returns the network policy engine (tests and future management
// surfaces use it).
func (h *Hub) Network() *netpolicy.Engine { return h.network }

// syncPrivateDNS keeps the private DNS zone group in step with the private
// endpoints: approved endpoints' addresses are registered under the hub's
// privatelink name, and endpoints that lost their approval or were removed
// are withdrawn.
func (h *Hub) syncPrivateDNS() {
	h.dnsSyncMu.Lock()
	defer h.dnsSyncMu.Unlock()
	seen := map[string]bool{}
	for _, pe := range h.network.Policy().PrivateEndpointConnections {
		var addrs []netip.Addr
		for _, a := range pe.Properties.PrivateEndpoint.IPAddresses {
			if ip, err := netip.ParseAddr(a); err == nil {
				addrs = append(addrs, ip.Unmap())
			}
		}
		approved := pe.Properties.PrivateLinkServiceConnectionState.Status == netpolicy.StatusApproved
		h.dns.SetPrivateEndpoint(pe.Name, addrs, approved)
		seen[pe.Name] = true
	}
	for name := range h.dnsEndpoints {
		if !seen[name] {
			h.dns.SetPrivateEndpoint(name, nil, false)
		}
	}
	h.dnsEndpoints = seen
}
