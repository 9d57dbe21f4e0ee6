// Package dnszone is Moat's private DNS: zones shaped like Azure Private DNS
// zones (record sets, links that decide who sees a zone), the "zone group"
// that registers an approved private endpoint's addresses in the privatelink
// zone, and the DNS server that answers from them.
//
// The server follows Azure's private-link name pattern. The hub's public name
// (hub.example.com) is, for everyone, a CNAME to its privatelink name
// (hub.privatelink.example.com). That name resolves to the hub's public
// address for public clients and, for clients inside a network linked to the
// privatelink zone, to the private endpoint's address. Which answer a client
// gets depends only on the source address of its question. As in Azure, the
// public answer keeps resolving when public network access is disabled: DNS
// hides nothing, the network policy refuses the connection.
//
// Names outside every held zone are forwarded to an upstream resolver, and
// only for clients allowed to recurse, so the server is never an open resolver.
//
// miekg/dns stays inside this package: the exported API speaks net/netip and
// plain strings so the library can be replaced without touching callers.
package dnszone

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"unicode/utf8"
)

// Record types a zone may hold.
const (
	TypeA     = "A"
	TypeAAAA  = "AAAA"
	TypeCNAME = "CNAME"
	TypeTXT   = "TXT"
)

// Limits, mostly Azure Private DNS's.
const (
	MinTTL            = 1
	MaxTTL            = 2147483647
	DefaultTTL        = 3600
	MaxValues         = 20    // values in one record set
	MaxRecords        = 25000 // record sets in one zone
	MaxLinks          = 1000  // links of one zone
	MaxZones          = 1000
	MaxTXTValueLength = 1024
	maxNameLength     = 253
	maxLabelLength    = 63
)

// Resolution policies of a private zone, as Azure names them: with
// NxDomainRedirect a linked client whose name is missing from the private zone
// gets the public answer instead of NXDOMAIN.
const (
	ResolutionDefault          = "Default"
	ResolutionNxDomainRedirect = "NxDomainRedirect"
)

// Zone is one DNS zone and its record sets.
type Zone struct {
	// Name is the zone's apex, e.g. "privatelink.example.com" (lower case,
	// no trailing dot once validated).
	Name string `json:"name"`
	// Links are the client source networks that see this private zone, the
	// counterpart of Azure's virtual network links.
	Links []netip.Prefix `json:"links,omitempty"`
	// Public makes the zone answer every client that no linked private zone
	// covers; a public zone has no links.
	Public bool `json:"public,omitempty"`
	// ResolutionPolicy is "Default" (or empty) or "NxDomainRedirect".
	ResolutionPolicy string   `json:"resolutionPolicy,omitempty"`
	Records          []Record `json:"records"`
}

// Record is one record set: every value of one type at one name.
type Record struct {
	// Name is relative to the zone: "hub", "a.b", or "@" for the apex.
	Name string `json:"name"`
	Type string `json:"type"`
	// TTL in seconds; 0 in input means DefaultTTL.
	TTL    int64    `json:"ttl"`
	Values []string `json:"values"`
	// ManagedBy names the private endpoints whose approval created the record
	// set ("privateEndpoints/pe1,pe2"). Such sets are read-only; in input they
	// are ignored, so a zone read with GET can be sent back with PUT.
	ManagedBy string `json:"managedBy,omitempty"`
}

// ValidationError is bad input, naming the field at fault.
type ValidationError struct {
	Field string
	Msg   string
}

