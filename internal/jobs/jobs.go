// Package jobs runs IoT Hub's scheduled jobs (the "jobs v2" API that the
// official JobClient uses): a direct method invoked on, or a twin patch applied
// to, every device that a query condition selects, once, at a start time.
//
// Service owns the scheduler goroutine and the runners; Store keeps jobs and
// their per-device results so that a restart neither forgets a scheduled job nor
// starts a finished one again. Jobs are at-least-once per device: a job that was
// running when the hub stopped resumes with the devices it had not finished.
package jobs

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
)

// Type is a job's type, spelled as IoT Hub spells it.
type Type string

// The job types this package runs.
const (
	TypeScheduleDeviceMethod Type = "scheduleDeviceMethod"
	TypeScheduleUpdateTwin   Type = "scheduleUpdateTwin"
)

// Status is a job's status.
type Status string

// Job statuses. A job is queued when accepted, scheduled while it waits for
// its start time, running while it works through its devices, and ends
// completed (even if some devices failed), failed (the job itself could not
// run, or ran out of time) or cancelled.
const (
	StatusQueued    Status = "queued"
	StatusScheduled Status = "scheduled"
	StatusRunning   Status = "running"
	StatusCompleted Status = "completed"
	StatusFailed    Status = "failed"
	StatusCancelled Status = "cancelled"
)

// Terminal reports whether a job in status s is over.
func (s Status) Terminal() bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusCancelled
}

// DeviceStatus is one device's state within a job (devices.jobs "status").
type DeviceStatus string

// Per-device statuses. IoT Hub spells the device-level cancel with one "l".
const (
	DevicePending   DeviceStatus = "pending"
	DeviceRunning   DeviceStatus = "running"
	DeviceCompleted DeviceStatus = "completed"
	DeviceFailed    DeviceStatus = "failed"
	DeviceCanceled  DeviceStatus = "canceled"
)

func (s DeviceStatus) terminal() bool {
	return s == DeviceCompleted || s == DeviceFailed || s == DeviceCanceled
}

// CloudToDeviceMethod is a method job's call.
type CloudToDeviceMethod struct {
	MethodName               string          `json:"methodName"`
	Payload                  json.RawMessage `json:"payload"`
	ResponseTimeoutInSeconds int             `json:"responseTimeoutInSeconds"`
	ConnectTimeoutInSeconds  int             `json:"connectTimeoutInSeconds"`
}

// Statistics counts a job's devices by state (deviceJobStatistics).
type Statistics struct {
	DeviceCount    int `json:"deviceCount"`
	FailedCount    int `json:"failedCount"`
	SucceededCount int `json:"succeededCount"`
	RunningCount   int `json:"runningCount"`
	PendingCount   int `json:"pendingCount"`
}

// Job is a job in IoT Hub's JobResponse shape.
type Job struct {
	JobID                     string               `json:"jobId"`
	QueryCondition            string               `json:"queryCondition"`
	CreatedTime               time.Time            `json:"createdTime"`
	StartTime                 time.Time            `json:"startTime"`
	EndTime                   *time.Time           `json:"endTime,omitempty"`
	MaxExecutionTimeInSeconds int64                `json:"maxExecutionTimeInSeconds"`
	Type                      Type                 `json:"type"`
	CloudToDeviceMethod       *CloudToDeviceMethod `json:"cloudToDeviceMethod,omitempty"`
	UpdateTwin                json.RawMessage      `json:"updateTwin,omitempty"`
	Status                    Status               `json:"status"`
	FailureReason             string               `json:"failureReason,omitempty"`
	StatusMessage             string               `json:"statusMessage,omitempty"`
	DeviceJobStatistics       Statistics           `json:"deviceJobStatistics"`
}

// DeviceJob is one device's part in a job, as SELECT * FROM devices.jobs
// returns it.
type DeviceJob struct {
	DeviceID               string          `json:"deviceId"`
	JobID                  string          `json:"jobId"`
	JobType                Type            `json:"jobType"`
	Status                 DeviceStatus    `json:"status"`
	StartTimeUtc           time.Time       `json:"startTimeUtc"`
	EndTimeUtc             *time.Time      `json:"endTimeUtc,omitempty"`
	CreatedDateTimeUtc     time.Time       `json:"createdDateTimeUtc"`
	LastUpdatedDateTimeUtc time.Time       `json:"lastUpdatedDateTimeUtc"`
	Outcome                *Outcome        `json:"outcome,omitempty"`
	Error                  *DeviceJobError `json:"error,omitempty"`
}

// Outcome is what a device answered to a method job.
type Outcome struct {
	DeviceMethodResponse *MethodResponse `json:"deviceMethodResponse"`
}

// MethodResponse is a device's answer to a method.
type MethodResponse struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

// DeviceJobError says why a device's part failed.
type DeviceJobError struct {
	Code        string `json:"code"`
	Description string `json:"description"`
}

// Error codes of the jobs API that errcode does not define.
var (
	// JobAlreadyExists answers a PUT for a job id that is taken.
	JobAlreadyExists = errcode.Code{Name: "JobAlreadyExists", Number: 409002, Status: http.StatusConflict}
)

// Limits.
const (
	// DefaultMaxExecutionTime is what the SDK sends when the caller gives none.
	DefaultMaxExecutionTime = 3600 * time.Second
	// MaxMaxExecutionTime bounds maxExecutionTimeInSeconds (a week).
	MaxMaxExecutionTime = 7 * 24 * time.Hour
	// DefaultConcurrency is how many devices a Service works on at once.
	DefaultConcurrency = 8
	// DefaultPageSize and MaxPageSize bound job queries.
	DefaultPageSize = 100
	MaxPageSize     = 1000
	// MaxJobIDLength is the longest job id accepted.
	MaxJobIDLength = 128
)
