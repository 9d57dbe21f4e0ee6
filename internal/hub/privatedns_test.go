package hub_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/dnszone"
	"github.com/moat-iot/moat/internal/netpolicy"
)

// TestPrivateEndpointDNS: approving a private endpoint registers its address
// in the privatelink zone (Azure's DNS zone group), so clients in the linked
// network resolve the hub to it; rejecting withdraws it; public clients always
// get the public answer.
func TestPrivateEndpointDNS(t *testing.T) {
	dnsAddr := "127.0.0.41:" + itoa(freeTCPPort(t))
	loop, off := "127.0.0.41:0", ""
	cfg := &config.Config{
		Properties: config.Properties{
			HostName: "hub.plant9.example",
			PrivateEndpointConnections: []netpolicy.PrivateEndpointConnection{{
				Name: "pe1",
				Properties: netpolicy.PrivateEndpointConnectionProperties{
					PrivateEndpoint:                   netpolicy.PrivateEndpoint{IPAddresses: []string{"127.0.0.44"}},
					PrivateLinkServiceConnectionState: netpolicy.ConnectionState{Status: netpolicy.StatusApproved},
				},
			}},
		},
		Moat: config.Moat{DataDir: t.TempDir(), Listeners: config.Listeners{MQTT: &loop, HTTPS: &loop, Metrics: &off},
			CertificateNames: []string{"127.0.0.41"},
			DNS: dnszone.Config{Listen: dnsAddr, PublicAddresses: []netip.Addr{netip.MustParseAddr("198.51.100.9")},
				PrivateNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.42/32")}, Upstream: []string{}}},
	}
	h, _, _ := runHub(t, cfg)

	ask := func(from string) []string {
		t.Helper()
		c := &dns.Client{Net: "udp", Timeout: 2 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(from)}}}
		m := new(dns.Msg)
		m.SetQuestion("hub.plant9.example.", dns.TypeA)
		r, _, err := c.Exchange(m, dnsAddr)
		if err != nil {
			t.Fatalf("query from %s: %v", from, err)
		}
		var out []string
		for _, rr := range r.Answer {
			switch v := rr.(type) {
			case *dns.A:
				out = append(out, v.A.String())
			case *dns.CNAME:
				out = append(out, v.Target)
			}
		}
		return out
	}
	if got := ask("127.0.0.42"); len(got) != 2 || got[0] != "hub.privatelink.plant9.example." || got[1] != "127.0.0.44" {
		t.Fatalf("private client: %v", got)
	}
	if got := ask("127.0.0.43"); len(got) != 2 || got[1] != "198.51.100.9" {
		t.Fatalf("public client: %v", got)
	}
	if err := h.Network().Modify(func(p *netpolicy.Policy) error {
		p.PrivateEndpointConnections[0].Properties.PrivateLinkServiceConnectionState.Status = netpolicy.StatusRejected
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, a := range ask("127.0.0.42") {
		if a == "127.0.0.44" {
			t.Fatal("a rejected endpoint still resolves")
		}
	}
}
