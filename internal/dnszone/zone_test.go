package dnszone

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestParseZoneJSON(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		name    string
		in      string
		want    *Zone // nil: only check no error
		wantErr string
	}{
		{name: "minimal", in: `{"name":"Privatelink.Example.COM."}`,
			want: &Zone{Name: "privatelink.example.com", Records: []Record{}}},
		{name: "records normalized and sorted", in: `{"name":"z.example","links":["10.0.0.0/8"],"records":[
			{"name":"b","type":"aaaa","ttl":0,"values":["FD00::1"]},
			{"name":"a","type":"A","ttl":60,"values":["10.0.0.2","10.0.0.1"]},
			{"name":"@","type":"TXT","ttl":5,"values":["v=1"]},
			{"name":"c","type":"CNAME","ttl":5,"values":["Target.Example."]}]}`,
			want: &Zone{Name: "z.example", Links: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Records: []Record{
				{Name: "@", Type: "TXT", TTL: 5, Values: []string{"v=1"}},
				{Name: "a", Type: "A", TTL: 60, Values: []string{"10.0.0.1", "10.0.0.2"}},
				{Name: "b", Type: "AAAA", TTL: DefaultTTL, Values: []string{"fd00::1"}},
				{Name: "c", Type: "CNAME", TTL: 5, Values: []string{"target.example"}},
			}}},
		{name: "absolute record name inside zone", in: `{"name":"z.example","records":[{"name":"www.z.example.","type":"A","ttl":1,"values":["192.0.2.1"]}]}`,
			want: &Zone{Name: "z.example", Records: []Record{{Name: "www", Type: "A", TTL: 1, Values: []string{"192.0.2.1"}}}}},
		{name: "managed records are dropped", in: `{"name":"z.example","records":[{"name":"hub","type":"A","ttl":10,"values":["10.0.0.1"],"managedBy":"privateEndpoints/pe"}]}`,
			want: &Zone{Name: "z.example", Records: []Record{}}},
		{name: "underscore label", in: `{"name":"z.example","records":[{"name":"_acme-challenge","type":"TXT","ttl":1,"values":["x"]}]}`},
		{name: "nxdomain redirect", in: `{"name":"z.example","resolutionPolicy":"NxDomainRedirect"}`},

		{name: "not JSON", in: `{`, wantErr: "malformed JSON"},
		{name: "trailing data", in: `{"name":"z.example"} {}`, wantErr: "after the document"},
		{name: "unknown field", in: `{"name":"z.example","ttl":3}`, wantErr: "unknown field"},
		{name: "one label", in: `{"name":"local"}`, wantErr: "at least two labels"},
		{name: "empty name", in: `{"name":""}`, wantErr: "name: empty name"},
		{name: "bad char", in: `{"name":"a b.example"}`, wantErr: "only letters"},
		{name: "long label", in: `{"name":"` + long + `.example"}`, wantErr: "label of 64"},
		{name: "hyphen edge", in: `{"name":"-a.example"}`, wantErr: "starts or ends"},
		{name: "empty label", in: `{"name":"a..example"}`, wantErr: "empty label"},
		{name: "public with links", in: `{"name":"z.example","public":true,"links":["10.0.0.0/8"]}`, wantErr: "public zone"},
		{name: "link host bits", in: `{"name":"z.example","links":["10.0.0.5/8"]}`, wantErr: "did you mean 10.0.0.0/8"},
		{name: "duplicate link", in: `{"name":"z.example","links":["10.0.0.0/8","10.0.0.0/8"]}`, wantErr: "duplicate link"},
		{name: "bad policy", in: `{"name":"z.example","resolutionPolicy":"Sometimes"}`, wantErr: "resolutionPolicy"},
		{name: "bad type", in: `{"name":"z.example","records":[{"name":"a","type":"MX","ttl":1,"values":["x"]}]}`, wantErr: "records[0].type"},
		{name: "ttl negative", in: `{"name":"z.example","records":[{"name":"a","type":"A","ttl":-1,"values":["10.0.0.1"]}]}`, wantErr: "records[0].ttl"},
		{name: "ttl too big", in: `{"name":"z.example","records":[{"name":"a","type":"A","ttl":2147483648,"values":["10.0.0.1"]}]}`, wantErr: "outside 1..2147483647"},
		{name: "no values", in: `{"name":"z.example","records":[{"name":"a","type":"A","ttl":1,"values":[]}]}`, wantErr: "at least one value"},
		{name: "ipv6 in A", in: `{"name":"z.example","records":[{"name":"a","type":"A","ttl":1,"values":["::1"]}]}`, wantErr: "not an IPv4"},
		{name: "mapped v4 in AAAA", in: `{"name":"z.example","records":[{"name":"a","type":"AAAA","ttl":1,"values":["::ffff:10.0.0.1"]}]}`, wantErr: "not an IPv6"},
		{name: "v4 in AAAA", in: `{"name":"z.example","records":[{"name":"a","type":"AAAA","ttl":1,"values":["10.0.0.1"]}]}`, wantErr: "not an IPv6"},
		{name: "zoned address", in: `{"name":"z.example","records":[{"name":"a","type":"AAAA","ttl":1,"values":["fe80::1%eth0"]}]}`, wantErr: "zone"},
		{name: "not an address", in: `{"name":"z.example","records":[{"name":"a","type":"A","ttl":1,"values":["ten"]}]}`, wantErr: "not an IP address"},
		{name: "duplicate value", in: `{"name":"z.example","records":[{"name":"a","type":"A","ttl":1,"values":["10.0.0.1","10.0.0.1"]}]}`, wantErr: "duplicate value"},
		{name: "cname and A", in: `{"name":"z.example","records":[{"name":"a","type":"CNAME","ttl":1,"values":["b.example"]},{"name":"a","type":"A","ttl":1,"values":["10.0.0.1"]}]}`, wantErr: "CNAME must be alone"},
		{name: "two cname targets", in: `{"name":"z.example","records":[{"name":"a","type":"CNAME","ttl":1,"values":["b.example","c.example"]}]}`, wantErr: "exactly one target"},
		{name: "cname at apex", in: `{"name":"z.example","records":[{"name":"@","type":"CNAME","ttl":1,"values":["b.example"]}]}`, wantErr: "apex"},
		{name: "cname to itself", in: `{"name":"z.example","records":[{"name":"a","type":"CNAME","ttl":1,"values":["a.z.example"]}]}`, wantErr: "itself"},
		{name: "two A sets", in: `{"name":"z.example","records":[{"name":"a","type":"A","ttl":1,"values":["10.0.0.1"]},{"name":"A","type":"A","ttl":1,"values":["10.0.0.2"]}]}`, wantErr: "second A record set"},
		{name: "absolute outside zone", in: `{"name":"z.example","records":[{"name":"www.other.example.","type":"A","ttl":1,"values":["10.0.0.1"]}]}`, wantErr: "outside zone"},
		{name: "txt control char", in: `{"name":"z.example","records":[{"name":"t","type":"TXT","ttl":1,"values":["a\u0001"]}]}`, wantErr: "control character"},
		{name: "txt too long", in: `{"name":"z.example","records":[{"name":"t","type":"TXT","ttl":1,"values":["` + strings.Repeat("x", 1025) + `"]}]}`, wantErr: "at most 1024"},
		{name: "too many values", in: `{"name":"z.example","records":[{"name":"t","type":"TXT","ttl":1,"values":[` + strings.Repeat(`"x",`, 20) + `"x"]}]}`, wantErr: "at most 20"},
		{name: "name too long", in: `{"name":"z.example","records":[{"name":"` + strings.Repeat("abcdefghi.", 24) + `abcdefghi","type":"A","ttl":1,"values":["10.0.0.1"]}]}`, wantErr: "longer than 253"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			z, err := ParseZoneJSON([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				var ve *ValidationError
				if !errors.As(err, &ve) {
					t.Fatalf("error %T is not a *ValidationError", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseZoneJSON: %v", err)
			}
			if tc.want != nil && !reflect.DeepEqual(z, *tc.want) {
				t.Fatalf("got  %+v\nwant %+v", z, *tc.want)
			}
		})
	}
}

func TestParseRecordAndLinks(t *testing.T) {
	r, err := ParseRecordJSON("z.example", []byte(`{"name":"Hub","type":"a","values":["10.1.2.3"]}`))
	if err != nil || r.Name != "hub" || r.Type != "A" || r.TTL != DefaultTTL {
		t.Fatalf("record = %+v, %v", r, err)
	}
	if _, err := ParseRecordJSON("z.example", []byte(`{"name":"hub","type":"A","values":["10.1.2.3"],"managedBy":"x"}`)); err == nil {
		t.Fatal("managedBy accepted from a caller")
	}
	links, err := ParseLinksJSON([]byte(`["10.0.0.0/8","fd00::/8"]`))
	if err != nil || len(links) != 2 {
		t.Fatalf("links = %v, %v", links, err)
	}
	for _, bad := range []string{`["10.0.0.1/8"]`, `["x"]`, `{"links":[]}`, `["::ffff:10.0.0.0/104"]`} {
		if _, err := ParseLinksJSON([]byte(bad)); err == nil {
			t.Errorf("ParseLinksJSON(%s) accepted", bad)
		}
	}
}

func TestPrivateLinkName(t *testing.T) {
	for in, want := range map[string]string{
		"hub.example.com":            "hub.privatelink.example.com",
		"MyHub.azure-devices.net.":   "myhub.privatelink.azure-devices.net",
		"localhost":                  "",
		"":                           "",
		".example.com":               "",
		"hub.privatelink.example.co": "hub.privatelink.privatelink.example.co",
	} {
		if got := PrivateLinkName(in); got != want {
			t.Errorf("PrivateLinkName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseUpstream(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.2":           "10.0.0.2:53",
		"10.0.0.2:5353":      "10.0.0.2:5353",
		"[fd00::1]:53":       "[fd00::1]:53",
		"fd00::1":            "[fd00::1]:53",
		"::ffff:10.0.0.1":    "10.0.0.1:53",
		"dns.example.com:53": "",
		"10.0.0.2:0":         "",
		"":                   "",
	} {
		got, err := ParseUpstream(in)
		if want == "" {
			if err == nil {
				t.Errorf("ParseUpstream(%q) = %v, want an error", in, got)
			}
			continue
		}
		if err != nil || got.String() != want {
			t.Errorf("ParseUpstream(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
}

func TestConfigProblems(t *testing.T) {
	c := Config{
		Listen:          "10.0.0.5",
		PrivateLinkName: "hub.example",
		PrivateNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.5/8")},
		Upstream:        []string{"resolver.example"},
	}
	var fields []string
	for _, p := range c.Problems() {
		fields = append(fields, p.Field)
	}
	want := []string{"listen", "privateLinkName", "privateNetworks[0]", "upstream[0]"}
	if !reflect.DeepEqual(fields, want) {
		t.Fatalf("problems at %v, want %v", fields, want)
	}
	ok := Config{Listen: "127.0.0.1:53", PrivateLinkName: "hub.privatelink.example.com", Upstream: []string{"10.0.0.2"}}
	if p := ok.Problems(); len(p) != 0 {
		t.Fatalf("valid config: %v", p[0])
	}
}

func FuzzParseZoneJSON(f *testing.F) {
	for _, s := range []string{
		`{"name":"privatelink.example.com","links":["10.0.0.0/8"],"records":[{"name":"hub","type":"A","ttl":10,"values":["10.1.2.3"]}]}`,
		`{"name":"z.example","records":[{"name":"c","type":"CNAME","ttl":1,"values":["x.example"]},{"name":"c","type":"TXT","ttl":1,"values":["\\"]}]}`,
		`{"name":"z.example","public":true,"records":[{"name":"@","type":"AAAA","values":["fd00::1"]}]}`,
		`{"name":"a..b"}`, `[]`, `{"name":"z.example","links":["1.2.3.4/33"]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		z, err := ParseZoneJSON(b)
		if err != nil {
			return
		}
		// A valid zone must be stable under normalization and servable.
		again := z
		again.Records = append([]Record(nil), z.Records...)
		if err := again.Normalize(); err != nil {
			t.Fatalf("normalized zone fails validation: %v", err)
		}
		if !reflect.DeepEqual(again, z) {
			t.Fatalf("normalize not idempotent:\n%+v\n%+v", z, again)
		}
		ix, err := buildIndex([]Zone{z})
		if err != nil {
			t.Fatalf("valid zone not indexable: %v", err)
		}
		zi := ix.zones[z.Name+"."]
		for _, r := range z.Records {
			for _, rrs := range zi.rrs[joinName(r.Name, z.Name)+"."] {
				for _, rr := range rrs {
					buf := make([]byte, 65535)
					if _, err := dns.PackRR(rr, buf, 0, nil, false); err != nil {
						t.Fatalf("record %v does not pack: %v", rr, err)
					}
				}
			}
		}
	})
}
