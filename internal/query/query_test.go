package query

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/moat-iot/moat/internal/errcode"
)

// twinsJSON are device twins in IoT Hub's shape, modelled on the examples in
// the IoT Hub query documentation.
const twinsJSON = `[
{"deviceId":"myDeviceId","etag":"AAAAAAAAAAc=","status":"enabled","connectionState":"Disconnected",
 "lastActivityTime":"2021-05-07T00:50:38.0543092Z","version":2,"capabilities":{"iotEdge":false},
 "tags":{"location":{"region":"US","plant":"Redmond43"}},
 "properties":{"desired":{"telemetryConfig":{"configId":"db00","sendFrequencyInSecs":300},"$metadata":{},"$version":4},
  "reported":{"connectivity":{"type":"cellular"},"connectivityKind":"wifi","temp":5,
   "telemetryConfig":{"configId":"db00","sendFrequencyInSecs":300,"status":"Success"},"$metadata":{},"$version":7}}},
{"deviceId":"dev2","etag":"x","status":"enabled","connectionState":"Connected","version":3,
 "tags":{"location":{"region":"EU","plant":"Dublin"}},
 "properties":{"desired":{"$version":1},"reported":{"connectivityKind":"wired","temp":2.5,
   "telemetryConfig":{"sendFrequencyInSecs":30,"status":"Pending"},"$version":2}}},
{"deviceId":"dev3","etag":"y","status":"disabled","connectionState":"Disconnected","version":1,
 "tags":{"location":{"region":"US"}},
 "properties":{"desired":{"$version":1},"reported":{"temp":"hot","telemetryConfig":{"status":"Success"},"$version":1}}},
{"deviceId":"other","etag":"z","status":"enabled","connectionState":"Disconnected","version":1,
 "properties":{"desired":{"$version":1},"reported":{"connectivityKind":"wifi","temp":40,
   "telemetryConfig":{"status":"Error"},"$version":1}}},
{"deviceId":"dev5","etag":"w","status":"enabled","connectionState":"Disconnected","version":1,"tags":{"location":{"region":"US"}},
 "properties":{"desired":{"$version":1},"reported":{"telemetryConfig":{"status":"Pending"},"$version":1}}},
{"deviceId":"dev6","etag":"v","status":"enabled","connectionState":"Disconnected","version":1,
 "properties":{"desired":{"$version":1},"reported":{"telemetryConfig":{"status":"Success"},"$version":1}}}
]`

const modulesJSON = `[
{"deviceId":"device1","moduleId":"m1","properties":{"desired":{},"reported":{"status":"scanning"}}},
{"deviceId":"device2","moduleId":"m2","properties":{"desired":{},"reported":{"status":"idle"}}},
{"deviceId":"device3","moduleId":"m1","properties":{"desired":{},"reported":{"status":"scanning"}}}
]`

// decode returns docs decoded both ways the hub may decode them: with
// float64 numbers and with json.Number.
func decode(t testing.TB, src string) map[string][]map[string]any {
	t.Helper()
	var plain []map[string]any
	if err := json.Unmarshal([]byte(src), &plain); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(src)))
	dec.UseNumber()
	var num []map[string]any
	if err := dec.Decode(&num); err != nil {
		t.Fatal(err)
	}
	return map[string][]map[string]any{"float64": plain, "UseNumber": num}
}

func ids(rows []any, key string) []string {
	out := []string{}
	for _, r := range rows {
		m, _ := r.(map[string]any)
		s, _ := m[key].(string)
		out = append(out, s)
	}
	return out
}

