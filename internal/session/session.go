// Package session keeps what a persistent MQTT session (clean session off)
// subscribed to, so that the session outlives a hub restart as it does in IoT
// Hub: the Azure device SDKs renew tokens and recover from drops by
// reconnecting without subscribing again, and would otherwise go deaf to
// methods, twin updates and cloud-to-device messages.
package session

import (
	"context"
	"database/sql"
	"fmt"
	"sync"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// Subscription is one remembered topic filter.
type Subscription struct {
	Filter string
	QoS    byte
}

// Store persists subscriptions per client id.
type Store interface {
	Load(ctx context.Context, clientID string) ([]Subscription, error)
	Save(ctx context.Context, clientID string, subs []Subscription) error
	Delete(ctx context.Context, clientID string) error
	Close() error
}

// SQLiteStore is the single-node Store. It remembers which clients have
// stored subscriptions (it is the database's only writer), so that the
// common case — a clean-session connect, which forgets any old session, or a
// persistent one with nothing stored — costs no database round trip on the
// connect path.
type SQLiteStore struct {
	db *sql.DB

	// mu serialises Save and Delete, so that stored stays what the table holds.
	mu     sync.Mutex
	stored map[string]bool
}

// OpenSQLite opens (creating if needed) the session database at path.
func OpenSQLite(ctx context.Context, path string) (*SQLiteStore, error) {
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(5000)")
	if err != nil {
		return nil, fmt.Errorf("open session store %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS subscriptions (
		client_id TEXT NOT NULL, filter TEXT NOT NULL, qos INTEGER NOT NULL,
		PRIMARY KEY (client_id, filter))`); err != nil {
		db.Close()
		return nil, fmt.Errorf("create session schema: %w", err)
	}
	st := &SQLiteStore{db: db, stored: map[string]bool{}}
	rows, err := db.QueryContext(ctx, `SELECT DISTINCT client_id FROM subscriptions`)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("read session clients: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			db.Close()
			return nil, fmt.Errorf("read session clients: %w", err)
		}
		st.stored[id] = true
	}
	if err := rows.Err(); err != nil {
		db.Close()
		return nil, fmt.Errorf("read session clients: %w", err)
	}
	return st, nil
}

func (s *SQLiteStore) has(clientID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stored[clientID]
}

// Load implements Store.
func (s *SQLiteStore) Load(ctx context.Context, clientID string) ([]Subscription, error) {
	if !s.has(clientID) {
		return nil, nil
	}
	rows, err := s.db.QueryContext(ctx, `SELECT filter, qos FROM subscriptions WHERE client_id = ? ORDER BY filter`, clientID)
	if err != nil {
		return nil, fmt.Errorf("load subscriptions: %w", err)
	}
	defer rows.Close()
	var out []Subscription
	for rows.Next() {
		var sub Subscription
		if err := rows.Scan(&sub.Filter, &sub.QoS); err != nil {
			return nil, fmt.Errorf("load subscriptions: %w", err)
		}
		out = append(out, sub)
	}
	return out, rows.Err()
}

// Save implements Store: it replaces the client's subscriptions.
func (s *SQLiteStore) Save(ctx context.Context, clientID string, subs []Subscription) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("save subscriptions: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM subscriptions WHERE client_id = ?`, clientID); err != nil {
		return fmt.Errorf("save subscriptions: %w", err)
	}
	for _, sub := range subs {
		if _, err := tx.ExecContext(ctx, `INSERT INTO subscriptions(client_id, filter, qos) VALUES (?, ?, ?)`, clientID, sub.Filter, sub.QoS); err != nil {
			return fmt.Errorf("save subscriptions: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("save subscriptions: %w", err)
	}
	if len(subs) > 0 {
		s.stored[clientID] = true
	} else {
		delete(s.stored, clientID)
	}
	return nil
}

// Delete implements Store.
func (s *SQLiteStore) Delete(ctx context.Context, clientID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stored[clientID] {
		return nil
	}
	if _, err := s.db.ExecContext(ctx, `DELETE FROM subscriptions WHERE client_id = ?`, clientID); err != nil {
		return fmt.Errorf("delete subscriptions: %w", err)
	}
	delete(s.stored, clientID)
	return nil
}

// Close implements Store.
func (s *SQLiteStore) Close() error { return s.db.Close() }
