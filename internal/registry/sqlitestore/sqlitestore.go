// Package sqlitestore is the embedded registry.Store: one SQLite file in WAL
// mode with full fsync, one writer connection (SQLite serialises writers
// anyway; a single connection makes that explicit and avoids busy retries) and
// a small pool of readers that WAL lets run beside it.
package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/moat-iot/moat/internal/groupcommit"
	"github.com/moat-iot/moat/internal/registry"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// Store is a registry.Store over SQLite.
type Store struct {
	w *sql.DB // the one writer connection
	r *sql.DB // readers

	// Every write is group-committed with the writes queued beside it, so a
	// storm of connects or twin reports costs a few fsyncs, not one each.
	gc *groupcommit.Writer

	cache *recordCache
	// conns holds connection states not yet written (connstate.go).
	conns *connWriter

	// Hot statements are prepared once: SQLite's parser otherwise costs as
	// much as the write itself.
	read, write statements
}

const (
	sqlGetDevice = `SELECT status, identity, twin, connected, conn_updated, last_activity FROM devices WHERE device_id = ?`
	sqlGetModule = `SELECT '', identity, twin, connected, conn_updated, last_activity FROM modules WHERE device_id = ? AND module_id = ?`
	sqlUpdDevice = `UPDATE devices SET status = ?, identity = ?, twin = ? WHERE device_id = ?`
	sqlUpdModule = `UPDATE modules SET identity = ?, twin = ? WHERE device_id = ? AND module_id = ?`
	// The compare-and-swap forms of the updates (see Update).
	sqlCASDevice  = `UPDATE devices SET status = ?, identity = ?, twin = ? WHERE device_id = ? AND status = ? AND identity = ? AND twin = ?`
	sqlCASModule  = `UPDATE modules SET identity = ?, twin = ? WHERE device_id = ? AND module_id = ? AND identity = ? AND twin = ?`
	sqlConnDevice = `UPDATE devices SET connected = ?, conn_updated = ?, last_activity = ? WHERE device_id = ?`
	sqlConnModule = `UPDATE modules SET connected = ?, conn_updated = ?, last_activity = ? WHERE device_id = ? AND module_id = ?`
)

// statements are the prepared hot statements of one database handle; the
// writer's also has the updates.
type statements struct {
	getDevice, getModule   *sql.Stmt
	updDevice, updModule   *sql.Stmt
	casDevice, casModule   *sql.Stmt
	connDevice, connModule *sql.Stmt
}

func prepare(ctx context.Context, db *sql.DB, writer bool) (statements, error) {
	var st statements
	list := []struct {
		dst **sql.Stmt
		q   string
	}{{&st.getDevice, sqlGetDevice}, {&st.getModule, sqlGetModule}}
	if writer {
		list = append(list, []struct {
			dst **sql.Stmt
			q   string
		}{{&st.updDevice, sqlUpdDevice}, {&st.updModule, sqlUpdModule}, {&st.casDevice, sqlCASDevice}, {&st.casModule, sqlCASModule}, {&st.connDevice, sqlConnDevice}, {&st.connModule, sqlConnModule}}...)
	}
	for _, l := range list {
		stmt, err := db.PrepareContext(ctx, l.q)
		if err != nil {
			st.close()
			return statements{}, fmt.Errorf("prepare %q: %w", l.q, err)
		}
		*l.dst = stmt
	}
	return st, nil
}

func (st statements) close() {
	for _, s := range []*sql.Stmt{st.getDevice, st.getModule, st.updDevice, st.updModule, st.casDevice, st.casModule, st.connDevice, st.connModule} {
		if s != nil {
			s.Close()
		}
	}
}

// in returns stmt bound to tx (database/sql reuses the connection's prepared
// statement, and the writer has one connection).
func in(ctx context.Context, tx *sql.Tx, stmt *sql.Stmt) *sql.Stmt { return tx.StmtContext(ctx, stmt) }

