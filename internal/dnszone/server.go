package dnszone

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configure a Server.
type Options struct {
	// Listen is the UDP and TCP address ("10.0.0.5:53"); "" serves nothing,
	// Start then returns at once. Port 0 picks one port free for both.
	Listen string
	// HubName is the hub's public host name (hub.example.com). An IP address
	// or a one-label name disables the private-link names.
	HubName string
	// PrivateLinkName overrides the privatelink name of HubName (default:
	// PrivateLinkName(HubName)). Its zone is everything after the first label.
	PrivateLinkName string
	// PublicAddrs answer the privatelink name for clients outside the linked
	// networks; none gives those clients NODATA.
	PublicAddrs []netip.Addr
	// PrivateNetworks are always linked to the privatelink zone (more can be
	// linked through the API).
	PrivateNetworks []netip.Prefix
	// Upstream resolvers ("ip:port", or "ip" for port 53) for names outside
	// the zones. nil reads /etc/resolv.conf (ResolvConf); an empty, non-nil
	// slice forwards nothing and answers such names REFUSED.
	Upstream []string
	// ResolvConf is where nil Upstream is read from; default /etc/resolv.conf.
	ResolvConf string
	// ForwardFrom are the clients whose questions may be forwarded, besides
	// those inside some zone's links. nil means loopback and the private
	// ranges (RFC 1918, RFC 6598, ULA, link-local); the server is never an open
	// resolver on a public address.
	ForwardFrom []netip.Prefix
	// Timeout bounds one upstream exchange; default 2s.
	Timeout time.Duration
	// Store holds the zones; required.
	Store *Store
	Log   *slog.Logger
}

// Defaults.
const (
	DefaultTimeout = 2 * time.Second
	// maxChain bounds CNAME chasing, which also ends alias loops.
	maxChain = 8
	// udpPayload is the EDNS payload this server advertises and uses
	// upstream: the DNS flag day 2020 size that avoids IP fragmentation.
	udpPayload = 1232
	// readBuffer bounds what one UDP query may be; longer ones fail to
	// unpack and are answered FORMERR.
	readBuffer = 4096
	// synthTTL is the TTL of the hub's public names.
	synthTTL = 300
	// loopOption is the EDNS0 local option code carrying this server's id
	// on forwarded questions, to spot a question that comes back round.
	loopOption = 65413
)

// defaultForwardFrom are the networks allowed to recurse when ForwardFrom is nil.
var defaultForwardFrom = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("fc00::/7"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("169.254.0.0/16"),
}

// Server is the DNS server.
type Server struct {
	opts    Options
	store   *Store
	log     *slog.Logger
	id      [8]byte
	timeout time.Duration

	hubFQDN, plFQDN string // "" when the hub has no private-link names
	plZone, plLabel string
	public4         []netip.Addr
	public6         []netip.Addr

	upstream []string // after removing ourselves
	forward  []netip.Prefix

	queries        *prometheus.CounterVec
	upstreamErrors *prometheus.CounterVec

	mu       sync.Mutex
	udp, tcp *dns.Server
	udpAddr  net.Addr
	cancel   context.CancelFunc
	ctx      context.Context
	wg       sync.WaitGroup
	closed   bool
}