func TestSelectWhere(t *testing.T) {
	tests := []struct {
		q    string
		from string
		want []string
	}{
		{"SELECT * FROM devices", "devices", []string{"myDeviceId", "dev2", "dev3", "other", "dev5", "dev6"}},
		{"SELECT * FROM devices WHERE tags.location.region = 'US'", "devices", []string{"myDeviceId", "dev3", "dev5"}},
		{"select * from DEVICES where tags.location.region = \"US\"", "devices", []string{"myDeviceId", "dev3", "dev5"}},
		{`SELECT * FROM devices
		  WHERE tags.location.region = 'US'
		    AND properties.reported.telemetryConfig.sendFrequencyInSecs >= 60`, "devices", []string{"myDeviceId"}},
		{"SELECT * FROM devices WHERE tags.location.region = 'US' AND properties.reported.temp > 3", "devices", []string{"myDeviceId"}},
		{"SELECT * FROM devices WHERE properties.reported.temp > 3", "devices", []string{"myDeviceId", "other"}},
		{"SELECT * FROM devices WHERE properties.reported.temp < 3", "devices", []string{"dev2"}},
		{"SELECT * FROM devices WHERE properties.reported.connectivityKind IN ['wired', 'wifi']", "devices", []string{"myDeviceId", "dev2", "other"}},
		{"SELECT * FROM devices WHERE properties.reported.connectivityKind NIN ['wired']", "devices", []string{"myDeviceId", "other"}},
		{"SELECT * FROM devices WHERE properties.reported.connectivityKind NOT IN ['wired']", "devices", []string{"myDeviceId", "other"}},
		{"SELECT * FROM devices WHERE deviceId IN ['dev2','dev3']", "devices", []string{"dev2", "dev3"}},
		{"SELECT * FROM devices WHERE is_defined(properties.reported.connectivity)", "devices", []string{"myDeviceId"}},
		{"SELECT * FROM devices WHERE NOT IS_DEFINED(tags)", "devices", []string{"other", "dev6"}},
		{"SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'dev')", "devices", []string{"dev2", "dev3", "dev5", "dev6"}},
		{"SELECT * FROM devices WHERE status = 'enabled' AND connectionState = 'Disconnected'", "devices", []string{"myDeviceId", "other", "dev5", "dev6"}},
		{"SELECT * FROM devices WHERE properties.desired.$version > 1", "devices", []string{"myDeviceId"}},
		{"SELECT * FROM devices WHERE version = 3", "devices", []string{"dev2"}},
		{"SELECT * FROM devices WHERE capabilities.iotEdge = false", "devices", []string{"myDeviceId"}},
		// Case-insensitive property fallback.
		{"SELECT * FROM devices WHERE DeviceId = 'dev2'", "devices", []string{"dev2"}},
		// A string never equals a number; != over a missing property is undefined.
		{"SELECT * FROM devices WHERE properties.reported.temp = '5'", "devices", []string{}},
		{"SELECT * FROM devices WHERE properties.reported.temp != 5", "devices", []string{"dev2", "other"}},
		{"SELECT * FROM devices WHERE tags.location.region = 'US' OR properties.reported.temp > 30", "devices", []string{"myDeviceId", "dev3", "other", "dev5"}},
		{"SELECT * FROM devices WHERE (version + 1) * 2 = 8", "devices", []string{"dev2"}},
		{"SELECT TOP 2 * FROM devices", "devices", []string{"myDeviceId", "dev2"}},
		{"SELECT TOP 10 * FROM devices WHERE tags.location.region = 'US'", "devices", []string{"myDeviceId", "dev3", "dev5"}},
		{"SELECT TOP 0 * FROM devices", "devices", []string{}},
		{"SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = 'dev2'", "devices.jobs", []string{"dev2"}},
		{"SELECT * FROM devices WHERE devices.deviceId = 'dev3'", "devices", []string{"dev3"}},
	}
	for name, docs := range decode(t, twinsJSON) {
		for _, tt := range tests {
			s, err := ParseSelect(tt.q)
			if err != nil {
				t.Fatalf("%s: ParseSelect(%q): %v", name, tt.q, err)
			}
			if s.From() != tt.from {
				t.Errorf("%q: From() = %q, want %q", tt.q, s.From(), tt.from)
			}
			rows, err := s.Execute(docs)
			if err != nil {
				t.Fatalf("%s: Execute(%q): %v", name, tt.q, err)
			}
			if got := ids(rows, "deviceId"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s: %q = %v, want %v", name, tt.q, got, tt.want)
			}
			// SELECT * returns the documents themselves.
			for _, r := range rows {
				if _, ok := r.(map[string]any); !ok {
					t.Fatalf("row is %T", r)
				}
			}
		}
	}
}

func TestSelectModules(t *testing.T) {
	docs := decode(t, modulesJSON)["UseNumber"]
	tests := []struct {
		q    string
		want []string
	}{
		{"SELECT * FROM devices.modules WHERE moduleId = 'm1'", []string{"device1", "device3"}},
		{"SELECT * FROM devices.modules WHERE properties.reported.status = 'scanning' AND deviceId IN ['device1', 'device2']", []string{"device1"}},
	}
	for _, tt := range tests {
		s, err := ParseSelect(tt.q)
		if err != nil {
			t.Fatal(err)
		}
		if s.From() != "devices.modules" {
			t.Errorf("From() = %q", s.From())
		}
		rows, _ := s.Execute(docs)
		if got := ids(rows, "deviceId"); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q = %v, want %v", tt.q, got, tt.want)
		}
	}
}