// cachedRecords bounds the record cache: about 1.1 KiB per identity (its
// JSON and its twin's), so under 5 MiB. The cache is for identities in use
// (a connect's reads, twin traffic), not for every connected device: with
// room for 16,384, ten thousand idle TLS devices each kept their record,
// 1.1 of the 20 KiB an idle device may cost.
const cachedRecords = 4096

var _ registry.Store = (*Store)(nil)

// migrations bring the schema from version i to i+1 (PRAGMA user_version).
// Append only; never edit a released step.
var migrations = []string{
	`CREATE TABLE devices (
		device_id     TEXT PRIMARY KEY,
		status        TEXT NOT NULL,
		identity      BLOB NOT NULL,
		twin          BLOB NOT NULL,
		connected     INTEGER NOT NULL DEFAULT 0,
		conn_updated  INTEGER,
		last_activity INTEGER
	) WITHOUT ROWID;
	CREATE TABLE modules (
		device_id     TEXT NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
		module_id     TEXT NOT NULL,
		identity      BLOB NOT NULL,
		twin          BLOB NOT NULL,
		connected     INTEGER NOT NULL DEFAULT 0,
		conn_updated  INTEGER,
		last_activity INTEGER,
		PRIMARY KEY (device_id, module_id)
	) WITHOUT ROWID;
	CREATE INDEX devices_status ON devices(status);`,
}

// writerCacheKiB is the writer connection's SQLite page cache.
const writerCacheKiB = 32 << 10

// Open opens (creating if needed) the registry database at path and brings its
// schema up to date.
func Open(ctx context.Context, path string) (*Store, error) {
	base := "file:" + escapePath(path) + "?_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)"
	// The writer reads every row it changes (twins are read-modify-write);
	// with SQLite's default 2 MiB page cache a registry of thousands of
	// devices came from the OS page cache by pread on almost every update.
	// 32 MiB made twin updates 13% cheaper; pages are allocated only as used.
	w, err := sql.Open("sqlite", base+"&_pragma=journal_mode(WAL)&_pragma=cache_size("+strconv.Itoa(-writerCacheKiB)+")&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open registry %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	if err := migrate(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("open registry %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", base+"&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open registry %s readers: %w", path, err)
	}
	n := max(2, runtime.GOMAXPROCS(0))
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	if err := r.PingContext(ctx); err != nil {
		w.Close()
		r.Close()
		return nil, fmt.Errorf("open registry %s readers: %w", path, err)
	}
	rs, err := prepare(ctx, r, false)
	if err != nil {
		w.Close()
		r.Close()
		return nil, fmt.Errorf("open registry %s: %w", path, err)
	}
	ws, err := prepare(ctx, w, true)
	if err != nil {
		rs.close()
		w.Close()
		r.Close()
		return nil, fmt.Errorf("open registry %s: %w", path, err)
	}
	st := &Store{w: w, r: r, gc: groupcommit.New(w), cache: newRecordCache(cachedRecords), conns: newConnWriter(), read: rs, write: ws}
	go st.runConnWriter()
	return st, nil
}

// escapePath keeps a file name whole inside a "file:" URI, which SQLite
// percent-decodes.
func escapePath(p string) string {
	return strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23").Replace(p)
}

func migrate(ctx context.Context, db *sql.DB) error {
	var v int
	if err := db.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this build knows (%d)", v, len(migrations))
	}
	for ; v < len(migrations); v++ {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("migrate to %d: %w", v+1, err)
		}
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate to %d: %w", v+1, err)
		}
		// PRAGMA takes no parameters; v is an int we control.
		if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, v+1)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate to %d: %w", v+1, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migrate to %d: %w", v+1, err)
		}
	}
	return nil
}

// Close stops the writer and closes the database. Writes still queued fail.
func (s *Store) Close() error {
	close(s.conns.stop)
	<-s.conns.stopped
	ferr := s.flushConns(context.Background())
	s.gc.Close()
	s.read.close()
	s.write.close()
	return errors.Join(ferr, s.r.Close(), s.w.Close())
}

