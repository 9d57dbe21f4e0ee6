package endpoint

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestValidJSON(t *testing.T) {
	deep := func(n int, inner string) string {
		return strings.Repeat("[", n) + inner + strings.Repeat("]", n)
	}
	tests := []string{
		``, ` `, `{}`, `[]`, ` { } `, `[ ]`, `{"a":1}`, `{"a" : [1, 2,\n3]}`, `{"a":1,}`, `{"a":1 "b":2}`,
		`{,}`, `[,]`, `[1,]`, `[1 2]`, `{"a"}`, `{"a":}`, `{1:2}`, `{"a":1}}`, `[[1]`, `[1]]`, `]`, `}`,
		`"s"`, `"`, `"a\"b"`, `"\/\b\f\n\r\t\\"`, `"\u00e9"`, `"\u00G9"`, `"\u12"`, `"\x"`, "\"a\tb\"", "\"\x7f\"",
		"\"\xff\xfe\"", "\"é\"", `"\`, `"\u`, `true`, `false`, `null`, `nul`, `truex`, `True`, `nulls`,
		`0`, `-0`, `01`, `-`, `1.`, `1.5`, `.5`, `1e5`, `1E+5`, `1e-5`, `1e`, `1e+`, `-1.5e10`, `1.5.5`, `+1`,
		`0x10`, `123abc`, `1 2`, `[1,"a",{"b":[true,false,null]},-2.5e3]`, "{\"a\":\n\t\r 1}",
		`{"bm":[1,2,1796525477291806918],"p":"xxxxxxxx"}`, `[1]x`, `{"a":1}{`, "\x00", `[`, `{`, `{"a"`, `{"a":1`,
		deep(10000, ""), deep(10001, ""), deep(10000, "1"), deep(10001, "1"), deep(9999, "[]"), deep(10000, "[]"),
		strings.Repeat(`{"a":`, 10000) + "1" + strings.Repeat("}", 10000),
		strings.Repeat(`{"a":`, 10001) + "1" + strings.Repeat("}", 10001),
	}
	for _, in := range tests {
		if got, want := validJSON([]byte(in)), json.Valid([]byte(in)); got != want {
			name := in
			if len(name) > 40 {
				name = name[:40] + "…"
			}
			t.Errorf("validJSON(%q) = %v, json.Valid says %v", name, got, want)
		}
	}
}

func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{"a":[1,2.5e3,"x\u00e9\n",true,false,null]}`, `[`, `"\u12"`, `-0.1E-2`, "\"\xff\"", ` {} `} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, json.Valid says %v", b, got, want)
		}
	})
}

func BenchmarkValidJSON(b *testing.B) {
	body := []byte(`{"bm":[12,345,1796525477291806918],"p":"` + strings.Repeat("x", 200) + `"}`)
	b.Run("validJSON", func(b *testing.B) {
		for b.Loop() {
			validJSON(body)
		}
	})
	b.Run("json.Valid", func(b *testing.B) {
		for b.Loop() {
			json.Valid(body)
		}
	})
}
