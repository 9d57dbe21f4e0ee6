package query

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// docEnv is the message of IoT Hub's routing documentation: a JSON weather
// body, a few application properties and a device twin.
func docEnv(t testing.TB) *MapEnv {
	t.Helper()
	var body any
	err := json.Unmarshal([]byte(`{"Weather":{"Temperature":50,"Time":"2017-03-09T00:00:00.000Z",
		"PrevTemperatures":[20,30,40],"IsEnabled":true,
		"Location":{"Street":"One Microsoft Way","City":"Redmond","State":"WA"},
		"HistoricalData":[{"Month":"Feb","Temperature":40},{"Month":"Jan","Temperature":30}]},
		"properties":{"desired":{"telemetryConfig":{"sendFrequency":12}}},
		"sensor-id":"s1","nothing":null}`), &body)
	if err != nil {
		t.Fatal(err)
	}
	var twin map[string]any
	err = json.Unmarshal([]byte(`{"deviceId":"d1","tags":{"deploymentLocation":{"building":"43","floor":"1"},"level":3},
		"properties":{"desired":{"telemetryConfig":{"sendFrequency":"5m"},"$metadata":{},"$version":1},
		"reported":{"telemetryConfig":{"sendFrequency":"5m","status":"success"},"batteryLevel":55,"$version":4}}}`), &twin)
	if err != nil {
		t.Fatal(err)
	}
	return &MapEnv{
		System: map[string]string{
			"contentType":        "application/json",
			"contentEncoding":    "UTF-8",
			"connectionDeviceId": "d1",
			"enqueuedTime":       "2017-05-08T18:55:31.8514657Z",
			"dt-dataschema":      "dtmi:com:example:Thermostat;1",
			"dt-subject":         "thermostat1",
		},
		App: map[string]string{
			"processingPath":        "hot",
			"verbose":               "true",
			"severity":              "2",
			"temp":                  "35",
			"Status":                "Active",
			"$custom":               "c",
			"iothub-message-schema": "twinChangeNotification",
			"a.b":                   "dotted",
			"empty":                 "",
		},
		JSON:    body,
		HasJSON: true,
		TwinDoc: twin,
	}
}