// getRecord reads key with the prepared statements dev and mod.
func getRecord(ctx context.Context, dev, mod *sql.Stmt, key registry.Key) (*registry.Record, error) {
	rec := &registry.Record{Key: key}
	var conn int
	var updated, activity sql.NullInt64
	var row *sql.Row
	if key.ModuleID == "" {
		row = dev.QueryRowContext(ctx, key.DeviceID)
	} else {
		row = mod.QueryRowContext(ctx, key.DeviceID, key.ModuleID)
	}
	err := row.Scan(&rec.Status, &rec.Identity, &rec.Twin, &conn, &updated, &activity)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("get %s: %w", key, registry.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	rec.Conn = registry.Connection{Connected: conn != 0, UpdatedAt: fromNanos(updated), LastActivity: fromNanos(activity)}
	return rec, nil
}

func toNanos(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixNano(), Valid: true}
}

func fromNanos(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64).UTC()
}

// Get implements registry.Store.
func (s *Store) Get(ctx context.Context, key registry.Key) (*registry.Record, error) {
	rec, seq := s.cache.get(key)
	if rec != nil {
		return rec, nil
	}
	rec, err := getRecord(ctx, s.read.getDevice, s.read.getModule, key)
	if err == nil {
		s.conns.apply(rec)
		s.cache.put(rec, seq)
	}
	return rec, err
}

// Create implements registry.Store.
func (s *Store) Create(ctx context.Context, rec *registry.Record) error {
	defer s.invalidating(rec.Key)()
	return s.inTx(ctx, "create "+rec.Key.String(), func(tx *sql.Tx) error {
		k := rec.Key
		var exists int
		var err error
		if k.ModuleID == "" {
			err = tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM devices WHERE device_id = ?`, k.DeviceID).Scan(&exists)
		} else {
			err = tx.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM devices WHERE device_id = ?) * 2 + (SELECT COUNT(*) FROM modules WHERE device_id = ? AND module_id = ?)`, k.DeviceID, k.DeviceID, k.ModuleID).Scan(&exists)
			if err == nil {
				if exists < 2 {
					return registry.ErrNotFound
				}
				exists -= 2
			}
		}
		if err != nil {
			return err
		}
		if exists > 0 {
			return registry.ErrExists
		}
		c := rec.Conn
		if k.ModuleID == "" {
			_, err = tx.ExecContext(ctx, `INSERT INTO devices(device_id, status, identity, twin, connected, conn_updated, last_activity) VALUES (?, ?, ?, ?, ?, ?, ?)`,
				k.DeviceID, rec.Status, rec.Identity, rec.Twin, c.Connected, toNanos(c.UpdatedAt), toNanos(c.LastActivity))
		} else {
			_, err = tx.ExecContext(ctx, `INSERT INTO modules(device_id, module_id, identity, twin, connected, conn_updated, last_activity) VALUES (?, ?, ?, ?, ?, ?, ?)`,
				k.DeviceID, k.ModuleID, rec.Identity, rec.Twin, c.Connected, toNanos(c.UpdatedAt), toNanos(c.LastActivity))
		}
		return err
	})
}

// optimisticTries is how often Update tries a compare-and-swap before it
// falls back to reading and writing inside the writer's transaction.
const optimisticTries = 3

// Update implements registry.Store. The single writer is the registry's
// bottleneck, so the read and fn (decoding, merging and encoding a twin: most
// of an update's work) run on the caller's goroutine against the committed
// record, and the writer only swaps the new values in if the row still holds
// the ones fn saw. A conflicting write makes the swap miss and the update
// start again; after optimisticTries misses it runs wholly in the writer,
// which cannot miss.
func (s *Store) Update(ctx context.Context, key registry.Key, fn func(cur *registry.Record) error) error {
	for range optimisticTries {
		cur, err := s.Get(ctx, key)
		if err != nil {
			return err
		}
		old := *cur // fn replaces the slices, it does not write into them
		if err := fn(cur); err != nil {
			return err
		}
		swapped, err := s.swap(ctx, key, &old, cur)
		if err != nil || swapped {
			return err
		}
	}
	return s.updateInWriter(ctx, key, fn)
}

