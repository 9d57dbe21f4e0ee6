// Package errcode is IoT Hub's error model: the named error codes, their numeric
// forms and HTTP statuses, shared by the REST API (legacy "ErrorCode:Name;text"
// bodies), the MQTT twin responses and the CLI, so that every surface reports the
// same failure the same way a real hub would.
package errcode

import (
	"errors"
	"fmt"
	"net/http"
)

// Code is one IoT Hub error code: its name, number and HTTP status.
type Code struct {
	Name   string
	Number int
	Status int
}

// The codes the Node SDKs map (see shared/iothub-wire.md §3).
var (
	InvalidProtocolVersion       = Code{"InvalidProtocolVersion", 400001, http.StatusBadRequest}
	InvalidOperation             = Code{"InvalidOperation", 400003, http.StatusBadRequest}
	ArgumentInvalid              = Code{"ArgumentInvalid", 400004, http.StatusBadRequest}
	ArgumentNull                 = Code{"ArgumentNull", 400005, http.StatusBadRequest}
	IotHubFormatError            = Code{"IotHubFormatError", 400006, http.StatusBadRequest}
	DeviceDefinedMultipleTimes   = Code{"DeviceDefinedMultipleTimes", 400011, http.StatusBadRequest}
	BulkRegistryOperationFailure = Code{"BulkRegistryOperationFailure", 400013, http.StatusBadRequest}
	IotHubUnauthorizedAccess     = Code{"IotHubUnauthorizedAccess", 401002, http.StatusUnauthorized}
	IotHubQuotaExceeded          = Code{"IotHubQuotaExceeded", 403002, http.StatusForbidden}
	DeviceMaxQueueDepthExceeded  = Code{"DeviceMaximumQueueDepthExceeded", 403004, http.StatusForbidden}
	DeviceNotFound               = Code{"DeviceNotFound", 404001, http.StatusNotFound}
	JobNotFound                  = Code{"JobNotFound", 404002, http.StatusNotFound}
	ModuleNotFound               = Code{"ModuleNotFound", 404010, http.StatusNotFound}
	DeviceNotOnline              = Code{"DeviceNotOnline", 404103, http.StatusNotFound}
	DeviceAlreadyExists          = Code{"DeviceAlreadyExists", 409001, http.StatusConflict}
	ModuleAlreadyExistsOnDevice  = Code{"ModuleAlreadyExistsOnDevice", 409301, http.StatusConflict}
	PreconditionFailed           = Code{"PreconditionFailed", 412001, http.StatusPreconditionFailed}
	MessageTooLarge              = Code{"MessageTooLarge", 413001, http.StatusRequestEntityTooLarge}
	TooManyDevices               = Code{"TooManyDevices", 413002, http.StatusRequestEntityTooLarge}
	ThrottlingException          = Code{"ThrottlingException", 429001, http.StatusTooManyRequests}
	ServerError                  = Code{"ServerError", 500001, http.StatusInternalServerError}
	ServiceUnavailable           = Code{"ServiceUnavailable", 503001, http.StatusServiceUnavailable}
	GatewayTimeout               = Code{"GatewayTimeout", 504101, http.StatusGatewayTimeout}
)

// Error is a failure that carries an IoT Hub error code.
type Error struct {
	Code    Code
	Message string
	Err     error // optional cause, never shown to callers
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code.Name, e.Message, e.Err)
	}
	return e.Code.Name + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// New returns an *Error with a formatted message.
func New(c Code, format string, args ...any) *Error {
	return &Error{Code: c, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error whose cause is err.
func Wrap(c Code, err error, format string, args ...any) *Error {
	return &Error{Code: c, Message: fmt.Sprintf(format, args...), Err: err}
}

// From finds the *Error in err's chain. Errors without one are ServerError, so
// that internal details never reach a caller.
func From(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: ServerError, Message: "internal server error", Err: err}
}

// Is reports whether err carries code c.
func Is(err error, c Code) bool {
	var e *Error
	return errors.As(err, &e) && e.Code.Number == c.Number
}
