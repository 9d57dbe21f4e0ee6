package endpoint

import (
	"context"
	"fmt"
	"time"

	"github.com/moat-iot/moat/internal/msglog"
)

// CursorInterval is the longest a worker's position stays ahead of its
// committed cursor while it keeps delivering. Committing after every batch
// meant a log write per wake-up of every worker: at 25,000 messages/s with
// four endpoints some 2,800 cursor writes a second, each passing through the
// log's commit pipeline behind the synced appends that devices wait on
// (publish-to-endpoint p99 at 25,000/s: 47–97 ms with them, 34–40 ms
// without). A crash replays at most this much delivery again — the commits
// never waited for the disk, so a crash could replay recent batches anyway;
// delivery stays at least once.
const CursorInterval = 100 * time.Millisecond

// cursor is a worker's position in the log and the part of it committed.
type cursor struct {
	log      msglog.Log
	consumer string
	now      func() time.Time

	committed uint64    // the position last written to the log
	at        uint64    // the position reached: everything before it is handled
	since     time.Time // when at first moved past committed
}

func newCursor(log msglog.Log, consumer string, now func() time.Time, committed uint64) *cursor {
	return &cursor{log: log, consumer: consumer, now: now, committed: committed, at: committed}
}

// advance records that everything before to is handled and commits it when
// the position has been ahead of the committed cursor for CursorInterval.
func (c *cursor) advance(ctx context.Context, to uint64) error {
	if to <= c.at {
		return nil
	}
	now := c.now()
	if c.at == c.committed {
		c.since = now
	}
	c.at = to
	if now.Sub(c.since) < CursorInterval {
		return nil
	}
	return c.commit(ctx)
}

// due is when the position must be committed if the worker waits (zero: the
// cursor is committed).
func (c *cursor) due() time.Time {
	if c.at == c.committed {
		return time.Time{}
	}
	return c.since.Add(CursorInterval)
}

// commitDue commits the position if it is due.
func (c *cursor) commitDue(ctx context.Context) error {
	if d := c.due(); d.IsZero() || c.now().Before(d) {
		return nil
	}
	return c.commit(ctx)
}

// commit writes the position now.
func (c *cursor) commit(ctx context.Context) error {
	if c.at == c.committed {
		return nil
	}
	if err := c.log.Commit(ctx, c.consumer, c.at); err != nil {
		return fmt.Errorf("commit cursor: %w", err)
	}
	c.committed = c.at
	return nil
}

// commitOnStop writes the position when the worker stops, so that a clean
// restart does not deliver again what was delivered. ctx has ended by then;
// the write gets a second of its own.
func (c *cursor) commitOnStop(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	return c.commit(cctx)
}
