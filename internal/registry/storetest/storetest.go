// Package storetest is the conformance suite every registry.Store must pass:
// the SQLite store today, the PostgreSQL store tomorrow. It tests the Store
// contract only (no IoT Hub rules, which live in Registry).
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/registry"
)

// Run runs the suite. open must return a new, empty store for each call and
// arrange its cleanup with t.Cleanup.
func Run(t *testing.T, open func(t *testing.T) registry.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s registry.Store)
	}{
		{"CreateGet", testCreateGet},
		{"CreateExists", testCreateExists},
		{"ModuleNeedsDevice", testModuleNeedsDevice},
		{"GetMissing", testGetMissing},
		{"Update", testUpdate},
		{"UpdateAbort", testUpdateAbort},
		{"UpdateMissing", testUpdateMissing},
		{"DeleteDeviceCascades", testDeleteDeviceCascades},
		{"DeleteVeto", testDeleteVeto},
		{"DeleteMissing", testDeleteMissing},
		{"RecreateAfterDelete", testRecreateAfterDelete},
		{"SetConnection", testSetConnection},
		{"DisconnectAll", testDisconnectAll},
		{"Scan", testScan},
		{"CountDevices", testCountDevices},
		{"ConcurrentUpdates", testConcurrentUpdates},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, open(t))
		})
	}
}

func dev(id, status string) *registry.Record {
	return &registry.Record{
		Key:      registry.Key{DeviceID: id},
		Status:   status,
		Identity: []byte(fmt.Sprintf(`{"deviceId":%q}`, id)),
		Twin:     []byte(`{"version":1}`),
	}
}

func mod(d, m string) *registry.Record {
	return &registry.Record{
		Key:      registry.Key{DeviceID: d, ModuleID: m},
		Identity: []byte(fmt.Sprintf(`{"deviceId":%q,"moduleId":%q}`, d, m)),
		Twin:     []byte(`{"version":1}`),
	}
}

func mustCreate(t *testing.T, s registry.Store, recs ...*registry.Record) {
	t.Helper()
	for _, r := range recs {
		if err := s.Create(context.Background(), r); err != nil {
			t.Fatalf("Create(%v): %v", r.Key, err)
		}
	}
}

