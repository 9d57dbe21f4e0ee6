package registry

import "time"

// Device statuses and connection states, spelled as IoT Hub spells them.
const (
	StatusEnabled  = "enabled"
	StatusDisabled = "disabled"

	Connected    = "Connected"
	Disconnected = "Disconnected"
)

// Authentication types.
const (
	AuthSAS                  = "sas"
	AuthSelfSigned           = "selfSigned"
	AuthCertificateAuthority = "certificateAuthority"
	AuthNone                 = "none"
)

// SymmetricKey holds a device's or module's two SAS keys (base64).
type SymmetricKey struct {
	PrimaryKey   string `json:"primaryKey"`
	SecondaryKey string `json:"secondaryKey"`
}

// X509Thumbprint holds the SHA-1 or SHA-256 hex thumbprints of self-signed
// client certificates.
type X509Thumbprint struct {
	PrimaryThumbprint   string `json:"primaryThumbprint"`
	SecondaryThumbprint string `json:"secondaryThumbprint"`
}

// Authentication is how an identity proves itself.
type Authentication struct {
	Type           string         `json:"type"`
	SymmetricKey   SymmetricKey   `json:"symmetricKey"`
	X509Thumbprint X509Thumbprint `json:"x509Thumbprint"`
}

// Capabilities of a device.
type Capabilities struct {
	IotEdge bool `json:"iotEdge"`
}

// Device is a device identity in IoT Hub's JSON shape.
type Device struct {
	DeviceID                   string         `json:"deviceId"`
	GenerationID               string         `json:"generationId"`
	ETag                       string         `json:"etag"`
	ConnectionState            string         `json:"connectionState"`
	Status                     string         `json:"status"`
	StatusReason               string         `json:"statusReason"`
	ConnectionStateUpdatedTime time.Time      `json:"connectionStateUpdatedTime"`
	StatusUpdatedTime          time.Time      `json:"statusUpdatedTime"`
	LastActivityTime           time.Time      `json:"lastActivityTime"`
	CloudToDeviceMessageCount  int            `json:"cloudToDeviceMessageCount"`
	Authentication             Authentication `json:"authentication"`
	Capabilities               Capabilities   `json:"capabilities"`
	DeviceScope                string         `json:"deviceScope,omitempty"`
	ParentScopes               []string       `json:"parentScopes,omitempty"`
}

// Module is a module identity on a device.
type Module struct {
	ModuleID                   string         `json:"moduleId"`
	DeviceID                   string         `json:"deviceId"`
	GenerationID               string         `json:"generationId"`
	ETag                       string         `json:"etag"`
	ManagedBy                  string         `json:"managedBy,omitempty"`
	ConnectionState            string         `json:"connectionState"`
	ConnectionStateUpdatedTime time.Time      `json:"connectionStateUpdatedTime"`
	LastActivityTime           time.Time      `json:"lastActivityTime"`
	CloudToDeviceMessageCount  int            `json:"cloudToDeviceMessageCount"`
	Authentication             Authentication `json:"authentication"`
}

// Statistics is the answer to GET /statistics/devices.
type Statistics struct {
	TotalDeviceCount    int `json:"totalDeviceCount"`
	EnabledDeviceCount  int `json:"enabledDeviceCount"`
	DisabledDeviceCount int `json:"disabledDeviceCount"`
}

// BulkOp is one entry of a bulk POST /devices request.
type BulkOp struct {
	ID             string          `json:"id"`
	ImportMode     string          `json:"importMode"`
	ETag           string          `json:"eTag"`
	Status         string          `json:"status"`
	StatusReason   string          `json:"statusReason"`
	Authentication *Authentication `json:"authentication"`
	Capabilities   *Capabilities   `json:"capabilities"`
	DeviceScope    string          `json:"deviceScope"`
	ParentScopes   []string        `json:"parentScopes"`
}

// BulkError is one failed entry of a bulk request.
type BulkError struct {
	DeviceID    string `json:"deviceId"`
	ErrorCode   int    `json:"errorCode"`
	ErrorStatus string `json:"errorStatus"`
}

// BulkResult is the answer to a bulk request.
type BulkResult struct {
	IsSuccessful bool        `json:"isSuccessful"`
	Errors       []BulkError `json:"errors"`
	Warnings     []BulkError `json:"warnings"`
}
