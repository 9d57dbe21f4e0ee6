package dnszone

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

var (
	linkedSrc   = netip.MustParseAddr("127.0.0.2") // inside the privatelink zone's link
	unlinkedSrc = netip.MustParseAddr("127.0.0.3") // outside every link
	publicAddr  = netip.MustParseAddr("203.0.113.7")
	peAddr4     = netip.MustParseAddr("10.1.2.3")
	peAddr6     = netip.MustParseAddr("fd00::5")
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fakeUpstream is a resolver on loopback that knows a few names, counts the
// questions it gets, and sends big answers truncated over UDP.
type fakeUpstream struct {
	addr    string
	queries atomic.Int64
	marked  atomic.Int64 // questions carrying the loop option
}

func startUpstream(t *testing.T) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		u.queries.Add(1)
		if opt := r.IsEdns0(); opt != nil {
			for _, o := range opt.Option {
				if o.Option() == loopOption {
					u.marked.Add(1)
				}
			}
		}
		m := new(dns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		q := r.Question[0]
		switch {
		case q.Name == "www.upstream.test." && q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, rr(t, "www.upstream.test. 60 IN A 192.0.2.10"))
		case q.Name == "big.upstream.test." && q.Qtype == dns.TypeTXT:
			for i := range 10 {
				m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
					Txt: []string{strings.Repeat(string(rune('a'+i)), 200)}})
			}
		case q.Name == "fail.upstream.test.":
			m.Rcode = dns.RcodeServerFailure
		default:
			m.Rcode = dns.RcodeNameError
		}
		if _, tcp := w.RemoteAddr().(*net.TCPAddr); !tcp {
			size := dns.MinMsgSize
			if opt := r.IsEdns0(); opt != nil {
				size = int(opt.UDPSize())
			}
			// A small limit so that the big answer needs TCP.
			m.Truncate(min(size, 1000))
		}
		_ = w.WriteMsg(m)
	})
	pc, ln, err := listenBoth("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		up := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(up) }
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.ActivateAndServe() }()
		<-up
		t.Cleanup(func() { _ = srv.Shutdown(); <-done })
	}
	return u
}

func rr(t *testing.T, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type testServer struct {
	*Server
	addr string
}

func startServer(t *testing.T, opts Options) *testServer {
	t.Helper()
	if opts.Store == nil {
		st, err := OpenStore("")
		if err != nil {
			t.Fatal(err)
		}
		opts.Store = st
	}
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	if opts.Log == nil {
		opts.Log = quietLog()
	}
	if opts.Upstream == nil {
		opts.Upstream = []string{}
	}
	s, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return &testServer{Server: s, addr: s.Addr().String()}
}

// hubServer is the private-link setup: hub.example.com, public address
// 203.0.113.7, privatelink zone linked to 127.0.0.2/32, one approved
// endpoint with an IPv4 and an IPv6 address.
func hubServer(t *testing.T, mod func(*Options)) *testServer {
	t.Helper()
	opts := Options{
		HubName:         "hub.example.com",
		PublicAddrs:     []netip.Addr{publicAddr},
		PrivateNetworks: []netip.Prefix{netip.PrefixFrom(linkedSrc, 32)},
	}
	if mod != nil {
		mod(&opts)
	}
	s := startServer(t, opts)
	s.SetPrivateEndpoint("pe1", []netip.Addr{peAddr4, peAddr6}, true)
	return s
}

type q struct {
	name  string
	qtype uint16
	src   netip.Addr
	tcp   bool
	edns  uint16 // 0: no OPT
	rd    bool
}

func (s *testServer) ask(t *testing.T, x q) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(x.name), x.qtype)
	m.RecursionDesired = x.rd
	if x.edns > 0 {
		m.SetEdns0(x.edns, false)
	}
	return exchange(t, s.addr, m, x.src, x.tcp)
}

func exchange(t *testing.T, server string, m *dns.Msg, src netip.Addr, tcp bool) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	if tcp {
		c.Net = "tcp"
	}
	if src.IsValid() {
		if tcp {
			c.Dialer = &net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 5 * time.Second}
		} else {
			c.Dialer = &net.Dialer{LocalAddr: &net.UDPAddr{IP: src.AsSlice()}, Timeout: 5 * time.Second}
		}
	}
	r, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("exchange %s %s from %s: %v", m.Question[0].Name, dns.TypeToString[m.Question[0].Qtype], src, err)
	}
	return r
}

