package serviceapi

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/moat-iot/moat/internal/errcode"
)

const (
	contentTypeJSON = "application/json; charset=utf-8"
	headerErrorCode = "iothub-errorcode"
)

// legacyError is IoT Hub's legacy REST error body, the only form from which the
// Node SDK recovers the error code (Http.parseErrorBody).
type legacyError struct {
	Message          string `json:"Message"`
	ExceptionMessage string `json:"ExceptionMessage"`
}

// writeError answers err in IoT Hub's form. Errors without a code are internal:
// they are logged here, once, and the caller learns only that it was a server
// error.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := errcode.From(err)
	switch {
	case isClientGone(r, err):
		s.log.Debug("request abandoned by the caller", "method", r.Method, "path", r.URL.Path)
	case e.Code.Status == http.StatusUnauthorized && e.Err != nil:
		// The caller is told nothing; the operator may need the reason.
		// Token errors never carry the signature or key.
		s.log.Debug("request refused", "method", r.Method, "path", r.URL.Path, "reason", e.Err)
	case e.Code.Status >= 500 && e.Code.Status != http.StatusGatewayTimeout:
		// 504 is a device that did not answer a method in time: routine.
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "code", e.Code.Name, "err", err)
	}
	s.writeErrorBody(w, e)
}

// writeErrorBody answers e without logging.
func (s *Server) writeErrorBody(w http.ResponseWriter, e *errcode.Error) {
	now := s.cfg.Now().UTC()
	body := legacyError{
		Message:          "ErrorCode:" + e.Code.Name + ";" + e.Message,
		ExceptionMessage: "Tracking ID:" + trackingID() + "-G:0-TimeStamp:" + now.Format("01/02/2006 15:04:05"),
	}
	w.Header().Set(headerErrorCode, e.Code.Name)
	writeJSON(w, e.Code.Status, body)
}

// writeJSON answers v as JSON with the content type the Node SDK needs before
// it parses anything.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only the hub's own types reach here; they always marshal.
		b = []byte(`{"Message":"ErrorCode:ServerError;internal server error"}`)
		status = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", contentTypeJSON)
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func trackingID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// knownCodes lets the client turn a code name back into the full code.
var knownCodes = map[string]errcode.Code{}

func init() {
	for _, c := range []errcode.Code{
		errcode.InvalidProtocolVersion, errcode.InvalidOperation, errcode.ArgumentInvalid,
		errcode.ArgumentNull, errcode.IotHubFormatError, errcode.DeviceDefinedMultipleTimes,
		errcode.BulkRegistryOperationFailure, errcode.IotHubUnauthorizedAccess,
		errcode.IotHubQuotaExceeded, errcode.DeviceMaxQueueDepthExceeded, errcode.DeviceNotFound,
		errcode.JobNotFound, errcode.ModuleNotFound, errcode.DeviceNotOnline,
		errcode.DeviceAlreadyExists, errcode.ModuleAlreadyExistsOnDevice, errcode.PreconditionFailed,
		errcode.MessageTooLarge, errcode.TooManyDevices, errcode.ThrottlingException,
		errcode.ServerError, errcode.ServiceUnavailable, errcode.GatewayTimeout, notFound,
	} {
		knownCodes[c.Name] = c
	}
}

// maxErrorBody bounds how much of an error answer the client reads.
const maxErrorBody = 64 * 1024

// ParseErrorResponse turns an IoT Hub error answer (status, iothub-errorcode
// header, body) into an *errcode.Error. It understands the legacy
// "ErrorCode:Name;text" body, the newer JSON-in-Message form and plain text,
// and falls back to the status when no code is given.
func ParseErrorResponse(status int, headerCode string, body []byte) *errcode.Error {
	name, text := "", ""
	var le legacyError
	if err := json.Unmarshal(body, &le); err == nil && le.Message != "" {
		name, text = splitLegacyMessage(le.Message)
	} else if len(body) > 0 && !json.Valid(body) {
		text = strings.TrimSpace(string(body))
	}
	if name == "" {
		name = headerCode
	}
	if text == "" {
		text = http.StatusText(status)
		if text == "" {
			text = "HTTP status " + strconv.Itoa(status)
		}
	}
	code, ok := knownCodes[name]
	switch {
	case ok:
		// Trust the answer's status over our table: it is what happened.
		code.Status = status
	case name != "":
		code = errcode.Code{Name: name, Status: status}
	default:
		code = codeForStatus(status)
	}
	return &errcode.Error{Code: code, Message: truncate(text, 1024)}
}

// splitLegacyMessage reads "ErrorCode:Name;text", and the newer form whose
// Message is itself JSON ({"errorCode":404001,"message":…}).
func splitLegacyMessage(m string) (name, text string) {
	if rest, ok := strings.CutPrefix(m, "ErrorCode:"); ok {
		name, text, _ = strings.Cut(rest, ";")
		return strings.TrimSpace(name), text
	}
	var inner struct {
		ErrorCode json.RawMessage `json:"errorCode"`
		Message   string          `json:"message"`
	}
	if json.Unmarshal([]byte(m), &inner) == nil && len(inner.ErrorCode) > 0 {
		var n int
		if json.Unmarshal(inner.ErrorCode, &n) == nil {
			for _, c := range knownCodes {
				if c.Number == n {
					return c.Name, inner.Message
				}
			}
		}
		var s string
		if json.Unmarshal(inner.ErrorCode, &s) == nil {
			return s, inner.Message
		}
		return "", inner.Message
	}
	return "", m
}

func codeForStatus(status int) errcode.Code {
	switch status {
	case http.StatusBadRequest:
		return errcode.ArgumentInvalid
	case http.StatusUnauthorized:
		return errcode.IotHubUnauthorizedAccess
	case http.StatusNotFound:
		return notFound
	case http.StatusConflict:
		return errcode.DeviceAlreadyExists
	case http.StatusPreconditionFailed:
		return errcode.PreconditionFailed
	case http.StatusRequestEntityTooLarge:
		return errcode.MessageTooLarge
	case http.StatusTooManyRequests:
		return errcode.ThrottlingException
	case http.StatusServiceUnavailable:
		return errcode.ServiceUnavailable
	case http.StatusGatewayTimeout:
		return errcode.GatewayTimeout
	}
	c := errcode.ServerError
	c.Status = status
	return c
}

// bodyError turns a failure to read or decode a request body into the error
// IoT Hub gives for it.
func bodyError(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return errcode.New(errcode.MessageTooLarge, "request body exceeds %d bytes", mbe.Limit)
	}
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return errcode.New(errcode.IotHubFormatError, "request body is not valid JSON (offset %d)", se.Offset)
	case errors.As(err, &te):
		if te.Field != "" {
			return errcode.New(errcode.IotHubFormatError, "request body: field %q must not be a JSON %s", te.Field, te.Value)
		}
		return errcode.New(errcode.IotHubFormatError, "request body must not be a JSON %s", te.Value)
	}
	return errcode.Wrap(errcode.IotHubFormatError, err, "request body could not be read")
}
