package query

import (
	"encoding/json"
	"errors"
	"testing"
	"unicode/utf8"
)

var selectSeeds = []string{
	"SELECT * FROM devices",
	"SELECT * FROM devices WHERE tags.location.region = 'US' AND properties.reported.temp > 3",
	"SELECT deviceId, tags.x AS x FROM devices",
	"SELECT * FROM devices.modules WHERE moduleId = 'm1'",
	"SELECT COUNT() AS numberOfDevices FROM devices",
	"SELECT properties.reported.telemetryConfig.status AS status, COUNT() AS numberOfDevices FROM devices GROUP BY properties.reported.telemetryConfig.status",
	"SELECT * FROM devices WHERE deviceId IN ['a','b']",
	"SELECT * FROM devices WHERE is_defined(properties.reported.x)",
	"SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'dev')",
	"SELECT TOP 10 * FROM devices",
	"SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = 'x'",
	"SELECT SUM(version) AS s, MIN(tags.a[0]) AS m FROM devices GROUP BY status, tags.b",
	"SELECT upper(deviceId), version * 2 + 1 FROM devices WHERE NOT (a NIN [1, 'x', null, true]) OR b <> -0x1F",
	"SELECT * FROM devices WHERE tags['a b'][2] >= \"q\\u00e9\"",
	"SELECT * FROM devices WHERE tags.",
	"SELECT",
}

var conditionSeeds = []string{
	"$connectionDeviceId = 'd1' AND temp > 20",
	"$body.Weather.HistoricalData[0].Month = 'Feb'",
	"$body.Weather.Temperature = 50 AND $body.Weather.IsEnabled",
	"length($body.Weather.Location.State) = 2",
	"$twin.properties.desired.telemetryConfig.sendFrequency = '5m'",
	"messageType = 'alerts' AND as_number(severity) <= 2",
	"$dt-subject = 'x' OR iothub-message-schema IN ['a', 'b']",
	"CONCAT(a, 'b', $c) = SUBSTRING('xyz', 1, 2) AND INDEX_OF(a, 'q') % 2 = 1",
	"NOT NOT -(-(1)) / 0 = POWER(2, 0.5)",
	"((((a))))",
	"'\\ud83d\\ude00' = '😀'",
	"$body[0] = 'Feb'",
	"",
	"a =",
}

// fuzzDoc is a twin with every JSON type in it, decoded both ways.
func fuzzDocs(t testing.TB) []map[string]any {
	src := `{"deviceId":"dev1","status":"enabled","version":3,"tags":{"a":[1,"x",null,{"y":true}],"a b":[0,1,"q\u00e9"],"b":null,
		"location":{"region":"US"}},"properties":{"desired":{"$version":2},"reported":{"temp":4.5,"x":{"k":[]}}}}`
	docs := decode(t, "["+src+","+src+`,{"deviceId":"dev2"}]`)
	return append(docs["float64"], docs["UseNumber"]...)
}

func FuzzParseSelect(f *testing.F) {
	for _, s := range selectSeeds {
		f.Add(s)
	}
	docs := fuzzDocs(f)
	f.Fuzz(func(t *testing.T, src string) {
		s, err := ParseSelect(src)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Line < 1 || pe.Column < 1 {
				t.Fatalf("ParseSelect(%q): error %v is not a positioned *ParseError", src, err)
			}
			return
		}
		if f := s.From(); f != "devices" && f != "devices.modules" && f != "devices.jobs" {
			t.Fatalf("From() = %q", f)
		}
		rows, err := s.Execute(docs)
		if err != nil {
			t.Fatalf("Execute: %v", err)
		}
		if _, err := json.Marshal(rows); err != nil {
			t.Fatalf("rows do not encode as JSON: %v", err)
		}
	})
}

func FuzzParseCondition(f *testing.F) {
	for _, s := range conditionSeeds {
		f.Add(s)
	}
	env := docEnv(f)
	noBody := docEnv(f)
	noBody.HasJSON = false
	noBody.TwinDoc = nil
	docs := fuzzDocs(f)
	f.Fuzz(func(t *testing.T, src string) {
		c, err := ParseCondition(src)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Line < 1 || pe.Column < 1 || pe.Column > utf8.RuneCountInString(src)+1 {
				t.Fatalf("ParseCondition(%q): error %v is not a positioned *ParseError", src, err)
			}
			return
		}
		for _, e := range []Env{env, noBody, nil} {
			tr := c.Evaluate(e)
			if c.Match(e) != (tr == True) {
				t.Fatalf("Match and Evaluate disagree on %q", src)
			}
		}
		// The same text must compile as a twin condition or fail cleanly.
		if tc, err := ParseTwinCondition(src); err == nil {
			for _, d := range docs {
				tc.Match(d)
			}
		}
	})
}