// answers renders the answer section as "type value" strings.
func answers(m *dns.Msg) []string {
	var out []string
	for _, r := range m.Answer {
		switch r := r.(type) {
		case *dns.A:
			out = append(out, "A "+r.A.String())
		case *dns.AAAA:
			out = append(out, "AAAA "+r.AAAA.String())
		case *dns.CNAME:
			out = append(out, "CNAME "+r.Target)
		case *dns.TXT:
			out = append(out, "TXT "+strings.Join(r.Txt, ""))
		default:
			out = append(out, r.String())
		}
	}
	return out
}

func expect(t *testing.T, m *dns.Msg, rcode int, want ...string) {
	t.Helper()
	if m.Rcode != rcode {
		t.Fatalf("rcode %s, want %s (answer %v)", dns.RcodeToString[m.Rcode], dns.RcodeToString[rcode], answers(m))
	}
	if got := answers(m); !slices.Equal(got, want) {
		t.Fatalf("answer %q, want %q", got, want)
	}
}

func hasSOA(m *dns.Msg, zone string) bool {
	return len(m.Ns) == 1 && m.Ns[0].Header().Rrtype == dns.TypeSOA && m.Ns[0].Header().Name == zone && m.Ns[0].Header().Ttl <= negativeTTL
}

func TestViewsDependOnSource(t *testing.T) {
	s := hubServer(t, nil)
	cname := "CNAME hub.privatelink.example.com."

	for _, tcp := range []bool{false, true} {
		// Linked client: alias, then the private endpoint's address.
		m := s.ask(t, q{name: "hub.example.com", qtype: dns.TypeA, src: linkedSrc, tcp: tcp})
		expect(t, m, dns.RcodeSuccess, cname, "A "+peAddr4.String())
		if !m.Authoritative {
			t.Error("private answer without AA")
		}
		// Anyone else: the same alias, then the public address.
		m = s.ask(t, q{name: "hub.example.com", qtype: dns.TypeA, src: unlinkedSrc, tcp: tcp})
		expect(t, m, dns.RcodeSuccess, cname, "A "+publicAddr.String())
	}

	expect(t, s.ask(t, q{name: "HUB.Example.com", qtype: dns.TypeAAAA, src: linkedSrc}), dns.RcodeSuccess, cname, "AAAA "+peAddr6.String())
	// No public IPv6 address: NODATA, with the privatelink zone's SOA.
	m := s.ask(t, q{name: "hub.example.com", qtype: dns.TypeAAAA, src: unlinkedSrc})
	expect(t, m, dns.RcodeSuccess, cname)
	// The privatelink name asked directly.
	expect(t, s.ask(t, q{name: "hub.privatelink.example.com", qtype: dns.TypeA, src: unlinkedSrc}), dns.RcodeSuccess, "A "+publicAddr.String())
	expect(t, s.ask(t, q{name: "hub.privatelink.example.com", qtype: dns.TypeA, src: linkedSrc}), dns.RcodeSuccess, "A "+peAddr4.String())
	expect(t, s.ask(t, q{name: "hub.example.com", qtype: dns.TypeCNAME, src: linkedSrc}), dns.RcodeSuccess, cname)

	// Linked: a name missing from the private zone is NXDOMAIN with its SOA.
	m = s.ask(t, q{name: "other.privatelink.example.com", qtype: dns.TypeA, src: linkedSrc})
	expect(t, m, dns.RcodeNameError)
	if !hasSOA(m, "privatelink.example.com.") {
		t.Fatalf("NXDOMAIN authority %v, want the zone's SOA with the negative TTL", m.Ns)
	}
	// Unlinked, no upstream: not ours to answer.
	expect(t, s.ask(t, q{name: "other.privatelink.example.com", qtype: dns.TypeA, src: unlinkedSrc}), dns.RcodeRefused)

	// The CNAME-only question from the linked client never reached the
	// private zone: it counts as public.
	if got := counterValue(t, s.queries.WithLabelValues("private", "NOERROR")); got != 4 {
		t.Errorf("private NOERROR count %v, want 4", got)
	}
	if got := counterValue(t, s.queries.WithLabelValues("public", "NOERROR")); got != 5 {
		t.Errorf("public NOERROR count %v, want 5", got)
	}
	if got := counterValue(t, s.queries.WithLabelValues("private", "NXDOMAIN")); got != 1 {
		t.Errorf("private NXDOMAIN count %v, want 1", got)
	}
}

