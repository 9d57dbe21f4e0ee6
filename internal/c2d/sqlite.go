package c2d

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/moat-iot/moat/internal/groupcommit"
)

// SQLiteStore keeps the queues in an SQLite file with full fsync, so a message
// the hub accepted survives a crash.
type SQLiteStore struct {
	db *sql.DB
	gc *groupcommit.Writer // writes of concurrent senders share fsyncs
}

// OpenSQLite opens (creating if needed) the queue database at path.
func OpenSQLite(ctx context.Context, path string) (*SQLiteStore, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(5000)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open c2d store %s: %w", path, err)
	}
	db.SetMaxOpenConns(1) // one writer; queues are small and serialised
	_, err = db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS c2d (
		device_id TEXT NOT NULL,
		seq INTEGER PRIMARY KEY AUTOINCREMENT,
		message BLOB NOT NULL,
		expiry INTEGER NOT NULL,
		deliveries INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX IF NOT EXISTS c2d_device ON c2d(device_id, seq);`)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("create c2d schema: %w", err)
	}
	return &SQLiteStore{db: db, gc: groupcommit.New(db)}, nil
}

// Enqueue implements Store.
func (s *SQLiteStore) Enqueue(ctx context.Context, e *Entry, max int) error {
	body, err := json.Marshal(e.Message)
	if err != nil {
		return fmt.Errorf("encode message: %w", err)
	}
	return s.gc.Do(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM c2d WHERE device_id = ?`, e.DeviceID).Scan(&n); err != nil {
			return fmt.Errorf("count: %w", err)
		}
		if n >= max {
			return ErrQueueFull
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO c2d(device_id, message, expiry) VALUES (?, ?, ?)`, e.DeviceID, body, e.Expiry.UnixNano())
		if err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		id, err := res.LastInsertId()
		if err != nil {
			return fmt.Errorf("insert id: %w", err)
		}
		e.Seq = uint64(id)
		return nil
	})
}

// Pending implements Store.
func (s *SQLiteStore) Pending(ctx context.Context, deviceID string) ([]Entry, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, message, expiry, deliveries FROM c2d WHERE device_id = ? ORDER BY seq`, deviceID)
	if err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		var e Entry
		var body []byte
		var exp int64
		if err := rows.Scan(&e.Seq, &body, &exp, &e.DeliveryCount); err != nil {
			return nil, fmt.Errorf("scan: %w", err)
		}
		if err := json.Unmarshal(body, &e.Message); err != nil {
			return nil, fmt.Errorf("decode message %d: %w", e.Seq, err)
		}
		e.DeviceID = deviceID
		e.Expiry = time.Unix(0, exp)
		out = append(out, e)
	}
	return out, rows.Err()
}

// MarkDelivered implements Store.
func (s *SQLiteStore) MarkDelivered(ctx context.Context, deviceID string, seq uint64) error {
	return s.exec(ctx, `UPDATE c2d SET deliveries = deliveries + 1 WHERE device_id = ? AND seq = ?`, deviceID, seq)
}

// Remove implements Store.
func (s *SQLiteStore) Remove(ctx context.Context, deviceID string, seq uint64) error {
	return s.exec(ctx, `DELETE FROM c2d WHERE device_id = ? AND seq = ?`, deviceID, seq)
}

// Purge implements Store.
func (s *SQLiteStore) Purge(ctx context.Context, deviceID string) (int, error) {
	var n int64
	err := s.gc.Do(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM c2d WHERE device_id = ?`, deviceID)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return int(n), err
}

func (s *SQLiteStore) exec(ctx context.Context, q string, args ...any) error {
	return s.gc.Do(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, q, args...)
		return err
	})
}

// Count implements Store.
func (s *SQLiteStore) Count(ctx context.Context, deviceID string) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM c2d WHERE device_id = ?`, deviceID).Scan(&n)
	return n, err
}

// Close implements Store.
func (s *SQLiteStore) Close() error {
	s.gc.Close()
	return s.db.Close()
}
