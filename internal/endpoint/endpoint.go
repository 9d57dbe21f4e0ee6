// Package endpoint delivers routed messages to downstream systems: one worker
// per endpoint reads the durable log through its own cursor, keeps what the
// router sends to it, and hands batches to the endpoint's Sink, retrying with
// exponential backoff for the retry period and then moving the messages to the
// endpoint's dead letters. The cursor advances only past what was delivered or
// dead-lettered, so delivery is at least once across crashes. Sinks that
// write in units (a blob per time window) implement Batcher; the worker then
// commits its cursor only when a unit is committed. Workers keep IoT Hub's
// endpoint health (healthy, unhealthy, degraded, dead, unknown).
package endpoint

import (
	"context"
	"errors"
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

// Batcher is a Sink that collects messages into units it commits as a whole,
// like IoT Hub's storage endpoints (a blob per batch window). For a Batcher
// the worker calls Stage and Flush instead of Send, and advances its cursor
// only past messages whose unit was flushed: after a crash or a shutdown
// (which never flushes a half window) the unflushed messages are read from
// the log and staged again, so delivery stays at least once.
type Batcher interface {
	Sink
	// Stage adds messages, in order, to the pending unit and returns how many
	// it took. Fewer than len(batch) means the unit is full: the worker
	// flushes it and stages the rest into the next unit. With an empty
	// pending unit Stage takes at least one message. A failed Stage took
	// none, and the worker stages the same messages again.
	Stage(ctx context.Context, batch []message.Message) (int, error)
	// FlushDue is when the pending unit must be flushed (the end of the
	// current window), also when it is empty; zero means no deadline. The
	// worker reads it before it waits for the log, so until the next Stage
	// or Flush it may move later but not earlier.
	FlushDue() time.Time
	// Flush commits the pending unit, which may be empty, and starts the next.
	// A failed Flush is tried again with the same unit.
	Flush(ctx context.Context) error
	// Discard drops the pending unit: the worker gave up flushing it and
	// dead-lettered its messages.
	Discard()
}

// ErrUnitLost is what a Batcher's Flush returns (wrapped) when the pending
// unit's staged data is gone from the downstream system, such as blocks of a
// blob whose container was deleted and created again. No retry of that Flush
// can succeed: the worker discards the unit and stages its messages again
// from the log.
var ErrUnitLost = errors.New("the staged unit is gone downstream")

// maxUnitLosses bounds how often in a row a unit is staged again; past it the
// loss counts as a failed flush (retries, then dead letters).
const maxUnitLosses = 3

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
// application properties (enrichments) it gets there. off is the message's
// offset in the log: every endpoint's worker asks about every record, and
// offsets are unique, so a selection may remember its answer by it.
type Select func(off uint64, m message.Message) (deliver bool, enrich map[string]string)

// Config configures a Worker.
type Config struct {
	Name   string
	Log    msglog.Log
	Sink   Sink
	Select Select
	// DeadLetters receives messages whose delivery failed for RetryPeriod.
	DeadLetters msglog.Log
	// Decoded, when set, is shared by every worker reading Log, so that a
	// record is decoded once rather than once per endpoint.
	Decoded *DecodedRecords
	// RetryPeriod defaults to one hour, like IoT Hub.
	RetryPeriod time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts.
	MinBackoff, MaxBackoff time.Duration
	// BatchSize bounds one Send (default 500 messages); MaxBatchBytes bounds
	// its encoded size (default 4 MiB), so a batch of large messages stays a
	// reasonable request. A message larger than that goes alone.
	BatchSize     int
	MaxBatchBytes int
	Logger        *slog.Logger
	Now           func() time.Time
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
		cfg.BatchSize = 500
	}
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = 4 << 20
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
func (w *Worker) Consumer() string { return ConsumerName(w.cfg.Name) }

// ConsumerName is the cursor name in the log of the endpoint named name.
func ConsumerName(name string) string { return "endpoint/" + name }

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
	cur := newCursor(w.cfg.Log, w.Consumer(), w.cfg.Now, next)
	defer func() {
		if err := cur.commitOnStop(ctx); err != nil && !errors.Is(err, msglog.ErrClosed) {
			w.cfg.Logger.Warn("endpoint cursor not saved at stop; its latest messages will be delivered again", "endpoint", w.cfg.Name, "error", err)
		}
	}()
	quiet := newQuietness(w.cfg.Now)
	if b, ok := w.cfg.Sink.(Batcher); ok {
		return w.stopped(ctx, w.runBatcher(ctx, b, cur, quiet))
	}
	for {
		recs, err := w.read(ctx, next)
		if err != nil {
			return w.stopped(ctx, fmt.Errorf("endpoint %s: read log: %w", w.cfg.Name, err))
		}
		if len(recs) == 0 {
			if err := cur.commitDue(ctx); err != nil {
				return w.stopped(ctx, fmt.Errorf("endpoint %s: %w", w.cfg.Name, err))
			}
			if err := w.waitLog(ctx, next-1, cur.due()); err != nil {
				return w.stopped(ctx, err)
			}
			if err := quiet.hold(ctx); err != nil {
				return w.stopped(ctx, err)
			}
			continue
		}
		batch, _ := w.selectRecords(recs)
		quiet.read(len(recs), len(batch))
		if len(batch) > 0 {
			if err := w.deliver(ctx, batch); err != nil {
				return w.stopped(ctx, err)
			}
		}
		next = recs[len(recs)-1].Offset + 1
		if err := cur.advance(ctx, next); err != nil {
			return w.stopped(ctx, fmt.Errorf("endpoint %s: %w", w.cfg.Name, err))
		}
	}
}

