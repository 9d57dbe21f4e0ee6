package groupcommit

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	_ "modernc.org/sqlite"
)

func open(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(t.TempDir(), "g.db")+"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestConcurrentWritesAndIsolatedFailures(t *testing.T) {
	db := open(t)
	w := New(db)
	defer w.Close()
	errBoom := errors.New("boom")
	var wg sync.WaitGroup
	errs := make([]error, 200)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.Do(context.Background(), func(tx *sql.Tx) error {
				if _, err := tx.Exec(`INSERT INTO t(k, v) VALUES (?, ?)`, i, fmt.Sprint(i)); err != nil {
					return err
				}
				if i%10 == 0 {
					return errBoom // undone; its neighbours in the batch stay
				}
				return nil
			})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if (i%10 == 0) != errors.Is(err, errBoom) {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM t`).Scan(&n); err != nil || n != 180 {
		t.Fatalf("rows = %d, %v", n, err)
	}
	// A constraint failure inside one write is that write's error only.
	err := w.Do(context.Background(), func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO t(k, v) VALUES (1, 'dup')`)
		return err
	})
	if err == nil {
		t.Fatal("duplicate key accepted")
	}
}

func TestClosed(t *testing.T) {
	w := New(open(t))
	w.Close()
	w.Close()
	if err := w.Do(context.Background(), func(*sql.Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
}

func TestCanceledBeforeRun(t *testing.T) {
	w := New(open(t))
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	err := w.Do(ctx, func(*sql.Tx) error { ran = true; return nil })
	if err == nil || ran {
		t.Fatalf("canceled write ran=%v err=%v", ran, err)
	}
}

func BenchmarkParallelInserts(b *testing.B) {
	w := New(open(b))
	defer w.Close()
	var mu sync.Mutex
	k := 0
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			k++
			id := k
			mu.Unlock()
			if err := w.Do(context.Background(), func(tx *sql.Tx) error {
				_, err := tx.Exec(`INSERT INTO t(k, v) VALUES (?, 'x')`, id)
				return err
			}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
