package dnszone

import (
	"context"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// FuzzHandle feeds raw bytes through the same unpacking the server does and
// then to the handler, from a linked and an unlinked source: no input may
// panic, and every answer must pack.
func FuzzHandle(f *testing.F) {
	st, err := OpenStore("")
	if err != nil {
		f.Fatal(err)
	}
	s, err := NewServer(Options{
		HubName:         "hub.example.com",
		PublicAddrs:     []netip.Addr{publicAddr},
		PrivateNetworks: []netip.Prefix{netip.PrefixFrom(linkedSrc, 32)},
		Store:           st,
		Upstream:        []string{}, // nothing leaves the process
		Log:             quietLog(),
	})
	if err != nil {
		f.Fatal(err)
	}
	s.SetPrivateEndpoint("pe1", []netip.Addr{peAddr4, peAddr6}, true)
	z, err := ParseZoneJSON([]byte(`{"name":"corp.example","links":["127.0.0.2/32"],"resolutionPolicy":"NxDomainRedirect","records":[
		{"name":"a","type":"CNAME","values":["b.corp.example"]},{"name":"b","type":"CNAME","values":["hub.example.com"]},
		{"name":"t","type":"TXT","values":["x\\y"]},{"name":"x.y","type":"A","values":["10.0.0.1"]}]}`))
	if err != nil {
		f.Fatal(err)
	}
	if _, err := st.PutZone(z); err != nil {
		f.Fatal(err)
	}
	for _, name := range []string{"hub.example.com.", "a.corp.example.", "y.corp.example.", "t.corp.example.", "\\046.", "."} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT, dns.TypeANY} {
			m := new(dns.Msg)
			m.SetQuestion(name, qt)
			if qt == dns.TypeAAAA {
				m.SetEdns0(4096, true)
			}
			b, err := m.Pack()
			if err == nil {
				f.Add(b, true)
			}
		}
	}
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1}, false)
	f.Fuzz(func(t *testing.T, b []byte, linked bool) {
		req := new(dns.Msg)
		if err := req.Unpack(b); err != nil {
			return
		}
		src := unlinkedSrc
		if linked {
			src = linkedSrc
		}
		for _, tcp := range []bool{false, true} {
			resp := s.respond(context.Background(), req, src, tcp)
			if resp == nil {
				continue
			}
			out, err := resp.Pack()
			if err != nil {
				t.Fatalf("answer does not pack: %v\n%v", err, resp)
			}
			if !tcp && len(out) > udpPayload {
				t.Fatalf("UDP answer of %d bytes", len(out))
			}
		}
	})
}

// TestDig asks with dig from two source addresses, as an operator would.
func TestDig(t *testing.T) {
	dig, err := exec.LookPath("dig")
	if err != nil {
		t.Skip("dig not installed (Debian: bind9-dnsutils)")
	}
	s := hubServer(t, nil)
	_, port, _ := strings.Cut(s.addr, ":")
	run := func(src string, args ...string) []string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, dig, append([]string{"-b", src, "-p", port, "@127.0.0.1", "+short", "+tries=1", "+time=2"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		return strings.Fields(string(out))
	}
	private := run("127.0.0.2", "hub.example.com", "A")
	public := run("127.0.0.3", "hub.example.com", "A")
	if want := []string{"hub.privatelink.example.com.", peAddr4.String()}; !slices.Equal(private, want) {
		t.Errorf("dig -b 127.0.0.2: %q, want %q", private, want)
	}
	if want := []string{"hub.privatelink.example.com.", publicAddr.String()}; !slices.Equal(public, want) {
		t.Errorf("dig -b 127.0.0.3: %q, want %q", public, want)
	}
	if got := run("127.0.0.2", "hub.example.com", "AAAA"); !slices.Contains(got, peAddr6.String()) {
		t.Errorf("dig AAAA from the private network: %q", got)
	}
	// dig over TCP too.
	if got := run("127.0.0.3", "+tcp", "hub.privatelink.example.com", "A"); !slices.Equal(got, []string{publicAddr.String()}) {
		t.Errorf("dig +tcp: %q", got)
	}
}