// read reads the next batch of records from offset from, at most BatchSize
// records and MaxBatchBytes bytes (but at least one record).
func (w *Worker) read(ctx context.Context, from uint64) ([]msglog.Record, error) {
	recs, err := w.cfg.Log.Read(ctx, from, w.cfg.BatchSize)
	if err != nil {
		return nil, err
	}
	size := 0
	for i, r := range recs {
		size += len(r.Data)
		if size > w.cfg.MaxBatchBytes && i > 0 {
			return recs[:i], nil
		}
	}
	return recs, nil
}

// selectRecords decodes log records and keeps the messages routed to this
// endpoint, enriched, with their offsets.
func (w *Worker) selectRecords(recs []msglog.Record) ([]message.Message, []uint64) {
	batch := make([]message.Message, 0, len(recs))
	offs := make([]uint64, 0, len(recs))
	for _, r := range recs {
		m, err := w.cfg.Decoded.decode(r)
		if err != nil {
			w.cfg.Logger.Error("undecodable log record skipped", "endpoint", w.cfg.Name, "offset", r.Offset, "error", err)
			continue
		}
		ok, enrich := w.cfg.Select(r.Offset, m)
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
		offs = append(offs, r.Offset)
	}
	return batch, offs
}

func (w *Worker) stopped(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// runBatcher delivers to a Batcher. The log between the committed cursor and
// end holds the pending unit's messages (and records not routed here): they
// are staged but not yet committed by the sink, so the cursor stays at the
// unit's start until Flush succeeds.
func (w *Worker) runBatcher(ctx context.Context, b Batcher, cur *cursor, quiet *quietness) error {
	// committed is where the pending unit starts: everything before it is
	// in the sink or routed elsewhere (the cursor may not be written yet).
	committed, end := cur.at, cur.at
	staged := 0 // messages in the pending unit
	// commit writes the cursor past a flushed unit at once: the flush cost
	// far more than the write.
	commit := func(to uint64) error {
		if to == committed {
			return nil
		}
		committed = to
		if err := cur.advance(ctx, to); err != nil {
			return fmt.Errorf("endpoint %s: %w", w.cfg.Name, err)
		}
		if err := cur.commit(ctx); err != nil {
			return fmt.Errorf("endpoint %s: %w", w.cfg.Name, err)
		}
		return nil
	}
	losses := 0 // units lost downstream in a row
	// flush commits the pending unit and the cursor past it. When the unit
	// was lost downstream it reports rewound: the unit is discarded and
	// reading starts again at the cursor.
	flush := func() (rewound bool, err error) {
		lost, err := w.flushUnit(ctx, b, committed, end, losses >= maxUnitLosses)
		if err != nil {
			return false, err
		}
		staged = 0
		if lost {
			losses++
			b.Discard()
			end = committed
			return true, nil
		}
		losses = 0
		return false, commit(end)
	}
	for {
		due := b.FlushDue()
		if !due.IsZero() && !w.cfg.Now().Before(due) {
			if _, err := flush(); err != nil {
				return err
			}
			continue
		}
		recs, err := w.read(ctx, end)
		if err != nil {
			return fmt.Errorf("endpoint %s: read log: %w", w.cfg.Name, err)
		}
		if len(recs) == 0 {
			if err := cur.commitDue(ctx); err != nil {
				return fmt.Errorf("endpoint %s: %w", w.cfg.Name, err)
			}
			if cd := cur.due(); !cd.IsZero() && (due.IsZero() || cd.Before(due)) {
				due = cd
			}
			if err := w.waitLog(ctx, end-1, due); err != nil {
				return err
			}
			if staged == 0 {
				if err := quiet.hold(ctx); err != nil {
					return err
				}
			}
			continue
		}
		batch, offs := w.selectRecords(recs)
		quiet.read(len(recs), len(batch))
		rewound := false
		for len(batch) > 0 {
			n, gaveUp, err := w.stage(ctx, b, batch)
			if err != nil {
				return err
			}
			if gaveUp != nil {
				// Storage stayed unreachable for the retry period: the
				// pending unit and this batch go to the dead letters.
				if err := w.deadLetterRange(ctx, committed, end, batch, gaveUp); err != nil {
					return err
				}
				b.Discard()
				staged = 0
				break
			}
			if n == 0 && staged == 0 {
				return fmt.Errorf("endpoint %s: sink staged nothing into an empty unit", w.cfg.Name)
			}
			if n > 0 {
				end = offs[n-1] + 1
				staged += n
			}
			if n == len(batch) {
				break
			}
			if rewound, err = flush(); err != nil { // the unit is full
				return err
			}
			if rewound {
				break
			}
			batch, offs = batch[n:], offs[n:]
		}
		if rewound {
			continue
		}
		end = recs[len(recs)-1].Offset + 1
		if staged == 0 {
			// Nothing pending here: the records were routed elsewhere.
			committed = end
			if err := cur.advance(ctx, end); err != nil {
				return fmt.Errorf("endpoint %s: %w", w.cfg.Name, err)
			}
		}
	}
}

// waitLog waits for a record after offset, or until deadline (when set).
func (w *Worker) waitLog(ctx context.Context, after uint64, deadline time.Time) error {
	wctx := ctx
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, deadline.Sub(w.cfg.Now()))
		defer cancel()
	}
	err := w.cfg.Log.Wait(wctx, after)
	if err != nil && ctx.Err() == nil && wctx.Err() != nil {
		return nil // the deadline: time to flush
	}
	return err
}

