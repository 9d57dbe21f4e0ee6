// Package endpoint delivers routed messages to downstream systems: one worker
// per endpoint reads the durable log through its own cursor, keeps what the
// router sends to it, and hands batches to the endpoint's Sink, retrying with
// exponential backoff for the retry period and then moving the messages to the
// endpoint's dead letters. The cursor advances only past what was delivered or
// dead-lettered, so delivery is at least once across crashes. Workers keep
// IoT Hub's endpoint health (healthy, unhealthy, degraded, dead, unknown).
package endpoint

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/msglog"
)

// Sink is one downstream system. Send delivers the whole batch or fails; a
// failed batch is sent again, so a Sink may see duplicates.
type Sink interface {
	Send(ctx context.Context, batch []message.Message) error
	Close() error
}

// Health states, as IoT Hub reports them.
const (
	Healthy   = "healthy"
	Unhealthy = "unhealthy"
	Degraded  = "degraded"
	Dead      = "dead"
	Unknown   = "unknown"
)

// Health is IoT Hub's endpoint health record.
type Health struct {
	EndpointID                    string    `json:"endpointId"`
	HealthStatus                  string    `json:"healthStatus"`
	LastKnownError                string    `json:"lastKnownError,omitempty"`
	LastKnownErrorTime            time.Time `json:"lastKnownErrorTime,omitzero"`
	LastSuccessfulSendAttemptTime time.Time `json:"lastSuccessfulSendAttemptTime,omitzero"`
	LastSendAttemptTime           time.Time `json:"lastSendAttemptTime,omitzero"`
}

// Select decides whether a message goes to this endpoint and which
// application properties (enrichments) it gets there.
type Select func(m message.Message) (deliver bool, enrich map[string]string)

// Config configures a Worker.
type Config struct {
	Name   string
	Log    msglog.Log
	Sink   Sink
	Select Select
	// DeadLetters receives messages whose delivery failed for RetryPeriod.
	DeadLetters msglog.Log
	// RetryPeriod defaults to one hour, like IoT Hub.
	RetryPeriod time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts.
	MinBackoff, MaxBackoff time.Duration
	// BatchSize bounds one Send (default 100).
	BatchSize int
	Logger    *slog.Logger
	Now       func() time.Time
}

// recoveredAfter is how many successes in a row turn degraded into healthy.
const recoveredAfter = 10

// Worker delivers one endpoint's messages.
type Worker struct {
	cfg Config

	mu        sync.Mutex
	health    Health
	successes int
}

