package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/moat-iot/moat/internal/netpolicy"
)

func TestRecordLines(t *testing.T) {
	var buf bytes.Buffer
	r := New(&buf)
	local, remote := netip.MustParseAddrPort("10.250.1.1:8883"), netip.MustParseAddrPort("[fd00::2]:40000")
	r.Record(netpolicy.Decision{Allowed: true, Endpoint: "public", Rule: "lab"}, "mqtts", local, remote)
	r.Record(netpolicy.Decision{Endpoint: "vnet", Rule: "private endpoint Pending"}, "https", local, remote)
	r.RecordClose(netpolicy.Decision{Endpoint: "public", Rule: "defaultAction Deny"}, "mqtts", local, remote)

	want := []map[string]string{
		{"listener": "mqtts", "local": "10.250.1.1:8883", "remote": "[fd00::2]:40000", "endpoint": "public", "rule": "lab", "decision": "accept"},
		{"listener": "https", "endpoint": "vnet", "rule": "private endpoint Pending", "decision": "refuse"},
		{"listener": "mqtts", "rule": "defaultAction Deny", "decision": "close"},
	}
	sc := bufio.NewScanner(&buf)
	i := 0
	for ; sc.Scan(); i++ {
		var got map[string]any
		if err := json.Unmarshal(sc.Bytes(), &got); err != nil {
			t.Fatalf("line %d is not JSON: %q", i, sc.Text())
		}
		if i >= len(want) {
			t.Fatalf("extra line %q", sc.Text())
		}
		for k, v := range want[i] {
			if got[k] != v {
				t.Errorf("line %d: %s = %v, want %q", i, k, got[k], v)
			}
		}
		ts, _ := got["time"].(string)
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil || !strings.HasSuffix(ts, "Z") {
			t.Errorf("line %d: time %q is not RFC 3339 UTC", i, ts)
		}
		if _, ok := got["level"]; ok {
			t.Errorf("line %d has a level", i)
		}
	}
	if i != len(want) {
		t.Errorf("%d lines, want %d", i, len(want))
	}
	if n := count(t, r.counter.WithLabelValues("mqtts", Accept)); n != 1 {
		t.Errorf("accept counter = %v", n)
	}
	if n := count(t, r.counter.WithLabelValues("https", Refuse)); n != 1 {
		t.Errorf("refuse counter = %v", n)
	}
	if n := count(t, r.counter.WithLabelValues("mqtts", Close)); n != 1 {
		t.Errorf("close counter = %v", n)
	}
}

func TestOpenFileAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	for range 2 {
		r, err := OpenFile(path)
		if err != nil {
			t.Fatal(err)
		}
		r.Record(netpolicy.Decision{Allowed: true, Endpoint: "public", Rule: "x"}, "https", netip.MustParseAddrPort("127.0.0.1:443"), netip.MustParseAddrPort("127.0.0.1:9"))
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "\n"); n != 2 {
		t.Errorf("%d lines after two opens, want 2", n)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode().Perm())
	}
	// Counting without a writer does not panic.
	New(nil).Record(netpolicy.Decision{}, "x", netip.AddrPort{}, netip.AddrPort{})
}

func count(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
