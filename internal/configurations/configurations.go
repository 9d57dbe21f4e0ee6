// Package configurations is IoT Hub's automatic device configurations
// (/configurations/{id}): documents that say "every device twin that matches
// targetCondition should have these desired properties", with a priority to
// settle overlaps, labels, and metrics that count the devices in each state.
//
// Service keeps them (in a Store; SQLite by default) and owns the applier, a
// goroutine that periodically, and at once after each change, writes the
// winning configuration's deviceContent into every matching twin's desired
// properties. Applying is idempotent: a twin that already holds the content is
// not patched, so its desired $version moves only on a real change.
// applyConfigurationContent applies content to one device on demand.
package configurations

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
)

// Configuration is a configuration in IoT Hub's JSON shape.
type Configuration struct {
	ID                 string            `json:"id"`
	SchemaVersion      string            `json:"schemaVersion"`
	Labels             map[string]string `json:"labels"`
	Content            Content           `json:"content"`
	ContentType        string            `json:"contentType,omitempty"`
	TargetCondition    string            `json:"targetCondition"`
	CreatedTimeUtc     time.Time         `json:"createdTimeUtc"`
	LastUpdatedTimeUtc time.Time         `json:"lastUpdatedTimeUtc"`
	Priority           int               `json:"priority"`
	SystemMetrics      Metrics           `json:"systemMetrics"`
	Metrics            Metrics           `json:"metrics"`
	ETag               string            `json:"etag"`
}

// Content is what a configuration applies. deviceContent keys are twin paths
// "properties.desired.{name}[.{name}…]"; modulesContent is keyed by module id,
// each value an object with "properties.desired" (the module twin's whole
// desired properties) and/or "properties.desired.{name}" keys.
type Content struct {
	DeviceContent  map[string]json.RawMessage `json:"deviceContent,omitempty"`
	ModulesContent map[string]json.RawMessage `json:"modulesContent,omitempty"`
	ModuleContent  map[string]json.RawMessage `json:"moduleContent,omitempty"`
}

// Metrics are named queries and their latest counts.
type Metrics struct {
	Results map[string]int64  `json:"results"`
	Queries map[string]string `json:"queries"`
}

// System metric names.
const (
	MetricTargeted = "targetedCount"
	MetricApplied  = "appliedCount"
)

// Error codes of the configurations API that errcode does not define.
var (
	ConfigurationNotFound      = errcode.Code{Name: "ConfigurationNotFound", Number: 404013, Status: http.StatusNotFound}
	ConfigurationAlreadyExists = errcode.Code{Name: "ConfigurationAlreadyExists", Number: 409302, Status: http.StatusConflict}
)

// Limits, as IoT Hub documents them.
const (
	MaxIDLength         = 128
	MaxLabels           = 100
	MaxLabelLength      = 128
	MaxCustomMetrics    = 5
	MaxContentBytes     = 512 * 1024
	DefaultListTop      = 20
	MaxListTop          = 100
	DefaultApplyPeriod  = 10 * time.Second
	maxConditionPreview = 140
)
