package sqlitestore_test

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/registry/sqlitestore"
	"github.com/moat-iot/moat/internal/registry/storetest"
)

func open(t *testing.T) registry.Store {
	t.Helper()
	s, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestConformance(t *testing.T) { storetest.Run(t, open) }

// TestReopen checks that data and the schema version survive a restart.
func TestReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "odd?name#%.db")
	s, err := sqlitestore.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	rec := &registry.Record{Key: registry.Key{DeviceID: "d1"}, Status: "enabled", Identity: []byte(`{}`), Twin: []byte(`{}`)}
	if err := s.Create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = sqlitestore.Open(ctx, path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	if _, err := s.Get(ctx, registry.Key{DeviceID: "d1"}); err != nil {
		t.Errorf("after reopen: %v", err)
	}
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "*"))
	found := false
	for _, m := range matches {
		if m == path {
			found = true
		}
	}
	if !found {
		t.Errorf("database not at %q; directory holds %v", path, matches)
	}
}

// TestCacheNeverServesStale races readers against writers: once a write has
// returned, no Get may return an older value, and a deleted device's modules
// are gone from every later Get.
func TestCacheNeverServesStale(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	dev := registry.Key{DeviceID: "d"}
	mod := registry.Key{DeviceID: "d", ModuleID: "m"}
	if err := s.Create(ctx, &registry.Record{Key: dev, Status: "enabled", Identity: []byte(`{}`), Twin: []byte(`0`)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, &registry.Record{Key: mod, Identity: []byte(`{}`), Twin: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = s.Get(ctx, dev)
				_, _ = s.Get(ctx, mod)
			}
		}()
	}
	for i := 1; i <= 200; i++ {
		want := strconv.Itoa(i)
		if err := s.Update(ctx, dev, func(cur *registry.Record) error { cur.Twin = []byte(want); return nil }); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, dev)
		if err != nil {
			t.Fatal(err)
		}
		if string(got.Twin) != want {
			close(stop)
			readers.Wait()
			t.Fatalf("after write %d, Get returned twin %s", i, got.Twin)
		}
		if i%50 == 0 {
			if err := s.SetConnection(ctx, dev, registry.Connection{Connected: i%100 == 0}); err != nil {
				t.Fatal(err)
			}
			got, _ := s.Get(ctx, dev)
			if got.Conn.Connected != (i%100 == 0) {
				t.Fatalf("after SetConnection, Get returned connected=%v", got.Conn.Connected)
			}
		}
	}
	if _, err := s.Delete(ctx, dev, nil); err != nil {
		t.Fatal(err)
	}
	close(stop)
	readers.Wait()
	for _, k := range []registry.Key{dev, mod} {
		if _, err := s.Get(ctx, k); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("Get %v after delete: %v, want ErrNotFound", k, err)
		}
	}
}
