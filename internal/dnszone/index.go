package dnszone

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// index is the immutable serving form of all zones; a new one replaces it on
// every change, so queries never wait for the API.
type index struct {
	zones map[string]*zoneIndex // by fqdn ("privatelink.example.com.")
	links []netip.Prefix        // every zone's links
}

type zoneIndex struct {
	fqdn     string
	links    []netip.Prefix
	public   bool
	redirect bool // NxDomainRedirect
	soa      *dns.SOA
	rrs      map[string]map[uint16][]dns.RR // owner fqdn → type → set
	// ents are names that exist only because names below them do (empty
	// non-terminals): they answer NODATA, not NXDOMAIN.
	ents map[string]bool
}

// negativeTTL is the SOA minimum, the time resolvers cache a "no such name";
// Azure Private DNS uses 10 seconds too, so a newly approved endpoint is seen
// quickly.
const negativeTTL = 10

func buildIndex(zones []Zone) (*index, error) {
	serial := uint32(time.Now().Unix())
	ix := &index{zones: make(map[string]*zoneIndex, len(zones))}
	for _, z := range zones {
		zi, err := buildZone(z, serial)
		if err != nil {
			return nil, fmt.Errorf("zone %s: %w", z.Name, err)
		}
		ix.zones[zi.fqdn] = zi
		ix.links = append(ix.links, zi.links...)
	}
	return ix, nil
}

func buildZone(z Zone, serial uint32) (*zoneIndex, error) {
	fqdn := dns.Fqdn(z.Name)
	zi := &zoneIndex{
		fqdn:     fqdn,
		links:    z.Links,
		public:   z.Public,
		redirect: z.ResolutionPolicy == ResolutionNxDomainRedirect,
		rrs:      map[string]map[uint16][]dns.RR{},
		ents:     map[string]bool{},
	}
	zi.soa = &dns.SOA{
		Hdr:     dns.RR_Header{Name: fqdn, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 3600},
		Ns:      "ns." + fqdn,
		Mbox:    "hostmaster." + fqdn,
		Serial:  serial,
		Refresh: 3600,
		Retry:   300,
		Expire:  2419200,
		Minttl:  negativeTTL,
	}
	zi.add(fqdn, zi.soa)
	for _, r := range z.Records {
		owner := dns.Fqdn(joinName(r.Name, z.Name))
		hdr := dns.RR_Header{Name: owner, Class: dns.ClassINET, Ttl: uint32(r.TTL)}
		for _, v := range r.Values {
			var rr dns.RR
			switch r.Type {
			case TypeA:
				h := hdr
				h.Rrtype = dns.TypeA
				rr = &dns.A{Hdr: h, A: netip.MustParseAddr(v).AsSlice()}
			case TypeAAAA:
				h := hdr
				h.Rrtype = dns.TypeAAAA
				rr = &dns.AAAA{Hdr: h, AAAA: netip.MustParseAddr(v).AsSlice()}
			case TypeCNAME:
				h := hdr
				h.Rrtype = dns.TypeCNAME
				rr = &dns.CNAME{Hdr: h, Target: dns.Fqdn(v)}
			case TypeTXT:
				h := hdr
				h.Rrtype = dns.TypeTXT
				rr = &dns.TXT{Hdr: h, Txt: txtStrings(v)}
			default:
				return nil, fmt.Errorf("record type %q", r.Type)
			}
			zi.add(owner, rr)
		}
		// Every name between the owner and the apex exists.
		for n := owner; n != fqdn; {
			i, end := dns.NextLabel(n, 0)
			if end {
				break
			}
			n = n[i:]
			if n == fqdn {
				break
			}
			zi.ents[n] = true
		}
	}
	return zi, nil
}

func (zi *zoneIndex) add(owner string, rr dns.RR) {
	m := zi.rrs[owner]
	if m == nil {
		m = map[uint16][]dns.RR{}
		zi.rrs[owner] = m
	}
	t := rr.Header().Rrtype
	m[t] = append(m[t], rr)
}

// txtStrings splits a value into DNS character strings of at most 255 bytes,
// escaped for miekg/dns, which reads backslashes in TXT data as escapes.
func txtStrings(v string) []string {
	var out []string
	for {
		n := min(len(v), 255)
		out = append(out, strings.ReplaceAll(v[:n], `\`, `\\`))
		v = v[n:]
		if v == "" {
			return out
		}
	}
}

// findPrivate returns the most specific zone holding qname that is linked
// to src, or nil.
func (ix *index) findPrivate(qname string, src netip.Addr) *zoneIndex {
	for n := qname; ; {
		if zi := ix.zones[n]; zi != nil && !zi.public && zi.linked(src) {
			return zi
		}
		i, end := dns.NextLabel(n, 0)
		if end {
			return nil
		}
		n = n[i:]
	}
}

// findPublic returns the most specific public zone holding qname, or nil.
func (ix *index) findPublic(qname string) *zoneIndex {
	for n := qname; ; {
		if zi := ix.zones[n]; zi != nil && zi.public {
			return zi
		}
		i, end := dns.NextLabel(n, 0)
		if end {
			return nil
		}
		n = n[i:]
	}
}

// linkedAny reports whether src is inside any zone's links.
func (ix *index) linkedAny(src netip.Addr) bool {
	for _, p := range ix.links {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

func (zi *zoneIndex) linked(src netip.Addr) bool {
	for _, p := range zi.links {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

type status int

const (
	found status = iota
	noData
	nxDomain
)

// lookup answers name and qtype from the zone. A CNAME at name answers every
// type but CNAME itself with the alias and its target.
func (zi *zoneIndex) lookup(name string, qtype uint16) (rrs []dns.RR, target string, st status) {
	sets := zi.rrs[name]
	if sets == nil {
		if zi.ents[name] {
			return nil, "", noData
		}
		return nil, "", nxDomain
	}
	if c := sets[dns.TypeCNAME]; len(c) > 0 && qtype != dns.TypeCNAME {
		return copyRRs(c), strings.ToLower(c[0].(*dns.CNAME).Target), found
	}
	if r := sets[qtype]; len(r) > 0 {
		return copyRRs(r), "", found
	}
	return nil, "", noData
}

// negative is the SOA for the authority section of a negative answer, with
// the TTL RFC 2308 asks for.
func (zi *zoneIndex) negative() dns.RR {
	soa := dns.Copy(zi.soa).(*dns.SOA)
	soa.Hdr.Ttl = min(soa.Hdr.Ttl, soa.Minttl)
	return soa
}

// copyRRs copies shared index records into an answer, so packing one reply
// can never touch another's.
func copyRRs(rrs []dns.RR) []dns.RR {
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		out[i] = dns.Copy(rr)
	}
	return out
}
