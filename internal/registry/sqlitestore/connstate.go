package sqlitestore

import (
	"context"
	"database/sql"
	"sync"
	"time"

	"github.com/moat-iot/moat/internal/registry"
)

// connWriter writes connection states behind the callers. A connect and a
// disconnect each used to wait for a group commit: on a connect storm that
// was a sixth of the hub's work, for state that needs no durability — the hub
// marks every identity disconnected when it starts (DisconnectAll), since no
// connection outlives the process. So SetConnection records the state here,
// where reads see it at once, and one writer goroutine stores whatever is
// pending in one transaction per round, the latest state of each identity
// only. Delete forgets an identity's pending state; a connect that passed
// its existence check just before the delete can still leave one behind for
// an identity created again under that name, until its next connect.
type connWriter struct {
	mu sync.Mutex
	// pending is not yet handed to the database; writing is being written.
	// Reads take pending first, then writing, then the row.
	pending, writing map[registry.Key]registry.Connection

	kick    chan struct{}
	stop    chan struct{}
	stopped chan struct{}
	// flushMu makes one round at a time, so DisconnectAll and Close can
	// wait for the round in flight.
	flushMu sync.Mutex
}

func newConnWriter() *connWriter {
	return &connWriter{
		pending: map[registry.Key]registry.Connection{}, writing: map[registry.Key]registry.Connection{},
		kick: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{}),
	}
}

// overlay returns the state not yet in the database for key, if any.
func (c *connWriter) overlay(key registry.Key) (registry.Connection, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.pending[key]; ok {
		return v, true
	}
	v, ok := c.writing[key]
	return v, ok
}

// apply sets rec.Conn from the overlay.
func (c *connWriter) apply(rec *registry.Record) {
	if v, ok := c.overlay(rec.Key); ok {
		rec.Conn = v
	}
}

// forget drops what is pending for a deleted identity (all of a device's
// when moduleID is empty), so that one created again under the same name
// does not inherit it.
func (c *connWriter) forget(key registry.Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range []map[registry.Key]registry.Connection{c.pending, c.writing} {
		for k := range m {
			if k.DeviceID == key.DeviceID && (key.ModuleID == "" || k.ModuleID == key.ModuleID) {
				delete(m, k)
			}
		}
	}
}

// run writes rounds until Close.
func (s *Store) runConnWriter() {
	c := s.conns
	defer close(c.stopped)
	for {
		select {
		case <-c.stop:
			return
		case <-c.kick:
		}
		if err := s.flushConns(context.Background()); err != nil {
			// The states stay pending; try again shortly (the next kick
			// or this timer), without spinning on a broken database.
			select {
			case <-c.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			select {
			case c.kick <- struct{}{}:
			default:
			}
		}
	}
}

// flushConns writes what is pending in one transaction.
func (s *Store) flushConns(ctx context.Context) error {
	s.conns.flushMu.Lock()
	defer s.conns.flushMu.Unlock()
	return s.flushConnsLocked(ctx)
}

// flushConnsLocked is flushConns for a caller that holds flushMu.
func (s *Store) flushConnsLocked(ctx context.Context) error {
	c := s.conns
	c.mu.Lock()
	if len(c.pending) == 0 {
		c.mu.Unlock()
		return nil
	}
	c.writing, c.pending = c.pending, c.writing
	// A copy: forget may drop entries from writing meanwhile.
	type entry struct {
		k registry.Key
		v registry.Connection
	}
	batch := make([]entry, 0, len(c.writing))
	for k, v := range c.writing {
		batch = append(batch, entry{k, v})
	}
	c.mu.Unlock()
	err := s.inTx(ctx, "set connections", func(tx *sql.Tx) error {
		dev, mod := in(ctx, tx, s.write.connDevice), in(ctx, tx, s.write.connModule)
		for _, e := range batch {
			k, v := e.k, e.v
			var err error
			if k.ModuleID == "" {
				_, err = dev.ExecContext(ctx, v.Connected, toNanos(v.UpdatedAt), toNanos(v.LastActivity), k.DeviceID)
			} else {
				_, err = mod.ExecContext(ctx, v.Connected, toNanos(v.UpdatedAt), toNanos(v.LastActivity), k.DeviceID, k.ModuleID)
			}
			if err != nil { // a deleted identity updates no row; this is the database failing
				return err
			}
		}
		return nil
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		for k, v := range c.writing {
			if _, newer := c.pending[k]; !newer {
				c.pending[k] = v
			}
		}
	}
	clear(c.writing)
	return err
}

// SetConnection implements registry.Store. It returns once the state is
// visible to reads; the database has it a commit later (see connWriter).
func (s *Store) SetConnection(ctx context.Context, key registry.Key, conn registry.Connection) error {
	if _, err := s.Get(ctx, key); err != nil {
		return err // ErrNotFound for an identity that does not exist
	}
	c := s.conns
	c.mu.Lock()
	c.pending[key] = conn
	// Under c.mu, so that the cache follows the calls' order.
	s.cache.setConn(key, conn)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return nil
}
