package twin

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
)

var t0 = time.Date(2024, 3, 4, 5, 6, 7, 123456789, time.UTC)

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func nested(depth int) string {
	return strings.Repeat(`{"a":`, depth) + `1` + strings.Repeat(`}`, depth)
}

func TestParsePatch(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want string // JSON of the result; "" when an error is expected
		code errcode.Code
	}{
		{"simple", `{"a":1,"b":{"c":"x"}}`, `{"a":1,"b":{"c":"x"}}`, errcode.Code{}},
		{"null kept", `{"a":null}`, `{"a":null}`, errcode.Code{}},
		{"version dropped", `{"$version":4,"a":true}`, `{"a":true}`, errcode.Code{}},
		{"arrays", `{"a":[1,{"b":null},"c"]}`, `{"a":[1,{"b":null},"c"]}`, errcode.Code{}},
		{"big number exact", `{"n":12345678901234567890}`, `{"n":12345678901234567890}`, errcode.Code{}},
		{"empty", `{}`, `{}`, errcode.Code{}},
		{"depth 10 ok", nested(11), nested(11), errcode.Code{}},
		{"depth 11", nested(12), "", errcode.ArgumentInvalid},
		{"dollar key", `{"$metadata":{}}`, "", errcode.ArgumentInvalid},
		{"nested dollar", `{"a":{"$b":1}}`, "", errcode.ArgumentInvalid},
		{"dot key", `{"a.b":1}`, "", errcode.ArgumentInvalid},
		{"space key", `{"a b":1}`, "", errcode.ArgumentInvalid},
		{"control key", "{\"a\\u0001\":1}", "", errcode.ArgumentInvalid},
		{"empty key", `{"":1}`, "", errcode.ArgumentInvalid},
		{"key in array object", `{"a":[{"$x":1}]}`, "", errcode.ArgumentInvalid},
		{"long key", `{"` + strings.Repeat("k", MaxKeyLength+1) + `":1}`, "", errcode.ArgumentInvalid},
		{"long string", `{"a":"` + strings.Repeat("v", MaxStringLength+1) + `"}`, "", errcode.ArgumentInvalid},
		{"not json", `{"a":`, "", errcode.IotHubFormatError},
		{"array body", `[1]`, "", errcode.IotHubFormatError},
		{"null body", `null`, "", errcode.IotHubFormatError},
		{"trailing data", `{} {}`, "", errcode.IotHubFormatError},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParsePatch([]byte(c.in))
			if c.want == "" {
				if !errcode.Is(err, c.code) {
					t.Fatalf("ParsePatch(%.40s) error = %v, want %s", c.in, err, c.code.Name)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePatch: %v", err)
			}
			if s := jsonOf(t, got); s != c.want {
				t.Errorf("ParsePatch = %s, want %s", s, c.want)
			}
		})
	}
}

