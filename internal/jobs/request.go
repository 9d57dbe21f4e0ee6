package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/methods"
	"github.com/moat-iot/moat/internal/query"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/twin"
)

// request is the body of PUT /jobs/v2/{id}. Keys match case-insensitively, as
// IoT Hub's deserializer does; fields the hub owns (status, times other than
// startTime, statistics) are ignored so that a job read back can be sent again.
type request struct {
	JobID               string          `json:"jobId"`
	Type                string          `json:"type"`
	CloudToDeviceMethod *methodRequest  `json:"cloudToDeviceMethod"`
	UpdateTwin          json.RawMessage `json:"updateTwin"`
	QueryCondition      string          `json:"queryCondition"`
	StartTime           *string         `json:"startTime"`
	MaxExecution        *int64          `json:"maxExecutionTimeInSeconds"`
}

type methodRequest struct {
	MethodName               string          `json:"methodName"`
	Payload                  json.RawMessage `json:"payload"`
	ResponseTimeoutInSeconds *int            `json:"responseTimeoutInSeconds"`
	ConnectTimeoutInSeconds  *int            `json:"connectTimeoutInSeconds"`
}

// ParseRequest decodes and checks the body of PUT /jobs/v2/{pathID}. It
// returns the job to create, status queued and created at now; a missing or
// null startTime means now. Errors are *errcode.Error values.
func ParseRequest(body []byte, pathID string, now time.Time) (Job, error) {
	now = now.UTC()
	if err := ValidateJobID(pathID); err != nil {
		return Job{}, err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return Job{}, errcode.New(errcode.ArgumentNull, "request body is required")
	}
	var req request
	if err := json.Unmarshal(body, &req); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return Job{}, errcode.New(errcode.IotHubFormatError, "job request: field %q must not be a JSON %s", te.Field, te.Value)
		}
		return Job{}, errcode.Wrap(errcode.IotHubFormatError, err, "job request is not a valid JSON object")
	}
	if req.JobID != "" && req.JobID != pathID {
		return Job{}, errcode.New(errcode.ArgumentInvalid, "jobId %q in the body does not match %q in the path", truncate(req.JobID, 140), pathID)
	}
	j := Job{JobID: pathID, CreatedTime: now, Status: StatusQueued}

	switch {
	case strings.EqualFold(req.Type, string(TypeScheduleDeviceMethod)):
		j.Type = TypeScheduleDeviceMethod
		m, err := checkMethod(req.CloudToDeviceMethod)
		if err != nil {
			return Job{}, err
		}
		j.CloudToDeviceMethod = m
	case strings.EqualFold(req.Type, string(TypeScheduleUpdateTwin)):
		j.Type = TypeScheduleUpdateTwin
		p, err := checkTwinPatch(req.UpdateTwin)
		if err != nil {
			return Job{}, err
		}
		j.UpdateTwin = p
	case req.Type == "":
		return Job{}, errcode.New(errcode.ArgumentNull, "job type is required (scheduleDeviceMethod or scheduleUpdateTwin)")
	default:
		return Job{}, errcode.New(errcode.ArgumentInvalid, "job type %q is not supported here: use scheduleDeviceMethod or scheduleUpdateTwin", truncate(req.Type, 64))
	}

	cond := strings.TrimSpace(req.QueryCondition)
	if cond == "" {
		return Job{}, errcode.New(errcode.ArgumentNull, "queryCondition is required")
	}
	if _, err := query.ParseTwinCondition(cond); err != nil {
		return Job{}, errcode.New(errcode.ArgumentInvalid, "queryCondition: %s", err.Error())
	}
	j.QueryCondition = cond

	j.StartTime = now
	if req.StartTime != nil && strings.TrimSpace(*req.StartTime) != "" {
		t, err := parseTime(*req.StartTime)
		if err != nil {
			return Job{}, errcode.New(errcode.ArgumentInvalid, "startTime %q is not an ISO 8601 time", truncate(*req.StartTime, 64))
		}
		j.StartTime = t
	}

	j.MaxExecutionTimeInSeconds = int64(DefaultMaxExecutionTime / time.Second)
	if req.MaxExecution != nil && *req.MaxExecution != 0 {
		if *req.MaxExecution < 0 || *req.MaxExecution > int64(MaxMaxExecutionTime/time.Second) {
			return Job{}, errcode.New(errcode.ArgumentInvalid, "maxExecutionTimeInSeconds must be between 1 and %d", int64(MaxMaxExecutionTime/time.Second))
		}
		j.MaxExecutionTimeInSeconds = *req.MaxExecution
	}
	return j, nil
}