func TestConditionMatch(t *testing.T) {
	tests := []struct {
		cond string
		want Truth
	}{
		// Documented examples (iot-hub-devguide-routing-query-syntax).
		{"$contentEncoding = 'UTF-8'", True},
		{"processingPath = 'hot'", True},
		{"$contentEncoding = 'UTF-8' AND processingPath = 'hot'", True},
		{"$body.Weather.HistoricalData[0].Month = 'Feb'", True},
		{"$body.Weather.Temperature = 50 AND $body.Weather.IsEnabled", True},
		{"length($body.Weather.Location.State) = 2", True},
		{"$body.Weather.Temperature = 50 AND processingPath = 'hot'", True},
		{"$body.properties.desired.telemetryConfig.sendFrequency > 10", True},
		{"is_defined($body.properties.desired.telemetryConfig.sendFrequency)", True},
		{"$body[0] = 'Feb'", Undefined},
		{"$twin.properties.desired.telemetryConfig.sendFrequency = '5m'", True},
		{"$body.Weather.Temperature = 50 AND $twin.properties.desired.telemetryConfig.sendFrequency = '5m'", True},
		{"$twin.tags.deploymentLocation.floor = '1'", True},
		// The documentation also shows floor = 1 against the string "1": strict typing says undefined.
		{"$twin.tags.deploymentLocation.floor = 1", Undefined},
		{"messageType = 'alerts' AND as_number(severity) <= 2", Undefined}, // messageType is missing
		{"processingPath = 'hot' AND as_number(severity) <= 2", True},
		// Application properties are strings.
		{"temp > 30", Undefined},
		{"as_number(temp) > 30", True},
		{"temp > '30'", True}, // ordinal string comparison
		{"verbose = true", Undefined},
		{"verbose = 'true'", True},
		// Property names are case-insensitive; values are not.
		{"PROCESSINGPATH = 'hot'", True},
		{"status = 'Active'", True},
		{"status = 'active'", False},
		{"$CONTENTTYPE = 'application/json'", True},
		{"$Body.weather.temperature = 50", True},
		{"$TWIN.Tags.Level = 3", True},
		// System properties, then "$name" application properties.
		{"$connectionDeviceId = 'd1'", True},
		{"$dt-dataschema = 'dtmi:com:example:Thermostat;1'", True},
		{"$dt-subject = 'thermostat1'", True},
		{"$enqueuedTime > '2017-01-01'", True},
		{"$custom = 'c'", True},
		{"$connectionModuleId = 'm'", Undefined},
		{"iothub-message-schema = 'twinChangeNotification'", True},
		{"a.b = 'dotted'", True},
		{"$body.sensor-id = 's1'", True},
		{"$body['sensor-id'] = 's1'", True},
		{"$body.Weather.PrevTemperatures[2] - 40 = 0", True},
		{"$body.Weather.PrevTemperatures[3] = 0", Undefined},
		// Arithmetic.
		{"1 + 2 * 3 = 7", True},
		{"(1 + 2) * 3 = 9", True},
		{"10 - 2 - 3 = 5", True},
		{"7 % 4 = 3", True},
		{"-$body.Weather.Temperature = -50", True},
		{"1 / 0 = 1", Undefined},
		{"'a' + 'b' = 'ab'", Undefined},
		{"0x10 = 16", True},
		{"1.5e1 = 15", True},
		{"$twin.properties.reported.batteryLevel + 5 >= 60", True},
		// Comparisons and types.
		{"null = null", True},
		{"$body.nothing = null", True},
		{"$body.nothing != null", False},
		{"$body.missing = null", Undefined},
		{"'abc' < 'abd'", True},
		{"1 <> 2", True},
		{"1 != 1", False},
		{"true = true", True},
		{"true < false", Undefined},
		{"$body.Weather = $body.Weather", Undefined}, // objects do not compare
		{"'1' = 1", Undefined},
		// IN.
		{"processingPath IN ['cold', 'hot']", True},
		{"processingPath IN ['cold']", False},
		{"processingPath NIN ['cold']", True},
		{"processingPath NOT IN ['hot']", False},
		{"missing IN ['x']", Undefined},
		{"missing NIN ['x']", Undefined},
		{"$body.Weather.Temperature IN [40, 50]", True},
		{"processingPath IN [LOWER('HOT'), 'x']", True},
		{"processingPath IN 'hot'", Undefined},
		// Three-valued logic.
		{"false AND missing = 1", False},
		{"missing = 1 AND false", False},
		{"true AND missing = 1", Undefined},
		{"true OR missing = 1", True},
		{"missing = 1 OR true", True},
		{"false OR missing = 1", Undefined},
		{"NOT missing = 1", Undefined},
		{"NOT (missing = 1)", Undefined},
		{"NOT NOT true", True},
		{"NOT 'x'", Undefined},
		{"'x' AND true", Undefined},
		{"'x' OR true", True},
		{"missing", Undefined},
		{"processingPath", Undefined}, // a string is not true
		{"true", True},
		{"false", False},
		{"undefined", Undefined},
		{"null", Undefined},
		{"a = 1 or b = 2 and true", Undefined},
		// Functions.
		{"ABS(-3) = 3", True},
		{"exp(0) = 1", True},
		{"POWER(2, 10) = 1024", True},
		{"SQUARE(3) = 9", True},
		{"CEILING(1.2) = 2", True},
		{"FLOOR(-1.2) = -2", True},
		{"SIGN(-7) = -1 AND SIGN(0) = 0 AND SIGN(3) = 1", True},
		{"SQRT(16) = 4", True},
		{"SQRT(-1) = 1", Undefined},
		{"ABS('x') = 1", Undefined},
		{"AS_NUMBER('12.5') = 12.5", True},
		{"AS_NUMBER(' -3e2 ') = -300", True},
		{"IS_DEFINED(AS_NUMBER('abc'))", False},
		{"IS_DEFINED(AS_NUMBER('0x10'))", False},
		{"IS_DEFINED(AS_NUMBER('NaN'))", False},
		{"AS_NUMBER(5) = 5", True},
		{"IS_ARRAY($body.Weather.PrevTemperatures)", True},
		{"IS_ARRAY($body.Weather)", False},
		{"IS_BOOL($body.Weather.IsEnabled)", True},
		{"IS_DEFINED(missing)", False},
		{"IS_DEFINED($body.nothing)", True},
		{"IS_NULL($body.nothing)", True},
		{"IS_NULL(missing)", False},
		{"IS_NUMBER($body.Weather.Temperature)", True},
		{"IS_NUMBER(severity)", False},
		{"IS_OBJECT($body.Weather.Location)", True},
		{"IS_PRIMITIVE($body.nothing) AND IS_PRIMITIVE(1) AND NOT IS_PRIMITIVE($body.Weather)", True},
		{"IS_STRING(severity)", True},
		{"CONCAT(processingPath, '-', $connectionDeviceId) = 'hot-d1'", True},
		{"CONCAT('a', 1) = 'a1'", Undefined},
		{"LENGTH('héllo') = 5", True},
		{"LOWER($contentType) = 'application/json'", True},
		{"UPPER(processingPath) = 'HOT'", True},
		{"SUBSTRING('hello', 1, 3) = 'ell'", True},
		{"SUBSTRING('hello', 3) = 'lo'", True},
		{"SUBSTRING('héllo', 1, 1) = 'é'", True},
		{"SUBSTRING('hello', 10, 2) = ''", True},
		{"SUBSTRING('hello', -2, 2) = 'he'", True},
		{"INDEX_OF('héllo', 'l') = 2", True},
		{"INDEX_OF('hello', 'z') = -1", True},
		{"STARTS_WITH($connectionDeviceId, 'd')", True},
		{"ENDS_WITH($contentType, 'json')", True},
		{"CONTAINS($body.Weather.Location.City, 'dmo')", True},
		{"contains(empty, '')", True},
		{"starts_with(missing, 'd')", Undefined},
		// String escapes.
		{`'it\'s' = "it's"`, True},
		{`'\u00e9' = 'é'`, True},
		{`'\ud83d\ude00' = '😀'`, True},
		{`"a\"b" = 'a"b'`, True},
		// Whitespace and case.
		{"  processingPath\n=\t'hot'  ", True},
		{"processingPath = 'hot' aNd $contentEncoding = 'UTF-8'", True},
	}
	env := docEnv(t)
	for _, tt := range tests {
		c, err := ParseCondition(tt.cond)
		if err != nil {
			t.Errorf("ParseCondition(%q): %v", tt.cond, err)
			continue
		}
		if got := c.Evaluate(env); got != tt.want {
			t.Errorf("%q = %v, want %v", tt.cond, got, tt.want)
		}
		if got := c.Match(env); got != (tt.want == True) {
			t.Errorf("Match(%q) = %v", tt.cond, got)
		}
	}
}

