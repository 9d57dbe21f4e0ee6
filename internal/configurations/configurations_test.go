package configurations

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/registry/sqlitestore"
)

func TestParseConfiguration(t *testing.T) {
	dc := `"content":{"deviceContent":{"properties.desired.settings":{"mode":"eco"}}}`
	tests := []struct {
		name  string
		id    string
		body  string
		code  *errcode.Code
		check func(t *testing.T, c Configuration)
	}{
		{name: "SDK shape", id: "cfg1", body: `{"id":"cfg1","schemaVersion":"1.0",` + dc + `,"targetCondition":"tags.env='prod'","priority":10,
			"labels":{"a":"b"},"metrics":{"queries":{"m":"SELECT deviceId FROM devices WHERE properties.reported.x = 1"}},
			"systemMetrics":{"results":{"appliedCount":99}},"etag":"MQ==","createdTimeUtc":"garbage-is-ignored"}`,
			check: func(t *testing.T, c Configuration) {
				if c.Priority != 10 || c.TargetCondition != "tags.env='prod'" || c.Labels["a"] != "b" || c.Metrics.Queries["m"] == "" || c.ETag != "" {
					t.Errorf("config %+v", c)
				}
			}},
		{name: "defaults", id: "c", body: `{` + dc + `}`, check: func(t *testing.T, c Configuration) {
			if c.SchemaVersion != "1.0" || c.Priority != 0 || c.TargetCondition != "" || c.Labels == nil {
				t.Errorf("config %+v", c)
			}
		}},
		{name: "star target, nested path", id: "c", body: `{"content":{"deviceContent":{"properties.desired.a.b":1}},"targetCondition":"*"}`},
		{name: "modules content", id: "c", body: `{"content":{"modulesContent":{"$edgeAgent":{"properties.desired":{"schemaVersion":"1.1"}},"m1":{"properties.desired.x":2}}}}`},
		{name: "empty body", id: "c", body: "", code: &errcode.ArgumentNull},
		{name: "not an object", id: "c", body: `"x"`, code: &errcode.IotHubFormatError},
		{name: "id mismatch", id: "c", body: `{"id":"d",` + dc + `}`, code: &errcode.ArgumentInvalid},
		{name: "upper-case id", id: "Cfg", body: `{` + dc + `}`, code: &errcode.ArgumentInvalid},
		{name: "no content", id: "c", body: `{"targetCondition":"*"}`, code: &errcode.ArgumentNull},
		{name: "empty content", id: "c", body: `{"content":{}}`, code: &errcode.ArgumentInvalid},
		{name: "two kinds", id: "c", body: `{"content":{"deviceContent":{"properties.desired.a":1},"modulesContent":{"m":{"properties.desired":{}}}}}`, code: &errcode.ArgumentInvalid},
		{name: "device key outside desired", id: "c", body: `{"content":{"deviceContent":{"tags.a":1}}}`, code: &errcode.ArgumentInvalid},
		{name: "whole desired on a device", id: "c", body: `{"content":{"deviceContent":{"properties.desired":{"a":1}}}}`, code: &errcode.ArgumentInvalid},
		{name: "bad segment", id: "c", body: `{"content":{"deviceContent":{"properties.desired.a..b":1}}}`, code: &errcode.ArgumentInvalid},
		{name: "bad nested key", id: "c", body: `{"content":{"deviceContent":{"properties.desired.a":{"$x":1}}}}`, code: &errcode.ArgumentInvalid},
		{name: "module desired not object", id: "c", body: `{"content":{"modulesContent":{"m":{"properties.desired":5}}}}`, code: &errcode.ArgumentInvalid},
		{name: "module value not object", id: "c", body: `{"content":{"modulesContent":{"m":5}}}`, code: &errcode.ArgumentInvalid},
		{name: "bad target", id: "c", body: `{` + dc + `,"targetCondition":"tags.env ="}`, code: &errcode.ArgumentInvalid},
		{name: "negative priority", id: "c", body: `{` + dc + `,"priority":-1}`, code: &errcode.ArgumentInvalid},
		{name: "bad metric", id: "c", body: `{` + dc + `,"metrics":{"queries":{"m":"SELECT FROM"}}}`, code: &errcode.ArgumentInvalid},
		{name: "too many metrics", id: "c", body: `{` + dc + `,"metrics":{"queries":{"a":"SELECT * FROM devices","b":"SELECT * FROM devices","c":"SELECT * FROM devices","d":"SELECT * FROM devices","e":"SELECT * FROM devices","f":"SELECT * FROM devices"}}}`, code: &errcode.ArgumentInvalid},
		{name: "long label", id: "c", body: `{` + dc + `,"labels":{"a":"` + strings.Repeat("x", 129) + `"}}`, code: &errcode.ArgumentInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfiguration([]byte(tc.body), tc.id)
			if tc.code != nil {
				if !errcode.Is(err, *tc.code) {
					t.Fatalf("err = %v, want %s", err, tc.code.Name)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.ID != tc.id {
				t.Errorf("id %q", c.ID)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

func FuzzParseConfiguration(f *testing.F) {
	for _, s := range []string{
		`{"id":"c","content":{"deviceContent":{"properties.desired.settings":{"mode":"eco"}}},"targetCondition":"tags.env='prod'","priority":10}`,
		`{"content":{"modulesContent":{"$edgeAgent":{"properties.desired":{"a":1},"properties.desired.b":{"c":null}}}}}`,
		`{"content":{"deviceContent":{"properties.desired.a.b.c":[1,{"x":null}]}},"metrics":{"queries":{"m":"SELECT deviceId FROM devices"}}}`,
		`{}`, `null`, `{"content":null}`, `{"labels":{"a":1}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := ParseConfiguration(body, "c")
		if err == nil {
			// Whatever is accepted must be applicable.
			ops, err := desiredOps("deviceContent", c.Content.DeviceContent, false)
			if err != nil {
				t.Fatalf("accepted content does not compile: %v", err)
			}
			desiredPatch(map[string]any{"a": map[string]any{"b": 1.0}, "$version": 3.0}, ops)
			if _, err := moduleOps(c.Content.ModulesContent); err != nil {
				t.Fatalf("accepted modules content does not compile: %v", err)
			}
		} else if errcode.From(err).Code.Status >= 500 {
			t.Fatalf("a bad request is a server error: %v", err)
		}
		if _, err := ParseContent(body); err != nil && errcode.From(err).Code.Status >= 500 {
			t.Fatalf("a bad content body is a server error: %v", err)
		}
	})
}

func TestDesiredPatch(t *testing.T) {
	js := func(s string) map[string]any {
		var m map[string]any
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	ops := func(s string) []op {
		var raw map[string]json.RawMessage
		if err := json.Unmarshal([]byte(s), &raw); err != nil {
			t.Fatal(err)
		}
		o, err := desiredOps("test", raw, true)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	tests := []struct {
		name, cur, ops, want string // want "" means no patch
	}{
		{"set new", `{"$version":1}`, `{"properties.desired.s":{"a":1}}`, `{"s":{"a":1}}`},
		{"already there", `{"s":{"a":1},"$version":4,"$metadata":{}}`, `{"properties.desired.s":{"a":1}}`, ""},
		{"replace drops extra keys", `{"s":{"a":1,"b":2},"o":1}`, `{"properties.desired.s":{"a":1}}`, `{"s":{"b":null}}`},
		{"scalar to object", `{"s":5}`, `{"properties.desired.s":{"a":1}}`, `{"s":{"a":1}}`},
		{"nested path keeps siblings", `{"s":{"x":1}}`, `{"properties.desired.s.y":2}`, `{"s":{"y":2}}`},
		{"null removes", `{"s":1,"t":2}`, `{"properties.desired.s":null}`, `{"s":null}`},
		{"null of absent is nothing", `{"t":2}`, `{"properties.desired.s":null}`, ""},
		{"nested nulls are not values", `{}`, `{"properties.desired.s":{"a":null,"b":1}}`, `{"s":{"b":1}}`},
		{"whole section", `{"a":1,"b":{"c":1},"$version":2}`, `{"properties.desired":{"b":{"c":1},"d":true}}`, `{"a":null,"d":true}`},
		{"whole section then path", `{"a":1}`, `{"properties.desired":{"b":1},"properties.desired.c":2}`, `{"a":null,"b":1,"c":2}`},
		{"arrays compare whole", `{"s":[1,2]}`, `{"properties.desired.s":[1,2]}`, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := desiredPatch(js(tc.cur), ops(tc.ops))
			if tc.want == "" {
				if got != nil {
					t.Fatalf("patch %v, want none", got)
				}
				return
			}
			if !reflect.DeepEqual(got, js(tc.want)) {
				t.Fatalf("patch %v, want %s", got, tc.want)
			}
		})
	}
}

// ---------------------------------------------------------------- service

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newRegistry(t *testing.T) *registry.Registry {
	t.Helper()
	st, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "reg.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return registry.New(st, registry.Options{HubName: "test.local"})
}

func newService(t *testing.T, reg Registry) *Service {
	t.Helper()
	s, err := Open(context.Background(), t.TempDir(), Options{Registry: reg, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func device(t *testing.T, reg *registry.Registry, id string, tags string, edge bool) {
	t.Helper()
	ctx := context.Background()
	if _, err := reg.CreateDevice(ctx, registry.Device{DeviceID: id, Capabilities: registry.Capabilities{IotEdge: edge}}); err != nil {
		t.Fatal(err)
	}
	if tags != "" {
		if _, err := reg.PatchTwin(ctx, id, "", []byte(`{"tags":`+tags+`}`), "*"); err != nil {
			t.Fatal(err)
		}
	}
}

func mustConfig(t *testing.T, id, body string) Configuration {
	t.Helper()
	c, err := ParseConfiguration([]byte(body), id)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func desired(t *testing.T, reg *registry.Registry, id, mid string) map[string]any {
	t.Helper()
	tw, err := reg.GetTwin(context.Background(), id, mid)
	if err != nil {
		t.Fatal(err)
	}
	m, err := plain(tw.Properties.Desired)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCRUDAndETags(t *testing.T) {
	s := newService(t, newRegistry(t))
	ctx := context.Background()
	c := mustConfig(t, "c1", `{"content":{"deviceContent":{"properties.desired.a":1}},"targetCondition":"*","priority":2}`)
	created, err := s.Create(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if created.ETag == "" || created.CreatedTimeUtc.IsZero() || created.SystemMetrics.Results == nil {
		t.Fatalf("created %+v", created)
	}
	if _, err := s.Create(ctx, c); !errcode.Is(err, ConfigurationAlreadyExists) {
		t.Fatalf("duplicate: %v", err)
	}
	c.Priority = 7
	if _, err := s.Update(ctx, c, `"bm9wZQ=="`); !errcode.Is(err, errcode.PreconditionFailed) {
		t.Fatalf("stale etag: %v", err)
	}
	time.Sleep(2 * time.Millisecond)
	updated, err := s.Update(ctx, c, `"`+created.ETag+`"`)
	if err != nil {
		t.Fatal(err)
	}
	if updated.Priority != 7 || updated.ETag == created.ETag || !updated.CreatedTimeUtc.Equal(created.CreatedTimeUtc) || !updated.LastUpdatedTimeUtc.After(created.LastUpdatedTimeUtc) {
		t.Fatalf("updated %+v", updated)
	}
	if _, err := s.Update(ctx, c, `"`+created.ETag+`"`); !errcode.Is(err, errcode.PreconditionFailed) {
		t.Fatalf("previous etag: %v", err)
	}
	changed := mustConfig(t, "c1", `{"content":{"deviceContent":{"properties.desired.a":2}}}`)
	if _, err := s.Update(ctx, changed, "*"); !errcode.Is(err, errcode.ArgumentInvalid) {
		t.Fatalf("content change: %v", err)
	}
	if _, err := s.Update(ctx, mustConfig(t, "zz", `{"content":{"deviceContent":{"properties.desired.a":2}}}`), "*"); !errcode.Is(err, ConfigurationNotFound) {
		t.Fatalf("update missing: %v", err)
	}
	for i := range 3 {
		if _, err := s.Create(ctx, mustConfig(t, fmt.Sprintf("l%d", i), `{"content":{"deviceContent":{"properties.desired.a":1}}}`)); err != nil {
			t.Fatal(err)
		}
	}
	list, err := s.List(ctx, 2)
	if err != nil || len(list) != 2 || list[0].ID != "c1" || list[1].ID != "l0" {
		t.Fatalf("list top 2 = %v, %v", list, err)
	}
	if list, _ := s.List(ctx, 0); len(list) != 4 {
		t.Fatalf("list = %d configurations", len(list))
	}
	if err := s.Delete(ctx, "c1", `"nope"`); !errcode.Is(err, errcode.PreconditionFailed) {
		t.Fatalf("delete stale: %v", err)
	}
	if err := s.Delete(ctx, "c1", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "c1"); !errcode.Is(err, ConfigurationNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if err := s.Delete(ctx, "c1", "*"); !errcode.Is(err, ConfigurationNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
}

func TestReconcilePriorityIdempotenceMetrics(t *testing.T) {
	reg := newRegistry(t)
	device(t, reg, "p1", `{"env":"prod"}`, false)
	device(t, reg, "p2", `{"env":"prod","ring":1}`, false)
	device(t, reg, "d1", `{"env":"dev"}`, false)
	s := newService(t, reg)
	ctx := context.Background()
	low := mustConfig(t, "low", `{"content":{"deviceContent":{"properties.desired.s":{"mode":"eco","level":3}}},"targetCondition":"tags.env = 'prod'","priority":1,
		"metrics":{"queries":{"eco":"SELECT deviceId FROM devices WHERE properties.desired.s.mode = 'eco'"}}}`)
	if _, err := s.Create(ctx, low); err != nil {
		t.Fatal(err)
	}
	high := mustConfig(t, "high", `{"content":{"deviceContent":{"properties.desired.s":{"mode":"turbo"}}},"targetCondition":"tags.ring = 1","priority":5}`)
	if _, err := s.Create(ctx, high); err != nil {
		t.Fatal(err)
	}
	if err := s.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := desired(t, reg, "p1", "")["s"]; !reflect.DeepEqual(got, map[string]any{"mode": "eco", "level": 3.0}) {
		t.Errorf("p1 s = %v", got)
	}
	if got := desired(t, reg, "p2", "")["s"]; !reflect.DeepEqual(got, map[string]any{"mode": "turbo"}) {
		t.Errorf("p2 s = %v (the higher priority must win)", got)
	}
	if _, ok := desired(t, reg, "d1", "")["s"]; ok {
		t.Error("d1 is not targeted but was patched")
	}
	v := desired(t, reg, "p1", "")["$version"]
	if err := s.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if v2 := desired(t, reg, "p1", "")["$version"]; v2 != v {
		t.Errorf("a second pass moved desired $version %v → %v", v, v2)
	}
	got, err := s.Get(ctx, "low")
	if err != nil {
		t.Fatal(err)
	}
	if r := got.SystemMetrics.Results; r[MetricTargeted] != 2 || r[MetricApplied] != 1 {
		t.Errorf("low system metrics %v, want targeted 2 applied 1", r)
	}
	if got.Metrics.Results["eco"] != 1 {
		t.Errorf("custom metric eco = %v, want 1", got.Metrics.Results)
	}
	got, _ = s.Get(ctx, "high")
	if r := got.SystemMetrics.Results; r[MetricTargeted] != 1 || r[MetricApplied] != 1 {
		t.Errorf("high system metrics %v", r)
	}

	// A twin drifting away is brought back; a device joining is reached.
	if _, err := reg.PatchTwin(ctx, "p1", "", []byte(`{"properties":{"desired":{"s":{"level":4,"extra":true}}}}`), "*"); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.PatchTwin(ctx, "d1", "", []byte(`{"tags":{"env":"prod"}}`), "*"); err != nil {
		t.Fatal(err)
	}
	if err := s.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"p1", "d1"} {
		if got := desired(t, reg, id, "")["s"]; !reflect.DeepEqual(got, map[string]any{"mode": "eco", "level": 3.0}) {
			t.Errorf("%s s = %v", id, got)
		}
	}
}

func TestApplierRunsOnChange(t *testing.T) {
	reg := newRegistry(t)
	device(t, reg, "a", `{"env":"prod"}`, false)
	s, err := Open(context.Background(), t.TempDir(), Options{Registry: reg, Log: quietLog(), Period: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(context.Background(), mustConfig(t, "c", `{"content":{"deviceContent":{"properties.desired.k":"v"}},"targetCondition":"tags.env = 'prod'"}`)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for desired(t, reg, "a", "")["k"] != "v" {
		if time.Now().After(deadline) {
			t.Fatal("the applier did not run after the configuration was created")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestApplyContent(t *testing.T) {
	reg := newRegistry(t)
	ctx := context.Background()
	device(t, reg, "plain", "", false)
	device(t, reg, "edge", "", true)
	for _, m := range []string{"$edgeAgent", "$edgeHub"} {
		if _, err := reg.CreateModule(ctx, registry.Module{DeviceID: "edge", ModuleID: m}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reg.PatchTwin(ctx, "edge", "$edgeAgent", []byte(`{"properties":{"desired":{"old":1}}}`), "*"); err != nil {
		t.Fatal(err)
	}
	s := newService(t, reg)
	content := func(s string) Content {
		c, err := ParseContent([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if err := s.ApplyContent(ctx, "plain", content(`{"deviceContent":{"properties.desired.x":{"y":1}}}`)); err != nil {
		t.Fatal(err)
	}
	if got := desired(t, reg, "plain", "")["x"]; !reflect.DeepEqual(got, map[string]any{"y": 1.0}) {
		t.Fatalf("x = %v", got)
	}
	mods := content(`{"modulesContent":{"$edgeAgent":{"properties.desired":{"schemaVersion":"1.1","modules":{}}},"$edgeHub":{"properties.desired.routes":{"r":"FROM /* INTO $upstream"}}}}`)
	if err := s.ApplyContent(ctx, "plain", mods); !errcode.Is(err, errcode.ArgumentInvalid) {
		t.Fatalf("modules on a plain device: %v", err)
	}
	if err := s.ApplyContent(ctx, "edge", mods); err != nil {
		t.Fatal(err)
	}
	agent := desired(t, reg, "edge", "$edgeAgent")
	if agent["schemaVersion"] != "1.1" || agent["old"] != nil {
		t.Fatalf("$edgeAgent desired = %v (replaced whole)", agent)
	}
	if hub := desired(t, reg, "edge", "$edgeHub"); !reflect.DeepEqual(hub["routes"], map[string]any{"r": "FROM /* INTO $upstream"}) {
		t.Fatalf("$edgeHub desired = %v", hub)
	}
	missing := content(`{"modulesContent":{"nosuch":{"properties.desired":{}}}}`)
	if err := s.ApplyContent(ctx, "edge", missing); !errcode.Is(err, errcode.ModuleNotFound) {
		t.Fatalf("missing module: %v", err)
	}
	if err := s.ApplyContent(ctx, "ghost", content(`{"deviceContent":{"properties.desired.x":1}}`)); !errcode.Is(err, errcode.DeviceNotFound) {
		t.Fatalf("missing device: %v", err)
	}
}
