// Package twin is the device and module twin document: tags, desired and reported
// properties with their versions and $metadata, IoT Hub's patch rules (null
// deletes, deep merge) and size limits. It knows nothing of storage or transport.
package twin

import "time"

// Twin is a twin in IoT Hub's REST JSON shape.
type Twin struct {
	DeviceID                  string         `json:"deviceId"`
	ModuleID                  string         `json:"moduleId,omitempty"`
	ETag                      string         `json:"etag"`
	DeviceEtag                string         `json:"deviceEtag"`
	Version                   int64          `json:"version"`
	Status                    string         `json:"status,omitempty"`
	StatusReason              string         `json:"statusReason,omitempty"`
	StatusUpdateTime          time.Time      `json:"statusUpdateTime"`
	ConnectionState           string         `json:"connectionState"`
	LastActivityTime          time.Time      `json:"lastActivityTime"`
	CloudToDeviceMessageCount int            `json:"cloudToDeviceMessageCount"`
	AuthenticationType        string         `json:"authenticationType"`
	X509Thumbprint            map[string]any `json:"x509Thumbprint"`
	ModelID                   string         `json:"modelId"`
	Capabilities              map[string]any `json:"capabilities,omitempty"`
	DeviceScope               string         `json:"deviceScope,omitempty"`
	ParentScopes              []string       `json:"parentScopes,omitempty"`
	Tags                      map[string]any `json:"tags"`
	Properties                Properties     `json:"properties"`
}

// Properties holds the desired and reported sections, each with its "$version"
// and "$metadata" keys as IoT Hub renders them.
type Properties struct {
	Desired  map[string]any `json:"desired"`
	Reported map[string]any `json:"reported"`
}
