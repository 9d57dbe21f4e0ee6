// Package serviceapi is the hub's IoT Hub–compatible REST service API — the
// HTTPS surface that the official azure-iothub SDK's Registry, Twin, Query and
// Client.invokeDeviceMethod use unchanged — plus two Moat extensions the CLI
// needs (sending cloud-to-device messages and watching live telemetry over
// HTTPS), and the small Go client that the `moat` CLI and the tests use to call
// all of it.
//
// The server's job is translation, not policy: it authenticates the service
// SAS, checks the api-version, decodes bodies within limits, and hands the work
// to the registry, methods, c2d and events packages. Their *errcode.Error
// failures come back out in IoT Hub's legacy error format, which is the one
// form the Node SDK maps to its error classes.
package serviceapi

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"regexp"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moat-iot/moat/internal/c2d"
	"github.com/moat-iot/moat/internal/configurations"
	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/events"
	"github.com/moat-iot/moat/internal/jobs"
	"github.com/moat-iot/moat/internal/methods"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/sas"
)

// Config wires a Server to the hub.
type Config struct {
	// HostName is the hub's host name: service tokens must be scoped to it.
	HostName string
	// Policies returns the current shared access policies; it is called per
	// request so that key rotation applies at once.
	Policies func() []sas.Policy
	Registry *registry.Registry
	Methods  *methods.Invoker
	C2D      *c2d.Queue
	Events   *events.Stream
	// ConnectedDevices, if set, answers GET /statistics/service; nil reports 0.
	ConnectedDevices func() int
	Log              *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// Jobs and Configurations, if set, serve /jobs/v2 and /configurations;
	// nil answers 503.
	Jobs           *jobs.Service
	Configurations *configurations.Service
}

// Limits on what a caller may send.
const (
	// MaxBodyBytes bounds JSON request bodies (IoT Hub's largest documents,
	// twins and method payloads, are well under it).
	MaxBodyBytes = 256 * 1024
	// MaxBulkOps is IoT Hub's limit on one bulk registry request.
	MaxBulkOps = 100
	// maxListTop bounds GET /devices?top=.
	maxListTop = 1000
)

// The api-versions the service API accepts: IoT Hub's data-plane versions are
// dates, the oldest still used in the field being 2016-11-14; anything newer
// is accepted as long as it is not in the future, so newer SDKs keep working.
var (
	apiVersionRE     = regexp.MustCompile(`^([0-9]{4}-[0-9]{2}-[0-9]{2})(-preview)?$`)
	oldestAPIVersion = time.Date(2016, 11, 14, 0, 0, 0, 0, time.UTC)
)

// notFound answers paths that are not an operation of this API. IoT Hub's
// error enum has no generic code for it; the Node SDK maps any 404 without a
// known code to Error('Not found'), which is what a wrong path deserves.
var notFound = errcode.Code{Name: "NotFound", Number: 404000, Status: http.StatusNotFound}

// Server is the REST service API. It implements http.Handler.
type Server struct {
	cfg     Config
	log     *slog.Logger
	mux     *http.ServeMux
	metrics *metrics

	// closed ends the open event streams (see Close).
	closed    context.Context
	closeFunc context.CancelFunc
}

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Policies == nil {
		cfg.Policies = func() []sas.Policy { return nil }
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	s := &Server{cfg: cfg, log: log.With("component", "serviceapi"), mux: http.NewServeMux(), metrics: newMetrics()}
	s.closed, s.closeFunc = context.WithCancel(context.Background())
	s.routes()
	return s
}

// access is which rights a route needs: any one of them suffices.
type access []sas.Right

var (
	registryRead  = access{sas.RegistryRead}
	registryWrite = access{sas.RegistryWrite}
	service       = access{sas.ServiceConnect}
	// IoT Hub's permissions table gives twins and queries to ServiceConnect.
	// Queries are also open to RegistryRead, as registry readers use them to
	// find devices; and since a query returns whole twins, a single twin read
	// is too — refusing it would protect nothing.
	twinRead = access{sas.ServiceConnect, sas.RegistryRead}
)