func testCreateGet(t *testing.T, s registry.Store) {
	ctx := context.Background()
	at := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	d := dev("d1", "enabled")
	d.Conn = registry.Connection{Connected: true, UpdatedAt: at, LastActivity: at}
	mustCreate(t, s, d, mod("d1", "m1"))
	got, err := s.Get(ctx, registry.Key{DeviceID: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Key != d.Key || got.Status != "enabled" || string(got.Identity) != string(d.Identity) || string(got.Twin) != string(d.Twin) {
		t.Errorf("Get = %+v, want %+v", got, d)
	}
	if !got.Conn.Connected || !got.Conn.UpdatedAt.Equal(at) || !got.Conn.LastActivity.Equal(at) {
		t.Errorf("Conn = %+v, want connected at %v", got.Conn, at)
	}
	m, err := s.Get(ctx, registry.Key{DeviceID: "d1", ModuleID: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Identity) != `{"deviceId":"d1","moduleId":"m1"}` {
		t.Errorf("module identity = %s", m.Identity)
	}
	if m.Conn.Connected || !m.Conn.UpdatedAt.IsZero() || !m.Conn.LastActivity.IsZero() {
		t.Errorf("new module Conn = %+v, want zero", m.Conn)
	}
}

func testCreateExists(t *testing.T, s registry.Store) {
	mustCreate(t, s, dev("d1", "enabled"), mod("d1", "m1"))
	if err := s.Create(context.Background(), dev("d1", "enabled")); !errors.Is(err, registry.ErrExists) {
		t.Errorf("second device Create: %v, want ErrExists", err)
	}
	if err := s.Create(context.Background(), mod("d1", "m1")); !errors.Is(err, registry.ErrExists) {
		t.Errorf("second module Create: %v, want ErrExists", err)
	}
}

func testModuleNeedsDevice(t *testing.T, s registry.Store) {
	if err := s.Create(context.Background(), mod("nodev", "m1")); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("module without device: %v, want ErrNotFound", err)
	}
}

func testGetMissing(t *testing.T, s registry.Store) {
	mustCreate(t, s, dev("d1", "enabled"))
	for _, k := range []registry.Key{{DeviceID: "x"}, {DeviceID: "d1", ModuleID: "m"}, {DeviceID: "x", ModuleID: "m"}} {
		if _, err := s.Get(context.Background(), k); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("Get(%v): %v, want ErrNotFound", k, err)
		}
	}
}

func testUpdate(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustCreate(t, s, dev("d1", "enabled"), mod("d1", "m1"))
	for _, k := range []registry.Key{{DeviceID: "d1"}, {DeviceID: "d1", ModuleID: "m1"}} {
		err := s.Update(ctx, k, func(cur *registry.Record) error {
			if cur.Key != k {
				t.Errorf("fn got key %v, want %v", cur.Key, k)
			}
			cur.Identity = []byte(`{"new":true}`)
			cur.Twin = []byte(`{"version":2}`)
			if k.ModuleID == "" {
				cur.Status = "disabled"
			}
			cur.Conn.Connected = true // must not be written
			return nil
		})
		if err != nil {
			t.Fatalf("Update(%v): %v", k, err)
		}
		got, err := s.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if string(got.Identity) != `{"new":true}` || string(got.Twin) != `{"version":2}` {
			t.Errorf("after Update(%v): %s %s", k, got.Identity, got.Twin)
		}
		if k.ModuleID == "" && got.Status != "disabled" {
			t.Errorf("status = %q, want disabled", got.Status)
		}
		if got.Conn.Connected {
			t.Errorf("Update wrote Conn")
		}
	}
}

func testUpdateAbort(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustCreate(t, s, dev("d1", "enabled"))
	sentinel := errors.New("veto")
	err := s.Update(ctx, registry.Key{DeviceID: "d1"}, func(cur *registry.Record) error {
		cur.Identity = []byte(`{"changed":true}`)
		return sentinel
	})
	if err != sentinel {
		t.Errorf("Update returned %v, want the closure's error unchanged", err)
	}
	got, _ := s.Get(ctx, registry.Key{DeviceID: "d1"})
	if string(got.Identity) != `{"deviceId":"d1"}` {
		t.Errorf("aborted update was written: %s", got.Identity)
	}
}

func testUpdateMissing(t *testing.T, s registry.Store) {
	called := false
	err := s.Update(context.Background(), registry.Key{DeviceID: "x"}, func(*registry.Record) error { called = true; return nil })
	if !errors.Is(err, registry.ErrNotFound) || called {
		t.Errorf("Update missing: err %v called %v, want ErrNotFound and no call", err, called)
	}
}

func testDeleteDeviceCascades(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustCreate(t, s, dev("d1", "enabled"), mod("d1", "b"), mod("d1", "a"), dev("d2", "enabled"), mod("d2", "a"))
	keys, err := s.Delete(ctx, registry.Key{DeviceID: "d1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []registry.Key{{DeviceID: "d1"}, {DeviceID: "d1", ModuleID: "a"}, {DeviceID: "d1", ModuleID: "b"}}
	if !slices.Equal(keys, want) {
		t.Errorf("Delete keys = %v, want %v", keys, want)
	}
	for _, k := range want {
		if _, err := s.Get(ctx, k); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("after delete Get(%v): %v", k, err)
		}
	}
	if _, err := s.Get(ctx, registry.Key{DeviceID: "d2", ModuleID: "a"}); err != nil {
		t.Errorf("other device's module gone: %v", err)
	}
	keys, err = s.Delete(ctx, registry.Key{DeviceID: "d2", ModuleID: "a"}, nil)
	if err != nil || !slices.Equal(keys, []registry.Key{{DeviceID: "d2", ModuleID: "a"}}) {
		t.Errorf("module Delete = %v, %v", keys, err)
	}
	if _, err := s.Get(ctx, registry.Key{DeviceID: "d2"}); err != nil {
		t.Errorf("module delete removed its device: %v", err)
	}
}

func testDeleteVeto(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustCreate(t, s, dev("d1", "enabled"), mod("d1", "m"))
	sentinel := errors.New("veto")
	_, err := s.Delete(ctx, registry.Key{DeviceID: "d1"}, func(cur *registry.Record) error {
		if string(cur.Identity) != `{"deviceId":"d1"}` {
			t.Errorf("fn got %s", cur.Identity)
		}
		return sentinel
	})
	if err != sentinel {
		t.Errorf("Delete returned %v, want the closure's error", err)
	}
	if _, err := s.Get(ctx, registry.Key{DeviceID: "d1", ModuleID: "m"}); err != nil {
		t.Errorf("vetoed delete removed data: %v", err)
	}
}

func testDeleteMissing(t *testing.T, s registry.Store) {
	if _, err := s.Delete(context.Background(), registry.Key{DeviceID: "x"}, nil); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Delete missing: %v", err)
	}
}

func testRecreateAfterDelete(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustCreate(t, s, dev("d1", "enabled"), mod("d1", "m"))
	if _, err := s.Delete(ctx, registry.Key{DeviceID: "d1"}, nil); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, dev("d1", "disabled"))
	if _, err := s.Get(ctx, registry.Key{DeviceID: "d1", ModuleID: "m"}); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("module survived its device's re-creation: %v", err)
	}
	mustCreate(t, s, mod("d1", "m"))
}

