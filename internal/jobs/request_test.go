package jobs

import (
	"strings"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
)

var now = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestParseRequest(t *testing.T) {
	twinBody := `"type":"scheduleUpdateTwin","queryCondition":"deviceId = 'a'","updateTwin":{"etag":"*","tags":{"a":1}}`
	methodBody := `"type":"scheduleDeviceMethod","queryCondition":"deviceId IN ['a','b']","cloudToDeviceMethod":{"methodName":"reboot","payload":{"x":1}}`
	tests := []struct {
		name  string
		body  string
		id    string
		code  *errcode.Code
		check func(t *testing.T, j Job)
	}{
		{name: "twin, SDK shape", id: "j", body: `{"jobId":"j",` + twinBody + `,"startTime":"2026-01-02T03:04:10.500Z","maxExecutionTimeInSeconds":60}`,
			check: func(t *testing.T, j Job) {
				if j.Type != TypeScheduleUpdateTwin || j.Status != StatusQueued || j.MaxExecutionTimeInSeconds != 60 {
					t.Errorf("job %+v", j)
				}
				if want := now.Add(5500 * time.Millisecond); !j.StartTime.Equal(want) {
					t.Errorf("start %v, want %v", j.StartTime, want)
				}
				if string(j.UpdateTwin) != `{"etag":"*","tags":{"a":1}}` {
					t.Errorf("updateTwin %s", j.UpdateTwin)
				}
			}},
		{name: "null start is now, defaults", id: "j", body: `{` + twinBody + `,"startTime":null}`,
			check: func(t *testing.T, j Job) {
				if !j.StartTime.Equal(now) || !j.CreatedTime.Equal(now) || j.MaxExecutionTimeInSeconds != 3600 {
					t.Errorf("job %+v", j)
				}
			}},
		{name: "start without zone is UTC", id: "j", body: `{` + twinBody + `,"startTime":"2026-05-01T00:00:00"}`,
			check: func(t *testing.T, j Job) {
				if !j.StartTime.Equal(time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)) {
					t.Errorf("start %v", j.StartTime)
				}
			}},
		{name: "method with defaults", id: "m", body: `{` + methodBody + `}`,
			check: func(t *testing.T, j Job) {
				m := j.CloudToDeviceMethod
				if j.Type != TypeScheduleDeviceMethod || m == nil || m.MethodName != "reboot" || string(m.Payload) != `{"x":1}` ||
					m.ResponseTimeoutInSeconds != 30 || m.ConnectTimeoutInSeconds != 0 || j.UpdateTwin != nil {
					t.Errorf("job %+v method %+v", j, m)
				}
			}},
		{name: "method null payload, case-insensitive keys and type", id: "m",
			body: `{"TYPE":"SCHEDULEDEVICEMETHOD","QueryCondition":"deviceId = 'a'","CloudToDeviceMethod":{"MethodName":"m","payload":null,"responseTimeoutInSeconds":300,"connectTimeoutInSeconds":10}}`,
			check: func(t *testing.T, j Job) {
				m := j.CloudToDeviceMethod
				if string(m.Payload) != "null" || m.ResponseTimeoutInSeconds != 300 || m.ConnectTimeoutInSeconds != 10 {
					t.Errorf("method %+v", m)
				}
			}},
		{name: "empty body", id: "j", body: " ", code: &errcode.ArgumentNull},
		{name: "not JSON", id: "j", body: `{"type":`, code: &errcode.IotHubFormatError},
		{name: "array", id: "j", body: `[]`, code: &errcode.IotHubFormatError},
		{name: "wrong field type", id: "j", body: `{"type":5}`, code: &errcode.IotHubFormatError},
		{name: "id mismatch", id: "j", body: `{"jobId":"k",` + twinBody + `}`, code: &errcode.ArgumentInvalid},
		{name: "bad path id", id: "a/b", body: `{` + twinBody + `}`, code: &errcode.ArgumentInvalid},
		{name: "long id", id: strings.Repeat("a", 129), body: `{` + twinBody + `}`, code: &errcode.ArgumentInvalid},
		{name: "no type", id: "j", body: `{"queryCondition":"deviceId = 'a'"}`, code: &errcode.ArgumentNull},
		{name: "export type", id: "j", body: `{"type":"export","queryCondition":"deviceId = 'a'"}`, code: &errcode.ArgumentInvalid},
		{name: "no condition", id: "j", body: `{"type":"scheduleUpdateTwin","updateTwin":{"tags":{"a":1}}}`, code: &errcode.ArgumentNull},
		{name: "bad condition", id: "j", body: `{"type":"scheduleUpdateTwin","queryCondition":"deviceId = ","updateTwin":{"tags":{"a":1}}}`, code: &errcode.ArgumentInvalid},
		{name: "no updateTwin", id: "j", body: `{"type":"scheduleUpdateTwin","queryCondition":"deviceId = 'a'"}`, code: &errcode.ArgumentNull},
		{name: "updateTwin changes nothing", id: "j", body: `{"type":"scheduleUpdateTwin","queryCondition":"deviceId = 'a'","updateTwin":{"etag":"*"}}`, code: &errcode.ArgumentInvalid},
		{name: "updateTwin reported", id: "j", body: `{"type":"scheduleUpdateTwin","queryCondition":"deviceId = 'a'","updateTwin":{"properties":{"reported":{"a":1}}}}`, code: &errcode.ArgumentInvalid},
		{name: "updateTwin bad key", id: "j", body: `{"type":"scheduleUpdateTwin","queryCondition":"deviceId = 'a'","updateTwin":{"tags":{"a.b":1}}}`, code: &errcode.ArgumentInvalid},
		{name: "no method", id: "j", body: `{"type":"scheduleDeviceMethod","queryCondition":"deviceId = 'a'"}`, code: &errcode.ArgumentNull},
		{name: "no method name", id: "j", body: `{"type":"scheduleDeviceMethod","queryCondition":"deviceId = 'a'","cloudToDeviceMethod":{}}`, code: &errcode.ArgumentInvalid},
		{name: "response timeout too short", id: "j", body: `{"type":"scheduleDeviceMethod","queryCondition":"deviceId = 'a'","cloudToDeviceMethod":{"methodName":"m","responseTimeoutInSeconds":2}}`, code: &errcode.ArgumentInvalid},
		{name: "connect timeout negative", id: "j", body: `{"type":"scheduleDeviceMethod","queryCondition":"deviceId = 'a'","cloudToDeviceMethod":{"methodName":"m","connectTimeoutInSeconds":-1}}`, code: &errcode.ArgumentInvalid},
		{name: "payload too large", id: "j", body: `{"type":"scheduleDeviceMethod","queryCondition":"deviceId = 'a'","cloudToDeviceMethod":{"methodName":"m","payload":"` + strings.Repeat("x", 130*1024) + `"}}`, code: &errcode.MessageTooLarge},
		{name: "bad start", id: "j", body: `{` + twinBody + `,"startTime":"tomorrow"}`, code: &errcode.ArgumentInvalid},
		{name: "negative max", id: "j", body: `{` + twinBody + `,"maxExecutionTimeInSeconds":-5}`, code: &errcode.ArgumentInvalid},
		{name: "fractional max", id: "j", body: `{` + twinBody + `,"maxExecutionTimeInSeconds":1.5}`, code: &errcode.IotHubFormatError},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j, err := ParseRequest([]byte(tc.body), tc.id, now)
			if tc.code != nil {
				if !errcode.Is(err, *tc.code) {
					t.Fatalf("err = %v, want %s", err, tc.code.Name)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if j.JobID != tc.id {
				t.Errorf("jobId %q", j.JobID)
			}
			tc.check(t, j)
		})
	}
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"jobId":"j","type":"scheduleUpdateTwin","queryCondition":"deviceId = 'a'","updateTwin":{"etag":"*","tags":{"a":1}},"startTime":"2026-01-02T03:04:10.500Z","maxExecutionTimeInSeconds":60}`,
		`{"type":"scheduleDeviceMethod","queryCondition":"deviceId IN ['a','b']","cloudToDeviceMethod":{"methodName":"reboot","payload":{"x":1},"responseTimeoutInSeconds":30}}`,
		`{"type":"scheduleUpdateTwin","queryCondition":"tags.x.y[0] > 3 AND NOT is_defined(properties.reported.z)","updateTwin":{"properties":{"desired":{"a":null}}}}`,
		`{}`, `null`, `[]`, `{"type":null}`, `{"startTime":1}`, "",
	} {
		f.Add([]byte(s), "j")
	}
	f.Fuzz(func(t *testing.T, body []byte, id string) {
		j, err := ParseRequest(body, id, now)
		if err != nil {
			if errcode.From(err).Code.Status >= 500 {
				t.Fatalf("a bad request is a server error: %v", err)
			}
			return
		}
		if j.JobID != id || j.Status != StatusQueued || j.QueryCondition == "" || j.MaxExecutionTimeInSeconds <= 0 {
			t.Fatalf("accepted an incomplete job: %+v", j)
		}
		if (j.Type == TypeScheduleDeviceMethod) == (j.CloudToDeviceMethod == nil) || (j.Type == TypeScheduleUpdateTwin) == (j.UpdateTwin == nil) {
			t.Fatalf("job type and body disagree: %+v", j)
		}
	})
}