func TestZoneGroupFollowsApproval(t *testing.T) {
	s := hubServer(t, nil)
	z, err := s.Store().Zone("privatelink.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(z.Records) != 2 || z.Records[0].ManagedBy != "privateEndpoints/pe1" || z.Records[0].TTL != managedTTL {
		t.Fatalf("zone records %+v, want pe1's A and AAAA", z.Records)
	}
	// A second endpoint adds its address; the set is the union.
	s.SetPrivateEndpoint("pe2", []netip.Addr{netip.MustParseAddr("10.9.9.9")}, true)
	expect(t, s.ask(t, q{name: "hub.privatelink.example.com", qtype: dns.TypeA, src: linkedSrc}), dns.RcodeSuccess, "A 10.1.2.3", "A 10.9.9.9")
	// Records made by approval cannot be edited by hand.
	if err := s.Store().DeleteRecord("privatelink.example.com", "A", "hub"); err == nil {
		t.Fatal("deleted a managed record")
	}
	if err := s.Store().PutRecord("privatelink.example.com", Record{Name: "hub", Type: "CNAME", Values: []string{"x.example"}}); err == nil {
		t.Fatal("shadowed a managed record with a CNAME")
	}
	if err := s.Store().DeleteZone("privatelink.example.com"); err == nil {
		t.Fatal("deleted the zone holding endpoint records")
	}
	s.SetPrivateEndpoint("pe1", []netip.Addr{peAddr4, peAddr6}, false)
	s.SetPrivateEndpoint("pe2", nil, true)
	m := s.ask(t, q{name: "hub.example.com", qtype: dns.TypeA, src: linkedSrc})
	// As in Azure: a linked network whose zone lacks the record gets NXDOMAIN.
	expect(t, m, dns.RcodeNameError, "CNAME hub.privatelink.example.com.")
	if !hasSOA(m, "privatelink.example.com.") {
		t.Fatalf("authority %v", m.Ns)
	}
	// With Azure's NxDomainRedirect policy the linked client falls back to the public answer.
	z, _ = s.Store().Zone("privatelink.example.com")
	z.ResolutionPolicy = ResolutionNxDomainRedirect
	if _, err := s.Store().PutZone(z); err != nil {
		t.Fatal(err)
	}
	expect(t, s.ask(t, q{name: "hub.example.com", qtype: dns.TypeA, src: linkedSrc}), dns.RcodeSuccess, "CNAME hub.privatelink.example.com.", "A "+publicAddr.String())
}

