package jobs

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

// Store keeps jobs and their per-device results. It knows no job rule;
// Service does. Implementations must be safe for concurrent use.
type Store interface {
	// CreateJob inserts j; ErrExists if its id is taken.
	CreateJob(ctx context.Context, j Job) error
	// GetJob returns a job or an error wrapping ErrNotFound.
	GetJob(ctx context.Context, id string) (Job, error)
	// UpdateJob calls fn with the job inside a transaction and writes back
	// what fn leaves, unless fn fails (its error is returned unchanged).
	UpdateJob(ctx context.Context, id string, fn func(*Job) error) (Job, error)
	// ListJobs returns every job, oldest first.
	ListJobs(ctx context.Context) ([]Job, error)
	// PutDeviceJobs inserts or replaces per-device results, atomically.
	PutDeviceJobs(ctx context.Context, djs []DeviceJob) error
	// DeviceJobs returns the per-device results of a job ("" for every job),
	// ordered by job then device.
	DeviceJobs(ctx context.Context, jobID string) ([]DeviceJob, error)
	// Close releases the store.
	Close() error
}

// Errors a Store reports (wrapped with context).
var (
	ErrNotFound = errors.New("jobs store: not found")
	ErrExists   = errors.New("jobs store: already exists")
)

// SQLiteStore is a Store in an SQLite file.
type SQLiteStore struct {
	db *sql.DB
	gc *groupcommit.Writer // transactions share fsyncs with concurrent ones
}

var _ Store = (*SQLiteStore)(nil)

const sqliteSchema = `
CREATE TABLE IF NOT EXISTS jobs (
	job_id  TEXT PRIMARY KEY,
	created INTEGER NOT NULL,
	doc     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS device_jobs (
	job_id    TEXT NOT NULL,
	device_id TEXT NOT NULL,
	doc       BLOB NOT NULL,
	PRIMARY KEY (job_id, device_id)
) WITHOUT ROWID;`

// OpenSQLite opens (creating if needed) the job database at path.
func OpenSQLite(ctx context.Context, path string) (*SQLiteStore, error) {
	esc := strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23").Replace(path)
	dsn := "file:" + esc + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open job store %s: %w", path, err)
	}
	// One connection: writes are serialised by SQLite anyway, and job
	// traffic is small.
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, sqliteSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("create job schema in %s: %w", path, err)
	}
	return &SQLiteStore{db: db, gc: groupcommit.New(db)}, nil
}

// Close implements Store.
func (s *SQLiteStore) Close() error {
	s.gc.Close()
	return s.db.Close()
}

// CreateJob implements Store.
func (s *SQLiteStore) CreateJob(ctx context.Context, j Job) error {
	doc, err := json.Marshal(j)
	if err != nil {
		return fmt.Errorf("encode job %s: %w", j.JobID, err)
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO jobs(job_id, created, doc) VALUES (?, ?, ?) ON CONFLICT(job_id) DO NOTHING`,
		j.JobID, j.CreatedTime.UnixNano(), doc)
	if err != nil {
		return fmt.Errorf("insert job %s: %w", j.JobID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("insert job %s: %w", j.JobID, err)
	} else if n == 0 {
		return fmt.Errorf("job %s: %w", j.JobID, ErrExists)
	}
	return nil
}

type queryer interface {
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}

func getJob(ctx context.Context, q queryer, id string) (Job, error) {
	var doc []byte
	err := q.QueryRowContext(ctx, `SELECT doc FROM jobs WHERE job_id = ?`, id).Scan(&doc)
	if errors.Is(err, sql.ErrNoRows) {
		return Job{}, fmt.Errorf("job %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Job{}, fmt.Errorf("read job %s: %w", id, err)
	}
	var j Job
	if err := json.Unmarshal(doc, &j); err != nil {
		return Job{}, fmt.Errorf("decode job %s: %w", id, err)
	}
	return j, nil
}

// GetJob implements Store.
func (s *SQLiteStore) GetJob(ctx context.Context, id string) (Job, error) {
	return getJob(ctx, s.db, id)
}

// UpdateJob implements Store.
func (s *SQLiteStore) UpdateJob(ctx context.Context, id string, fn func(*Job) error) (Job, error) {
	var j Job
	err := s.gc.Do(ctx, func(tx *sql.Tx) error {
		var err error
		if j, err = getJob(ctx, tx, id); err != nil {
			return err
		}
		if err := fn(&j); err != nil {
			return err
		}
		doc, err := json.Marshal(j)
		if err != nil {
			return fmt.Errorf("encode job %s: %w", id, err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE jobs SET doc = ? WHERE job_id = ?`, doc, id); err != nil {
			return fmt.Errorf("update job %s: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return Job{}, err
	}
	return j, nil
}

// ListJobs implements Store.
func (s *SQLiteStore) ListJobs(ctx context.Context) ([]Job, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT doc FROM jobs ORDER BY created, job_id`)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	defer rows.Close()
	var out []Job
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return nil, fmt.Errorf("list jobs: %w", err)
		}
		var j Job
		if err := json.Unmarshal(doc, &j); err != nil {
			return nil, fmt.Errorf("decode job: %w", err)
		}
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	return out, nil
}

// PutDeviceJobs implements Store.
func (s *SQLiteStore) PutDeviceJobs(ctx context.Context, djs []DeviceJob) error {
	if len(djs) == 0 {
		return nil
	}
	return s.gc.Do(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO device_jobs(job_id, device_id, doc) VALUES (?, ?, ?)
		ON CONFLICT(job_id, device_id) DO UPDATE SET doc = excluded.doc`)
		if err != nil {
			return fmt.Errorf("put device jobs: %w", err)
		}
		defer stmt.Close()
		for _, dj := range djs {
			doc, err := json.Marshal(dj)
			if err != nil {
				return fmt.Errorf("encode device job %s/%s: %w", dj.JobID, dj.DeviceID, err)
			}
			if _, err := stmt.ExecContext(ctx, dj.JobID, dj.DeviceID, doc); err != nil {
				return fmt.Errorf("put device job %s/%s: %w", dj.JobID, dj.DeviceID, err)
			}
		}
		return nil
	})
}

// DeviceJobs implements Store.
func (s *SQLiteStore) DeviceJobs(ctx context.Context, jobID string) ([]DeviceJob, error) {
	q, args := `SELECT doc FROM device_jobs ORDER BY job_id, device_id`, []any{}
	if jobID != "" {
		q, args = `SELECT doc FROM device_jobs WHERE job_id = ? ORDER BY device_id`, []any{jobID}
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list device jobs: %w", err)
	}
	defer rows.Close()
	var out []DeviceJob
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return nil, fmt.Errorf("list device jobs: %w", err)
		}
		var dj DeviceJob
		if err := json.Unmarshal(doc, &dj); err != nil {
			return nil, fmt.Errorf("decode device job: %w", err)
		}
		out = append(out, dj)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list device jobs: %w", err)
	}
	return out, nil
}
