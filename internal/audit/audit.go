// Package audit records the hub's network decisions: one JSON line per
// connection accepted, refused, or closed because the policy changed, and
// Prometheus counters of the same by listener and decision. Lines carry
// addresses and the deciding rule, never credentials.
package audit

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moat-iot/moat/internal/netpolicy"
)

// Decision words in the "decision" field and the counter's label.
const (
	Accept = "accept" // admitted at accept time
	Refuse = "refuse" // closed at accept time, before TLS
	Close  = "close"  // was admitted; closed after a policy change
)

// Recorder writes audit lines and counts decisions. It is safe for concurrent
// use.
type Recorder struct {
	log      *slog.Logger
	counter  *prometheus.CounterVec
	closer   io.Closer
	closeOne sync.Once
}

// New writes JSON lines to w (nil: lines are dropped, counters still count).
func New(w io.Writer) *Recorder {
	r := &Recorder{
		counter: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_network_decisions_total",
			Help: "Network policy decisions on connections, by listener and decision (accept, refuse, close).",
		}, []string{"listener", "decision"}),
	}
	if w != nil {
		r.log = slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
			ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
				// The level says nothing here; every line is a decision.
				if len(groups) == 0 && a.Key == slog.LevelKey {
					return slog.Attr{}
				}
				if len(groups) == 0 && a.Key == slog.TimeKey {
					return slog.String(slog.TimeKey, a.Value.Time().UTC().Format(time.RFC3339Nano))
				}
				return a
			},
		}))
	}
	return r
}

// OpenFile appends audit lines to path (created 0600).
func OpenFile(path string) (*Recorder, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	r := New(f)
	r.closer = f
	return r, nil
}

// Close closes the file OpenFile opened.
func (r *Recorder) Close() error {
	var err error
	r.closeOne.Do(func() {
		if r.closer != nil {
			err = r.closer.Close()
		}
	})
	return err
}

// Collectors returns the Prometheus collectors for the hub to register.
func (r *Recorder) Collectors() []prometheus.Collector { return []prometheus.Collector{r.counter} }

// Record logs an accept-time decision: accept or refuse.
func (r *Recorder) Record(d netpolicy.Decision, listener string, local, remote netip.AddrPort) {
	word := Refuse
	if d.Allowed {
		word = Accept
	}
	r.write(word, d, listener, local, remote)
}

// RecordClose logs a live connection closed because the policy no longer
// admits it.
func (r *Recorder) RecordClose(d netpolicy.Decision, listener string, local, remote netip.AddrPort) {
	r.write(Close, d, listener, local, remote)
}

func (r *Recorder) write(word string, d netpolicy.Decision, listener string, local, remote netip.AddrPort) {
	r.counter.WithLabelValues(listener, word).Inc()
	if r.log == nil {
		return
	}
	r.log.LogAttrs(context.Background(), slog.LevelInfo, "network decision",
		slog.String("listener", listener),
		slog.String("local", local.String()),
		slog.String("remote", remote.String()),
		slog.String("endpoint", d.Endpoint),
		slog.String("rule", d.Rule),
		slog.String("decision", word),
	)
}