// swap writes rec's values if the row still holds old's. Unlike the other
// writes it keeps the cache warm: the writer refreshes the cached record in
// commit order (refresh keeps the cached connection state, which the swap
// does not write), so a twin's next read after its update is a hit.
func (s *Store) swap(ctx context.Context, key registry.Key, old, rec *registry.Record) (bool, error) {
	var n int64
	err := s.inTxThen(ctx, "update "+key.String(), func(tx *sql.Tx) error {
		var res sql.Result
		var err error
		if key.ModuleID == "" {
			res, err = in(ctx, tx, s.write.casDevice).ExecContext(ctx, rec.Status, rec.Identity, rec.Twin, key.DeviceID, old.Status, old.Identity, old.Twin)
		} else {
			res, err = in(ctx, tx, s.write.casModule).ExecContext(ctx, rec.Identity, rec.Twin, key.DeviceID, key.ModuleID, old.Identity, old.Twin)
		}
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	}, func() {
		if n == 1 {
			s.cache.refresh(rec)
		}
	})
	return n == 1, err
}

// updateInWriter reads and writes in one writer transaction.
func (s *Store) updateInWriter(ctx context.Context, key registry.Key, fn func(cur *registry.Record) error) error {
	defer s.invalidating(key)()
	return s.inTx(ctx, "update "+key.String(), func(tx *sql.Tx) error {
		rec, err := getRecord(ctx, in(ctx, tx, s.write.getDevice), in(ctx, tx, s.write.getModule), key)
		if err != nil {
			return err
		}
		s.conns.apply(rec)
		if err := fn(rec); err != nil {
			return passThrough{err}
		}
		if key.ModuleID == "" {
			_, err = in(ctx, tx, s.write.updDevice).ExecContext(ctx, rec.Status, rec.Identity, rec.Twin, key.DeviceID)
		} else {
			_, err = in(ctx, tx, s.write.updModule).ExecContext(ctx, rec.Identity, rec.Twin, key.DeviceID, key.ModuleID)
		}
		return err
	})
}

