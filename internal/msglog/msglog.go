// Package msglog is the hub's durable log of accepted messages: a message is
// appended (and on disk, by group commit) before the device is acknowledged,
// and every consumer — each routing endpoint, the built-in events endpoint —
// reads it through its own durable cursor, so delivery is at least once across
// crashes. The embedded implementation is pebble; a NATS JetStream stream will
// implement the same interface for clustered hubs.
package msglog

import (
	"context"
	"errors"
)

// Record is one log entry.
type Record struct {
	Offset uint64
	Data   []byte
}

// ErrClosed is returned by calls on a closed log.
var ErrClosed = errors.New("msglog: closed")

// Log is an append-only sequence of records with named consumer cursors.
type Log interface {
	// Append writes data and returns once it is durable. Offsets start at 1
	// and increase by one per record. Concurrent appends are group-committed.
	// The log may keep data and hand it to readers: the caller must not
	// change it afterwards.
	Append(ctx context.Context, data []byte) (offset uint64, err error)
	// Read returns up to max records with offset >= from, in order; it does
	// not wait. Records' Data may be shared with other readers and must not
	// be changed.
	Read(ctx context.Context, from uint64, max int) ([]Record, error)
	// Wait blocks until a record with offset > after exists, or ctx ends.
	Wait(ctx context.Context, after uint64) error
	// Last is the highest offset written (0 when empty).
	Last() uint64
	// Cursor returns a consumer's committed position: the next offset it will
	// read (1 for a new consumer).
	Cursor(ctx context.Context, consumer string) (uint64, error)
	// Commit records that consumer has handled everything before next. It
	// does not wait for the disk: the position becomes durable with the log's
	// next sync (any Append, Trim or Sync), so a crash may forget the latest
	// commits and the consumer then reads those records again — at least
	// once, never lost. Endpoint workers commit every CursorInterval while
	// they deliver; an fsync each time would cost more than the delivery.
	Commit(ctx context.Context, consumer string, next uint64) error
	// Sync makes every earlier Commit durable.
	Sync(ctx context.Context) error
	// Trim deletes records below offset (retention); readers of trimmed
	// offsets get the first remaining record.
	Trim(ctx context.Context, below uint64) error
	Close() error
}
