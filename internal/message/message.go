// Package message is the hub's unit of data: a body with IoT Hub system and
// application properties, as it travels from a device (telemetry), to a device
// (cloud-to-device) or to an endpoint. It also holds the MQTT property-bag codec
// that turns the last topic segment into properties and back.
package message

import "time"

// System property names, as IoT Hub names them on the service side.
const (
	SysMessageID         = "message-id"
	SysCorrelationID     = "correlation-id"
	SysUserID            = "user-id"
	SysTo                = "to"
	SysContentType       = "content-type"
	SysContentEncoding   = "content-encoding"
	SysExpiry            = "absolute-expiry-time"
	SysCreationTime      = "iothub-creation-time-utc"
	SysInterfaceID       = "iothub-interface-id"
	SysOutputName        = "iothub-outputname"
	SysDataSchema        = "dt-dataschema"
	SysSubject           = "dt-subject"
	SysConnectionDevice  = "iothub-connection-device-id"
	SysConnectionModule  = "iothub-connection-module-id"
	SysConnectionAuthGen = "iothub-connection-auth-generation-id"
	SysConnectionAuth    = "iothub-connection-auth-method"
	SysEnqueuedTime      = "iothub-enqueuedtime"
	SysMessageSource     = "iothub-message-source"
	SysAck               = "iothub-ack"
	// SysMQTTTopic is the topic of a message published on a plain MQTT topic
	// (outside IoT Hub's namespace); such messages have SysMessageSource
	// SourceMQTTTopics.
	SysMQTTTopic = "mqtt-topic"
	// SourceMQTTTopics marks messages from plain MQTT topics.
	SourceMQTTTopics = "mqttTopics"
	// SourceTelemetry is IoT Hub's message source of device-to-cloud messages.
	SourceTelemetry = "Telemetry"
)

// Message is one message with its properties. Properties keep the exact keys
// the sender used; lookups that IoT Hub makes case-insensitive do so at the
// point of use.
type Message struct {
	Body       []byte            `json:"body"`
	System     map[string]string `json:"systemProperties,omitempty"`
	Properties map[string]string `json:"properties,omitempty"`
	Enqueued   time.Time         `json:"enqueuedTime"`
}