func testSetConnection(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustCreate(t, s, dev("d1", "enabled"), mod("d1", "m"))
	at := time.Date(2025, 1, 2, 3, 4, 5, 600, time.UTC)
	for _, k := range []registry.Key{{DeviceID: "d1"}, {DeviceID: "d1", ModuleID: "m"}} {
		before, _ := s.Get(ctx, k)
		if err := s.SetConnection(ctx, k, registry.Connection{Connected: true, UpdatedAt: at, LastActivity: at.Add(time.Second)}); err != nil {
			t.Fatal(err)
		}
		got, _ := s.Get(ctx, k)
		if !got.Conn.Connected || !got.Conn.UpdatedAt.Equal(at) || !got.Conn.LastActivity.Equal(at.Add(time.Second)) {
			t.Errorf("Conn(%v) = %+v", k, got.Conn)
		}
		if string(got.Identity) != string(before.Identity) || string(got.Twin) != string(before.Twin) || got.Status != before.Status {
			t.Errorf("SetConnection(%v) changed the documents", k)
		}
		if err := s.SetConnection(ctx, k, registry.Connection{UpdatedAt: at}); err != nil {
			t.Fatal(err)
		}
		got, _ = s.Get(ctx, k)
		if got.Conn.Connected || !got.Conn.LastActivity.IsZero() {
			t.Errorf("after disconnect Conn = %+v", got.Conn)
		}
	}
	for _, k := range []registry.Key{{DeviceID: "x"}, {DeviceID: "d1", ModuleID: "x"}} {
		if err := s.SetConnection(ctx, k, registry.Connection{}); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("SetConnection(%v): %v, want ErrNotFound", k, err)
		}
	}
}

func testDisconnectAll(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustCreate(t, s, dev("d1", "enabled"), dev("d2", "enabled"), mod("d1", "m"))
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, k := range []registry.Key{{DeviceID: "d1"}, {DeviceID: "d1", ModuleID: "m"}} {
		if err := s.SetConnection(ctx, k, registry.Connection{Connected: true, UpdatedAt: at, LastActivity: at}); err != nil {
			t.Fatal(err)
		}
	}
	later := at.Add(time.Hour)
	if err := s.DisconnectAll(ctx, later); err != nil {
		t.Fatal(err)
	}
	for _, k := range []registry.Key{{DeviceID: "d1"}, {DeviceID: "d1", ModuleID: "m"}} {
		got, _ := s.Get(ctx, k)
		if got.Conn.Connected || !got.Conn.UpdatedAt.Equal(later) || !got.Conn.LastActivity.Equal(at) {
			t.Errorf("after DisconnectAll %v: %+v", k, got.Conn)
		}
	}
	if got, _ := s.Get(ctx, registry.Key{DeviceID: "d2"}); !got.Conn.UpdatedAt.IsZero() {
		t.Errorf("a never-connected device was touched: %+v", got.Conn)
	}
}