func TestConditionBodyNotJSON(t *testing.T) {
	env := docEnv(t)
	env.HasJSON = false
	for _, cond := range []string{
		"$body.Weather.Temperature = 50",
		"is_defined($body.Weather)",
		"$body.Weather.Temperature = 50 OR false",
	} {
		c, err := ParseCondition(cond)
		if err != nil {
			t.Fatal(err)
		}
		if c.Match(env) {
			t.Errorf("%q matched a message without a JSON body", cond)
		}
	}
	// Other references still work.
	c, _ := ParseCondition("$body.Weather.Temperature = 50 OR processingPath = 'hot'")
	if !c.Match(env) {
		t.Error("OR with a true operand should match")
	}
	// Without a twin, $twin is undefined; a nil env leaves everything undefined.
	env.TwinDoc = nil
	c, _ = ParseCondition("is_defined($twin.tags)")
	if c.Match(env) {
		t.Error("$twin defined without a twin")
	}
	c, _ = ParseCondition("NOT is_defined($connectionDeviceId) AND NOT is_defined(x) AND NOT is_defined($body.a)")
	if !c.Match(nil) {
		t.Error("nil env")
	}
}

func TestParseConditionErrors(t *testing.T) {
	tests := []struct {
		cond     string
		col      int
		contains string
	}{
		{"", 1, "empty condition"},
		{"$body.", 7, "expected identifier after '.'"},
		{"$body.a.", 9, "expected identifier after '.'"},
		{"a = ", 5, "unexpected end of query"},
		{"a = 'x' b", 9, "expected an operator or end of condition"},
		{"(a = 1", 7, "expected ')'"},
		{"a = 1)", 6, "expected an operator"},
		{"$ = 1", 1, "name after '$'"},
		{"$contentType.x = 1", 1, "has no fields"},
		{"props[0] = 1", 1, "has no elements"},
		{"COUNT() > 1", 1, "only allowed in a SELECT list"},
		{"SUBSTRING('a')", 1, "SUBSTRING takes 2 to 3 arguments"},
		{"CONCAT('a')", 1, "at least 2 arguments"},
		{"IS_DEFINED()", 1, "1 argument"},
		{"a = 1 AND OR b = 2", 11, "unexpected keyword OR"},
		{"a IN", 5, "unexpected end"},
		{"SELECT", 1, "unexpected keyword SELECT"},
		{"a == 1", 4, "unexpected '='"},
		{"'abc", 1, "unterminated string"},
		{"'\\u12'", 2, "malformed \\u escape"},
		{"1.5.3 = 1", 4, "expected an operator"},
	}
	for _, tt := range tests {
		_, err := ParseCondition(tt.cond)
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("ParseCondition(%q) = %v, want a *ParseError", tt.cond, err)
			continue
		}
		if pe.Line != 1 || pe.Column != tt.col || !strings.Contains(pe.Msg, tt.contains) {
			t.Errorf("ParseCondition(%q) = %q; want column %d containing %q", tt.cond, err, tt.col, tt.contains)
		}
	}
	long := "a = '" + strings.Repeat("x", MaxConditionLength) + "'"
	if _, err := ParseCondition(long); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("long condition: %v", err)
	}
}