func (e *ValidationError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

func invalid(field, format string, args ...any) error {
	return &ValidationError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// ParseZoneJSON decodes one zone, rejecting unknown fields, and returns it
// validated and normalized.
func ParseZoneJSON(b []byte) (Zone, error) {
	var z Zone
	if err := decodeStrict(b, &z); err != nil {
		return Zone{}, err
	}
	z.Records = slices.DeleteFunc(z.Records, func(r Record) bool { return r.ManagedBy != "" })
	if err := z.Normalize(); err != nil {
		return Zone{}, err
	}
	return z, nil
}

// ParseRecordJSON decodes one record set for zone and returns it validated and
// normalized.
func ParseRecordJSON(zone string, b []byte) (Record, error) {
	var r Record
	if err := decodeStrict(b, &r); err != nil {
		return Record{}, err
	}
	if r.ManagedBy != "" {
		return Record{}, invalid("managedBy", "is set by private endpoint approval, not by callers")
	}
	if err := r.normalize(zone, ""); err != nil {
		return Record{}, err
	}
	return r, nil
}

// ParseLinksJSON decodes a JSON array of CIDR prefixes.
func ParseLinksJSON(b []byte) ([]netip.Prefix, error) {
	var raw []string
	if err := decodeStrict(b, &raw); err != nil {
		return nil, err
	}
	links, err := ParsePrefixes(raw)
	if err != nil {
		return nil, err
	}
	if err := checkLinks(links, "links"); err != nil {
		return nil, err
	}
	return links, nil
}

// ParsePrefixes parses CIDR strings, requiring each to be a network address
// (no host bits), so that "10.0.0.5/8" is an error rather than a surprise.
func ParsePrefixes(ss []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ss))
	for i, s := range ss {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, invalid(fmt.Sprintf("[%d]", i), "%q is not a CIDR prefix", s)
		}
		if p != p.Masked() {
			return nil, invalid(fmt.Sprintf("[%d]", i), "%s has host bits set; did you mean %s?", p, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return invalid("", "malformed JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("", "malformed JSON: data after the document")
	}
	return nil
}

// Normalize validates z and puts it in canonical form: lower-case names, TTL
// defaults, sorted record sets, canonical values. It reports the first
// problem, naming its field.
func (z *Zone) Normalize() error {
	name, err := CanonicalName(z.Name)
	if err != nil {
		return invalid("name", "%v", err)
	}
	if strings.Count(name, ".") < 1 {
		return invalid("name", "%q needs at least two labels (e.g. privatelink.example.com)", z.Name)
	}
	z.Name = name
	if z.Public && len(z.Links) > 0 {
		return invalid("links", "a public zone answers everyone and takes no links")
	}
	if err := checkLinks(z.Links, "links"); err != nil {
		return err
	}
	switch z.ResolutionPolicy {
	case "", ResolutionDefault:
		z.ResolutionPolicy = ""
	case ResolutionNxDomainRedirect:
	default:
		return invalid("resolutionPolicy", "must be %q or %q, not %q", ResolutionDefault, ResolutionNxDomainRedirect, z.ResolutionPolicy)
	}
	if len(z.Records) > MaxRecords {
		return invalid("records", "%d record sets, at most %d", len(z.Records), MaxRecords)
	}
	if z.Records == nil {
		z.Records = []Record{}
	}
	for i := range z.Records {
		if err := z.Records[i].normalize(z.Name, fmt.Sprintf("records[%d].", i)); err != nil {
			return err
		}
	}
	sortRecords(z.Records)
	return checkRecordSets(z.Records)
}

func checkLinks(links []netip.Prefix, field string) error {
	if len(links) > MaxLinks {
		return invalid(field, "%d links, at most %d", len(links), MaxLinks)
	}
	seen := map[netip.Prefix]bool{}
	for i, p := range links {
		f := fmt.Sprintf("%s[%d]", field, i)
		if !p.IsValid() {
			return invalid(f, "not a CIDR prefix")
		}
		if p != p.Masked() {
			return invalid(f, "%s has host bits set; did you mean %s?", p, p.Masked())
		}
		if p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return invalid(f, "%s: use a plain IPv4 or IPv6 prefix", p)
		}
		if seen[p] {
			return invalid(f, "duplicate link %s", p)
		}
		seen[p] = true
	}
	return nil
}

func sortRecords(rs []Record) {
	slices.SortFunc(rs, func(a, b Record) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.Type, b.Type)
	})
}

// checkRecordSets enforces one set per name and type, and CNAME exclusivity.
// rs must be sorted.
func checkRecordSets(rs []Record) error {
	for i := 0; i < len(rs); i++ {
		j := i
		for j+1 < len(rs) && rs[j+1].Name == rs[i].Name {
			j++
		}
		hasCNAME := false
		for k := i; k <= j; k++ {
			if k > i && rs[k].Type == rs[k-1].Type {
				return invalid(fmt.Sprintf("records[%d]", k), "a second %s record set at %q: put every value in one set", rs[k].Type, rs[k].Name)
			}
			hasCNAME = hasCNAME || rs[k].Type == TypeCNAME
		}
		if hasCNAME && j > i {
			return invalid("records", "%q has a CNAME and other records; a CNAME must be alone at its name", rs[i].Name)
		}
		i = j
	}
	return nil
}

