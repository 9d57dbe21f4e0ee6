package sqlitestore

import (
	"context"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/moat-iot/moat/internal/registry"
)

// TestCacheMatchesDatabaseAfterRaces: compare-and-swap updates (which refresh
// the cache from the writer and keep its connection state) race connection
// changes and readers; once they stop, what Get serves must be what the
// database holds.
func TestCacheMatchesDatabaseAfterRaces(t *testing.T) {
	ctx := context.Background()
	st, key := storeWithDevice(t)
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			for i := range 150 {
				switch w {
				case 0:
					_ = st.Update(ctx, key, func(cur *registry.Record) error {
						n, _ := strconv.Atoi(string(cur.Twin))
						cur.Twin = []byte(strconv.Itoa(n + 1))
						return nil
					})
				case 1:
					_ = st.SetConnection(ctx, key, registry.Connection{Connected: i%2 == 0})
				default:
					_, _ = st.Get(ctx, key)
				}
			}
		})
	}
	wg.Wait()
	cached, err := st.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := getRecord(ctx, st.read.getDevice, st.read.getModule, key)
	if err != nil {
		t.Fatal(err)
	}
	if string(cached.Twin) != "150" || string(stored.Twin) != "150" || cached.Conn.Connected != stored.Conn.Connected {
		t.Fatalf("cached twin %s connected %v; stored twin %s connected %v (want twin 150 and the same connection state)",
			cached.Twin, cached.Conn.Connected, stored.Twin, stored.Conn.Connected)
	}
}

// TestRefreshKeepsConnection sets up the interleaving the races above hit
// only by chance: between an update's read and its swap, the connection
// state changes and a reader caches the new state. The swap's refresh must
// keep that state rather than the one its own read saw. (fn calls the store,
// which Update's contract forbids; in the optimistic path it runs outside
// the writer, so the test can.)
func TestRefreshKeepsConnection(t *testing.T) {
	ctx := context.Background()
	st, key := storeWithDevice(t)
	if _, err := st.Get(ctx, key); err != nil { // cached, disconnected
		t.Fatal(err)
	}
	once := false
	err := st.Update(ctx, key, func(cur *registry.Record) error {
		if !once {
			once = true
			if err := st.SetConnection(ctx, key, registry.Connection{Connected: true}); err != nil {
				return err
			}
			if _, err := st.Get(ctx, key); err != nil { // caches connected=true
				return err
			}
		}
		cur.Twin = []byte(`1`)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := st.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Twin) != "1" || !got.Conn.Connected {
		t.Fatalf("Get after the update: twin %s connected %v, want 1 and true", got.Twin, got.Conn.Connected)
	}
}

// storeWithDevice opens a store holding device "d" with twin 0.
func storeWithDevice(t *testing.T) (*Store, registry.Key) {
	t.Helper()
	st, err := Open(context.Background(), filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	key := registry.Key{DeviceID: "d"}
	if err := st.Create(context.Background(), &registry.Record{Key: key, Status: "enabled", Identity: []byte(`{}`), Twin: []byte(`0`)}); err != nil {
		t.Fatal(err)
	}
	return st, key
}

// The writer's page cache is the size Open asks for (SQLite would otherwise
// keep its 2 MiB default without a word).
func TestWriterPageCache(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var got int
	if err := st.w.QueryRowContext(ctx, `PRAGMA cache_size`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != -writerCacheKiB {
		t.Fatalf("writer cache_size %d, want %d (KiB)", got, -writerCacheKiB)
	}
}

// TestCacheFenceIsPerDevice: a read that misses is turned away by a write to
// its own device during the read (or a clear), not by writes to others.
func TestCacheFenceIsPerDevice(t *testing.T) {
	rec := func(id string) *registry.Record {
		return &registry.Record{Key: registry.Key{DeviceID: id}, Twin: []byte(id)}
	}
	steps := []struct {
		name   string
		during func(c *recordCache)
		cached bool
	}{
		{"no write", func(*recordCache) {}, true},
		{"another device's connection changed", func(c *recordCache) { c.setConn(registry.Key{DeviceID: "b"}, registry.Connection{Connected: true}) }, true},
		{"another device written", func(c *recordCache) { c.invalidate(registry.Key{DeviceID: "b"}) }, true},
		{"its connection changed", func(c *recordCache) { c.setConn(registry.Key{DeviceID: "a"}, registry.Connection{Connected: true}) }, false},
		{"it was written", func(c *recordCache) { c.invalidate(registry.Key{DeviceID: "a"}) }, false},
		{"one of its modules was written", func(c *recordCache) { c.invalidate(registry.Key{DeviceID: "a", ModuleID: "m"}) }, false},
		{"it was refreshed", func(c *recordCache) { c.refresh(rec("a")) }, false},
		{"the cache was cleared", func(c *recordCache) { c.clear() }, false},
	}
	for _, s := range steps {
		c := newRecordCache(10)
		for c.fenceOf("a") == c.fenceOf("b") { // keep "b" out of "a"'s bucket
			c = newRecordCache(10)
		}
		got, seq := c.get(registry.Key{DeviceID: "a"})
		if got != nil {
			t.Fatalf("%s: empty cache hit", s.name)
		}
		s.during(c)
		c.put(rec("a"), seq)
		if got, _ := c.get(registry.Key{DeviceID: "a"}); (got != nil) != s.cached {
			t.Errorf("%s: cached %v, want %v", s.name, got != nil, s.cached)
		}
	}
}
