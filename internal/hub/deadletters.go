package hub

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/moat-iot/moat/internal/endpoint"
)

// DeadLettersPrefix serves an endpoint's dead letters:
//
//	GET  /moat/endpoints/{name}/deadLetters?top=N   (RegistryRead)
//	POST /moat/endpoints/{name}/deadLetters/$replay (RegistryWrite)
const DeadLettersPrefix = "/moat/endpoints/"

// DeadLetterView is one dead letter as the API shows it.
type DeadLetterView struct {
	Offset           uint64            `json:"offset"`
	EnqueuedTimeUtc  time.Time         `json:"enqueuedTimeUtc"`
	SystemProperties map[string]string `json:"systemProperties"`
	Properties       map[string]string `json:"properties"`
	// Body is the payload as text when it is UTF-8, else BodyBase64.
	Body       string `json:"body,omitempty"`
	BodyBase64 []byte `json:"bodyBase64,omitempty"`
}

// ReplayResult answers a replay.
type ReplayResult struct {
	Replayed int `json:"replayed"`
}

func (h *Hub) deadLettersHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest := strings.TrimPrefix(r.URL.Path, DeadLettersPrefix)
		name, action, _ := strings.Cut(rest, "/")
		replay := false
		switch action {
		case "deadLetters":
		case "deadLetters/$replay":
			replay = true
		default:
			mgmtError(w, http.StatusNotFound, "NotFound", "no such resource: "+r.URL.Path)
			return
		}
		want := http.MethodGet
		if replay {
			want = http.MethodPost
		}
		if r.Method != want {
			w.Header().Set("Allow", want)
			mgmtError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", r.Method+" is not allowed here")
			return
		}
		if err := h.authorizeManagement(r); err != nil {
			mgmtError(w, http.StatusUnauthorized, "IotHubUnauthorizedAccess", "Unauthorized")
			return
		}
		// An endpoint's deletion closes its dead letters: hold it off.
		h.routingChange.Lock()
		defer h.routingChange.Unlock()
		h.deadLetterMu.Lock()
		dead, ok := h.deadLetterLog[name]
		h.deadLetterMu.Unlock()
		if _, live := h.routingNow().cfg.Endpoint(name); !ok || !live {
			mgmtError(w, http.StatusNotFound, "EndpointNotFound", "no custom endpoint named "+strconv.Quote(name))
			return
		}
		if replay {
			n, err := endpoint.ReplayDeadLetters(r.Context(), name, dead, h.msglog)
			if err != nil {
				h.log.Error("replay dead letters", "endpoint", name, "replayed", n, "error", err)
				mgmtError(w, http.StatusInternalServerError, "ServerError", "replay stopped after "+strconv.Itoa(n)+" messages: "+err.Error())
				return
			}
			h.log.Info("dead letters replayed", "endpoint", name, "count", n)
			writeMgmtJSON(w, ReplayResult{Replayed: n})
			return
		}
		top := 0
		if v := r.URL.Query().Get("top"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				mgmtError(w, http.StatusBadRequest, "ArgumentInvalid", "top must be a positive integer")
				return
			}
			top = n
		}
		list, err := endpoint.ListDeadLetters(r.Context(), dead, top)
		if err != nil {
			mgmtError(w, http.StatusInternalServerError, "ServerError", err.Error())
			return
		}
		out := make([]DeadLetterView, 0, len(list))
		for _, d := range list {
			v := DeadLetterView{Offset: d.Offset, EnqueuedTimeUtc: d.Message.Enqueued.UTC(), SystemProperties: d.Message.System, Properties: d.Message.Properties}
			if utf8.Valid(d.Message.Body) {
				v.Body = string(d.Message.Body)
			} else {
				v.BodyBase64 = d.Message.Body
			}
			out = append(out, v)
		}
		writeMgmtJSON(w, out)
	})
}

// mgmtError answers with IoT Hub's error shape.
func mgmtError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("iothub-errorcode", code)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"Message": "ErrorCode:" + code + ";" + msg})
}

func writeMgmtJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_ = json.NewEncoder(w).Encode(v)
}
