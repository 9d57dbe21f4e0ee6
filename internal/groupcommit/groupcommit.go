// Package groupcommit batches concurrent SQLite write transactions into one
// commit. SQLite serialises writers and, with synchronous=FULL, pays one fsync
// per commit; a disk that syncs a few thousand times a second would cap every
// store at that rate. A Writer runs all writes queued while the previous
// commit was syncing in one transaction, each inside its own savepoint so a
// failing write undoes only itself, and answers every caller once the batch is
// durable.
package groupcommit

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
)

// MaxBatch bounds one transaction, so a long queue cannot make the first
// writer of a batch wait without limit.
const MaxBatch = 256

// ErrClosed is returned for writes submitted after Close.
var ErrClosed = errors.New("groupcommit: writer closed")

type job struct {
	ctx  context.Context
	fn   func(tx *sql.Tx) error
	then func()
	errc chan error
}

// Writer owns a database's write path.
type Writer struct {
	// mu orders submissions against Close: Do holds it shared while queueing,
	// so after Close nothing can be queued that the writer will not drain.
	mu     sync.RWMutex
	closed bool

	db   *sql.DB
	jobs chan *job
	stop chan struct{}
	done chan struct{}
}

// New starts a writer over db. db should allow one open connection, the one
// the writer uses.
func New(db *sql.DB) *Writer {
	w := &Writer{db: db, jobs: make(chan *job, MaxBatch), stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

// Do runs fn inside a transaction shared with other writes and returns once it
// is committed. fn's own error is returned unchanged (its changes undone);
// failures of the transaction itself are wrapped. fn must not keep tx.
func (w *Writer) Do(ctx context.Context, fn func(tx *sql.Tx) error) error {
	return w.DoThen(ctx, fn, nil)
}

// DoThen is Do with then run, when fn succeeded, on the writer's goroutine
// right after the commit and before any later transaction: callers that
// mirror committed state (a cache) see the commits in their order. then
// must be quick and must not call the Writer.
func (w *Writer) DoThen(ctx context.Context, fn func(tx *sql.Tx) error, then func()) error {
	j := &job{ctx: ctx, fn: fn, then: then, errc: make(chan error, 1)}
	w.mu.RLock()
	if w.closed {
		w.mu.RUnlock()
		return ErrClosed
	}
	select {
	case w.jobs <- j:
		w.mu.RUnlock()
	case <-ctx.Done():
		w.mu.RUnlock()
		return ctx.Err()
	}
	// Once queued, wait for the outcome even if ctx ends: the write may be in
	// the transaction that is committing.
	return <-j.errc
}

// Close fails queued writes and stops the writer; it does not close db.
func (w *Writer) Close() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.stop)
	}
	w.mu.Unlock()
	<-w.done
}

func (w *Writer) run() {
	defer close(w.done)
	batch := make([]*job, 0, MaxBatch)
	for {
		select {
		case <-w.stop:
			for {
				select {
				case j := <-w.jobs:
					j.errc <- ErrClosed
				default:
					return
				}
			}
		case j := <-w.jobs:
			batch = append(batch[:0], j)
		}
	more:
		for len(batch) < MaxBatch {
			select {
			case j := <-w.jobs:
				batch = append(batch, j)
			default:
				break more
			}
		}
		w.commit(batch)
	}
}

func (w *Writer) commit(batch []*job) {
	fail := func(err error) {
		for _, j := range batch {
			j.errc <- err
		}
	}
	tx, err := w.db.BeginTx(context.Background(), nil)
	if err != nil {
		fail(fmt.Errorf("groupcommit: begin: %w", err))
		return
	}
	results := make([]error, len(batch))
	for i, j := range batch {
		if err := j.ctx.Err(); err != nil {
			results[i] = err
			continue
		}
		if _, err := tx.ExecContext(context.Background(), `SAVEPOINT w`); err != nil {
			tx.Rollback()
			fail(fmt.Errorf("groupcommit: savepoint: %w", err))
			return
		}
		results[i] = j.fn(tx)
		end := `RELEASE w`
		if results[i] != nil {
			end = `ROLLBACK TO w; RELEASE w`
		}
		if _, err := tx.ExecContext(context.Background(), end); err != nil {
			tx.Rollback()
			fail(fmt.Errorf("groupcommit: end savepoint: %w", err))
			return
		}
	}
	if err := tx.Commit(); err != nil {
		fail(fmt.Errorf("groupcommit: commit: %w", err))
		return
	}
	for i, j := range batch {
		if results[i] == nil && j.then != nil {
			j.then()
		}
	}
	for i, j := range batch {
		j.errc <- results[i]
	}
}
