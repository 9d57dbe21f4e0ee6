package serviceapi

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are per Server (not global) so that several hubs, e.g. in tests, can
// live in one process; the hub registers them.
type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newMetrics() *metrics {
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "moat",
			Subsystem: "serviceapi",
			Name:      "requests_total",
			Help:      "Service API requests by route pattern and HTTP status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "moat",
			Subsystem: "serviceapi",
			Name:      "request_duration_seconds",
			Help:      "Service API request latency by route pattern (streams count until they end).",
			Buckets:   prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"route"}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.latency}
}

// observe runs fn with a writer that records the status, then counts it under
// route: the pattern, never the raw path, so label cardinality stays fixed.
func (m *metrics) observe(w http.ResponseWriter, r *http.Request, route string, fn func(http.ResponseWriter)) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	fn(sw)
	if sw.status == 0 {
		sw.status = http.StatusOK
	}
	m.requests.WithLabelValues(route, strconv.Itoa(sw.status)).Inc()
	m.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
}

// statusWriter records the status code. Unwrap lets http.ResponseController
// reach the real writer's Flush and deadlines (the events stream needs both).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