// NewWorker returns a worker; Run starts it.
func NewWorker(cfg Config) *Worker {
	if cfg.RetryPeriod <= 0 {
		cfg.RetryPeriod = time.Hour
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 100
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Worker{cfg: cfg, health: Health{EndpointID: cfg.Name, HealthStatus: Unknown}}
}

// Consumer is the worker's cursor name in the log.
func (w *Worker) Consumer() string { return "endpoint/" + w.cfg.Name }

// Health returns the current health record.
func (w *Worker) Health() Health {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.health
}

// Run delivers until ctx ends (it then returns nil) or the log fails.
func (w *Worker) Run(ctx context.Context) error {
	next, err := w.cfg.Log.Cursor(ctx, w.Consumer())
	if err != nil {
		return w.stopped(ctx, fmt.Errorf("endpoint %s: read cursor: %w", w.cfg.Name, err))
	}
	for {
		recs, err := w.cfg.Log.Read(ctx, next, w.cfg.BatchSize)
		if err != nil {
			return w.stopped(ctx, fmt.Errorf("endpoint %s: read log: %w", w.cfg.Name, err))
		}
		if len(recs) == 0 {
			if err := w.cfg.Log.Wait(ctx, next-1); err != nil {
				return w.stopped(ctx, err)
			}
			continue
		}
		batch := make([]message.Message, 0, len(recs))
		for _, r := range recs {
			m, err := msglog.DecodeMessage(r.Data)
			if err != nil {
				w.cfg.Logger.Error("undecodable log record skipped", "endpoint", w.cfg.Name, "offset", r.Offset, "error", err)
				continue
			}
			ok, enrich := w.cfg.Select(m)
			if !ok {
				continue
			}
			if _, replayed := ReplayTarget(m); replayed {
				m = WithoutReplayMark(m)
			}
			if len(enrich) > 0 {
				props := make(map[string]string, len(m.Properties)+len(enrich))
				for k, v := range m.Properties {
					props[k] = v
				}
				for k, v := range enrich {
					props[k] = v
				}
				m.Properties = props
			}
			batch = append(batch, m)
		}
		if len(batch) > 0 {
			if err := w.deliver(ctx, batch); err != nil {
				return w.stopped(ctx, err)
			}
		}
		next = recs[len(recs)-1].Offset + 1
		if err := w.cfg.Log.Commit(ctx, w.Consumer(), next); err != nil {
			return w.stopped(ctx, fmt.Errorf("endpoint %s: commit cursor: %w", w.cfg.Name, err))
		}
	}
}

func (w *Worker) stopped(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// deliver sends a batch until it succeeds, or dead-letters it once the retry
// period has passed. It returns an error only when ctx ends or the dead
// letters cannot be written; then the cursor stays put.
func (w *Worker) deliver(ctx context.Context, batch []message.Message) error {
	first := time.Time{}
	backoff := w.cfg.MinBackoff
	for {
		now := w.cfg.Now()
		err := w.cfg.Sink.Send(ctx, batch)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil {
			w.succeeded(now)
			return nil
		}
		if first.IsZero() {
			first = now
		}
		w.failed(now, err)
		if now.Sub(first) >= w.cfg.RetryPeriod {
			return w.deadLetter(ctx, batch, err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		backoff = min(backoff*2, w.cfg.MaxBackoff)
	}
}

func (w *Worker) deadLetter(ctx context.Context, batch []message.Message, cause error) error {
	if w.cfg.DeadLetters == nil {
		return fmt.Errorf("endpoint %s: retry period exceeded and no dead-letter store: %w", w.cfg.Name, cause)
	}
	for _, m := range batch {
		rec, err := msglog.EncodeMessage(m)
		if err != nil {
			return fmt.Errorf("endpoint %s: encode dead letter: %w", w.cfg.Name, err)
		}
		if _, err := w.cfg.DeadLetters.Append(ctx, rec); err != nil {
			return fmt.Errorf("endpoint %s: write dead letter: %w", w.cfg.Name, err)
		}
	}
	w.cfg.Logger.Warn("messages dead-lettered after the retry period", "endpoint", w.cfg.Name, "count", len(batch), "error", cause.Error())
	w.mu.Lock()
	w.health.HealthStatus = Dead
	w.successes = 0
	w.mu.Unlock()
	return nil
}

func (w *Worker) succeeded(at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.health.LastSendAttemptTime = at
	w.health.LastSuccessfulSendAttemptTime = at
	w.successes++
	switch {
	case w.health.HealthStatus == Unknown || w.health.HealthStatus == Healthy:
		w.health.HealthStatus = Healthy
	case w.successes >= recoveredAfter:
		w.health.HealthStatus = Healthy
	default:
		w.health.HealthStatus = Degraded // recovering from failures
	}
}

func (w *Worker) failed(at time.Time, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.health.LastSendAttemptTime = at
	w.health.LastKnownError = err.Error()
	w.health.LastKnownErrorTime = at
	w.successes = 0
	if w.health.HealthStatus != Dead {
		w.health.HealthStatus = Unhealthy
	}
}

// TrimBehind deletes log records every worker has delivered (or dead-lettered):
// everything below the slowest worker's cursor. It returns the new first
// offset. The log is shared, so this is the only safe point to trim at.
func TrimBehind(ctx context.Context, log msglog.Log, workers []*Worker) (uint64, error) {
	if len(workers) == 0 {
		return 0, nil
	}
	lowest := uint64(0)
	for i, w := range workers {
		c, err := log.Cursor(ctx, w.Consumer())
		if err != nil {
			return 0, fmt.Errorf("trim: cursor of %s: %w", w.cfg.Name, err)
		}
		if i == 0 || c < lowest {
			lowest = c
		}
	}
	if lowest <= 1 {
		return lowest, nil
	}
	if err := log.Trim(ctx, lowest); err != nil {
		return 0, fmt.Errorf("trim log below %d: %w", lowest, err)
	}
	return lowest, nil
}