func testScan(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustCreate(t, s, dev("c", "enabled"), dev("a", "enabled"), dev("b", "disabled"),
		mod("b", "z"), mod("b", "y"), mod("a", "x"))
	collect := func(f registry.ScanFilter) []registry.Key {
		var out []registry.Key
		if err := s.Scan(ctx, f, func(r *registry.Record) error {
			if len(r.Identity) == 0 || len(r.Twin) == 0 {
				t.Errorf("Scan record %v without documents", r.Key)
			}
			out = append(out, r.Key)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	cases := []struct {
		f    registry.ScanFilter
		want []registry.Key
	}{
		{registry.ScanFilter{}, []registry.Key{{DeviceID: "a"}, {DeviceID: "b"}, {DeviceID: "c"}}},
		{registry.ScanFilter{Limit: 2}, []registry.Key{{DeviceID: "a"}, {DeviceID: "b"}}},
		{registry.ScanFilter{Modules: true}, []registry.Key{{DeviceID: "a", ModuleID: "x"}, {DeviceID: "b", ModuleID: "y"}, {DeviceID: "b", ModuleID: "z"}}},
		{registry.ScanFilter{Modules: true, DeviceID: "b"}, []registry.Key{{DeviceID: "b", ModuleID: "y"}, {DeviceID: "b", ModuleID: "z"}}},
		{registry.ScanFilter{Modules: true, DeviceID: "c"}, nil},
	}
	for _, c := range cases {
		if got := collect(c.f); !slices.Equal(got, c.want) {
			t.Errorf("Scan(%+v) = %v, want %v", c.f, got, c.want)
		}
	}
	stop := errors.New("stop")
	n := 0
	if err := s.Scan(ctx, registry.ScanFilter{}, func(*registry.Record) error { n++; return stop }); err != stop || n != 1 {
		t.Errorf("Scan stop: err %v after %d records", err, n)
	}
}

func testCountDevices(t *testing.T, s registry.Store) {
	got, err := s.CountDevices(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Errorf("empty store counts %v", got)
	}
	mustCreate(t, s, dev("a", "enabled"), dev("b", "disabled"), dev("c", "enabled"), mod("a", "m"))
	got, err = s.CountDevices(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got["enabled"] != 2 || got["disabled"] != 1 || len(got) != 2 {
		t.Errorf("CountDevices = %v", got)
	}
}

// testConcurrentUpdates checks that read-modify-write through Update is
// atomic: parallel increments all land.
func testConcurrentUpdates(t *testing.T, s registry.Store) {
	for _, key := range []registry.Key{{DeviceID: "d1"}, {DeviceID: "d1", ModuleID: "m1"}} {
		concurrentUpdates(t, s, key)
	}
}

// concurrentUpdates increments a counter in key's twin from several
// goroutines at once: no increment may be lost.
func concurrentUpdates(t *testing.T, s registry.Store, key registry.Key) {
	ctx := context.Background()
	if key.ModuleID == "" {
		mustCreate(t, s, dev(key.DeviceID, "enabled"))
	} else {
		mustCreate(t, s, &registry.Record{Key: key, Identity: []byte(`{}`), Twin: []byte(`{"version":1}`)})
	}
	const workers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				err := s.Update(ctx, key, func(cur *registry.Record) error {
					var n int
					if _, err := fmt.Sscanf(string(cur.Twin), `{"version":%d}`, &n); err != nil {
						return err
					}
					cur.Twin = []byte(fmt.Sprintf(`{"version":%d}`, n+1))
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, _ := s.Get(ctx, key)
	if want := fmt.Sprintf(`{"version":%d}`, 1+workers*each); string(got.Twin) != want {
		t.Errorf("%s: after concurrent updates twin = %s, want %s", key, got.Twin, want)
	}
}