func TestSelectProjection(t *testing.T) {
	docs := decode(t, twinsJSON)["UseNumber"]
	tests := []struct {
		q    string
		want []map[string]any
	}{
		{"SELECT deviceId, tags.location.region AS x FROM devices WHERE version > 1",
			[]map[string]any{{"deviceId": "myDeviceId", "x": "US"}, {"deviceId": "dev2", "x": "EU"}}},
		// The documented example: names come out as the twin spells them.
		{"SELECT DeviceId, LastActivityTime FROM devices WHERE status = 'enabled' AND connectionState = 'Disconnected' AND is_defined(tags)",
			[]map[string]any{{"deviceId": "myDeviceId", "lastActivityTime": "2021-05-07T00:50:38.0543092Z"}, {"deviceId": "dev5"}}},
		// Values are the document's own: json.Number stays json.Number; missing ones are left out.
		{"SELECT deviceId, properties.reported.temp FROM devices WHERE deviceId IN ['myDeviceId', 'dev5']",
			[]map[string]any{{"deviceId": "myDeviceId", "temp": json.Number("5")}, {"deviceId": "dev5"}}},
		{"SELECT TOP 1 deviceId, version * 10 AS v, upper(deviceId) FROM devices",
			[]map[string]any{{"deviceId": "myDeviceId", "v": float64(20), "$1": "MYDEVICEID"}}},
	}
	for _, tt := range tests {
		s, err := ParseSelect(tt.q)
		if err != nil {
			t.Fatalf("ParseSelect(%q): %v", tt.q, err)
		}
		rows, err := s.Execute(docs)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]map[string]any, len(rows))
		for i, r := range rows {
			got[i] = r.(map[string]any)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q =\n %#v\nwant\n %#v", tt.q, got, tt.want)
		}
	}
}

func TestSelectAggregates(t *testing.T) {
	tests := []struct {
		q    string
		want string // JSON of the rows
	}{
		{"SELECT COUNT() AS numberOfDevices FROM devices", `[{"numberOfDevices":6}]`},
		{"SELECT COUNT() as totalNumberOfDevices FROM devices WHERE deviceId = 'nope'", `[{"totalNumberOfDevices":0}]`},
		{`SELECT properties.reported.telemetryConfig.status AS status,
		    COUNT() AS numberOfDevices
		  FROM devices
		  GROUP BY properties.reported.telemetryConfig.status`,
			`[{"numberOfDevices":3,"status":"Success"},{"numberOfDevices":2,"status":"Pending"},{"numberOfDevices":1,"status":"Error"}]`},
		{"SELECT TOP 2 properties.reported.telemetryConfig.status, COUNT() AS n FROM devices GROUP BY properties.reported.telemetryConfig.status",
			`[{"n":3,"status":"Success"},{"n":2,"status":"Pending"}]`},
		{"SELECT tags.location.region AS r, status, COUNT() AS n FROM devices GROUP BY tags.location.region, status",
			`[{"n":2,"r":"US","status":"enabled"},{"n":1,"r":"EU","status":"enabled"},{"n":1,"r":"US","status":"disabled"},{"n":2,"status":"enabled"}]`},
		{"SELECT COUNT() AS n FROM devices GROUP BY status", `[{"n":5},{"n":1}]`},
		{"SELECT COUNT() AS n FROM devices WHERE deviceId = 'nope' GROUP BY status", `[]`},
		{"SELECT SUM(version) AS s, AVG(version) AS a, MIN(version) AS lo, MAX(version) AS hi, COUNT(tags) AS t FROM devices",
			`[{"a":1.5,"hi":3,"lo":1,"s":9,"t":4}]`},
		{"SELECT MIN(deviceId) AS lo, MAX(deviceId) AS hi FROM devices", `[{"hi":"other","lo":"dev2"}]`},
		{"SELECT COUNT() FROM devices", `[{"$1":6}]`},
	}
	for name, docs := range decode(t, twinsJSON) {
		for _, tt := range tests {
			s, err := ParseSelect(tt.q)
			if err != nil {
				t.Fatalf("ParseSelect(%q): %v", tt.q, err)
			}
			rows, err := s.Execute(docs)
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.Marshal(rows)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("%s: %q =\n %s\nwant\n %s", name, tt.q, got, tt.want)
			}
		}
	}
}