func mustPatch(t *testing.T, s string) map[string]any {
	t.Helper()
	p, err := ParsePatch([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNew(t *testing.T) {
	d := New(t0)
	tags, props := d.Render()
	if len(tags) != 0 || d.Version != 1 || d.ETag == "" {
		t.Errorf("new twin tags %v version %d etag %q", tags, d.Version, d.ETag)
	}
	want := `{"$metadata":{"$lastUpdated":"2024-03-04T05:06:07.1234567Z","$lastUpdatedVersion":1},"$version":1}`
	if s := jsonOf(t, props.Desired); s != want {
		t.Errorf("desired = %s, want %s", s, want)
	}
	want = `{"$metadata":{"$lastUpdated":"2024-03-04T05:06:07.1234567Z"},"$version":1}`
	if s := jsonOf(t, props.Reported); s != want {
		t.Errorf("reported = %s, want %s", s, want)
	}
}

func TestApplyReported(t *testing.T) {
	d := New(t0)
	etag := d.ETag
	steps := []struct {
		patch string
		want  string
	}{
		{`{"a":1,"b":{"c":2,"d":3}}`, `{"a":1,"b":{"c":2,"d":3}}`},
		{`{"b":{"c":null,"e":[1,2]}}`, `{"a":1,"b":{"d":3,"e":[1,2]}}`},
		{`{"a":null,"b":"flat"}`, `{"b":"flat"}`},
		{`{}`, `{"b":"flat"}`},
	}
	for i, s := range steps {
		v, err := d.ApplyReported(mustPatch(t, s.patch), t0.Add(time.Duration(i+1)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if v != int64(i+2) || d.Reported.Version != v || d.Version != int64(i+2) {
			t.Errorf("step %d: version %d (twin %d), want %d", i, v, d.Version, i+2)
		}
		if got := jsonOf(t, d.Reported.Props); got != s.want {
			t.Errorf("step %d: reported = %s, want %s", i, got, s.want)
		}
	}
	if d.ETag != etag {
		t.Errorf("reported change moved the twin etag")
	}
	// $metadata mirrors the properties: b is now a leaf stamped at step 3.
	meta := d.Reported.render(false)["$metadata"].(map[string]any)
	want := `{"$lastUpdated":"2024-03-04T05:06:10.1234567Z"}`
	if got := jsonOf(t, meta["b"]); got != want {
		t.Errorf("metadata of b = %s, want %s", got, want)
	}
	if _, ok := meta["a"]; ok {
		t.Errorf("metadata of removed key kept: %v", meta)
	}
}

func TestDesiredMetadata(t *testing.T) {
	d := New(t0)
	c, err := ParseServicePatch([]byte(`{"properties":{"desired":{"x":{"y":1,"z":2}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.ApplyChange(c, t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	c, _ = ParseServicePatch([]byte(`{"properties":{"desired":{"x":{"y":5}}}}`))
	if _, err := d.ApplyChange(c, t0.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	meta := d.Desired.render(true)["$metadata"].(map[string]any)
	want := `{"$lastUpdated":"2024-03-04T05:06:09.1234567Z","$lastUpdatedVersion":3,` +
		`"x":{"$lastUpdated":"2024-03-04T05:06:09.1234567Z","$lastUpdatedVersion":3,` +
		`"y":{"$lastUpdated":"2024-03-04T05:06:09.1234567Z","$lastUpdatedVersion":3},` +
		`"z":{"$lastUpdated":"2024-03-04T05:06:08.1234567Z","$lastUpdatedVersion":2}}}`
	if got := jsonOf(t, meta); got != want {
		t.Errorf("desired $metadata =\n%s\nwant\n%s", got, want)
	}
}

func TestApplyChange(t *testing.T) {
	type step struct {
		body        string
		replace     bool
		wantTags    string
		wantDesired string
		wantPatch   string // "" = no device patch
		wantVersion int64  // desired $version after the step
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"merge then null", []step{
			{`{"properties":{"desired":{"a":1,"b":{"c":1,"d":2}}}}`, false, `{}`, `{"a":1,"b":{"c":1,"d":2}}`, `{"$version":2,"a":1,"b":{"c":1,"d":2}}`, 2},
			{`{"properties":{"desired":{"b":{"c":null}}}}`, false, `{}`, `{"a":1,"b":{"d":2}}`, `{"$version":3,"b":{"c":null}}`, 3},
		}},
		{"desired null removes all", []step{
			{`{"properties":{"desired":{"a":1,"b":{"c":1}}}}`, false, `{}`, `{"a":1,"b":{"c":1}}`, `{"$version":2,"a":1,"b":{"c":1}}`, 2},
			{`{"properties":{"desired":null}}`, false, `{}`, `{}`, `{"$version":3,"a":null,"b":null}`, 3},
			{`{"properties":{"desired":null}}`, false, `{}`, `{}`, ``, 3},
		}},
		{"tags only", []step{
			{`{"tags":{"t":{"u":1}},"etag":"*","deviceId":"x"}`, false, `{"t":{"u":1}}`, `{}`, ``, 1},
			{`{"tags":{"t":{"v":2}}}`, false, `{"t":{"u":1,"v":2}}`, `{}`, ``, 1},
			{`{"tags":null}`, false, `{}`, `{}`, ``, 1},
		}},
		{"replace", []step{
			{`{"tags":{"a":1},"properties":{"desired":{"a":1,"b":{"c":1,"d":2},"e":3}}}`, false, `{"a":1}`, `{"a":1,"b":{"c":1,"d":2},"e":3}`, `{"$version":2,"a":1,"b":{"c":1,"d":2},"e":3}`, 2},
			{`{"tags":{"b":2},"properties":{"desired":{"$version":2,"$metadata":{},"a":1,"b":{"c":5},"f":null,"g":[1]},"reported":{"x":1}}}`, true,
				`{"b":2}`, `{"a":1,"b":{"c":5},"g":[1]}`, `{"$version":3,"b":{"c":5,"d":null},"e":null,"g":[1]}`, 3},
			{`{"tags":{"b":2},"properties":{"desired":{"a":1,"b":{"c":5},"g":[1]}}}`, true, `{"b":2}`, `{"a":1,"b":{"c":5},"g":[1]}`, ``, 3},
			{`{}`, true, `{}`, `{}`, `{"$version":4,"a":null,"b":null,"g":null}`, 4},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := New(t0)
			for i, s := range c.steps {
				parse := ParseServicePatch
				if s.replace {
					parse = ParseReplacement
				}
				ch, err := parse([]byte(s.body))
				if err != nil {
					t.Fatalf("step %d parse: %v", i, err)
				}
				etag, version := d.ETag, d.Version
				patch, err := d.ApplyChange(ch, t0)
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				gotPatch := ""
				if patch != nil {
					gotPatch = jsonOf(t, patch)
				}
				if gotPatch != s.wantPatch {
					t.Errorf("step %d: device patch %s, want %s", i, gotPatch, s.wantPatch)
				}
				if got := jsonOf(t, d.Tags); got != s.wantTags {
					t.Errorf("step %d: tags %s, want %s", i, got, s.wantTags)
				}
				if got := jsonOf(t, d.Desired.Props); got != s.wantDesired {
					t.Errorf("step %d: desired %s, want %s", i, got, s.wantDesired)
				}
				if d.Desired.Version != s.wantVersion {
					t.Errorf("step %d: desired $version %d, want %d", i, d.Desired.Version, s.wantVersion)
				}
				changed := d.Version != version
				if changed != (d.ETag != etag) {
					t.Errorf("step %d: version moved %v but etag moved %v", i, changed, d.ETag != etag)
				}
				if changed && d.Version != version+1 {
					t.Errorf("step %d: twin version %d -> %d", i, version, d.Version)
				}
			}
		})
	}
}

func TestServicePatchErrors(t *testing.T) {
	cases := []struct {
		body string
		code errcode.Code
	}{
		{`{"properties":{"reported":{"a":1}}}`, errcode.ArgumentInvalid},
		{`{"properties":{"desired":{"$metadata":{}}}}`, errcode.ArgumentInvalid},
		{`{"properties":{"desired":5}}`, errcode.ArgumentInvalid},
		{`{"properties":[]}`, errcode.ArgumentInvalid},
		{`{"tags":"x"}`, errcode.ArgumentInvalid},
		{`{"tags":{"a.b":1}}`, errcode.ArgumentInvalid},
		{`{"tags":` + nested(12) + `}`, errcode.ArgumentInvalid},
		{`not json`, errcode.IotHubFormatError},
	}
	for _, c := range cases {
		if _, err := ParseServicePatch([]byte(c.body)); !errcode.Is(err, c.code) {
			t.Errorf("ParseServicePatch(%.50s) = %v, want %s", c.body, err, c.code.Name)
		}
	}
}

func TestSizeLimits(t *testing.T) {
	big := func(n int) string { return strings.Repeat("x", n) }
	// Each value is 4000 bytes plus a short key; nine of them pass 32 KB.
	var sb strings.Builder
	sb.WriteString(`{`)
	for i := range 9 {
		if i > 0 {
			sb.WriteString(",")
		}
		sb.WriteString(`"k` + string(rune('a'+i)) + `":"` + big(4000) + `"`)
	}
	sb.WriteString(`}`)
	tooBig := sb.String()

	d := New(t0)
	before := jsonOf(t, d)
	if _, err := d.ApplyReported(mustPatch(t, tooBig), t0); !IsTooLarge(err) || !errcode.Is(err, errcode.ArgumentInvalid) {
		t.Errorf("oversize reported: %v, want ArgumentInvalid caused by ErrTooLarge", err)
	}
	c, _ := ParseServicePatch([]byte(`{"properties":{"desired":` + tooBig + `}}`))
	if _, err := d.ApplyChange(c, t0); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversize desired: %v", err)
	}
	c, _ = ParseServicePatch([]byte(`{"tags":{"a":"` + big(4000) + `","b":"` + big(4000) + `","c":"` + big(200) + `"}}`))
	if _, err := d.ApplyChange(c, t0); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversize tags: %v", err)
	}
	if after := jsonOf(t, d); after != before {
		t.Errorf("failed changes modified the document")
	}
	// Just under the limits is fine.
	c, _ = ParseServicePatch([]byte(`{"tags":{"a":"` + big(4000) + `","b":"` + big(4000) + `"}}`))
	if _, err := d.ApplyChange(c, t0); err != nil {
		t.Errorf("8002-byte tags refused: %v", err)
	}
}

func TestSize(t *testing.T) {
	m := mustPatch(t, `{"ab":"cde","n":1.5,"b":true,"o":{"x":null,"arr":[1,"zz"]}}`)
	// ab+cde=5, n+8=9, b+4=5, o + (x+0) + (arr + 8 + 2) = 1+1+3+10 = 15
	if got := Size(m); got != 34 {
		t.Errorf("Size = %d, want 34", got)
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	d := New(t0)
	c, _ := ParseServicePatch([]byte(`{"tags":{"t":1},"properties":{"desired":{"n":12345678901234567890,"a":[1,{"b":2}]}}}`))
	if _, err := d.ApplyChange(c, t0); err != nil {
		t.Fatal(err)
	}
	b, err := d.Encode()
	if err != nil {
		t.Fatal(err)
	}
	d2, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(d.Desired.Props, d2.Desired.Props) || jsonOf(t, d) != jsonOf(t, d2) {
		t.Errorf("round trip changed the document:\n%s\n%s", jsonOf(t, d), jsonOf(t, d2))
	}
	if got := jsonOf(t, d2.DeviceView()["desired"].(map[string]any)["n"]); got != "12345678901234567890" {
		t.Errorf("big number came back as %s", got)
	}
}

// FuzzApplyPatch feeds arbitrary bodies through the parsers and the merger: no
// panic, versions move by one, and a document that was accepted survives a
// storage round trip.
func FuzzApplyPatch(f *testing.F) {
	seeds := []string{
		`{"a":1}`, `{"a":null}`, `{"a":{"b":{"c":[1,2,{"d":null}]}}}`, `{"$version":3}`, `{"$x":1}`,
		`{"tags":{"a":1},"properties":{"desired":{"b":null}}}`, `{"properties":{"desired":null}}`,
		`{"properties":{"reported":{}}}`, nested(11), nested(12), `[]`, `null`, `"x"`, `{"a":1e400}`,
		`{"a":"\u0000"}`, `{"é":"ü"}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, replace bool) {
		d := New(t0)
		if _, err := d.ApplyReported(mustPatchOr(body), t0); err != nil && !errcode.Is(err, errcode.ArgumentInvalid) {
			t.Fatalf("ApplyReported: unexpected error %v", err)
		}
		if p, err := ParsePatch(body); err == nil {
			v := d.Reported.Version
			if nv, err := d.ApplyReported(p, t0); err == nil && nv != v+1 {
				t.Fatalf("reported version %d -> %d", v, nv)
			}
		}
		parse := ParseServicePatch
		if replace {
			parse = ParseReplacement
		}
		c, err := parse(body)
		if err != nil {
			var ce *errcode.Error
			if !errors.As(err, &ce) {
				t.Fatalf("parse error without a code: %v", err)
			}
			return
		}
		v := d.Desired.Version
		patch, err := d.ApplyChange(c, t0)
		if err != nil {
			return
		}
		if patch != nil && (d.Desired.Version != v+1 || patch["$version"] != d.Desired.Version) {
			t.Fatalf("desired version %d -> %d, patch %v", v, d.Desired.Version, patch["$version"])
		}
		b, err := d.Encode()
		if err != nil {
			t.Fatalf("Encode: %v", err)
		}
		if _, err := Decode(b); err != nil {
			t.Fatalf("Decode of encoded document: %v", err)
		}
	})
}

func mustPatchOr(body []byte) map[string]any {
	p, err := ParsePatch(body)
	if err != nil {
		return map[string]any{}
	}
	return p
}
