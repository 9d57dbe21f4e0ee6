package dnszone

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/moat-iot/moat/internal/errcode"
)

// FileName is the store's file in the data directory.
const FileName = "dns-zones.json"

// Error codes of the zone API. IoT Hub has no DNS codes; these follow its
// naming so the CLI reports them like every other failure.
var (
	ZoneNotFound   = errcode.Code{Name: "DnsZoneNotFound", Number: 404601, Status: http.StatusNotFound}
	RecordNotFound = errcode.Code{Name: "DnsRecordNotFound", Number: 404602, Status: http.StatusNotFound}
)

// managedTTL is the TTL Azure gives records a private DNS zone group creates.
const managedTTL = 10

// Store holds the zones, persists them as JSON in the data directory, and
// keeps an index the DNS server reads without locking.
type Store struct {
	path string // "" keeps zones in memory only

	mu    sync.Mutex
	zones map[string]Zone // by name; user data only
	// endpoints are the approved private endpoints' records, in memory: the
	// network policy owns endpoints and replays approvals at start, so a
	// record can never outlive its endpoint across restarts.
	endpoints map[string]endpointRecord

	idx atomic.Pointer[index]
}

type endpointRecord struct {
	zone, name string // the record set the endpoint's addresses join
	addrs      []netip.Addr
}

type storeFile struct {
	Zones []Zone `json:"zones"`
}

// OpenStore loads dir/dns-zones.json (absent: no zones). dir "" gives a store
// that keeps nothing on disk.
func OpenStore(dir string) (*Store, error) {
	s := &Store{zones: map[string]Zone{}, endpoints: map[string]endpointRecord{}}
	if dir != "" {
		s.path = filepath.Join(dir, FileName)
		b, err := os.ReadFile(s.path)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("read DNS zones: %w", err)
		default:
			var f storeFile
			if err := json.Unmarshal(b, &f); err != nil {
				return nil, fmt.Errorf("DNS zones %s: %w", s.path, err)
			}
			for i, z := range f.Zones {
				if err := z.Normalize(); err != nil {
					return nil, fmt.Errorf("DNS zones %s: zones[%d]: %w", s.path, i, err)
				}
				if _, dup := s.zones[z.Name]; dup {
					return nil, fmt.Errorf("DNS zones %s: zone %q twice", s.path, z.Name)
				}
				s.zones[z.Name] = z
			}
		}
	}
	if err := s.rebuild(); err != nil {
		return nil, err
	}
	return s, nil
}

func badInput(err error) error {
	var ve *ValidationError
	if errors.As(err, &ve) {
		return errcode.New(errcode.ArgumentInvalid, "%s", ve.Error())
	}
	return err
}

func zoneNotFound(name string) error {
	return errcode.New(ZoneNotFound, "no DNS zone %q", name)
}

func lookupName(name string) (string, error) {
	c, err := CanonicalName(name)
	if err != nil {
		return "", errcode.New(errcode.ArgumentInvalid, "zone name: %v", err)
	}
	return c, nil
}

// Zones returns every zone as served, with private endpoint records included.
func (s *Store) Zones() []Zone {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.zones))
	for n := range s.zones {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]Zone, 0, len(names))
	for _, n := range names {
		out = append(out, s.effective(s.zones[n]))
	}
	return out
}