// Delete implements registry.Store.
func (s *Store) Delete(ctx context.Context, key registry.Key, fn func(cur *registry.Record) error) ([]registry.Key, error) {
	// No round of connection states may be in flight: one could land on an
	// identity created again under the same name right after.
	s.conns.flushMu.Lock()
	defer s.conns.flushMu.Unlock()
	defer s.invalidating(key)()
	var keys []registry.Key
	err := s.inTx(ctx, "delete "+key.String(), func(tx *sql.Tx) error {
		keys = keys[:0]
		rec, err := getRecord(ctx, in(ctx, tx, s.write.getDevice), in(ctx, tx, s.write.getModule), key)
		if err != nil {
			return err
		}
		if fn != nil {
			if err := fn(rec); err != nil {
				return passThrough{err}
			}
		}
		keys = append(keys, key)
		if key.ModuleID != "" {
			_, err = tx.ExecContext(ctx, `DELETE FROM modules WHERE device_id = ? AND module_id = ?`, key.DeviceID, key.ModuleID)
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT module_id FROM modules WHERE device_id = ? ORDER BY module_id`, key.DeviceID)
		if err != nil {
			return err
		}
		for rows.Next() {
			var m string
			if err := rows.Scan(&m); err != nil {
				rows.Close()
				return err
			}
			keys = append(keys, registry.Key{DeviceID: key.DeviceID, ModuleID: m})
		}
		if err := rows.Close(); err != nil {
			return err
		}
		// Modules go by ON DELETE CASCADE.
		_, err = tx.ExecContext(ctx, `DELETE FROM devices WHERE device_id = ?`, key.DeviceID)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.conns.forget(key)
	return keys, nil
}

// DisconnectAll implements registry.Store.
func (s *Store) DisconnectAll(ctx context.Context, t time.Time) error {
	// What is pending goes first (its last activity times stay), and no
	// round may land after this.
	s.conns.flushMu.Lock()
	defer s.conns.flushMu.Unlock()
	if err := s.flushConnsLocked(ctx); err != nil {
		return fmt.Errorf("disconnect all: %w", err)
	}
	s.cache.clear()
	defer s.cache.clear()
	return s.inTx(ctx, "disconnect all", func(tx *sql.Tx) error {
		for _, table := range []string{"devices", "modules"} {
			if _, err := tx.ExecContext(ctx, `UPDATE `+table+` SET connected = 0, conn_updated = ? WHERE connected != 0`, t.UnixNano()); err != nil {
				return err
			}
		}
		return nil
	})
}

// Scan implements registry.Store. It reads in one statement, so it sees one
// snapshot of the table.
func (s *Store) Scan(ctx context.Context, f registry.ScanFilter, fn func(rec *registry.Record) error) error {
	var q string
	var args []any
	switch {
	case !f.Modules:
		q = `SELECT device_id, '', status, identity, twin, connected, conn_updated, last_activity FROM devices ORDER BY device_id`
	case f.DeviceID != "":
		q = `SELECT device_id, module_id, '', identity, twin, connected, conn_updated, last_activity FROM modules WHERE device_id = ? ORDER BY device_id, module_id`
		args = append(args, f.DeviceID)
	default:
		q = `SELECT device_id, module_id, '', identity, twin, connected, conn_updated, last_activity FROM modules ORDER BY device_id, module_id`
	}
	if f.Limit > 0 {
		q += ` LIMIT ?`
		args = append(args, f.Limit)
	}
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("scan: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		rec := &registry.Record{}
		var conn int
		var updated, activity sql.NullInt64
		if err := rows.Scan(&rec.Key.DeviceID, &rec.Key.ModuleID, &rec.Status, &rec.Identity, &rec.Twin, &conn, &updated, &activity); err != nil {
			return fmt.Errorf("scan: %w", err)
		}
		rec.Conn = registry.Connection{Connected: conn != 0, UpdatedAt: fromNanos(updated), LastActivity: fromNanos(activity)}
		s.conns.apply(rec)
		if err := fn(rec); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("scan: %w", err)
	}
	return nil
}

// CountDevices implements registry.Store.
func (s *Store) CountDevices(ctx context.Context) (map[string]int, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT status, COUNT(*) FROM devices GROUP BY status`)
	if err != nil {
		return nil, fmt.Errorf("count devices: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("count devices: %w", err)
		}
		out[st] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count devices: %w", err)
	}
	return out, nil
}

// invalidating drops key from the cache now and again when the returned
// function runs, after the write committed (or failed): see recordCache.
func (s *Store) invalidating(key registry.Key) func() {
	s.cache.invalidate(key)
	return func() { s.cache.invalidate(key) }
}

// passThrough marks an error from a caller's closure, returned unwrapped.
type passThrough struct{ err error }

func (p passThrough) Error() string { return p.err.Error() }

// inTx runs fn in a write transaction, group-committed with other writes, and
// returns once that transaction is durable.
func (s *Store) inTx(ctx context.Context, what string, fn func(tx *sql.Tx) error) error {
	return s.inTxThen(ctx, what, fn, nil)
}

// inTxThen is inTx with then run on the writer right after the commit (see
// groupcommit.Writer.DoThen).
func (s *Store) inTxThen(ctx context.Context, what string, fn func(tx *sql.Tx) error, then func()) error {
	err := s.gc.DoThen(ctx, fn, then)
	if err == nil {
		return nil
	}
	var p passThrough
	if errors.As(err, &p) {
		return p.err
	}
	return fmt.Errorf("%s: %w", what, err)
}
