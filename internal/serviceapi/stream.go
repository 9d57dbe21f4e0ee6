package serviceapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"runtime"
	"time"
	"unicode/utf8"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/events"
	"github.com/moat-iot/moat/internal/message"
)

// EventRecord is one line of the GET /moat/events stream: a telemetry message,
// or (only Dropped set) a notice that the reader missed that many messages.
type EventRecord struct {
	DeviceID         string            `json:"deviceId,omitempty"`
	ModuleID         string            `json:"moduleId,omitempty"`
	EnqueuedTime     time.Time         `json:"enqueuedTime,omitzero"`
	SystemProperties map[string]string `json:"systemProperties,omitempty"`
	Properties       map[string]string `json:"properties,omitempty"`
	// Body is the payload itself when it is JSON, else a JSON string of it;
	// absent when the payload is not UTF-8 (see BodyBase64) or empty.
	Body json.RawMessage `json:"body,omitempty"`
	// BodyBase64 carries a payload that is not UTF-8 text.
	BodyBase64 string `json:"bodyBase64,omitempty"`
	Dropped    int    `json:"dropped,omitempty"`
}

// BodyBytes returns the message payload as the device sent it (for a JSON
// payload, in compact form).
func (e EventRecord) BodyBytes() []byte {
	if e.BodyBase64 != "" {
		b, err := base64.StdEncoding.DecodeString(e.BodyBase64)
		if err == nil {
			return b
		}
	}
	if len(e.Body) == 0 {
		return nil
	}
	var s string
	if e.Body[0] == '"' && json.Unmarshal(e.Body, &s) == nil {
		// A string body may itself have been a JSON string literal; the
		// stream cannot tell them apart, and the text is what users want.
		return []byte(s)
	}
	return e.Body
}

func recordOf(m message.Message) EventRecord {
	rec := EventRecord{
		DeviceID:         m.System[message.SysConnectionDevice],
		ModuleID:         m.System[message.SysConnectionModule],
		EnqueuedTime:     m.Enqueued.UTC(),
		SystemProperties: m.System,
		Properties:       m.Properties,
	}
	switch {
	case len(m.Body) == 0:
	case !utf8.Valid(m.Body):
		rec.BodyBase64 = base64.StdEncoding.EncodeToString(m.Body)
	case json.Valid(m.Body):
		rec.Body = json.RawMessage(m.Body)
	default:
		b, _ := json.Marshal(string(m.Body))
		rec.Body = b
	}
	return rec
}

// monitorEvents streams live telemetry as NDJSON until the caller hangs up.
func (s *Server) monitorEvents(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Events == nil {
		return errcode.Wrap(errcode.ServiceUnavailable, errNotConfigured, "the events stream is not available")
	}
	filter := r.URL.Query().Get("deviceId")
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(s.closed, cancel)()
	ch := s.cfg.Events.Subscribe(ctx, 0)

	rc := http.NewResponseController(w)
	// A stream outlives any write timeout the listener sets for requests.
	_ = rc.SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	// The headers go out now: a caller that sees them knows it is subscribed.
	if err := rc.Flush(); err != nil {
		return nil // the response has begun; nothing more can be said
	}
	enc := json.NewEncoder(w)
	unflushed := false
	for {
		ev, ok := nextEvent(ch, unflushed)
		if !ok && unflushed {
			// Caught up: what was written goes out now.
			if rc.Flush() != nil {
				return nil
			}
			unflushed = false
			ev, ok = <-ch
		}
		if !ok {
			return nil
		}
		wrote := false
		if ev.Dropped > 0 {
			if enc.Encode(EventRecord{Dropped: ev.Dropped}) != nil {
				return nil
			}
			wrote = true
		}
		if ev.Message.System != nil && (filter == "" || ev.Message.System[message.SysConnectionDevice] == filter) {
			if enc.Encode(recordOf(ev.Message)) != nil {
				return nil
			}
			wrote = true
		}
		unflushed = unflushed || wrote
	}
}

// nextEvent receives the next event, without waiting when the stream has
// unflushed output (then it gives the sender one chance to catch up first).
// A flush per event was a TLS record and a write per message: half of the
// hub's CPU on a busy stream. ok is false when nothing is ready (or ch is
// closed; the caller's blocking receive then tells which).
func nextEvent(ch <-chan events.Event, unflushed bool) (events.Event, bool) {
	if !unflushed {
		ev, ok := <-ch
		return ev, ok
	}
	select {
	case ev, ok := <-ch:
		return ev, ok
	default:
	}
	runtime.Gosched()
	select {
	case ev, ok := <-ch:
		return ev, ok
	default:
		return events.Event{}, false
	}
}