// normalize validates one record set in zone; prefix is the field path.
func (r *Record) normalize(zone, prefix string) error {
	name, err := relativeName(r.Name, zone)
	if err != nil {
		return invalid(prefix+"name", "%v", err)
	}
	r.Name = name
	r.Type = strings.ToUpper(strings.TrimSpace(r.Type))
	switch r.Type {
	case TypeA, TypeAAAA, TypeCNAME, TypeTXT:
	default:
		return invalid(prefix+"type", "%q is not one of A, AAAA, CNAME, TXT", r.Type)
	}
	if r.TTL == 0 {
		r.TTL = DefaultTTL
	}
	if r.TTL < MinTTL || r.TTL > MaxTTL {
		return invalid(prefix+"ttl", "%d is outside %d..%d seconds", r.TTL, MinTTL, MaxTTL)
	}
	if len(r.Values) == 0 {
		return invalid(prefix+"values", "a record set needs at least one value")
	}
	if len(r.Values) > MaxValues {
		return invalid(prefix+"values", "%d values, at most %d", len(r.Values), MaxValues)
	}
	vals := make([]string, len(r.Values))
	for i, v := range r.Values {
		f := fmt.Sprintf("%svalues[%d]", prefix, i)
		switch r.Type {
		case TypeA, TypeAAAA:
			a, err := netip.ParseAddr(strings.TrimSpace(v))
			switch {
			case err != nil:
				return invalid(f, "%q is not an IP address", v)
			case a.Zone() != "":
				return invalid(f, "%q: an address with a zone is not a DNS answer", v)
			case r.Type == TypeA && !a.Is4():
				return invalid(f, "%q is not an IPv4 address (AAAA holds IPv6)", v)
			case r.Type == TypeAAAA && (!a.Is6() || a.Is4In6()):
				return invalid(f, "%q is not an IPv6 address (A holds IPv4)", v)
			}
			vals[i] = a.String()
		case TypeCNAME:
			if name == "@" {
				return invalid(prefix+"name", "a CNAME cannot be at the zone apex")
			}
			if len(r.Values) != 1 {
				return invalid(prefix+"values", "a CNAME has exactly one target")
			}
			t, err := CanonicalName(v)
			if err != nil {
				return invalid(f, "target: %v", err)
			}
			if t == joinName(name, zone) {
				return invalid(f, "a CNAME cannot point at itself")
			}
			vals[i] = t
		case TypeTXT:
			if len(v) > MaxTXTValueLength {
				return invalid(f, "%d bytes, at most %d", len(v), MaxTXTValueLength)
			}
			if !utf8.ValidString(v) {
				return invalid(f, "not valid UTF-8")
			}
			for _, c := range v {
				if c < 0x20 || c == 0x7f {
					return invalid(f, "control character %U", c)
				}
			}
			vals[i] = v
		}
	}
	switch r.Type {
	case TypeA, TypeAAAA:
		// Addresses in numeric order, so 10.0.0.9 comes before 10.0.0.10.
		slices.SortFunc(vals, func(a, b string) int { return netip.MustParseAddr(a).Compare(netip.MustParseAddr(b)) })
	case TypeCNAME:
		slices.Sort(vals)
	}
	if r.Type != TypeTXT {
		if i := firstDup(vals); i >= 0 {
			return invalid(prefix+"values", "duplicate value %q", vals[i])
		}
	}
	r.Values = vals
	return nil
}

func firstDup(sorted []string) int {
	for i := 1; i < len(sorted); i++ {
		if sorted[i] == sorted[i-1] {
			return i
		}
	}
	return -1
}

// CanonicalName validates a domain name and returns it lower-cased without
// the trailing dot. Labels are letters, digits, '-' and '_' (for service
// names such as _acme-challenge).
func CanonicalName(s string) (string, error) {
	s = strings.TrimSuffix(strings.TrimSpace(s), ".")
	if s == "" {
		return "", errors.New("empty name")
	}
	if len(s) > maxNameLength {
		return "", fmt.Errorf("%d characters, at most %d", len(s), maxNameLength)
	}
	s = strings.ToLower(s)
	for _, label := range strings.Split(s, ".") {
		if err := checkLabel(label); err != nil {
			return "", fmt.Errorf("%q: %w", truncate(s, 80), err)
		}
	}
	return s, nil
}

func checkLabel(l string) error {
	if l == "" {
		return errors.New("empty label")
	}
	if len(l) > maxLabelLength {
		return fmt.Errorf("label of %d characters, at most %d", len(l), maxLabelLength)
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return fmt.Errorf("label %q starts or ends with '-'", l)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("label %q has %q: only letters, digits, '-' and '_'", truncate(l, 70), rune(c))
		}
	}
	return nil
}

// relativeName turns a record name into its form relative to zone: "@" for
// the apex. An absolute name (trailing dot) must lie inside the zone.
func relativeName(name, zone string) (string, error) {
	name = strings.TrimSpace(name)
	switch {
	case name == "" || name == "@":
		return "@", nil
	case strings.HasSuffix(name, "."):
		c, err := CanonicalName(name)
		if err != nil {
			return "", err
		}
		if c == zone {
			return "@", nil
		}
		if !strings.HasSuffix(c, "."+zone) {
			return "", fmt.Errorf("%q is outside zone %q", name, zone)
		}
		return strings.TrimSuffix(c, "."+zone), nil
	}
	c, err := CanonicalName(name)
	if err != nil {
		return "", err
	}
	if len(c)+1+len(zone) > maxNameLength {
		return "", fmt.Errorf("%q in %q is longer than %d characters", c, zone, maxNameLength)
	}
	return c, nil
}

// joinName is the absolute name (no trailing dot) of rel in zone.
func joinName(rel, zone string) string {
	if rel == "@" {
		return zone
	}
	return rel + "." + zone
}

// PrivateLinkName is Azure's privatelink form of a host name: "privatelink"
// after the first label, so hub.example.com becomes
// hub.privatelink.example.com. Names of one label have no such form ("").
func PrivateLinkName(host string) string {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	first, rest, ok := strings.Cut(host, ".")
	if !ok || first == "" || rest == "" {
		return ""
	}
	return first + ".privatelink." + rest
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
