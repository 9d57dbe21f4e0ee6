package serviceapi

import (
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/message"
)

// The headers of POST /devices/{id}/messages/deviceBound follow IoT Hub's
// HTTPS device API: system properties in iothub-* headers and the content
// type and encoding in the standard headers.
var c2dSystemHeaders = []struct{ header, prop string }{
	{"Iothub-Messageid", message.SysMessageID},
	{"Iothub-Correlationid", message.SysCorrelationID},
	{"Iothub-Userid", message.SysUserID},
	{"Iothub-Expiry", message.SysExpiry},
	{"Iothub-Ack", message.SysAck},
	{"Content-Type", message.SysContentType},
	{"Content-Encoding", message.SysContentEncoding},
}

// appPropertyPrefix marks an application property header. HTTP header names
// are case-insensitive, so the name is lower-cased and then percent-decoded:
// a sender that needs capitals or other bytes writes them as %XX.
const appPropertyPrefix = "iothub-app-"

// Limits IoT Hub places on message ids and property names.
const (
	maxIDLen           = 128
	maxPropertyNameLen = 256
)

// C2DMessageFromHeader builds the cloud-to-device message that a send request
// describes: body as given, system properties from the iothub-* and content
// headers, application properties from iothub-app-<name> headers. Other
// headers are ignored.
func C2DMessageFromHeader(h http.Header, body []byte) (message.Message, error) {
	m := message.Message{Body: body, System: map[string]string{}, Properties: map[string]string{}}
	for _, sh := range c2dSystemHeaders {
		vs := h.Values(sh.header)
		switch {
		case len(vs) == 0:
			continue
		case len(vs) > 1:
			return message.Message{}, errcode.New(errcode.ArgumentInvalid, "header %s is given more than once", sh.header)
		}
		v := strings.TrimSpace(vs[0])
		if v == "" {
			continue
		}
		switch sh.prop {
		case message.SysMessageID, message.SysCorrelationID, message.SysUserID:
			if len(v) > maxIDLen {
				return message.Message{}, errcode.New(errcode.ArgumentInvalid, "header %s exceeds %d characters", sh.header, maxIDLen)
			}
		case message.SysExpiry:
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return message.Message{}, errcode.New(errcode.ArgumentInvalid, "header %s must be an RFC 3339 time", sh.header)
			}
			v = t.UTC().Format(time.RFC3339Nano)
		case message.SysAck:
			a, ok := normalAck(v)
			if !ok {
				return message.Message{}, errcode.New(errcode.ArgumentInvalid, "header %s must be none, positive, negative or full", sh.header)
			}
			v = a
		}
		m.System[sh.prop] = v
	}
	for k, vs := range h {
		lk := strings.ToLower(k)
		raw, ok := strings.CutPrefix(lk, appPropertyPrefix)
		if !ok {
			continue
		}
		name := raw
		if d, err := url.PathUnescape(raw); err == nil {
			name = d
		}
		switch {
		case name == "":
			return message.Message{}, errcode.New(errcode.ArgumentInvalid, "header %s names no property", truncate(k, 64))
		case len(name) > maxPropertyNameLen:
			return message.Message{}, errcode.New(errcode.ArgumentInvalid, "property name exceeds %d bytes", maxPropertyNameLen)
		case len(vs) > 1:
			return message.Message{}, errcode.New(errcode.ArgumentInvalid, "property %q is given more than once", truncate(name, 64))
		}
		if _, dup := m.Properties[name]; dup {
			return message.Message{}, errcode.New(errcode.ArgumentInvalid, "property %q is given more than once", truncate(name, 64))
		}
		m.Properties[name] = vs[0]
	}
	if len(m.Properties) == 0 {
		m.Properties = nil
	}
	return m, nil
}

func normalAck(v string) (string, bool) {
	for _, a := range []string{"none", "positive", "negative", "full"} {
		if strings.EqualFold(v, a) {
			return a, true
		}
	}
	return "", false
}

// c2dHeader is the inverse of C2DMessageFromHeader, for the client. Only the
// system properties a sender may set are accepted.
func c2dHeader(m message.Message) (http.Header, error) {
	h := http.Header{}
	for k, v := range m.System {
		found := false
		for _, sh := range c2dSystemHeaders {
			if sh.prop == k {
				h.Set(sh.header, v)
				found = true
				break
			}
		}
		if !found {
			return nil, errcode.New(errcode.ArgumentInvalid, "system property %q cannot be set on a cloud-to-device message", k)
		}
	}
	for k, v := range m.Properties {
		if k == "" {
			return nil, errcode.New(errcode.ArgumentInvalid, "application property with an empty name")
		}
		if v != strings.TrimSpace(v) || strings.ContainsAny(v, "\r\n\x00") {
			return nil, errcode.New(errcode.ArgumentInvalid, "application property %q: the value cannot start or end with white space or hold line breaks", k)
		}
		h.Set(appPropertyPrefix+escapePropertyName(k), v)
	}
	return h, nil
}

// escapePropertyName leaves only bytes that survive header-name lower-casing
// unchanged; everything else becomes %XX.
func escapePropertyName(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xF])
	}
	return b.String()
}