// ValidateJobID applies IoT Hub's id rules to a job id.
func ValidateJobID(id string) error {
	if len(id) > MaxJobIDLength {
		return errcode.New(errcode.ArgumentInvalid, "job id is longer than %d characters", MaxJobIDLength)
	}
	return registry.ValidateID("job", id)
}

func checkMethod(m *methodRequest) (*CloudToDeviceMethod, error) {
	if m == nil {
		return nil, errcode.New(errcode.ArgumentNull, "cloudToDeviceMethod is required for a scheduleDeviceMethod job")
	}
	if m.MethodName == "" || len(m.MethodName) > 256 {
		return nil, errcode.New(errcode.ArgumentInvalid, "cloudToDeviceMethod.methodName must be 1 to 256 characters")
	}
	out := &CloudToDeviceMethod{
		MethodName:               m.MethodName,
		Payload:                  json.RawMessage("null"),
		ResponseTimeoutInSeconds: int(methods.DefaultResponseTimeout / time.Second),
	}
	if p := bytes.TrimSpace(m.Payload); len(p) > 0 {
		if len(p) > methods.MaxPayload {
			return nil, errcode.New(errcode.MessageTooLarge, "method payload exceeds %d bytes", methods.MaxPayload)
		}
		out.Payload = append(json.RawMessage(nil), p...)
	}
	if m.ResponseTimeoutInSeconds != nil && *m.ResponseTimeoutInSeconds != 0 {
		v := *m.ResponseTimeoutInSeconds
		lo, hi := int(methods.MinResponseTimeout/time.Second), int(methods.MaxResponseTimeout/time.Second)
		if v < lo || v > hi {
			return nil, errcode.New(errcode.ArgumentInvalid, "responseTimeoutInSeconds must be between %d and %d", lo, hi)
		}
		out.ResponseTimeoutInSeconds = v
	}
	if m.ConnectTimeoutInSeconds != nil {
		v := *m.ConnectTimeoutInSeconds
		if hi := int(methods.MaxConnectTimeout / time.Second); v < 0 || v > hi {
			return nil, errcode.New(errcode.ArgumentInvalid, "connectTimeoutInSeconds must be between 0 and %d", hi)
		}
		out.ConnectTimeoutInSeconds = v
	}
	return out, nil
}

// checkTwinPatch requires a twin patch that changes tags or desired
// properties and returns it compacted. The patch's etag is not a
// precondition: a job applies to many twins, so IoT Hub takes it as "*".
func checkTwinPatch(raw json.RawMessage) (json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, errcode.New(errcode.ArgumentNull, "updateTwin is required for a scheduleUpdateTwin job")
	}
	c, err := twin.ParseServicePatch(raw)
	if err != nil {
		return nil, errcode.Wrap(errcode.ArgumentInvalid, err, "updateTwin: %s", errcode.From(err).Message)
	}
	if !c.TagsSet && !c.DesiredSet {
		return nil, errcode.New(errcode.ArgumentInvalid, "updateTwin changes neither tags nor properties.desired")
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, errcode.Wrap(errcode.IotHubFormatError, err, "updateTwin is not valid JSON")
	}
	return buf.Bytes(), nil
}

// parseTime reads an ISO 8601 time; one without a zone (as .NET writes
// DateTime values) is UTC.
func parseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	t, err := time.Parse("2006-01-02T15:04:05.999999999", s)
	if err != nil {
		return time.Time{}, err
	}
	return t.UTC(), nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