// NewServer checks opts and prepares a server; the hub's privatelink zone is
// created in the store if missing.
func NewServer(opts Options) (*Server, error) {
	if opts.Store == nil {
		return nil, errors.New("dns server: no zone store")
	}
	s := &Server{opts: opts, store: opts.Store, log: opts.Log, timeout: opts.Timeout}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	_, _ = rand.Read(s.id[:])
	s.ctx, s.cancel = context.WithCancel(context.Background())

	if h := strings.ToLower(strings.TrimSuffix(opts.HubName, ".")); h != "" && net.ParseIP(h) == nil && strings.Contains(h, ".") {
		hub, err := CanonicalName(h)
		if err != nil {
			return nil, fmt.Errorf("dns server: hub name: %w", err)
		}
		pl := opts.PrivateLinkName
		if pl == "" {
			pl = PrivateLinkName(hub)
		}
		if pl, err = CanonicalName(pl); err != nil {
			return nil, fmt.Errorf("dns server: privatelink name: %w", err)
		}
		label, zone, _ := strings.Cut(pl, ".")
		if !strings.Contains(zone, ".") {
			return nil, fmt.Errorf("dns server: privatelink name %q needs a zone of two labels or more after its first label", pl)
		}
		if pl == hub {
			return nil, fmt.Errorf("dns server: privatelink name %q equals the hub name", pl)
		}
		s.hubFQDN, s.plFQDN, s.plZone, s.plLabel = dns.Fqdn(hub), dns.Fqdn(pl), zone, label
		if err := s.store.EnsureZone(zone, opts.PrivateNetworks); err != nil {
			return nil, fmt.Errorf("dns server: privatelink zone: %w", err)
		}
	}
	for _, a := range opts.PublicAddrs {
		switch a = a.Unmap(); {
		case !a.IsValid():
		case a.Is4():
			s.public4 = append(s.public4, a)
		default:
			s.public6 = append(s.public6, a)
		}
	}

	up := opts.Upstream
	if up == nil {
		up = resolvConf(opts.ResolvConf, s.log)
	}
	for _, u := range up {
		ap, err := ParseUpstream(u)
		if err != nil {
			return nil, fmt.Errorf("dns server: %w", err)
		}
		s.upstream = append(s.upstream, ap.String())
	}
	s.forward = opts.ForwardFrom
	if s.forward == nil {
		s.forward = defaultForwardFrom
	}

	s.queries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_dns_queries_total",
		Help: "DNS questions answered, by view (private, public, forwarded, refused, none) and response code.",
	}, []string{"view", "rcode"})
	s.upstreamErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_dns_upstream_errors_total",
		Help: "Failed exchanges with an upstream resolver (timeouts, network errors, SERVFAIL/REFUSED answers).",
	}, []string{"upstream"})
	return s, nil
}

// ParseUpstream parses an upstream resolver, "ip" or "ip:port" ("[v6]:port").
// Names are refused: reaching the resolver must not need a resolver.
func ParseUpstream(s string) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a.Unmap(), 53), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("upstream %q is not an IP address with an optional port", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

func resolvConf(path string, log *slog.Logger) []string {
	if path == "" {
		path = "/etc/resolv.conf"
	}
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		log.Warn("no upstream DNS resolver: names outside the zones will be refused", "resolvConf", path, "error", err)
		return nil
	}
	var out []string
	for _, h := range cc.Servers {
		if a, err := netip.ParseAddr(h); err == nil && a.Zone() == "" {
			out = append(out, netip.AddrPortFrom(a.Unmap(), uint16(atoiOr(cc.Port, 53))).String())
		}
	}
	return out
}

func atoiOr(s string, def int) int {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65536 {
		return n
	}
	return def
}

// Collectors are the server's Prometheus metrics.
func (s *Server) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.queries, s.upstreamErrors}
}

// Store returns the zones the server answers from.
func (s *Server) Store() *Store { return s.store }

// PrivateLinkZone is the zone the private endpoints' records go to ("" when
// the hub name has no privatelink form).
func (s *Server) PrivateLinkZone() string { return s.plZone }

// SetPrivateEndpoint is the private DNS zone group: an approved endpoint's
// addresses join the A/AAAA record sets of the hub's privatelink name, and
// leave them when the endpoint is no longer approved (or has no addresses).
// Several approved endpoints add up. The records live in memory: the caller,
// which persists endpoints, replays the approved ones at start.
func (s *Server) SetPrivateEndpoint(name string, addrs []netip.Addr, approved bool) {
	if s.plZone == "" {
		s.log.Warn("private endpoint not registered in DNS: the hub name has no privatelink form", "endpoint", name)
		return
	}
	var valid []netip.Addr
	if approved {
		for _, a := range addrs {
			if a = a.Unmap(); a.IsValid() && a.Zone() == "" && !slices.Contains(valid, a) {
				valid = append(valid, a)
			}
		}
	}
	if err := s.store.setEndpoint(name, s.plZone, s.plLabel, valid); err != nil {
		s.log.Error("private endpoint DNS records", "endpoint", name, "error", err)
		return
	}
	s.log.Info("private endpoint DNS records", "endpoint", name, "name", strings.TrimSuffix(s.plFQDN, "."), "addresses", valid)
}

