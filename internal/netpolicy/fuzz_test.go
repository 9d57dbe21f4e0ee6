package netpolicy

import (
	"net/netip"
	"testing"
)

func FuzzParseIPMask(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "1.2.3.4", "::1", "2001:db8::/32", "::ffff:1.2.3.4/120", "fe80::1%eth0", "", "/", "1.2.3.4/", "300.1.1.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseIPMask(s)
		if err != nil {
			return
		}
		if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			t.Fatalf("ParseIPMask(%q) = %v: not a valid, masked, unmapped prefix", s, p)
		}
		// Parsing what we produced gives the same prefix.
		if q, err := ParseIPMask(p.String()); err != nil || q != p {
			t.Fatalf("round trip of %v: %v, %v", p, q, err)
		}
	})
}

func FuzzDecide(f *testing.F) {
	f.Add("10.0.0.0/8", "Deny", "Accept", "10.9.9.9", true, "10.0.0.1:443", "10.1.2.3:5000", "Approved", false)
	f.Add("::/0", "Allow", "Reject", "fd00::1", false, "[fd00::1]:443", "[::ffff:10.0.0.1]:1", "Pending", true)
	f.Add("bogus", "Maybe", "x", "1.1.1.1", true, "127.0.0.1:1", "127.0.0.1:2", "Rejected", true)
	f.Fuzz(func(t *testing.T, mask, def, classicAction, peAddr string, public bool, local, remote, status string, classic bool) {
		p := Policy{PrivateEndpointConnections: []PrivateEndpointConnection{pe("pe", status, peAddr)}}
		if !public {
			p.PublicNetworkAccess = Disabled
		}
		if classic {
			p.IPFilterRules = []IPFilterRule{{FilterName: "c", Action: classicAction, IPMask: mask}}
		} else {
			p.NetworkRuleSets = &NetworkRuleSets{DefaultAction: def, IPRules: []IPRule{{FilterName: "r", Action: "Allow", IPMask: mask}}}
		}
		d, err := p.compile(true)
		if err != nil {
			return
		}
		la, _ := netip.ParseAddrPort(local)
		ra, _ := netip.ParseAddrPort(remote)
		got := d.Decide("l", la, ra)
		if got.Rule == "" || got.Endpoint == "" {
			t.Fatalf("decision without endpoint or rule: %+v", got)
		}
		peIP, _ := netip.ParseAddr(peAddr)
		isPrivate := la.Addr().Unmap().WithZone("") == peIP.Unmap()
		if isPrivate {
			if got.Endpoint != "pe" || got.Allowed != (status == StatusApproved) {
				t.Fatalf("private endpoint traffic decided %+v (status %q)", got, status)
			}
			return
		}
		if got.Endpoint != EndpointPublic {
			t.Fatalf("public traffic attributed to %q", got.Endpoint)
		}
		localAdmin := la.Addr().Unmap().IsLoopback() && ra.Addr().Unmap().IsLoopback()
		if !public && got.Allowed && !localAdmin {
			t.Fatalf("public access disabled but admitted: %+v", got)
		}
		if !classic && public && def == ActionDeny && got.Allowed && !localAdmin {
			pfx, _ := ParseIPMask(mask)
			if !pfx.Contains(ra.Addr().Unmap().WithZone("")) {
				t.Fatalf("Deny admitted %v outside %v: %+v", ra, pfx, got)
			}
		}
	})
}
