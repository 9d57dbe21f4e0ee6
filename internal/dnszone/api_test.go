package dnszone

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-iot/moat/internal/errcode"
)

const testToken = "SharedAccessSignature test"

func apiClient(t *testing.T, st *Store) (*Client, *httptest.Server) {
	t.Helper()
	auth := func(r *http.Request) error {
		if r.Header.Get("Authorization") != testToken {
			return errors.New("bad token")
		}
		return nil
	}
	srv := httptest.NewServer(st.Handler(auth))
	t.Cleanup(srv.Close)
	c := NewClient(srv.URL, srv.Client(), func(r *http.Request) error {
		r.Header.Set("Authorization", testToken)
		return nil
	})
	return c, srv
}

func TestAPIRoundTrip(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, srv := apiClient(t, st)
	ctx := context.Background()

	z, err := c.PutZone(ctx, Zone{Name: "Corp.Example", Links: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, true)
	if err != nil {
		t.Fatal(err)
	}
	if z.Name != "corp.example" || len(z.Links) != 1 {
		t.Fatalf("created %+v", z)
	}
	if _, err := c.PutZone(ctx, Zone{Name: "corp.example"}, true); !errcode.Is(err, errcode.PreconditionFailed) {
		t.Fatalf("second create: %v, want PreconditionFailed", err)
	}
	r, err := c.PutRecord(ctx, "corp.example", Record{Name: "db", Type: "a", Values: []string{"10.0.0.9"}})
	if err != nil {
		t.Fatal(err)
	}
	if r.TTL != DefaultTTL || r.Type != "A" {
		t.Fatalf("record %+v", r)
	}
	if _, err := c.PutRecord(ctx, "corp.example", Record{Name: "@", Type: "TXT", TTL: 60, Values: []string{"apex"}}); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Record(ctx, "corp.example", "txt", "@"); err != nil || got.Values[0] != "apex" {
		t.Fatalf("apex TXT: %+v, %v", got, err)
	}
	_, err = c.PutRecord(ctx, "corp.example", Record{Name: "db", Type: "CNAME", Values: []string{"x.example"}})
	if !errcode.Is(err, errcode.ArgumentInvalid) || !strings.Contains(err.Error(), "CNAME must be alone") {
		t.Fatalf("CNAME beside A: %v", err)
	}
	_, err = c.PutRecord(ctx, "corp.example", Record{Name: "db", Type: "A", Values: []string{"fd00::1"}})
	if !errcode.Is(err, errcode.ArgumentInvalid) || !strings.Contains(err.Error(), "values[0]") {
		t.Fatalf("IPv6 in A: %v", err)
	}
	if _, err := c.PutRecord(ctx, "nope.example", Record{Name: "db", Type: "A", Values: []string{"10.0.0.1"}}); !errcode.Is(err, ZoneNotFound) {
		t.Fatalf("record in missing zone: %v", err)
	}
	if z, err = c.SetLinks(ctx, "corp.example", []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("fd00::/8")}); err != nil || len(z.Links) != 2 {
		t.Fatalf("set links: %+v, %v", z, err)
	}
	recs, err := c.Records(ctx, "corp.example")
	if err != nil || len(recs) != 2 {
		t.Fatalf("records %+v, %v", recs, err)
	}
	zones, err := c.Zones(ctx)
	if err != nil || len(zones) != 1 {
		t.Fatalf("zones %+v, %v", zones, err)
	}

	// Persisted: a second store reads the same zone back.
	st2, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	z2, err := st2.Zone("corp.example")
	if err != nil || len(z2.Records) != 2 || len(z2.Links) != 2 {
		t.Fatalf("reloaded %+v, %v", z2, err)
	}

	if err := c.DeleteRecord(ctx, "corp.example", "A", "db"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteRecord(ctx, "corp.example", "A", "db"); !errcode.Is(err, RecordNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if err := c.DeleteZone(ctx, "corp.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Zone(ctx, "corp.example"); !errcode.Is(err, ZoneNotFound) {
		t.Fatalf("deleted zone: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, FileName))
	if err != nil || !strings.Contains(string(b), `"zones": []`) {
		t.Fatalf("file after delete: %s, %v", b, err)
	}

	// Unauthenticated: 401 with IoT Hub's error code.
	anon := NewClient(srv.URL, srv.Client(), nil)
	if _, err := anon.Zones(ctx); !errcode.Is(err, errcode.IotHubUnauthorizedAccess) {
		t.Fatalf("anonymous: %v", err)
	}
}

func TestAPIBadBodies(t *testing.T) {
	st, _ := OpenStore("")
	_, srv := apiClient(t, st)
	do := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", testToken)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return resp.StatusCode, resp.Header.Get(errorCodeHeader)
	}
	if code, _ := do("PUT", "/moat/dns/zones/a.example", `{}`); code != http.StatusCreated {
		t.Fatalf("create with empty body name: %d", code)
	}
	for _, tc := range []struct{ method, path, body, code string }{
		{"PUT", "/moat/dns/zones/a.example", `{"name":"b.example"}`, "ArgumentInvalid"},
		{"PUT", "/moat/dns/zones/a.example", `{"name":`, "ArgumentInvalid"},
		{"PUT", "/moat/dns/zones/a.example", `{"nmae":"a.example"}`, "ArgumentInvalid"},
		{"PUT", "/moat/dns/zones/a.example", `{"records":[` + strings.Repeat(`{"name":"x","type":"TXT","values":["`+strings.Repeat("y", 1000)+`"]},`, 9000) + `{}]}`, "MessageTooLarge"},
		{"PUT", "/moat/dns/zones/a..example", `{}`, "ArgumentInvalid"},
		{"PUT", "/moat/dns/zones/a.example/records/A/www", `{"type":"AAAA","values":["fd00::1"]}`, "ArgumentInvalid"},
		{"PUT", "/moat/dns/zones/a.example/records/A/www", `{"name":"web","values":["10.0.0.1"]}`, "ArgumentInvalid"},
		{"PUT", "/moat/dns/zones/a.example/records/A/www", `{"values":["10.0.0.1"],"managedBy":"me"}`, "ArgumentInvalid"},
		{"PUT", "/moat/dns/zones/a.example/records/MX/www", `{"values":["10 mx"]}`, "ArgumentInvalid"},
		{"PUT", "/moat/dns/zones/a.example/links", `["10.0.0.1/8"]`, "ArgumentInvalid"},
		{"PUT", "/moat/dns/zones/a.example/links", `"10.0.0.0/8"`, "ArgumentInvalid"},
		{"GET", "/moat/dns/zones/a.example/records/A/none", ``, "DnsRecordNotFound"},
		{"DELETE", "/moat/dns/zones/none.example", ``, "DnsZoneNotFound"},
	} {
		if _, code := do(tc.method, tc.path, tc.body); code != tc.code {
			t.Errorf("%s %s %.60s: code %q, want %q", tc.method, tc.path, tc.body, code, tc.code)
		}
	}
}

func TestStoreRejectsCorruptFile(t *testing.T) {
	dir := t.TempDir()
	for _, content := range []string{`{`, `{"zones":[{"name":"x"}]}`, `{"zones":[{"name":"a.example"},{"name":"A.example"}]}`} {
		if err := os.WriteFile(filepath.Join(dir, FileName), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenStore(dir); err == nil {
			t.Errorf("OpenStore accepted %s", content)
		}
	}
}

func TestEnsureZoneAddsConfiguredLinks(t *testing.T) {
	st, _ := OpenStore("")
	a, b := netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.0.0/16")
	if err := st.EnsureZone("privatelink.example.com", []netip.Prefix{a}); err != nil {
		t.Fatal(err)
	}
	if err := st.SetLinks("privatelink.example.com", []netip.Prefix{b}); err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureZone("privatelink.example.com", []netip.Prefix{a}); err != nil {
		t.Fatal(err)
	}
	z, _ := st.Zone("privatelink.example.com")
	if len(z.Links) != 2 {
		t.Fatalf("links %v, want the API's and the configured one", z.Links)
	}
}