// Start binds UDP and TCP on Options.Listen and serves until ctx ends or
// Close is called. It returns once both listeners accept.
func (s *Server) Start(ctx context.Context) error {
	if s.opts.Listen == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.udp != nil {
		return errors.New("dns server: already started or closed")
	}
	pc, ln, err := listenBoth(s.opts.Listen)
	if err != nil {
		return fmt.Errorf("dns server: %w", err)
	}
	s.dropSelf(pc.LocalAddr().(*net.UDPAddr).AddrPort())

	h := dns.HandlerFunc(s.serveDNS)
	udpUp, tcpUp := make(chan struct{}), make(chan struct{})
	s.udp = &dns.Server{PacketConn: pc, Handler: h, UDPSize: readBuffer, MsgAcceptFunc: acceptQuery,
		NotifyStartedFunc: func() { close(udpUp) }}
	s.tcp = &dns.Server{Listener: ln, Handler: h, MsgAcceptFunc: acceptQuery, MaxTCPQueries: 256,
		ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
		IdleTimeout:       func() time.Duration { return 8 * time.Second },
		NotifyStartedFunc: func() { close(tcpUp) }}
	s.udpAddr = pc.LocalAddr()
	errc := make(chan error, 2)
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.ActivateAndServe(); err != nil && !errors.Is(err, net.ErrClosed) {
				errc <- err
			}
		}()
	}
	for _, up := range []chan struct{}{udpUp, tcpUp} {
		select {
		case <-up:
		case err := <-errc:
			// The goroutines do not take s.mu: waiting for them here is safe.
			pc.Close()
			ln.Close()
			s.wg.Wait()
			s.udp, s.tcp, s.udpAddr = nil, nil, nil
			return fmt.Errorf("dns server: %w", err)
		}
	}
	// The server owns this goroutine: shutdown ends it, Close waits for it.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-ctx.Done():
			s.shutdown()
		case <-s.ctx.Done():
		}
	}()
	s.log.Info("dns server listening", "addr", s.udpAddr.String(), "hubName", strings.TrimSuffix(s.hubFQDN, "."),
		"privateLinkName", strings.TrimSuffix(s.plFQDN, "."), "upstream", s.upstream)
	return nil
}

// Addr is the bound address (UDP and TCP share it), nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.udpAddr
}

// Close stops the listeners, cancels forwarded questions in flight and waits
// for the server's goroutines.
func (s *Server) Close() error {
	err := s.shutdown()
	s.wg.Wait()
	return err
}

// shutdown stops the listeners without waiting for the server's goroutines;
// only the first call does anything.
func (s *Server) shutdown() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	udp, tcp := s.udp, s.tcp
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	for _, srv := range []*dns.Server{udp, tcp} {
		if srv != nil {
			if err := srv.ShutdownContext(ctx); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dns server: close: %w", err)
	}
	return nil
}

// listenBoth binds UDP and TCP on one address; with port 0 it retries until
// the port the UDP socket got is free for TCP too, since clients fall back to
// TCP on the same port.
func listenBoth(addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen address %q: %w", addr, err)
	}
	for try := 0; ; try++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listen udp %s: %w", addr, err)
		}
		p := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if port != "0" || try == 20 {
			return nil, nil, fmt.Errorf("listen tcp %s: %w", addr, err)
		}
	}
}

// dropSelf removes upstreams that are this server, which would loop.
func (s *Server) dropSelf(bound netip.AddrPort) {
	self := func(u netip.AddrPort) bool {
		if u.Port() != bound.Port() {
			return false
		}
		b := bound.Addr().Unmap()
		if u.Addr() == b {
			return true
		}
		if !b.IsUnspecified() {
			return false
		}
		if u.Addr().IsLoopback() || u.Addr().IsUnspecified() {
			return true
		}
		addrs, _ := net.InterfaceAddrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ia, ok := netip.AddrFromSlice(n.IP); ok && ia.Unmap() == u.Addr() {
					return true
				}
			}
		}
		return false
	}
	s.upstream = slices.DeleteFunc(s.upstream, func(u string) bool {
		ap, err := netip.ParseAddrPort(u)
		if err == nil && self(ap) {
			s.log.Warn("dns upstream is this server; not forwarding to it", "upstream", u)
			return true
		}
		return false
	})
}

