package cli

import (
	"maps"
	"strings"
	"testing"
)

func TestParsePropertyList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]string
		err  bool
	}{
		{"", nil, false},
		{"a=1", map[string]string{"a": "1"}, false},
		{"a=1;b=two", map[string]string{"a": "1", "b": "two"}, false},
		{" a = 1 ;;b=", map[string]string{"a": " 1 ", "b": ""}, false},
		{"q=x=y", map[string]string{"q": "x=y"}, false},
		{`{"level":"critical","n":3,"ok":true}`, map[string]string{"level": "critical", "n": "3", "ok": "true"}, false},
		{`{"a":{"b":1}}`, nil, true},
		{`{"a":`, nil, true},
		{"novalue", nil, true},
		{"=v", nil, true},
		{"a=1;a=2", nil, true},
	} {
		got, err := parsePropertyList(tc.in)
		if (err != nil) != tc.err {
			t.Errorf("%q: error %v, want error %v", tc.in, err, tc.err)
			continue
		}
		if !tc.err && !maps.Equal(got, tc.want) {
			t.Errorf("%q: got %v, want %v", tc.in, got, tc.want)
		}
	}
}

func FuzzParsePropertyList(f *testing.F) {
	for _, s := range []string{"a=1;b=2", `{"a":"b"}`, "x", ";;", "k==v"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := parsePropertyList(s)
		if err != nil {
			return
		}
		for k := range m {
			if k == "" && !strings.HasPrefix(strings.TrimSpace(s), "{") {
				t.Fatalf("%q: empty key", s)
			}
		}
	})
}