func TestSelectCountIsInt(t *testing.T) {
	s, err := ParseSelect("SELECT COUNT() AS n FROM devices")
	if err != nil {
		t.Fatal(err)
	}
	rows, _ := s.Execute([]map[string]any{{"deviceId": "a"}, {"deviceId": "b"}})
	if n, ok := rows[0].(map[string]any)["n"].(int); !ok || n != 2 {
		t.Fatalf("rows = %#v", rows)
	}
	// Numbers of every Go type group together.
	s, _ = ParseSelect("SELECT version, COUNT() AS n FROM devices GROUP BY version")
	rows, _ = s.Execute([]map[string]any{{"version": 1}, {"version": int64(1)}, {"version": 1.0}, {"version": json.Number("1")}, {"version": "1"}})
	if len(rows) != 2 || rows[0].(map[string]any)["n"] != 4 || rows[1].(map[string]any)["n"] != 1 {
		t.Fatalf("rows = %#v", rows)
	}
}

func TestSelectEmptyResultIsArray(t *testing.T) {
	s, _ := ParseSelect("SELECT * FROM devices WHERE deviceId = 'x'")
	rows, err := s.Execute(nil)
	if err != nil || rows == nil {
		t.Fatalf("rows=%v err=%v; want an empty, non-nil slice", rows, err)
	}
	b, _ := json.Marshal(rows)
	if string(b) != "[]" {
		t.Fatalf("got %s", b)
	}
}

func TestParseSelectErrors(t *testing.T) {
	tests := []struct {
		q        string
		line     int
		col      int
		contains string
	}{
		{"SELECT * FROM devices WHERE tags.= 'x'", 1, 34, "expected identifier after '.'"},
		{"SELECT * FROM devices WHERE tags. = 'x'", 1, 35, "expected identifier after '.'"},
		{"SELECT * FROM devices\nWHERE x = 'unterminated", 2, 11, "unterminated string"},
		{"SELECT * FROM devices WHERE", 1, 28, "unexpected end of query"},
		{"SELECT * FROM things", 1, 15, "expected devices"},
		{"SELECT * FROM devices.stuff", 1, 23, "unknown collection"},
		{"SELECT * devices", 1, 10, "expected ',' or FROM"},
		{"DELETE FROM devices", 1, 1, "expected SELECT"},
		{"SELECT * FROM devices WHERE a = 1 ORDER BY a", 1, 35, "expected end of query"},
		{"SELECT * FROM devices WHERE nosuch(a)", 1, 29, "unknown function nosuch"},
		{"SELECT * FROM devices WHERE COUNT() = 1", 1, 29, "only allowed in a SELECT list"},
		{"SELECT COUNT() + 1 FROM devices", 1, 8, "must be a SELECT item of its own"},
		{"SELECT deviceId, COUNT() FROM devices", 1, 8, "GROUP BY path"},
		{"SELECT status, COUNT() FROM devices GROUP BY tags.x", 1, 8, "GROUP BY path"},
		{"SELECT * FROM devices GROUP BY status", 1, 23, "not SELECT *"},
		{"SELECT * FROM devices WHERE a IN ['x'", 1, 38, "expected ',' or ']'"},
		{"SELECT * FROM devices WHERE a = 'x' AND", 1, 40, "unexpected end of query"},
		{"SELECT * FROM devices WHERE a = 0x", 1, 33, "hexadecimal"},
		{"SELECT * FROM devices WHERE a = 12abc", 1, 33, "malformed number"},
		{"SELECT * FROM devices WHERE a = 1e999", 1, 33, "out of range"},
		{"SELECT * FROM devices WHERE a = 'a\\qb'", 1, 35, "unknown escape"},
		{"SELECT * FROM devices WHERE a ! b", 1, 31, "unexpected '!'"},
		{"SELECT * FROM devices WHERE a = #", 1, 33, "unexpected character"},
		{"SELECT * FROM devices WHERE é. = 1", 1, 32, "expected identifier after '.'"},
		{"SELECT * FROM devices WHERE abs(1, 2) = 1", 1, 29, "ABS takes 1 argument"},
		{"SELECT * FROM devices WHERE a = = 1", 1, 33, "unexpected '='"},
		{"SELECT * FROM devices WHERE a[x] = 1", 1, 31, "array index"},
		{"SELECT TOP 1.5 * FROM devices", 1, 12, "whole number"},
		{"SELECT a AS FROM devices", 1, 13, "alias"},
		{"SELECT a AS 'x' FROM devices", 1, 13, "alias"},
		{"", 1, 1, "expected SELECT"},
	}
	for _, tt := range tests {
		_, err := ParseSelect(tt.q)
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("ParseSelect(%q) error = %v, want a *ParseError", tt.q, err)
			continue
		}
		if pe.Line != tt.line || pe.Column != tt.col || !strings.Contains(pe.Msg, tt.contains) {
			t.Errorf("ParseSelect(%q) = %q; want line %d, column %d, containing %q", tt.q, err, tt.line, tt.col, tt.contains)
		}
		if !strings.HasPrefix(err.Error(), "query: line ") {
			t.Errorf("error text %q", err)
		}
		if !errcode.Is(err, errcode.ArgumentInvalid) {
			t.Errorf("ParseSelect(%q): error does not carry ArgumentInvalid", tt.q)
		}
		if got := errcode.From(err); got.Code.Status != 400 || !strings.Contains(got.Message, "column") {
			t.Errorf("errcode.From = %+v", got)
		}
	}
}

