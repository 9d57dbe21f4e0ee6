package sqlitestore

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/registry"
)

// TestConnectionStatesWrittenBehind: a connection state is visible to Get
// and Scan at once, reaches the database without further calls, survives
// Close and reopen, and does not outlive its identity's deletion.
func TestConnectionStatesWrittenBehind(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registry.db")
	st, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	key := registry.Key{DeviceID: "d"}
	if err := st.Create(ctx, &registry.Record{Key: key, Status: "enabled", Identity: []byte(`{}`), Twin: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 24, 5, 0, 0, 0, time.UTC)
	if err := st.SetConnection(ctx, key, registry.Connection{Connected: true, UpdatedAt: at, LastActivity: at}); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.Get(ctx, key); !got.Conn.Connected {
		t.Fatal("Get does not see the new state")
	}
	var scanned registry.Connection
	_ = st.Scan(ctx, registry.ScanFilter{}, func(rec *registry.Record) error { scanned = rec.Conn; return nil })
	if !scanned.Connected {
		t.Fatal("Scan does not see the new state")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		stored, err := getRecord(ctx, st.read.getDevice, st.read.getModule, key)
		if err != nil {
			t.Fatal(err)
		}
		if stored.Conn.Connected && stored.Conn.UpdatedAt.Equal(at) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the state never reached the database")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The last state before Close is in the database after reopening.
	later := at.Add(time.Minute)
	if err := st.SetConnection(ctx, key, registry.Connection{UpdatedAt: later, LastActivity: later}); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if got, _ := st.Get(ctx, key); got.Conn.Connected || !got.Conn.UpdatedAt.Equal(later) {
		t.Fatalf("after reopen: %+v, want disconnected at %v", got.Conn, later)
	}
	// A deleted device's pending state does not pass to its successor.
	if err := st.SetConnection(ctx, key, registry.Connection{Connected: true, UpdatedAt: later, LastActivity: later}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Delete(ctx, key, nil); err != nil {
		t.Fatal(err)
	}
	if err := st.SetConnection(ctx, key, registry.Connection{Connected: true}); err == nil {
		t.Fatal("SetConnection on a deleted device succeeded")
	}
	if err := st.Create(ctx, &registry.Record{Key: key, Status: "enabled", Identity: []byte(`{}`), Twin: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.Get(ctx, key); got.Conn.Connected {
		t.Fatalf("a re-created device inherited its predecessor's connection: %+v", got.Conn)
	}
}
