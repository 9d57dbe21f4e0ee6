package sqlitestore_test

import (
	"context"
	"path/filepath"
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