func TestLimits(t *testing.T) {
	long := "SELECT * FROM devices WHERE deviceId = '" + strings.Repeat("a", MaxSelectLength) + "'"
	_, err := ParseSelect(long)
	var pe *ParseError
	if !errors.As(err, &pe) || !strings.Contains(pe.Msg, "longer than") || pe.Column != MaxSelectLength+1 {
		t.Fatalf("long query: %v", err)
	}
	// Exactly at the limit, counted in characters, not bytes.
	atLimit := "SELECT * FROM devices WHERE deviceId = '"
	atLimit += strings.Repeat("é", MaxSelectLength-len(atLimit)-1) + "'"
	if _, err := ParseSelect(atLimit); err != nil {
		t.Fatalf("query of %d characters: %v", MaxSelectLength, err)
	}

	deep := "SELECT * FROM devices WHERE " + strings.Repeat("(", MaxDepth+1) + "a = 1" + strings.Repeat(")", MaxDepth+1)
	if _, err := ParseSelect(deep); err == nil || !strings.Contains(err.Error(), "nested") {
		t.Fatalf("deep query: %v", err)
	}
	ok := "SELECT * FROM devices WHERE " + strings.Repeat("(", MaxDepth-1) + "a = 1" + strings.Repeat(")", MaxDepth-1)
	if _, err := ParseSelect(ok); err != nil {
		t.Fatalf("nesting %d: %v", MaxDepth-1, err)
	}
	for _, prefix := range []string{"NOT ", "-", "abs(", "["} {
		c := strings.Repeat(prefix, 200) + "1"
		if _, err := ParseCondition(c); err == nil || !strings.Contains(err.Error(), "nested") {
			t.Errorf("%q×200: %v", prefix, err)
		}
	}
	// Long flat chains are not nesting: a generated OR list of 300 ids is fine.
	var b strings.Builder
	b.WriteString("SELECT * FROM devices WHERE ")
	for i := 0; i < 300; i++ {
		if i > 0 {
			b.WriteString(" OR ")
		}
		b.WriteString("deviceId = 'd")
		b.WriteString(strings.Repeat("x", i%7))
		b.WriteString("'")
	}
	s, err := ParseSelect(b.String())
	if err != nil {
		t.Fatal(err)
	}
	if !s.Matches(map[string]any{"deviceId": "dxxx"}) || s.Matches(map[string]any{"deviceId": "q"}) {
		t.Fatal("OR chain evaluated wrongly")
	}
}

func TestTwinCondition(t *testing.T) {
	docs := decode(t, twinsJSON)["float64"]
	c, err := ParseTwinCondition("tags.location.region = 'US' AND properties.reported.telemetryConfig.status = 'Success'")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range docs {
		if c.Match(d) {
			got = append(got, d["deviceId"].(string))
		}
	}
	if !reflect.DeepEqual(got, []string{"myDeviceId", "dev3"}) {
		t.Fatalf("got %v", got)
	}
	if c.String() == "" {
		t.Fatal("String() is empty")
	}
	if _, err := ParseTwinCondition("deviceId = "); err == nil {
		t.Fatal("want an error")
	}
	if _, err := ParseTwinCondition("   "); err == nil || !strings.Contains(err.Error(), "empty condition") {
		t.Fatalf("empty: %v", err)
	}
}

func TestConcatBound(t *testing.T) {
	big := strings.Repeat("x", maxConcat/2+1)
	c, err := ParseTwinCondition("LENGTH(CONCAT(tags.big, 'a')) > 0 AND NOT IS_DEFINED(CONCAT(tags.big, tags.big))")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Match(map[string]any{"tags": map[string]any{"big": big}}) {
		t.Fatal("CONCAT beyond the bound should be undefined")
	}
}

func TestExecuteNil(t *testing.T) {
	var s *Select
	if _, err := s.Execute(nil); err == nil {
		t.Fatal("want an error")
	}
}