// Zone returns one zone as served.
func (s *Store) Zone(name string) (Zone, error) {
	n, err := lookupName(name)
	if err != nil {
		return Zone{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	z, ok := s.zones[n]
	if !ok {
		return Zone{}, zoneNotFound(n)
	}
	return s.effective(z), nil
}

// PutZone creates or replaces a zone; records managed by private endpoints
// are kept. It reports whether the zone is new.
func (s *Store) PutZone(z Zone) (created bool, err error) {
	return s.putZone(z, false)
}

// CreateZone creates a zone; an existing one is a PreconditionFailed error.
func (s *Store) CreateZone(z Zone) error {
	_, err := s.putZone(z, true)
	return err
}

func (s *Store) putZone(z Zone, onlyCreate bool) (created bool, err error) {
	z.Records = slices.DeleteFunc(slices.Clone(z.Records), func(r Record) bool { return r.ManagedBy != "" })
	z.Links = slices.Clone(z.Links)
	if err := z.Normalize(); err != nil {
		return false, badInput(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, exists := s.zones[z.Name]
	if exists && onlyCreate {
		return false, errcode.New(errcode.PreconditionFailed, "DNS zone %q already exists", z.Name)
	}
	if !exists && len(s.zones) >= MaxZones {
		return false, errcode.New(errcode.IotHubQuotaExceeded, "at most %d DNS zones", MaxZones)
	}
	for _, r := range z.Records {
		if ep := s.managedBy(z.Name, r.Name, r.Type); ep != "" {
			return false, errcode.New(errcode.InvalidOperation, "%s %s is managed by %s", r.Type, r.Name, ep)
		}
	}
	return !exists, s.commit(func(m map[string]Zone) { m[z.Name] = z })
}

// DeleteZone removes a zone. A zone that holds private endpoint records stays
// until those endpoints are removed or unapproved.
func (s *Store) DeleteZone(name string) error {
	n, err := lookupName(name)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.zones[n]; !ok {
		return zoneNotFound(n)
	}
	for ep, r := range s.endpoints {
		if r.zone == n {
			return errcode.New(errcode.InvalidOperation, "zone %q holds the records of private endpoint %q", n, ep)
		}
	}
	return s.commit(func(m map[string]Zone) { delete(m, n) })
}

// PutRecord creates or replaces one record set.
func (s *Store) PutRecord(zone string, r Record) error {
	n, err := lookupName(zone)
	if err != nil {
		return err
	}
	if r.ManagedBy != "" {
		return errcode.New(errcode.ArgumentInvalid, "managedBy is set by private endpoint approval, not by callers")
	}
	r.Values = slices.Clone(r.Values)
	if err := r.normalize(n, ""); err != nil {
		return badInput(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	z, ok := s.zones[n]
	if !ok {
		return zoneNotFound(n)
	}
	if ep := s.managedBy(n, r.Name, r.Type); ep != "" {
		return errcode.New(errcode.InvalidOperation, "%s %s is managed by %s", r.Type, r.Name, ep)
	}
	z.Records = slices.DeleteFunc(slices.Clone(z.Records), func(o Record) bool { return o.Name == r.Name && o.Type == r.Type })
	z.Records = append(z.Records, r)
	if len(z.Records) > MaxRecords {
		return errcode.New(errcode.IotHubQuotaExceeded, "at most %d record sets in a zone", MaxRecords)
	}
	sortRecords(z.Records)
	if err := checkRecordSets(z.Records); err != nil {
		return badInput(err)
	}
	return s.commit(func(m map[string]Zone) { m[n] = z })
}

// DeleteRecord removes one record set.
func (s *Store) DeleteRecord(zone, typ, name string) error {
	n, err := lookupName(zone)
	if err != nil {
		return err
	}
	rel, err := relativeName(name, n)
	if err != nil {
		return errcode.New(errcode.ArgumentInvalid, "record name: %v", err)
	}
	typ = strings.ToUpper(typ)
	s.mu.Lock()
	defer s.mu.Unlock()
	z, ok := s.zones[n]
	if !ok {
		return zoneNotFound(n)
	}
	if ep := s.managedBy(n, rel, typ); ep != "" {
		return errcode.New(errcode.InvalidOperation, "%s %s is managed by %s: remove or unapprove the endpoint", typ, rel, ep)
	}
	i := slices.IndexFunc(z.Records, func(o Record) bool { return o.Name == rel && o.Type == typ })
	if i < 0 {
		return errcode.New(RecordNotFound, "no %s record set %q in zone %q", typ, rel, n)
	}
	z.Records = slices.Delete(slices.Clone(z.Records), i, i+1)
	return s.commit(func(m map[string]Zone) { m[n] = z })
}

// Record returns one record set as served.
func (s *Store) Record(zone, typ, name string) (Record, error) {
	z, err := s.Zone(zone)
	if err != nil {
		return Record{}, err
	}
	rel, err := relativeName(name, z.Name)
	if err != nil {
		return Record{}, errcode.New(errcode.ArgumentInvalid, "record name: %v", err)
	}
	typ = strings.ToUpper(typ)
	for _, r := range z.Records {
		if r.Name == rel && r.Type == typ {
			return r, nil
		}
	}
	return Record{}, errcode.New(RecordNotFound, "no %s record set %q in zone %q", typ, rel, z.Name)
}

// SetLinks replaces the source networks linked to a zone.
func (s *Store) SetLinks(zone string, links []netip.Prefix) error {
	n, err := lookupName(zone)
	if err != nil {
		return err
	}
	if err := checkLinks(links, "links"); err != nil {
		return badInput(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	z, ok := s.zones[n]
	if !ok {
		return zoneNotFound(n)
	}
	if z.Public && len(links) > 0 {
		return errcode.New(errcode.ArgumentInvalid, "zone %q is public: it answers everyone and takes no links", n)
	}
	z.Links = slices.Clone(links)
	return s.commit(func(m map[string]Zone) { m[n] = z })
}

// EnsureZone creates a private zone if it does not exist, and adds any of
// links it lacks. The hub uses it for its privatelink zone, so that the
// configured private networks are always linked.
func (s *Store) EnsureZone(name string, links []netip.Prefix) error {
	n, err := lookupName(name)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	z, ok := s.zones[n]
	if !ok {
		z = Zone{Name: n, Records: []Record{}}
	}
	added := false
	for _, p := range links {
		if !slices.Contains(z.Links, p) {
			z.Links = append(slices.Clone(z.Links), p)
			added = true
		}
	}
	if ok && !added {
		return nil
	}
	if err := z.Normalize(); err != nil {
		return badInput(err)
	}
	return s.commit(func(m map[string]Zone) { m[n] = z })
}

// setEndpoint registers (addrs non-empty) or removes an endpoint's addresses
// in the record sets at name in zone.
func (s *Store) setEndpoint(endpoint, zone, name string, addrs []netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(addrs) == 0 {
		delete(s.endpoints, endpoint)
	} else {
		s.endpoints[endpoint] = endpointRecord{zone: zone, name: name, addrs: slices.Clone(addrs)}
	}
	return s.rebuild()
}

// managedBy names the endpoints whose records hold (zone, name, type), or "".
func (s *Store) managedBy(zone, name, typ string) string {
	for _, r := range s.managedRecords(zone) {
		if r.Name == name && (r.Type == typ || typ == TypeCNAME || r.Type == TypeCNAME) {
			return r.ManagedBy
		}
	}
	return ""
}

// managedRecords are the record sets the endpoints make in zone.
func (s *Store) managedRecords(zone string) []Record {
	type key struct{ name, typ string }
	sets := map[key]*Record{}
	eps := map[key][]string{}
	for ep, er := range s.endpoints {
		if er.zone != zone {
			continue
		}
		for _, a := range er.addrs {
			k := key{er.name, TypeA}
			if a.Is6() {
				k.typ = TypeAAAA
			}
			r := sets[k]
			if r == nil {
				r = &Record{Name: er.name, Type: k.typ, TTL: managedTTL}
				sets[k] = r
			}
			if v := a.String(); !slices.Contains(r.Values, v) {
				r.Values = append(r.Values, v)
			}
			if !slices.Contains(eps[k], ep) {
				eps[k] = append(eps[k], ep)
			}
		}
	}
	out := make([]Record, 0, len(sets))
	for k, r := range sets {
		slices.SortFunc(r.Values, func(a, b string) int { return netip.MustParseAddr(a).Compare(netip.MustParseAddr(b)) })
		names := eps[k]
		slices.Sort(names)
		r.ManagedBy = "privateEndpoints/" + strings.Join(names, ",")
		out = append(out, *r)
	}
	sortRecords(out)
	return out
}

// effective is z as served: endpoint records replace user sets of the same
// name and type, and a user CNAME at their name.
func (s *Store) effective(z Zone) Zone {
	managed := s.managedRecords(z.Name)
	if len(managed) == 0 {
		z.Records = slices.Clone(z.Records)
		z.Links = slices.Clone(z.Links)
		return z
	}
	recs := slices.DeleteFunc(slices.Clone(z.Records), func(r Record) bool {
		for _, m := range managed {
			if m.Name == r.Name && (m.Type == r.Type || r.Type == TypeCNAME) {
				return true
			}
		}
		return false
	})
	z.Records = append(recs, managed...)
	z.Links = slices.Clone(z.Links)
	sortRecords(z.Records)
	return z
}

// commit applies change to a copy of the zones, persists the copy, and only
// then makes it current. Callers hold s.mu.
func (s *Store) commit(change func(map[string]Zone)) error {
	next := make(map[string]Zone, len(s.zones)+1)
	for k, v := range s.zones {
		next[k] = v
	}
	change(next)
	if err := s.persist(next); err != nil {
		return err
	}
	s.zones = next
	return s.rebuild()
}

func (s *Store) persist(zones map[string]Zone) error {
	if s.path == "" {
		return nil
	}
	f := storeFile{Zones: make([]Zone, 0, len(zones))}
	for _, z := range zones {
		f.Zones = append(f.Zones, z)
	}
	slices.SortFunc(f.Zones, func(a, b Zone) int { return strings.Compare(a.Name, b.Name) })
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encode DNS zones: %w", err)
	}
	if err := writeFileAtomic(s.path, append(b, '\n')); err != nil {
		return fmt.Errorf("save DNS zones: %w", err)
	}
	return nil
}

// writeFileAtomic replaces path with b so that a crash leaves the old or the
// new file, never a torn one.
func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// rebuild makes a new serving index from the zones. Callers hold s.mu (or
// own s exclusively).
func (s *Store) rebuild() error {
	zones := make([]Zone, 0, len(s.zones))
	for _, z := range s.zones {
		zones = append(zones, s.effective(z))
	}
	idx, err := buildIndex(zones)
	if err != nil {
		return err
	}
	s.idx.Store(idx)
	return nil
}

func (s *Store) index() *index { return s.idx.Load() }
