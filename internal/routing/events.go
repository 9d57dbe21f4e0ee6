package routing

import (
	"fmt"
	"time"

	"github.com/moat-iot/moat/internal/message"
)

// Values of iothub-message-source for IoT Hub's non-telemetry events.
const (
	MessageSourceConnectionState = "deviceConnectionStateEvents"
	MessageSourceLifecycle       = "deviceLifecycleEvents"
	MessageSourceTwinChange      = "twinChangeEvents"
)

// SourceOf returns the routing source of a logged message from its
// iothub-message-source property (telemetry has none).
func SourceOf(m message.Message) string {
	switch m.System[message.SysMessageSource] {
	case MessageSourceConnectionState:
		return SourceConnectionStateEvents
	case MessageSourceLifecycle:
		return SourceDeviceLifecycleEvents
	case MessageSourceTwinChange:
		return SourceTwinChangeEvents
	case message.SourceMQTTTopics:
		return SourceMQTTTopics
	}
	return SourceDeviceMessages
}

// ConnectionStateEvent builds IoT Hub's connection state notification for a
// connect or disconnect: a JSON body with the sequence number (hex).
func ConnectionStateEvent(hubName, deviceID, moduleID string, connected bool, seq uint64, at time.Time) message.Message {
	op := "device"
	if moduleID != "" {
		op = "module"
	}
	if connected {
		op += "Connected"
	} else {
		op += "Disconnected"
	}
	body := fmt.Sprintf(`{"sequenceNumber":"%016x"}`, seq)
	return event(MessageSourceConnectionState, "deviceConnectionStateNotification", op, hubName, deviceID, moduleID, []byte(body), at)
}

// LifecycleEvent builds IoT Hub's lifecycle notification for a created or
// deleted identity; body is the identity's twin (JSON) as IoT Hub sends it, or
// for a deletion what is still known of it.
func LifecycleEvent(hubName, deviceID, moduleID string, created bool, body []byte, at time.Time) message.Message {
	kind, schema := "Device", "deviceLifecycleNotification"
	if moduleID != "" {
		kind, schema = "Module", "moduleLifecycleNotification"
	}
	op := "delete" + kind + "Identity"
	if created {
		op = "create" + kind + "Identity"
	}
	return event(MessageSourceLifecycle, schema, op, hubName, deviceID, moduleID, body, at)
}

// TwinChangeEvent builds IoT Hub's twin change notification (opType updateTwin
// or replaceTwin) with body, the change as JSON.
func TwinChangeEvent(hubName, deviceID, moduleID, opType string, body []byte, at time.Time) message.Message {
	return event(MessageSourceTwinChange, "twinChangeNotification", opType, hubName, deviceID, moduleID, body, at)
}

// event is a non-telemetry event with the properties IoT Hub gives them all.
func event(source, schema, op, hubName, deviceID, moduleID string, body []byte, at time.Time) message.Message {
	at = at.UTC()
	props := map[string]string{
		"hubName":               hubName,
		"deviceId":              deviceID,
		"opType":                op,
		"operationTimestamp":    at.Format(time.RFC3339Nano),
		"iothub-message-schema": schema,
	}
	sys := map[string]string{
		message.SysContentType:      "application/json",
		message.SysContentEncoding:  "utf-8",
		message.SysMessageSource:    source,
		message.SysConnectionDevice: deviceID,
		message.SysEnqueuedTime:     at.Format(time.RFC3339Nano),
	}
	if moduleID != "" {
		props["moduleId"] = moduleID
		sys[message.SysConnectionModule] = moduleID
	}
	return message.Message{Body: body, System: sys, Properties: props, Enqueued: at}
}