// acceptQuery lets only plain queries through: updates and NOTIFY are not
// implemented, and a query carries one question and at most an OPT record.
func acceptQuery(dh dns.Header) dns.MsgAcceptAction {
	if dh.Bits&(1<<15) != 0 { // a response: answering could start a ping-pong
		return dns.MsgIgnore
	}
	if op := int(dh.Bits>>11) & 0xF; op != dns.OpcodeQuery {
		return dns.MsgRejectNotImplemented
	}
	if dh.Qdcount != 1 || dh.Ancount != 0 || dh.Nscount != 0 || dh.Arcount > 2 {
		return dns.MsgReject
	}
	return dns.MsgAccept
}

func (s *Server) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	src, tcp := remote(w.RemoteAddr())
	if resp := s.respond(s.ctx, req, src, tcp); resp != nil {
		if err := w.WriteMsg(resp); err != nil {
			s.log.Debug("dns answer not sent", "client", src, "error", err)
		}
	}
}

func remote(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap(), false
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// respond answers one query from src; nil means send nothing.
func (s *Server) respond(ctx context.Context, req *dns.Msg, src netip.Addr, tcp bool) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Compress = true
	view := "none"
	defer func() { s.queries.WithLabelValues(view, rcodeName(m.Rcode)).Inc() }()

	if req.Response {
		return nil
	}
	if req.Opcode != dns.OpcodeQuery {
		m.Rcode = dns.RcodeNotImplemented
		return m
	}
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m
	}
	size := dns.MinMsgSize
	opt := req.IsEdns0()
	if opt != nil {
		size = min(max(int(opt.UDPSize()), dns.MinMsgSize), udpPayload)
		m.SetEdns0(udpPayload, false)
		if opt.Version() != 0 {
			m.Rcode = dns.RcodeBadVers
			return m
		}
		for _, o := range opt.Option {
			if l, ok := o.(*dns.EDNS0_LOCAL); ok && l.Code == loopOption && string(l.Data) == string(s.id[:]) {
				s.log.Warn("dns forwarding loop: a question this server forwarded came back", "client", src, "name", req.Question[0].Name)
				view = "refused"
				m.Rcode = dns.RcodeRefused
				return m
			}
		}
	}
	q := req.Question[0]
	ix := s.store.index()
	mayForward := len(s.upstream) > 0 && (containsAddr(s.forward, src) || ix.linkedAny(src))
	m.RecursionAvailable = mayForward
	switch {
	case q.Qclass != dns.ClassINET:
		view = "refused"
		m.Rcode = dns.RcodeRefused
	case q.Qtype == dns.TypeANY || q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR:
		view = "refused"
		m.Rcode = dns.RcodeRefused
	default:
		a := s.resolve(ctx, ix, strings.ToLower(dns.Fqdn(q.Name)), q.Qtype, src, mayForward && req.RecursionDesired)
		view = a.view
		m.Rcode = a.rcode
		m.Authoritative = a.authoritative
		m.Answer, m.Ns = a.answer, a.ns
	}
	if !tcp {
		m.Truncate(size)
	} else {
		m.Truncate(dns.MaxMsgSize)
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("dns query", "client", src, "tcp", tcp, "name", q.Name, "type", dns.TypeToString[q.Qtype], "view", view, "rcode", rcodeName(m.Rcode))
	}
	return m
}