// stage stages batch, retrying like deliver; gaveUp is set when the retry
// period ran out.
func (w *Worker) stage(ctx context.Context, b Batcher, batch []message.Message) (n int, gaveUp, err error) {
	gaveUp, err = w.attempt(ctx, func() error {
		var err error
		n, err = b.Stage(ctx, batch)
		return err
	})
	return n, gaveUp, err
}

// flushUnit flushes the pending unit, retrying like deliver; when the retry
// period runs out it dead-letters the unit's messages, read again from the
// log between from and to, and discards the unit.
func (w *Worker) flushUnit(ctx context.Context, b Batcher, from, to uint64, noRestage bool) (lost bool, err error) {
	gaveUp, err := w.attempt(ctx, func() error {
		err := b.Flush(ctx)
		if errors.Is(err, ErrUnitLost) && !noRestage {
			lost = true
			return nil
		}
		return err
	})
	if err != nil || lost {
		if lost {
			w.cfg.Logger.Warn("staged unit lost downstream; staging its messages again from the log", "endpoint", w.cfg.Name)
		}
		return lost, err
	}
	if gaveUp == nil {
		return false, nil
	}
	if err := w.deadLetterRange(ctx, from, to, nil, gaveUp); err != nil {
		return false, err
	}
	b.Discard()
	return false, nil
}