func (s *Server) routes() {
	h := s.handle
	h("PUT /devices/{id}", registryWrite, s.putDevice)
	h("GET /devices/{id}", registryRead, s.getDevice)
	h("DELETE /devices/{id}", registryWrite, s.deleteDevice)
	h("GET /devices", registryRead, s.listDevices)
	h("GET /devices/{$}", registryRead, s.listDevices)
	h("POST /devices", registryWrite, s.bulk)
	h("POST /devices/{$}", registryWrite, s.bulk)
	h("GET /statistics/devices", registryRead, s.deviceStatistics)
	h("GET /statistics/service", service, s.serviceStatistics)

	h("PUT /devices/{id}/modules/{mid}", registryWrite, s.putModule)
	h("GET /devices/{id}/modules/{mid}", registryRead, s.getModule)
	h("DELETE /devices/{id}/modules/{mid}", registryWrite, s.deleteModule)
	h("GET /devices/{id}/modules", registryRead, s.listModules)
	h("GET /devices/{id}/modules/{$}", registryRead, s.listModules)

	h("GET /twins/{id}", twinRead, s.getTwin)
	h("PATCH /twins/{id}", service, s.patchTwin)
	h("PUT /twins/{id}", service, s.replaceTwin)
	h("GET /twins/{id}/modules/{mid}", twinRead, s.getTwin)
	h("PATCH /twins/{id}/modules/{mid}", service, s.patchTwin)
	h("PUT /twins/{id}/modules/{mid}", service, s.replaceTwin)
	h("POST /devices/query", twinRead, s.queryWithJobs)

	h("POST /twins/{id}/methods", service, s.invokeMethod)
	h("POST /twins/{id}/modules/{mid}/methods", service, s.invokeMethod)

	h("DELETE /devices/{id}/commands", service, s.purgeC2D)
	h("POST /devices/{id}/messages/deviceBound", service, s.sendC2D)
	h("GET /moat/events", service, s.monitorEvents)
	s.jobsRoutes()

	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.metrics.observe(w, r, "unmatched", func(w http.ResponseWriter) {
			s.writeError(w, r, errcode.New(notFound, "%s %s is not an operation of this API", r.Method, r.URL.Path))
		})
	})
}

// handle registers fn under pattern behind metrics, the api-version check and
// authorization, in that order: IoT Hub rejects a bad api-version before it
// looks at credentials.
func (s *Server) handle(pattern string, need access, fn func(http.ResponseWriter, *http.Request) error) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		s.metrics.observe(w, r, pattern, func(w http.ResponseWriter) {
			defer s.recoverPanic(w, r)
			err := s.checkAPIVersion(r)
			if err == nil {
				err = s.authorize(r, need)
			}
			if err == nil {
				err = fn(w, r)
			}
			if err != nil {
				s.writeError(w, r, err)
			}
		})
	})
}

// recoverPanic turns a bug below a handler into a logged 500 ServerError, so
// that the caller gets IoT Hub's answer instead of a dropped connection.
func (s *Server) recoverPanic(w http.ResponseWriter, r *http.Request) {
	v := recover()
	if v == nil {
		return
	}
	if v == http.ErrAbortHandler {
		panic(v)
	}
	s.log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
	if sw, ok := w.(*statusWriter); ok && sw.status != 0 {
		return // the answer has begun; nothing more can be said
	}
	s.writeErrorBody(w, errcode.New(errcode.ServerError, "internal server error"))
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Close ends the open event streams, which otherwise last as long as their
// readers and would keep http.Server.Shutdown waiting; register it with
// http.Server.RegisterOnShutdown. Other requests are not affected, and the
// Server keeps serving new ones (a stream opened after Close ends at once).
func (s *Server) Close() { s.closeFunc() }

// Collectors returns the server's Prometheus collectors for the hub to register.
func (s *Server) Collectors() []prometheus.Collector { return s.metrics.collectors() }

func (s *Server) checkAPIVersion(r *http.Request) error {
	v := r.URL.Query().Get("api-version")
	if v == "" {
		return errcode.New(errcode.InvalidProtocolVersion, "the api-version query parameter is required")
	}
	if !validAPIVersion(v, s.cfg.Now()) {
		return errcode.New(errcode.InvalidProtocolVersion, "api-version %q is not supported", truncate(v, 40))
	}
	return nil
}

func validAPIVersion(v string, now time.Time) bool {
	m := apiVersionRE.FindStringSubmatch(v)
	if m == nil {
		return false
	}
	d, err := time.Parse(time.DateOnly, m[1])
	if err != nil {
		return false
	}
	// A day of slack: the caller's "today" may be ahead of ours.
	return !d.Before(oldestAPIVersion) && !d.After(now.UTC().Add(24*time.Hour))
}

// errUnauthorized is the one answer to every authorization failure, so that a
// caller cannot tell an unknown policy from a bad signature or a missing right.
func errUnauthorized(cause error) error {
	return errcode.Wrap(errcode.IotHubUnauthorizedAccess, cause, "Unauthorized")
}

func (s *Server) authorize(r *http.Request, need access) error {
	h := r.Header.Get("Authorization")
	if h == "" {
		return errUnauthorized(errors.New("no Authorization header"))
	}
	tok, err := sas.Parse(h)
	if err != nil {
		return errUnauthorized(err)
	}
	p, err := sas.VerifyService(tok, s.cfg.HostName, s.cfg.Policies(), s.cfg.Now())
	if err != nil {
		return errUnauthorized(err)
	}
	for _, right := range need {
		if p.Has(right) {
			return nil
		}
	}
	return errUnauthorized(errors.New("policy lacks the required right"))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// isClientGone reports whether err is the request's own context ending: the
// caller hung up, which is not the hub's failure.
func isClientGone(r *http.Request, err error) bool {
	return r.Context().Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
}

// quoteETag renders an etag for the ETag header, which carries it quoted.
func quoteETag(e string) string {
	if e == "" || strings.HasPrefix(e, `"`) {
		return e
	}
	return `"` + e + `"`
}