func TestPrivateZoneRecords(t *testing.T) {
	up := startUpstream(t)
	s := startServer(t, Options{Upstream: []string{up.addr}})
	z, err := ParseZoneJSON([]byte(`{"name":"corp.example","links":["127.0.0.2/32"],"records":[
		{"name":"db","type":"A","ttl":30,"values":["10.0.0.9"]},
		{"name":"db","type":"AAAA","ttl":30,"values":["fd00::9"]},
		{"name":"alias","type":"CNAME","ttl":30,"values":["db.corp.example"]},
		{"name":"chain","type":"CNAME","ttl":30,"values":["alias.corp.example"]},
		{"name":"out","type":"CNAME","ttl":30,"values":["www.upstream.test"]},
		{"name":"loop1","type":"CNAME","ttl":30,"values":["loop2.corp.example"]},
		{"name":"loop2","type":"CNAME","ttl":30,"values":["loop1.corp.example"]},
		{"name":"x.deep","type":"TXT","ttl":30,"values":["quote \" back \\ slash"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Store().PutZone(z); err != nil {
		t.Fatal(err)
	}
	ask := func(name string, qt uint16) *dns.Msg {
		return s.ask(t, q{name: name, qtype: qt, src: linkedSrc, rd: true, edns: 1232})
	}
	expect(t, ask("db.corp.example", dns.TypeA), dns.RcodeSuccess, "A 10.0.0.9")
	expect(t, ask("chain.corp.example", dns.TypeAAAA), dns.RcodeSuccess, "CNAME alias.corp.example.", "CNAME db.corp.example.", "AAAA fd00::9")
	expect(t, ask("x.deep.corp.example", dns.TypeTXT), dns.RcodeSuccess, `TXT quote \" back \\ slash`) // miekg's presentation escapes
	wire := make([]byte, 512)
	n, err := dns.PackRR(ask("x.deep.corp.example", dns.TypeTXT).Answer[0], wire, 0, nil, false)
	if err != nil || !strings.Contains(string(wire[:n]), `quote " back \ slash`) {
		t.Fatalf("TXT wire form %q, %v", wire[:n], err)
	}
	// The CNAME target is outside every zone: the chain continues upstream.
	m := ask("out.corp.example", dns.TypeA)
	expect(t, m, dns.RcodeSuccess, "CNAME www.upstream.test.", "A 192.0.2.10")
	if m.Authoritative {
		t.Error("AA set on an answer completed upstream")
	}
	// An empty non-terminal exists: NODATA, not NXDOMAIN.
	m = ask("deep.corp.example", dns.TypeA)
	expect(t, m, dns.RcodeSuccess)
	if !hasSOA(m, "corp.example.") {
		t.Fatalf("NODATA authority %v", m.Ns)
	}
	m = ask("nope.corp.example", dns.TypeA)
	expect(t, m, dns.RcodeNameError)
	if !hasSOA(m, "corp.example.") || !m.Authoritative {
		t.Fatalf("NXDOMAIN: AA %v, authority %v", m.Authoritative, m.Ns)
	}
	expect(t, ask("db.corp.example", dns.TypeTXT), dns.RcodeSuccess)
	m = ask("corp.example", dns.TypeSOA)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].Header().Rrtype != dns.TypeSOA {
		t.Fatalf("apex SOA: %v", m)
	}
	expect(t, ask("loop1.corp.example", dns.TypeA), dns.RcodeServerFailure, "CNAME loop2.corp.example.", "CNAME loop1.corp.example.")

	// The same names from an unlinked client are not the zone's: they go upstream.
	before := up.queries.Load()
	m = s.ask(t, q{name: "db.corp.example", qtype: dns.TypeA, src: unlinkedSrc, rd: true})
	expect(t, m, dns.RcodeNameError)
	if up.queries.Load() != before+1 {
		t.Fatal("unlinked client's question was not forwarded")
	}
}

func TestPublicZone(t *testing.T) {
	s := startServer(t, Options{})
	for _, js := range []string{
		`{"name":"example.org","public":true,"records":[{"name":"www","type":"A","values":["192.0.2.80"]}]}`,
		`{"name":"example.org.private","links":["127.0.0.2/32"],"records":[]}`,
		`{"name":"in.example.org","links":["127.0.0.2/32"],"records":[{"name":"www","type":"A","values":["10.0.0.80"]}]}`,
	} {
		z, err := ParseZoneJSON([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Store().PutZone(z); err != nil {
			t.Fatal(err)
		}
	}
	expect(t, s.ask(t, q{name: "www.example.org", qtype: dns.TypeA, src: unlinkedSrc}), dns.RcodeSuccess, "A 192.0.2.80")
	expect(t, s.ask(t, q{name: "www.example.org", qtype: dns.TypeA, src: linkedSrc}), dns.RcodeSuccess, "A 192.0.2.80")
	expect(t, s.ask(t, q{name: "www.in.example.org", qtype: dns.TypeA, src: linkedSrc}), dns.RcodeSuccess, "A 10.0.0.80")
	// Unlinked: the private zone is invisible; the public parent answers.
	expect(t, s.ask(t, q{name: "www.in.example.org", qtype: dns.TypeA, src: unlinkedSrc}), dns.RcodeNameError)
}

func TestForwarding(t *testing.T) {
	up := startUpstream(t)
	s := startServer(t, Options{Upstream: []string{up.addr}})

	m := s.ask(t, q{name: "www.upstream.test", qtype: dns.TypeA, src: unlinkedSrc, rd: true})
	expect(t, m, dns.RcodeSuccess, "A 192.0.2.10")
	if m.Authoritative || !m.RecursionAvailable {
		t.Fatalf("forwarded answer: AA %v RA %v", m.Authoritative, m.RecursionAvailable)
	}
	if up.marked.Load() == 0 {
		t.Fatal("forwarded question lacks the loop marker")
	}
	expect(t, s.ask(t, q{name: "nothing.upstream.test", qtype: dns.TypeA, src: unlinkedSrc, rd: true}), dns.RcodeNameError)
	expect(t, s.ask(t, q{name: "fail.upstream.test", qtype: dns.TypeA, src: unlinkedSrc, rd: true}), dns.RcodeServerFailure)
	// Without RD nothing is forwarded.
	expect(t, s.ask(t, q{name: "www.upstream.test", qtype: dns.TypeA, src: unlinkedSrc}), dns.RcodeRefused)

	// The upstream truncates the big answer over UDP; the server retries over
	// TCP, then truncates for a UDP client, who retries over TCP too.
	m = s.ask(t, q{name: "big.upstream.test", qtype: dns.TypeTXT, src: unlinkedSrc, rd: true, edns: 1232})
	if !m.Truncated || m.Rcode != dns.RcodeSuccess {
		t.Fatalf("big answer over UDP: TC %v rcode %d", m.Truncated, m.Rcode)
	}
	m = s.ask(t, q{name: "big.upstream.test", qtype: dns.TypeTXT, src: unlinkedSrc, rd: true, tcp: true})
	if m.Truncated || len(m.Answer) != 10 {
		t.Fatalf("big answer over TCP: TC %v, %d records", m.Truncated, len(m.Answer))
	}
	if got := counterValue(t, s.queries.WithLabelValues("forwarded", "NOERROR")); got != 3 {
		t.Errorf("forwarded NOERROR count %v, want 3", got)
	}
}

func TestForwardingPolicy(t *testing.T) {
	up := startUpstream(t)
	// Only 127.0.0.2/32 may recurse.
	s := startServer(t, Options{Upstream: []string{up.addr}, ForwardFrom: []netip.Prefix{netip.PrefixFrom(linkedSrc, 32)}})
	expect(t, s.ask(t, q{name: "www.upstream.test", qtype: dns.TypeA, src: linkedSrc, rd: true}), dns.RcodeSuccess, "A 192.0.2.10")
	m := s.ask(t, q{name: "www.upstream.test", qtype: dns.TypeA, src: unlinkedSrc, rd: true})
	expect(t, m, dns.RcodeRefused)
	if m.RecursionAvailable {
		t.Error("RA offered to a client that may not recurse")
	}
}

func TestUpstreamTimeout(t *testing.T) {
	// A UDP socket that never answers.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	s := startServer(t, Options{Upstream: []string{pc.LocalAddr().String()}, Timeout: 200 * time.Millisecond})
	start := time.Now()
	expect(t, s.ask(t, q{name: "www.upstream.test", qtype: dns.TypeA, src: unlinkedSrc, rd: true}), dns.RcodeServerFailure)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("SERVFAIL after %v", d)
	}
	if got := counterValue(t, s.upstreamErrors.WithLabelValues(pc.LocalAddr().String())); got != 1 {
		t.Fatalf("upstream errors %v, want 1", got)
	}
}

func TestNoForwardingToSelf(t *testing.T) {
	// Pick a port, then point the server's upstream at its own address.
	probe, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.LocalAddr().String()
	probe.Close()
	s := startServer(t, Options{Listen: addr, Upstream: []string{addr}})
	if len(s.upstream) != 0 {
		t.Fatalf("upstream %v still lists the server itself", s.upstream)
	}
	expect(t, s.ask(t, q{name: "www.upstream.test", qtype: dns.TypeA, src: unlinkedSrc, rd: true}), dns.RcodeRefused)

	// A question carrying this server's own loop marker came back round.
	m := new(dns.Msg)
	m.SetQuestion("www.upstream.test.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_LOCAL{Code: loopOption, Data: s.id[:]})
	expect(t, exchange(t, s.addr, m, unlinkedSrc, false), dns.RcodeRefused)
}

func TestLargeAnswerNeedsTCP(t *testing.T) {
	s := startServer(t, Options{})
	var vals []string
	for i := range 8 {
		vals = append(vals, strings.Repeat(string(rune('a'+i)), 600))
	}
	z := Zone{Name: "big.example", Links: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Records: []Record{{Name: "t", Type: TypeTXT, TTL: 60, Values: vals}}}
	if _, err := s.Store().PutZone(z); err != nil {
		t.Fatal(err)
	}
	for _, size := range []uint16{0, 1232} {
		m := s.ask(t, q{name: "t.big.example", qtype: dns.TypeTXT, src: unlinkedSrc, edns: size})
		if !m.Truncated {
			t.Fatalf("UDP (EDNS %d) answer not truncated", size)
		}
		if b, _ := m.Pack(); len(b) > max(512, int(size)) {
			t.Fatalf("UDP answer of %d bytes exceeds %d", len(b), max(512, int(size)))
		}
	}
	m := s.ask(t, q{name: "t.big.example", qtype: dns.TypeTXT, src: unlinkedSrc, tcp: true})
	if m.Truncated || len(m.Answer) != len(vals) {
		t.Fatalf("TCP: TC %v, %d records", m.Truncated, len(m.Answer))
	}
	var got []string
	for _, r := range m.Answer {
		txt := r.(*dns.TXT)
		for _, part := range txt.Txt {
			if len(part) > 255 {
				t.Fatalf("character string of %d bytes", len(part))
			}
		}
		got = append(got, strings.Join(txt.Txt, ""))
	}
	slices.Sort(got)
	if !slices.Equal(got, vals) {
		t.Fatal("TXT values did not survive the round trip")
	}
}

func TestRefusedAndFormErr(t *testing.T) {
	s := hubServer(t, nil)
	for _, qt := range []uint16{dns.TypeANY, dns.TypeAXFR, dns.TypeIXFR} {
		expect(t, s.ask(t, q{name: "hub.example.com", qtype: qt, src: linkedSrc, tcp: qt != dns.TypeANY}), dns.RcodeRefused)
	}
	m := new(dns.Msg)
	m.SetQuestion("version.bind.", dns.TypeTXT)
	m.Question[0].Qclass = dns.ClassCHAOS
	expect(t, exchange(t, s.addr, m, unlinkedSrc, false), dns.RcodeRefused)

	m = new(dns.Msg)
	m.SetQuestion("hub.example.com.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().SetVersion(1)
	if r := exchange(t, s.addr, m, unlinkedSrc, false); r.Rcode != dns.RcodeBadVers {
		t.Fatalf("EDNS version 1: rcode %d, want BADVERS", r.Rcode)
	}

	m = new(dns.Msg)
	m.SetNotify("example.com.")
	if r := exchange(t, s.addr, m, unlinkedSrc, false); r.Rcode != dns.RcodeNotImplemented {
		t.Fatalf("NOTIFY: rcode %d, want NOTIMP", r.Rcode)
	}
}

func TestMalformedPackets(t *testing.T) {
	s := hubServer(t, nil)
	valid := new(dns.Msg)
	valid.SetQuestion("hub.example.com.", dns.TypeA)
	vb, _ := valid.Pack()
	twoQ := new(dns.Msg)
	twoQ.Question = []dns.Question{{Name: "a.", Qtype: 1, Qclass: 1}, {Name: "b.", Qtype: 1, Qclass: 1}}
	tb, _ := twoQ.Pack()
	zeroQ := append([]byte(nil), vb[:12]...)
	zeroQ[5] = 0

	cases := map[string][]byte{
		"empty":            {},
		"short header":     {0x12, 0x34, 0x01},
		"header only":      vb[:12],
		"cut question":     vb[:len(vb)-3],
		"garbage":          []byte("\xff\xfe\x00\x01hello, this is not DNS at all\x00\x00"),
		"pointer loop":     append(append([]byte(nil), vb[:12]...), 0xc0, 0x0c, 0, 1, 0, 1),
		"two questions":    tb,
		"zero questions":   zeroQ,
		"label too long":   append(append([]byte(nil), vb[:12]...), append([]byte{70}, []byte(strings.Repeat("a", 70))...)...),
		"response bit set": append([]byte{vb[0], vb[1], 0x80 | vb[2]}, vb[3:]...),
	}
	conn, err := (&net.Dialer{LocalAddr: &net.UDPAddr{IP: unlinkedSrc.AsSlice()}}).Dial("udp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mustFormErr := map[string]bool{"header only": true, "cut question": true, "pointer loop": true,
		"two questions": true, "zero questions": true, "label too long": true}
	buf := make([]byte, 65535)
	for name, pkt := range cases {
		if _, err := conn.Write(pkt); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		// Either FORMERR (or NOTIMP) or silence; silence needs a deadline.
		_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := conn.Read(buf)
		if err != nil {
			if mustFormErr[name] {
				t.Fatalf("%s: no answer, want FORMERR", name)
			}
			continue
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:n]); err != nil {
			t.Fatalf("%s: unparseable answer: %v", name, err)
		}
		if r.Rcode != dns.RcodeFormatError && r.Rcode != dns.RcodeNotImplemented {
			t.Fatalf("%s: answered %s, want FORMERR or nothing", name, dns.RcodeToString[r.Rcode])
		}
	}
	// Still alive and answering.
	expect(t, s.ask(t, q{name: "hub.example.com", qtype: dns.TypeA, src: unlinkedSrc}), dns.RcodeSuccess, "CNAME hub.privatelink.example.com.", "A "+publicAddr.String())
}

func TestCloseByContextAndTwice(t *testing.T) {
	st, _ := OpenStore("")
	s, err := NewServer(Options{Listen: "127.0.0.1:0", Store: st, Upstream: []string{}, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr().String()
	cancel()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err == nil {
		t.Fatal("restarted a closed server")
	}
	// The port is free again.
	pc, ln, err := listenBoth(addr)
	if err != nil {
		t.Fatalf("port still bound after Close: %v", err)
	}
	pc.Close()
	ln.Close()
}

func TestResolvConfDefault(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/resolv.conf"
	if err := writeFileAtomic(path, []byte("nameserver 10.0.0.2\nnameserver fd00::53\noptions ndots:1\n")); err != nil {
		t.Fatal(err)
	}
	st, _ := OpenStore("")
	s, err := NewServer(Options{Store: st, ResolvConf: path, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.0.2:53", "[fd00::53]:53"}; !slices.Equal(s.upstream, want) {
		t.Fatalf("upstream %v, want %v", s.upstream, want)
	}
	s, err = NewServer(Options{Store: st, ResolvConf: dir + "/missing", Log: quietLog()})
	if err != nil || len(s.upstream) != 0 {
		t.Fatalf("missing resolv.conf: %v, %v", s.upstream, err)
	}
}

func TestNewServerHubNames(t *testing.T) {
	st, _ := OpenStore("")
	for _, h := range []string{"127.0.0.2", "localhost", ""} {
		s, err := NewServer(Options{HubName: h, Store: st, Upstream: []string{}})
		if err != nil || s.PrivateLinkZone() != "" {
			t.Fatalf("hub %q: zone %q, %v", h, s.PrivateLinkZone(), err)
		}
	}
	s, err := NewServer(Options{HubName: "hub.example.com", PrivateLinkName: "hub.privatelink.azure-devices.net", Store: st, Upstream: []string{}})
	if err != nil || s.PrivateLinkZone() != "privatelink.azure-devices.net" {
		t.Fatalf("zone %q, %v", s.PrivateLinkZone(), err)
	}
	if _, err := NewServer(Options{HubName: "hub.example.com", PrivateLinkName: "hub.local", Store: st, Upstream: []string{}}); err == nil {
		t.Fatal("a privatelink name with a one-label zone was accepted")
	}
	if _, err := NewServer(Options{Store: st, Upstream: []string{"resolver.example"}}); err == nil {
		t.Fatal("an upstream by name was accepted")
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