// deadLetterRange dead-letters the messages routed here between offsets from
// and to (selected again, so routing sees the twin as it is now), then extra.
func (w *Worker) deadLetterRange(ctx context.Context, from, to uint64, extra []message.Message, cause error) error {
	count := 0
	for from < to {
		recs, err := w.cfg.Log.Read(ctx, from, w.cfg.BatchSize)
		if err != nil {
			return fmt.Errorf("endpoint %s: read log for dead letters: %w", w.cfg.Name, err)
		}
		for len(recs) > 0 && recs[len(recs)-1].Offset >= to {
			recs = recs[:len(recs)-1]
		}
		if len(recs) == 0 {
			break
		}
		batch, _ := w.selectRecords(recs)
		if err := w.writeDeadLetters(ctx, batch, cause); err != nil {
			return err
		}
		count += len(batch)
		from = recs[len(recs)-1].Offset + 1
	}
	if err := w.writeDeadLetters(ctx, extra, cause); err != nil {
		return err
	}
	w.markDead(count+len(extra), cause)
	return nil
}

// deliver sends a batch until it succeeds, or dead-letters it once the retry
// period has passed. It returns an error only when ctx ends or the dead
// letters cannot be written; then the cursor stays put.
func (w *Worker) deliver(ctx context.Context, batch []message.Message) error {
	gaveUp, err := w.attempt(ctx, func() error { return w.cfg.Sink.Send(ctx, batch) })
	if err != nil {
		return err
	}
	if gaveUp != nil {
		return w.deadLetter(ctx, batch, gaveUp)
	}
	return nil
}

// attempt runs op until it succeeds, with exponential backoff, keeping the
// endpoint's health. When op has failed for the whole retry period it returns
// op's last error as gaveUp; err is set only when ctx ended.
func (w *Worker) attempt(ctx context.Context, op func() error) (gaveUp, err error) {
	first := time.Time{}
	backoff := w.cfg.MinBackoff
	for {
		now := w.cfg.Now()
		err := op()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err == nil {
			w.succeeded(now)
			return nil, nil
		}
		if first.IsZero() {
			first = now
		}
		w.failed(now, err)
		if now.Sub(first) >= w.cfg.RetryPeriod {
			return err, nil
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		backoff = min(backoff*2, w.cfg.MaxBackoff)
	}
}

func (w *Worker) deadLetter(ctx context.Context, batch []message.Message, cause error) error {
	if err := w.writeDeadLetters(ctx, batch, cause); err != nil {
		return err
	}
	w.markDead(len(batch), cause)
	return nil
}

func (w *Worker) writeDeadLetters(ctx context.Context, batch []message.Message, cause error) error {
	if len(batch) == 0 {
		return nil
	}
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
	return nil
}

func (w *Worker) markDead(count int, cause error) {
	if count == 0 {
		// A Batcher's empty unit (a window without messages) was not written.
		w.cfg.Logger.Warn("empty unit abandoned after the retry period", "endpoint", w.cfg.Name, "error", cause.Error())
	} else {
		w.cfg.Logger.Warn("messages dead-lettered after the retry period", "endpoint", w.cfg.Name, "count", count, "error", cause.Error())
	}
	w.mu.Lock()
	w.health.HealthStatus = Dead
	w.successes = 0
	w.mu.Unlock()
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
