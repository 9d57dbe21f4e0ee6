package configurations

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/moat-iot/moat/internal/groupcommit"
)

// Store keeps configurations. It knows no configuration rule; Service does.
// Implementations must be safe for concurrent use.
type Store interface {
	// Get returns a configuration or an error wrapping ErrNotFound.
	Get(ctx context.Context, id string) (Configuration, error)
	// List returns every configuration, ordered by id.
	List(ctx context.Context) ([]Configuration, error)
	// Create inserts c; ErrExists if its id is taken.
	Create(ctx context.Context, c Configuration) error
	// Update calls fn with the configuration inside a transaction and writes
	// back what fn leaves unless fn fails (its error is returned unchanged).
	Update(ctx context.Context, id string, fn func(*Configuration) error) (Configuration, error)
	// Delete removes a configuration after fn (if not nil) approves it.
	Delete(ctx context.Context, id string, fn func(*Configuration) error) error
	// Close releases the store.
	Close() error
}

// Errors a Store reports (wrapped with context).
var (
	ErrNotFound = errors.New("configuration store: not found")
	ErrExists   = errors.New("configuration store: already exists")
)

// SQLiteStore is a Store in an SQLite file.
type SQLiteStore struct {
	db *sql.DB
	gc *groupcommit.Writer // transactions share fsyncs with concurrent ones
}

var _ Store = (*SQLiteStore)(nil)

// OpenSQLite opens (creating if needed) the configuration database at path.
func OpenSQLite(ctx context.Context, path string) (*SQLiteStore, error) {
	esc := strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23").Replace(path)
	dsn := "file:" + esc + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open configuration store %s: %w", path, err)
	}
	// One connection: configurations are few and rarely written.
	db.SetMaxOpenConns(1)
	_, err = db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS configurations (
		id  TEXT PRIMARY KEY,
		doc BLOB NOT NULL
	) WITHOUT ROWID`)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("create configuration schema in %s: %w", path, err)
	}
	return &SQLiteStore{db: db, gc: groupcommit.New(db)}, nil
}

// Close implements Store.
func (s *SQLiteStore) Close() error {
	s.gc.Close()
	return s.db.Close()
}

type queryer interface {
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}

func get(ctx context.Context, q queryer, id string) (Configuration, error) {
	var doc []byte
	err := q.QueryRowContext(ctx, `SELECT doc FROM configurations WHERE id = ?`, id).Scan(&doc)
	if errors.Is(err, sql.ErrNoRows) {
		return Configuration{}, fmt.Errorf("configuration %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Configuration{}, fmt.Errorf("read configuration %s: %w", id, err)
	}
	var c Configuration
	if err := json.Unmarshal(doc, &c); err != nil {
		return Configuration{}, fmt.Errorf("decode configuration %s: %w", id, err)
	}
	return c, nil
}

// Get implements Store.
func (s *SQLiteStore) Get(ctx context.Context, id string) (Configuration, error) {
	return get(ctx, s.db, id)
}

// List implements Store.
func (s *SQLiteStore) List(ctx context.Context) ([]Configuration, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT doc FROM configurations ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list configurations: %w", err)
	}
	defer rows.Close()
	var out []Configuration
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return nil, fmt.Errorf("list configurations: %w", err)
		}
		var c Configuration
		if err := json.Unmarshal(doc, &c); err != nil {
			return nil, fmt.Errorf("decode configuration: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list configurations: %w", err)
	}
	return out, nil
}

// Create implements Store.
func (s *SQLiteStore) Create(ctx context.Context, c Configuration) error {
	doc, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode configuration %s: %w", c.ID, err)
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO configurations(id, doc) VALUES (?, ?) ON CONFLICT(id) DO NOTHING`, c.ID, doc)
	if err != nil {
		return fmt.Errorf("insert configuration %s: %w", c.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("insert configuration %s: %w", c.ID, err)
	} else if n == 0 {
		return fmt.Errorf("configuration %s: %w", c.ID, ErrExists)
	}
	return nil
}

// Update implements Store.
func (s *SQLiteStore) Update(ctx context.Context, id string, fn func(*Configuration) error) (Configuration, error) {
	var c Configuration
	err := s.gc.Do(ctx, func(tx *sql.Tx) error {
		var err error
		if c, err = get(ctx, tx, id); err != nil {
			return err
		}
		if err := fn(&c); err != nil {
			return err
		}
		doc, err := json.Marshal(c)
		if err != nil {
			return fmt.Errorf("encode configuration %s: %w", id, err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE configurations SET doc = ? WHERE id = ?`, doc, id); err != nil {
			return fmt.Errorf("update configuration %s: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return Configuration{}, err
	}
	return c, nil
}

// Delete implements Store.
func (s *SQLiteStore) Delete(ctx context.Context, id string, fn func(*Configuration) error) error {
	return s.gc.Do(ctx, func(tx *sql.Tx) error {
		c, err := get(ctx, tx, id)
		if err != nil {
			return err
		}
		if fn != nil {
			if err := fn(&c); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM configurations WHERE id = ?`, id); err != nil {
			return fmt.Errorf("delete configuration %s: %w", id, err)
		}
		return nil
	})
}