func rcodeName(rc int) string {
	if n, ok := dns.RcodeToString[rc]; ok {
		return n
	}
	return strconv.Itoa(rc)
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

type answer struct {
	view          string
	rcode         int
	authoritative bool
	answer, ns    []dns.RR
}

// resolve answers name/qtype for a client at src, following CNAMEs through
// the same view, so a linked client asking the hub's public name gets the
// public alias and then the private address.
func (s *Server) resolve(ctx context.Context, ix *index, name string, qtype uint16, src netip.Addr, mayForward bool) answer {
	a := answer{view: "public", rcode: dns.RcodeSuccess, authoritative: true}
	seen := map[string]bool{}
	skipPrivate := false
	for hop := 0; hop < maxChain; hop++ {
		if seen[name] && !skipPrivate {
			a.rcode = dns.RcodeServerFailure // alias loop
			return a
		}
		seen[name] = true
		var (
			rrs    []dns.RR
			target string
			st     status
			zi     *zoneIndex
		)
		if !skipPrivate {
			zi = ix.findPrivate(name, src)
		}
		switch {
		case zi != nil:
			a.view = "private"
			rrs, target, st = zi.lookup(name, qtype)
			if st == nxDomain && zi.redirect {
				skipPrivate = true
				hop--
				continue
			}
		case name == s.hubFQDN && s.hubFQDN != "":
			rrs = []dns.RR{&dns.CNAME{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: synthTTL}, Target: s.plFQDN}}
			if qtype != dns.TypeCNAME {
				target = s.plFQDN
			}
		case name == s.plFQDN && s.plFQDN != "":
			rrs, st = s.publicAddrs(name, qtype), found
			if len(rrs) == 0 {
				st = noData
				zi = ix.zones[dns.Fqdn(s.plZone)] // its SOA for the negative answer
			}
		default:
			zi = ix.findPublic(name)
			if zi != nil {
				rrs, target, st = zi.lookup(name, qtype)
				break
			}
			if hop == 0 && !mayForward {
				a.view, a.rcode, a.authoritative = "refused", dns.RcodeRefused, false
				return a
			}
			if !mayForward {
				return a // the chain so far; the client resolves the rest
			}
			if hop == 0 {
				a.view = "forwarded"
			}
			r, err := s.forwardQuery(ctx, name, qtype)
			a.authoritative = false
			if err != nil {
				a.rcode = dns.RcodeServerFailure
				return a
			}
			a.answer = append(a.answer, r.Answer...)
			a.ns, a.rcode = r.Ns, r.Rcode
			return a
		}
		skipPrivate = false
		a.answer = append(a.answer, rrs...)
		if target == "" {
			switch st {
			case nxDomain:
				a.rcode = dns.RcodeNameError
				fallthrough
			case noData:
				if zi != nil {
					a.ns = []dns.RR{zi.negative()}
				}
			}
			return a
		}
		name = target
	}
	return a
}

func (s *Server) publicAddrs(name string, qtype uint16) []dns.RR {
	var out []dns.RR
	hdr := dns.RR_Header{Name: name, Class: dns.ClassINET, Ttl: synthTTL}
	switch qtype {
	case dns.TypeA:
		hdr.Rrtype = dns.TypeA
		for _, a := range s.public4 {
			out = append(out, &dns.A{Hdr: hdr, A: a.AsSlice()})
		}
	case dns.TypeAAAA:
		hdr.Rrtype = dns.TypeAAAA
		for _, a := range s.public6 {
			out = append(out, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	return out
}

// forwardQuery asks the upstreams in turn, over UDP and then TCP when the
// answer is truncated; a SERVFAIL or REFUSED moves on to the next one.
func (s *Server) forwardQuery(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.RecursionDesired = true
	q.SetEdns0(udpPayload, false)
	opt := q.IsEdns0()
	opt.Option = append(opt.Option, &dns.EDNS0_LOCAL{Code: loopOption, Data: s.id[:]})
	var last *dns.Msg
	var lastErr error
	for _, up := range s.upstream {
		c := &dns.Client{Net: "udp", Timeout: s.timeout, UDPSize: udpPayload}
		r, _, err := c.ExchangeContext(ctx, q, up)
		if err == nil && r.Truncated {
			c.Net = "tcp"
			r, _, err = c.ExchangeContext(ctx, q, up)
		}
		if err != nil {
			s.upstreamErrors.WithLabelValues(up).Inc()
			s.log.Debug("dns upstream failed", "upstream", up, "name", name, "error", err)
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if r.Rcode == dns.RcodeServerFailure || r.Rcode == dns.RcodeRefused {
			s.upstreamErrors.WithLabelValues(up).Inc()
			last = r
			continue
		}
		return r, nil
	}
	if last != nil {
		return last, nil
	}
	if lastErr == nil {
		lastErr = errors.New("no upstream resolver")
	}
	return nil, fmt.Errorf("forward %s: %w", name, lastErr)
}