func TestConditionString(t *testing.T) {
	c, err := ParseCondition("a = 'b'")
	if err != nil || c.String() != "a = 'b'" {
		t.Fatalf("%v %v", c, err)
	}
	for tr, s := range map[Truth]string{True: "true", False: "false", Undefined: "undefined"} {
		if tr.String() != s {
			t.Errorf("%d.String() = %q", tr, tr.String())
		}
	}
}

// countingEnv records how often the body is asked for, to check that
// false AND … does not evaluate the right side.
type countingEnv struct {
	MapEnv
	bodyCalls int
}

func (c *countingEnv) Body() (any, bool) { c.bodyCalls++; return c.MapEnv.Body() }

func TestShortCircuit(t *testing.T) {
	env := &countingEnv{MapEnv: *docEnv(t)}
	c, _ := ParseCondition("processingPath = 'cold' AND $body.Weather.Temperature = 50")
	if c.Match(env) || env.bodyCalls != 0 {
		t.Fatalf("match=%v bodyCalls=%d", c.Match(env), env.bodyCalls)
	}
	c, _ = ParseCondition("processingPath = 'hot' OR $body.Weather.Temperature = 50")
	if !c.Match(env) || env.bodyCalls != 0 {
		t.Fatalf("bodyCalls=%d", env.bodyCalls)
	}
}

// benchEnv is a minimal Env as the routing engine would write one: fixed
// fields, no maps.
type benchEnv struct {
	deviceID string
	temp     string
}

func (e *benchEnv) SystemProperty(name string) (string, bool) {
	if strings.EqualFold(name, "connectionDeviceId") {
		return e.deviceID, true
	}
	return "", false
}

func (e *benchEnv) AppProperty(name string) (string, bool) {
	if strings.EqualFold(name, "temp") {
		return e.temp, true
	}
	return "", false
}

func (e *benchEnv) Body() (any, bool)            { return nil, false }
func (e *benchEnv) Twin() (map[string]any, bool) { return nil, false }

func TestConditionMatchDoesNotAllocate(t *testing.T) {
	env := &benchEnv{deviceID: "d1", temp: "35"}
	c, err := ParseCondition("$connectionDeviceId = 'd1' AND as_number(temp) > 20")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Match(env) {
		t.Fatal("no match")
	}
	if n := testing.AllocsPerRun(100, func() { c.Match(env) }); n != 0 {
		t.Fatalf("Match allocates %v times per run", n)
	}
}

func BenchmarkConditionMatch(b *testing.B) {
	env := &benchEnv{deviceID: "d1", temp: "35"}
	for _, cond := range []string{
		"$connectionDeviceId = 'd1' AND temp > 20",
		"$connectionDeviceId = 'd1' AND as_number(temp) > 20",
	} {
		c, err := ParseCondition(cond)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(cond, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.Match(env)
			}
		})
	}
	menv := docEnv(b)
	c, err := ParseCondition("$body.Weather.Temperature = 50 AND $twin.tags.deploymentLocation.floor = '1' AND processingPath IN ['hot', 'warm']")
	if err != nil {
		b.Fatal(err)
	}
	b.Run("body+twin+IN over MapEnv", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c.Match(menv)
		}
	})
}
