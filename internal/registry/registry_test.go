package registry_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/registry/sqlitestore"
	"github.com/moat-iot/moat/internal/twin"
)

type desiredCall struct {
	device, module string
	version        int64
	patch          string
}

// harness is a Registry over an on-disk SQLite store with a settable clock
// and recorded callbacks.
type harness struct {
	*registry.Registry
	mu       sync.Mutex
	now      time.Time
	desired  []desiredCall
	identity []string
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	s, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "reg.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	h := &harness{now: time.Date(2024, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600))}
	h.Registry = registry.New(s, registry.Options{
		HubName: "hub.example",
		Now: func() time.Time {
			h.mu.Lock()
			defer h.mu.Unlock()
			return h.now
		},
		OnDesiredChange: func(d, m string, v int64, p map[string]any) {
			b, _ := json.Marshal(p)
			h.mu.Lock()
			h.desired = append(h.desired, desiredCall{d, m, v, string(b)})
			h.mu.Unlock()
		},
		OnIdentityChange: func(d, m string) {
			h.mu.Lock()
			h.identity = append(h.identity, strings.TrimSuffix(d+"/"+m, "/"))
			h.mu.Unlock()
		},
	})
	return h
}

func (h *harness) advance(d time.Duration) {
	h.mu.Lock()
	h.now = h.now.Add(d)
	h.mu.Unlock()
}

func (h *harness) takeIdentity() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.identity
	h.identity = nil
	return out
}

func (h *harness) takeDesired() []desiredCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.desired
	h.desired = nil
	return out
}

var ctx = context.Background()

func wantCode(t *testing.T, err error, c errcode.Code) {
	t.Helper()
	if !errcode.Is(err, c) {
		t.Fatalf("error = %v, want %s", err, c.Name)
	}
}

// must(f())(t) returns f's value or fails t.
func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func key(b byte) string {
	return base64.StdEncoding.EncodeToString([]byte(strings.Repeat(string(b), 32)))
}

const thumbA = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
const thumbB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

func TestDeviceIDs(t *testing.T) {
	cases := []struct {
		id string
		ok bool
	}{
		{"dev1", true},
		{"A-Za-z0-9-.%_*?!(),:=@$'", true},
		{strings.Repeat("x", 128), true},
		{strings.Repeat("x", 129), false},
		{"", false},
		{"a/b", false},
		{"a b", false},
		{"a#b", false},
		{"a+b", false},
		{"é", false},
		{"a\x00", false},
	}
	h := newHarness(t)
	for _, c := range cases {
		_, err := h.CreateDevice(ctx, registry.Device{DeviceID: c.id})
		if c.ok && err != nil {
			t.Errorf("CreateDevice(%q): %v", c.id, err)
		}
		if !c.ok && !errcode.Is(err, errcode.ArgumentInvalid) {
			t.Errorf("CreateDevice(%q) = %v, want ArgumentInvalid", c.id, err)
		}
		_, err = h.CreateModule(ctx, registry.Module{DeviceID: "dev1", ModuleID: c.id})
		if c.ok && err != nil {
			t.Errorf("CreateModule(%q): %v", c.id, err)
		}
		if !c.ok && !errcode.Is(err, errcode.ArgumentInvalid) {
			t.Errorf("CreateModule(%q) = %v, want ArgumentInvalid", c.id, err)
		}
	}
}

func TestCreateDeviceDefaults(t *testing.T) {
	h := newHarness(t)
	d := must(h.CreateDevice(ctx, registry.Device{DeviceID: "d1", Authentication: registry.Authentication{Type: "sas"}}))(t)
	if d.GenerationID == "" || d.ETag == "" || d.Status != registry.StatusEnabled || d.ConnectionState != registry.Disconnected {
		t.Errorf("created device %+v", d)
	}
	if _, err := base64.StdEncoding.DecodeString(d.ETag); err != nil {
		t.Errorf("etag %q is not base64", d.ETag)
	}
	for _, k := range []string{d.Authentication.SymmetricKey.PrimaryKey, d.Authentication.SymmetricKey.SecondaryKey} {
		if b, err := base64.StdEncoding.DecodeString(k); err != nil || len(b) != 32 {
			t.Errorf("generated key is not base64 of 32 bytes")
		}
	}
	if d.Authentication.SymmetricKey.PrimaryKey == d.Authentication.SymmetricKey.SecondaryKey {
		t.Errorf("primary and secondary keys are equal")
	}
	b := string(must(json.Marshal(d))(t))
	for _, want := range []string{`"statusUpdatedTime":"0001-01-01T00:00:00Z"`, `"lastActivityTime":"0001-01-01T00:00:00Z"`, `"connectionStateUpdatedTime":"0001-01-01T00:00:00Z"`, `"connectionState":"Disconnected"`} {
		if !strings.Contains(b, want) {
			t.Errorf("device JSON %s lacks %s", b, want)
		}
	}
	got := must(h.GetDevice(ctx, "d1"))(t)
	if got.ETag != d.ETag || got.GenerationID != d.GenerationID || got.Authentication != d.Authentication {
		t.Errorf("GetDevice = %+v, want %+v", got, d)
	}
	tw := must(h.GetTwin(ctx, "d1", ""))(t)
	if tw.DeviceID != "d1" || tw.DeviceEtag != d.ETag || tw.Version != 1 || len(tw.Tags) != 0 || tw.Tags == nil ||
		tw.Properties.Desired["$version"] != int64(1) || tw.Properties.Reported["$version"] != int64(1) {
		t.Errorf("new twin %+v", tw)
	}
	meta := tw.Properties.Desired["$metadata"].(map[string]any)
	if meta["$lastUpdated"] != "2024-01-02T02:04:05.0000000Z" {
		t.Errorf("desired $metadata = %v", meta)
	}
	other := must(h.CreateDevice(ctx, registry.Device{DeviceID: "d2"}))(t)
	if other.GenerationID == d.GenerationID || other.Authentication.SymmetricKey == d.Authentication.SymmetricKey {
		t.Errorf("two devices share generation id or keys")
	}
}

func TestCreateAuthentication(t *testing.T) {
	cases := []struct {
		name string
		auth registry.Authentication
		want string // type, or "" for ArgumentInvalid
	}{
		{"empty means sas", registry.Authentication{}, registry.AuthSAS},
		{"given keys", registry.Authentication{Type: "sas", SymmetricKey: registry.SymmetricKey{PrimaryKey: key('a'), SecondaryKey: key('b')}}, registry.AuthSAS},
		{"type case", registry.Authentication{Type: "SAS"}, registry.AuthSAS},
		{"16-byte key", registry.Authentication{SymmetricKey: registry.SymmetricKey{PrimaryKey: base64.StdEncoding.EncodeToString(make([]byte, 16))}}, registry.AuthSAS},
		{"15-byte key", registry.Authentication{SymmetricKey: registry.SymmetricKey{PrimaryKey: base64.StdEncoding.EncodeToString(make([]byte, 15))}}, ""},
		{"65-byte key", registry.Authentication{SymmetricKey: registry.SymmetricKey{PrimaryKey: base64.StdEncoding.EncodeToString(make([]byte, 65))}}, ""},
		{"not base64", registry.Authentication{SymmetricKey: registry.SymmetricKey{PrimaryKey: "not base64!"}}, ""},
		{"thumbprint without type", registry.Authentication{X509Thumbprint: registry.X509Thumbprint{PrimaryThumbprint: thumbA}}, registry.AuthSelfSigned},
		{"selfSigned", registry.Authentication{Type: "selfSigned", X509Thumbprint: registry.X509Thumbprint{PrimaryThumbprint: thumbA, SecondaryThumbprint: thumbB}}, registry.AuthSelfSigned},
		{"selfSigned without thumbprint", registry.Authentication{Type: "selfSigned"}, ""},
		{"bad thumbprint", registry.Authentication{Type: "selfSigned", X509Thumbprint: registry.X509Thumbprint{PrimaryThumbprint: "xyz"}}, ""},
		{"certificateAuthority", registry.Authentication{Type: "certificateAuthority"}, registry.AuthCertificateAuthority},
		{"unknown type", registry.Authentication{Type: "password"}, ""},
	}
	h := newHarness(t)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := h.CreateDevice(ctx, registry.Device{DeviceID: fmt.Sprint("d", i), Authentication: c.auth})
			if c.want == "" {
				wantCode(t, err, errcode.ArgumentInvalid)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			a := d.Authentication
			if a.Type != c.want {
				t.Errorf("type %q, want %q", a.Type, c.want)
			}
			switch a.Type {
			case registry.AuthSAS:
				if a.SymmetricKey.PrimaryKey == "" || a.SymmetricKey.SecondaryKey == "" || a.X509Thumbprint != (registry.X509Thumbprint{}) {
					t.Errorf("sas auth %+v", a)
				}
				if c.auth.SymmetricKey.PrimaryKey != "" && a.SymmetricKey.PrimaryKey != c.auth.SymmetricKey.PrimaryKey {
					t.Errorf("given primary key not kept")
				}
			case registry.AuthSelfSigned:
				if a.X509Thumbprint.PrimaryThumbprint != c.auth.X509Thumbprint.PrimaryThumbprint || a.SymmetricKey != (registry.SymmetricKey{}) {
					t.Errorf("selfSigned auth %+v", a)
				}
			case registry.AuthCertificateAuthority:
				if a.SymmetricKey != (registry.SymmetricKey{}) || a.X509Thumbprint != (registry.X509Thumbprint{}) {
					t.Errorf("CA auth keeps credentials %+v", a)
				}
			}
			tw := must(h.GetTwin(ctx, d.DeviceID, ""))(t)
			if tw.AuthenticationType != c.want {
				t.Errorf("twin authenticationType %q", tw.AuthenticationType)
			}
		})
	}
}

func TestCreateDeleteRecreate(t *testing.T) {
	h := newHarness(t)
	d1 := must(h.CreateDevice(ctx, registry.Device{DeviceID: "d"}))(t)
	_, err := h.CreateDevice(ctx, registry.Device{DeviceID: "d"})
	wantCode(t, err, errcode.DeviceAlreadyExists)
	wantCode(t, h.DeleteDevice(ctx, "d", `"stale"`), errcode.PreconditionFailed)
	if err := h.DeleteDevice(ctx, "d", `"`+d1.ETag+`"`); err != nil {
		t.Fatal(err)
	}
	if got := h.takeIdentity(); !slices.Equal(got, []string{"d"}) {
		t.Errorf("OnIdentityChange after delete = %v", got)
	}
	_, err = h.GetDevice(ctx, "d")
	wantCode(t, err, errcode.DeviceNotFound)
	_, err = h.GetTwin(ctx, "d", "")
	wantCode(t, err, errcode.DeviceNotFound)
	wantCode(t, h.DeleteDevice(ctx, "d", `"*"`), errcode.DeviceNotFound)
	d2 := must(h.CreateDevice(ctx, registry.Device{DeviceID: "d"}))(t)
	if d2.GenerationID == d1.GenerationID || d2.ETag == d1.ETag {
		t.Errorf("re-created device repeats generation id or etag")
	}
}

func TestUpdateDevice(t *testing.T) {
	h := newHarness(t)
	orig := must(h.CreateDevice(ctx, registry.Device{DeviceID: "d"}))(t)
	h.takeIdentity()

	// If-Match forms.
	for _, im := range []string{`"*"`, `*`, ``, ` "*" `} {
		cur := must(h.GetDevice(ctx, "d"))(t)
		up, err := h.UpdateDevice(ctx, registry.Device{DeviceID: "d"}, im)
		if err != nil {
			t.Fatalf("If-Match %q: %v", im, err)
		}
		if up.ETag == cur.ETag {
			t.Errorf("If-Match %q: etag unchanged", im)
		}
	}
	cur := must(h.GetDevice(ctx, "d"))(t)
	for _, im := range []string{`"abc"`, `"` + orig.ETag + `"`} {
		_, err := h.UpdateDevice(ctx, registry.Device{DeviceID: "d"}, im)
		wantCode(t, err, errcode.PreconditionFailed)
	}
	must(h.UpdateDevice(ctx, registry.Device{DeviceID: "d"}, `"`+cur.ETag+`"`))(t)
	cur = must(h.GetDevice(ctx, "d"))(t)
	must(h.UpdateDevice(ctx, registry.Device{DeviceID: "d"}, cur.ETag))(t) // bare etag
	_, err := h.UpdateDevice(ctx, registry.Device{DeviceID: "d"}, cur.ETag)
	wantCode(t, err, errcode.PreconditionFailed)
	if got := h.takeIdentity(); len(got) != 0 {
		t.Errorf("updates that changed nothing called OnIdentityChange %v", got)
	}
	_, err = h.UpdateDevice(ctx, registry.Device{DeviceID: "missing"}, `"*"`)
	wantCode(t, err, errcode.DeviceNotFound)

	// Partial update as the Node SDK sends it: status only, empty keys.
	h.advance(time.Hour)
	up := must(h.UpdateDevice(ctx, registry.Device{DeviceID: "d", Status: "disabled",
		Authentication: registry.Authentication{Type: "sas"}}, `"*"`))(t)
	if up.Status != registry.StatusDisabled || up.Authentication != orig.Authentication || up.GenerationID != orig.GenerationID {
		t.Errorf("partial update = %+v", up)
	}
	if want := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC); !up.StatusUpdatedTime.Equal(want) || up.StatusUpdatedTime.Location() != time.UTC {
		t.Errorf("statusUpdatedTime = %v, want %v", up.StatusUpdatedTime, want)
	}
	if got := h.takeIdentity(); !slices.Equal(got, []string{"d"}) {
		t.Errorf("disable: OnIdentityChange = %v", got)
	}
	tw := must(h.GetTwin(ctx, "d", ""))(t)
	if tw.Status != "disabled" || tw.DeviceEtag != up.ETag {
		t.Errorf("twin after disable: status %q deviceEtag %q", tw.Status, tw.DeviceEtag)
	}

	// Key change.
	up = must(h.UpdateDevice(ctx, registry.Device{DeviceID: "d", Status: "disabled",
		Authentication: registry.Authentication{SymmetricKey: registry.SymmetricKey{PrimaryKey: key('z')}}}, `"*"`))(t)
	if up.Authentication.SymmetricKey.PrimaryKey != key('z') || up.Authentication.SymmetricKey.SecondaryKey != orig.Authentication.SymmetricKey.SecondaryKey {
		t.Errorf("key change: %+v", up.Authentication)
	}
	if got := h.takeIdentity(); !slices.Equal(got, []string{"d"}) {
		t.Errorf("key change: OnIdentityChange = %v", got)
	}
	// Switch to selfSigned, then change only the thumbprint.
	must(h.UpdateDevice(ctx, registry.Device{DeviceID: "d", Authentication: registry.Authentication{X509Thumbprint: registry.X509Thumbprint{PrimaryThumbprint: thumbA}}}, `"*"`))(t)
	up = must(h.UpdateDevice(ctx, registry.Device{DeviceID: "d", Authentication: registry.Authentication{Type: "selfSigned"}}, `"*"`))(t)
	if up.Authentication.X509Thumbprint.PrimaryThumbprint != thumbA {
		t.Errorf("empty thumbprints on update did not keep the current ones: %+v", up.Authentication)
	}
	must(h.UpdateDevice(ctx, registry.Device{DeviceID: "d", Authentication: registry.Authentication{X509Thumbprint: registry.X509Thumbprint{PrimaryThumbprint: thumbB}}}, `"*"`))(t)
	if got := h.takeIdentity(); !slices.Equal(got, []string{"d", "d"}) {
		t.Errorf("thumbprint changes: OnIdentityChange = %v", got)
	}
	_, err = h.UpdateDevice(ctx, registry.Device{DeviceID: "d", Status: "paused"}, `"*"`)
	wantCode(t, err, errcode.ArgumentInvalid)
	// Back to sas without keys generates new ones.
	up = must(h.UpdateDevice(ctx, registry.Device{DeviceID: "d", Authentication: registry.Authentication{Type: "sas"}}, `"*"`))(t)
	if up.Authentication.SymmetricKey.PrimaryKey == "" || up.Authentication.X509Thumbprint.PrimaryThumbprint != "" {
		t.Errorf("back to sas: %+v", up.Authentication)
	}
}

func TestEdgeScopes(t *testing.T) {
	h := newHarness(t)
	edge := must(h.CreateDevice(ctx, registry.Device{DeviceID: "edge-1", Capabilities: registry.Capabilities{IotEdge: true}}))(t)
	if !strings.HasPrefix(edge.DeviceScope, "ms-azure-iot-edge://edge-1-") || len(edge.ParentScopes) != 0 {
		t.Fatalf("edge scope %q parents %v", edge.DeviceScope, edge.ParentScopes)
	}
	plain := must(h.CreateDevice(ctx, registry.Device{DeviceID: "plain"}))(t)
	if plain.DeviceScope != "" {
		t.Errorf("non-edge device got scope %q", plain.DeviceScope)
	}
	child := must(h.CreateDevice(ctx, registry.Device{DeviceID: "child", DeviceScope: edge.DeviceScope}))(t)
	if child.DeviceScope != edge.DeviceScope || !slices.Equal(child.ParentScopes, []string{edge.DeviceScope}) {
		t.Errorf("child scopes %q %v", child.DeviceScope, child.ParentScopes)
	}
	// The child keeps its scopes through a partial update and through a
	// re-sent copy of itself.
	up := must(h.UpdateDevice(ctx, registry.Device{DeviceID: "child", Status: "enabled"}, `"*"`))(t)
	if up.DeviceScope != edge.DeviceScope {
		t.Errorf("partial update dropped the scope: %q", up.DeviceScope)
	}
	up = must(h.UpdateDevice(ctx, up, `"*"`))(t)
	if up.DeviceScope != edge.DeviceScope || !slices.Equal(up.ParentScopes, []string{edge.DeviceScope}) {
		t.Errorf("re-sent child: %q %v", up.DeviceScope, up.ParentScopes)
	}
	tw := must(h.GetTwin(ctx, "child", ""))(t)
	if tw.DeviceScope != edge.DeviceScope || tw.Capabilities["iotEdge"] != false {
		t.Errorf("child twin scope %q caps %v", tw.DeviceScope, tw.Capabilities)
	}
	// Edge update keeps its own scope even when the body names another.
	e2 := must(h.UpdateDevice(ctx, registry.Device{DeviceID: "edge-1", Capabilities: registry.Capabilities{IotEdge: true}, DeviceScope: "whatever"}, `"*"`))(t)
	if e2.DeviceScope != edge.DeviceScope {
		t.Errorf("edge scope changed to %q", e2.DeviceScope)
	}
	bad := []string{
		"ms-azure-iot-edge://nope-1",
		"ms-azure-iot-edge://plain-1",
		"not-a-scope",
		edge.DeviceScope + "0",
		"ms-azure-iot-edge://child-1",
	}
	for _, s := range bad {
		_, err := h.UpdateDevice(ctx, registry.Device{DeviceID: "plain", DeviceScope: s}, `"*"`)
		wantCode(t, err, errcode.ArgumentInvalid)
		_, err = h.CreateDevice(ctx, registry.Device{DeviceID: "new", DeviceScope: s})
		wantCode(t, err, errcode.ArgumentInvalid)
	}
	// A nested edge device names its parent in parentScopes.
	nested := must(h.CreateDevice(ctx, registry.Device{DeviceID: "edge-2", Capabilities: registry.Capabilities{IotEdge: true}, ParentScopes: []string{edge.DeviceScope}}))(t)
	if nested.DeviceScope == edge.DeviceScope || !slices.Equal(nested.ParentScopes, []string{edge.DeviceScope}) {
		t.Errorf("nested edge %q %v", nested.DeviceScope, nested.ParentScopes)
	}
	// Moving the child to another existing edge device is allowed.
	up = must(h.UpdateDevice(ctx, registry.Device{DeviceID: "child", DeviceScope: nested.DeviceScope}, `"*"`))(t)
	if up.DeviceScope != nested.DeviceScope {
		t.Errorf("move: %q", up.DeviceScope)
	}
	// A device cannot be its own parent.
	_, err := h.UpdateDevice(ctx, registry.Device{DeviceID: "edge-1", DeviceScope: edge.DeviceScope}, `"*"`)
	wantCode(t, err, errcode.ArgumentInvalid)
}

func TestBulk(t *testing.T) {
	h := newHarness(t)
	res := must(h.Bulk(ctx, []registry.BulkOp{
		{ID: "b1", ImportMode: "create"},
		{ID: "b2", ImportMode: "Create", Status: "disabled"},
		{ID: "b3", ImportMode: "createOrUpdate", Authentication: &registry.Authentication{SymmetricKey: registry.SymmetricKey{PrimaryKey: key('p'), SecondaryKey: key('s')}}},
	}))(t)
	if b := string(must(json.Marshal(res))(t)); b != `{"isSuccessful":true,"errors":[],"warnings":[]}` {
		t.Errorf("bulk create result %s", b)
	}
	if d := must(h.GetDevice(ctx, "b3"))(t); d.Authentication.SymmetricKey.PrimaryKey != key('p') {
		t.Errorf("bulk keys not applied")
	}
	b1 := must(h.GetDevice(ctx, "b1"))(t)
	h.takeIdentity()
	res = must(h.Bulk(ctx, []registry.BulkOp{
		{ID: "b1", ImportMode: "UpdateIfMatchETag", ETag: b1.ETag, Status: "disabled"},
		{ID: "b2", ImportMode: "updateIfMatchETag", ETag: "stale"},
		{ID: "b3", ImportMode: "create"},
		{ID: "zz", ImportMode: "update"},
		{ID: "bad/id", ImportMode: "create"},
		{ID: "b4", ImportMode: "createOrUpdate", Status: "disabled"},
		{ID: "b5", ImportMode: "deleteIfMatchETag"},
	}))(t)
	if res.IsSuccessful {
		t.Errorf("bulk with failures reported success")
	}
	type e struct {
		id   string
		code int
	}
	var got []e
	for _, be := range res.Errors {
		got = append(got, e{be.DeviceID, be.ErrorCode})
		if be.ErrorStatus == "" {
			t.Errorf("error for %s has no status text", be.DeviceID)
		}
	}
	want := []e{{"b2", 412001}, {"b3", 409001}, {"zz", 404001}, {"bad/id", 400004}, {"b5", 400004}}
	if !slices.Equal(got, want) {
		t.Errorf("bulk errors %v, want %v", got, want)
	}
	if b := string(must(json.Marshal(res))(t)); !strings.Contains(b, `"errorCode":412001`) || !strings.Contains(b, `"warnings":[]`) {
		t.Errorf("bulk JSON %s", b)
	}
	if d := must(h.GetDevice(ctx, "b1"))(t); d.Status != "disabled" {
		t.Errorf("updateIfMatchETag not applied")
	}
	if d := must(h.GetDevice(ctx, "b4"))(t); d.Status != "disabled" {
		t.Errorf("createOrUpdate did not create")
	}
	if got := h.takeIdentity(); !slices.Equal(got, []string{"b1"}) {
		t.Errorf("OnIdentityChange = %v", got)
	}
	b2 := must(h.GetDevice(ctx, "b2"))(t)
	res = must(h.Bulk(ctx, []registry.BulkOp{{ID: "b1", ImportMode: "delete"}, {ID: "b2", ImportMode: "DeleteIfMatchETag", ETag: b2.ETag}, {ID: "b4", ImportMode: "DELETE"}}))(t)
	if !res.IsSuccessful {
		t.Errorf("bulk delete: %+v", res)
	}
	if st := must(h.Statistics(ctx))(t); st != (registry.Statistics{TotalDeviceCount: 1, EnabledDeviceCount: 1}) {
		t.Errorf("after bulk delete: %+v", st)
	}

	// Whole-request refusals.
	var many []registry.BulkOp
	for i := range 101 {
		many = append(many, registry.BulkOp{ID: fmt.Sprint("m", i), ImportMode: "create"})
	}
	_, err := h.Bulk(ctx, many)
	wantCode(t, err, errcode.TooManyDevices)
	_, err = h.Bulk(ctx, []registry.BulkOp{{ID: "x", ImportMode: "create"}, {ID: "x", ImportMode: "delete"}})
	wantCode(t, err, errcode.DeviceDefinedMultipleTimes)
	_, err = h.Bulk(ctx, []registry.BulkOp{{ID: "x", ImportMode: "frobnicate"}})
	wantCode(t, err, errcode.ArgumentInvalid)
	if _, err := h.GetDevice(ctx, "x"); !errcode.Is(err, errcode.DeviceNotFound) {
		t.Errorf("a refused bulk request applied an entry")
	}
	res = must(h.Bulk(ctx, many[:100]))(t)
	if !res.IsSuccessful {
		t.Errorf("100 entries: %+v", res)
	}
}

func TestStatisticsAndList(t *testing.T) {
	h := newHarness(t)
	if st := must(h.Statistics(ctx))(t); st != (registry.Statistics{}) {
		t.Errorf("empty: %+v", st)
	}
	if l := must(h.ListDevices(ctx, 0))(t); l == nil || len(l) != 0 {
		t.Errorf("empty list = %#v, want empty non-nil", l)
	}
	for _, id := range []string{"c", "a", "d", "b"} {
		must(h.CreateDevice(ctx, registry.Device{DeviceID: id, Status: map[bool]string{true: "disabled"}[id == "d"]}))(t)
	}
	must(h.CreateModule(ctx, registry.Module{DeviceID: "a", ModuleID: "m"}))(t)
	if st := must(h.Statistics(ctx))(t); st != (registry.Statistics{TotalDeviceCount: 4, EnabledDeviceCount: 3, DisabledDeviceCount: 1}) {
		t.Errorf("statistics %+v", st)
	}
	var ids []string
	for _, d := range must(h.ListDevices(ctx, 0))(t) {
		ids = append(ids, d.DeviceID)
	}
	if !slices.Equal(ids, []string{"a", "b", "c", "d"}) {
		t.Errorf("ListDevices = %v", ids)
	}
	if l := must(h.ListDevices(ctx, 2))(t); len(l) != 2 || l[1].DeviceID != "b" {
		t.Errorf("ListDevices(2) = %v", l)
	}
}

func TestModules(t *testing.T) {
	h := newHarness(t)
	_, err := h.CreateModule(ctx, registry.Module{DeviceID: "d", ModuleID: "m"})
	wantCode(t, err, errcode.DeviceNotFound)
	must(h.CreateDevice(ctx, registry.Device{DeviceID: "d"}))(t)
	m := must(h.CreateModule(ctx, registry.Module{DeviceID: "d", ModuleID: "m", ManagedBy: "me"}))(t)
	if m.ETag == "" || m.GenerationID == "" || m.ConnectionState != registry.Disconnected || m.Authentication.Type != registry.AuthSAS || m.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Errorf("module %+v", m)
	}
	_, err = h.CreateModule(ctx, registry.Module{DeviceID: "d", ModuleID: "m"})
	wantCode(t, err, errcode.ModuleAlreadyExistsOnDevice)
	must(h.CreateModule(ctx, registry.Module{DeviceID: "d", ModuleID: "$edgeAgent"}))(t)

	_, err = h.GetModule(ctx, "d", "nope")
	wantCode(t, err, errcode.ModuleNotFound)
	_, err = h.GetModule(ctx, "nodev", "m")
	wantCode(t, err, errcode.DeviceNotFound)
	_, err = h.GetTwin(ctx, "d", "nope")
	wantCode(t, err, errcode.ModuleNotFound)
	_, err = h.GetTwin(ctx, "nodev", "m")
	wantCode(t, err, errcode.DeviceNotFound)
	_, err = h.ListModules(ctx, "nodev")
	wantCode(t, err, errcode.DeviceNotFound)

	got := must(h.GetModule(ctx, "d", "m"))(t)
	if got.ETag != m.ETag || got.ManagedBy != "me" {
		t.Errorf("GetModule %+v", got)
	}
	var ids []string
	for _, x := range must(h.ListModules(ctx, "d"))(t) {
		ids = append(ids, x.ModuleID)
	}
	if !slices.Equal(ids, []string{"$edgeAgent", "m"}) {
		t.Errorf("ListModules = %v", ids)
	}

	_, err = h.UpdateModule(ctx, registry.Module{DeviceID: "d", ModuleID: "m"}, `"nope"`)
	wantCode(t, err, errcode.PreconditionFailed)
	up := must(h.UpdateModule(ctx, registry.Module{DeviceID: "d", ModuleID: "m"}, `"`+m.ETag+`"`))(t)
	if up.Authentication != m.Authentication || up.ETag == m.ETag || up.ManagedBy != "me" {
		t.Errorf("no-op module update %+v", up)
	}
	if got := h.takeIdentity(); len(got) != 0 {
		t.Errorf("no-op update called OnIdentityChange %v", got)
	}
	must(h.UpdateModule(ctx, registry.Module{DeviceID: "d", ModuleID: "m", Authentication: registry.Authentication{SymmetricKey: registry.SymmetricKey{SecondaryKey: key('q')}}}, "*"))(t)
	if got := h.takeIdentity(); !slices.Equal(got, []string{"d/m"}) {
		t.Errorf("module key change: OnIdentityChange %v", got)
	}
	_, err = h.UpdateModule(ctx, registry.Module{DeviceID: "d", ModuleID: "zz"}, "*")
	wantCode(t, err, errcode.ModuleNotFound)

	tw := must(h.GetTwin(ctx, "d", "m"))(t)
	if tw.ModuleID != "m" || tw.DeviceID != "d" || tw.Version != 1 || tw.Properties.Desired["$version"] != int64(1) {
		t.Errorf("module twin %+v", tw)
	}
	if b := string(must(json.Marshal(tw))(t)); !strings.Contains(b, `"moduleId":"m"`) || !strings.Contains(b, `"x509Thumbprint":{"primaryThumbprint":null,"secondaryThumbprint":null}`) {
		t.Errorf("module twin JSON %s", b)
	}

	wantCode(t, h.DeleteModule(ctx, "d", "zz", "*"), errcode.ModuleNotFound)
	if err := h.DeleteModule(ctx, "d", "$edgeAgent", `"*"`); err != nil {
		t.Fatal(err)
	}
	if got := h.takeIdentity(); !slices.Equal(got, []string{"d/$edgeAgent"}) {
		t.Errorf("module delete: OnIdentityChange %v", got)
	}
	if err := h.DeleteDevice(ctx, "d", "*"); err != nil {
		t.Fatal(err)
	}
	if got := h.takeIdentity(); !slices.Equal(got, []string{"d", "d/m"}) {
		t.Errorf("device delete: OnIdentityChange %v", got)
	}
	must(h.CreateDevice(ctx, registry.Device{DeviceID: "d"}))(t)
	if l := must(h.ListModules(ctx, "d"))(t); len(l) != 0 {
		t.Errorf("modules survived their device: %v", l)
	}
}

func TestTwinPatch(t *testing.T) {
	h := newHarness(t)
	must(h.CreateDevice(ctx, registry.Device{DeviceID: "d"}))(t)
	tw0 := must(h.GetTwin(ctx, "d", ""))(t)

	h.advance(time.Second)
	tw := must(h.PatchTwin(ctx, "d", "", []byte(`{"tags":{"site":"a"},"properties":{"desired":{"temp":20,"cfg":{"a":1,"b":2}}}}`), `"`+tw0.ETag+`"`))(t)
	if tw.ETag == tw0.ETag || tw.Version != 2 || tw.Tags["site"] != "a" || tw.Properties.Desired["$version"] != int64(2) {
		t.Errorf("after patch: etag %q version %d tags %v desired %v", tw.ETag, tw.Version, tw.Tags, tw.Properties.Desired)
	}
	calls := h.takeDesired()
	if len(calls) != 1 || calls[0] != (desiredCall{"d", "", 2, `{"$version":2,"cfg":{"a":1,"b":2},"temp":20}`}) {
		t.Errorf("OnDesiredChange %v", calls)
	}
	_, err := h.PatchTwin(ctx, "d", "", []byte(`{"tags":{"x":1}}`), `"`+tw0.ETag+`"`)
	wantCode(t, err, errcode.PreconditionFailed)
	_, err = h.PatchTwin(ctx, "d", "", []byte(`{"properties":{"reported":{"x":1}}}`), `*`)
	wantCode(t, err, errcode.ArgumentInvalid)
	_, err = h.PatchTwin(ctx, "d", "", []byte(`{"properties":{"desired":{"$x":1}}}`), `*`)
	wantCode(t, err, errcode.ArgumentInvalid)
	_, err = h.PatchTwin(ctx, "nodev", "", []byte(`{"tags":{}}`), `*`)
	wantCode(t, err, errcode.DeviceNotFound)

	// Tags only: version and etag move, desired $version does not.
	tw2 := must(h.PatchTwin(ctx, "d", "", []byte(`{"tags":{"site":null,"floor":3}}`), `"`+tw.ETag+`"`))(t)
	if tw2.ETag == tw.ETag || tw2.Version != 3 || tw2.Properties.Desired["$version"] != int64(2) || len(h.takeDesired()) != 0 {
		t.Errorf("tags patch: %+v", tw2)
	}
	if _, ok := tw2.Tags["site"]; ok || fmt.Sprint(tw2.Tags["floor"]) != "3" {
		t.Errorf("tags = %v", tw2.Tags)
	}

	// desired: null removes every key and tells the device.
	tw3 := must(h.PatchTwin(ctx, "d", "", []byte(`{"properties":{"desired":null}}`), `"*"`))(t)
	if d := tw3.Properties.Desired; len(d) != 2 || d["$version"] != int64(3) {
		t.Errorf("desired after null: %v", d)
	}
	if calls := h.takeDesired(); len(calls) != 1 || calls[0].patch != `{"$version":3,"cfg":null,"temp":null}` || calls[0].version != 3 {
		t.Errorf("null desired: %v", calls)
	}

	// Replace.
	must(h.PatchTwin(ctx, "d", "", []byte(`{"properties":{"desired":{"a":1,"b":{"c":1}}}}`), "*"))(t)
	h.takeDesired()
	tw4 := must(h.ReplaceTwin(ctx, "d", "", []byte(`{"tags":{"t":1},"properties":{"desired":{"b":{"d":2}}}}`), "*"))(t)
	if calls := h.takeDesired(); len(calls) != 1 || calls[0].patch != `{"$version":5,"a":null,"b":{"c":null,"d":2}}` {
		t.Errorf("replace: %v", calls)
	}
	if b := string(must(json.Marshal(tw4.Tags))(t)); b != `{"t":1}` {
		t.Errorf("replaced tags %s", b)
	}

	// The rendered twin carries identity fields and $metadata.
	b := string(must(json.Marshal(tw4))(t))
	for _, want := range []string{`"deviceId":"d"`, `"status":"enabled"`, `"connectionState":"Disconnected"`, `"authenticationType":"sas"`,
		`"capabilities":{"iotEdge":false}`, `"$lastUpdatedVersion":5`, `"lastActivityTime":"0001-01-01T00:00:00Z"`} {
		if !strings.Contains(b, want) {
			t.Errorf("twin JSON lacks %s: %s", want, b)
		}
	}

	// Module twins work the same way.
	must(h.CreateModule(ctx, registry.Module{DeviceID: "d", ModuleID: "m"}))(t)
	must(h.PatchTwin(ctx, "d", "m", []byte(`{"properties":{"desired":{"k":"v"}}}`), "*"))(t)
	if calls := h.takeDesired(); len(calls) != 1 || calls[0] != (desiredCall{"d", "m", 2, `{"$version":2,"k":"v"}`}) {
		t.Errorf("module desired: %v", calls)
	}
}

func TestTwinLimits(t *testing.T) {
	h := newHarness(t)
	must(h.CreateDevice(ctx, registry.Device{DeviceID: "d"}))(t)
	big := strings.Repeat("x", 4000)
	var sb strings.Builder
	for i := range 9 {
		fmt.Fprintf(&sb, `,"k%d":"%s"`, i, big)
	}
	oversize := "{" + sb.String()[1:] + "}"
	_, err := h.UpdateReported(ctx, "d", "", []byte(oversize))
	wantCode(t, err, errcode.ArgumentInvalid)
	if !twin.IsTooLarge(err) {
		t.Errorf("oversize reported not marked ErrTooLarge: %v", err)
	}
	_, err = h.PatchTwin(ctx, "d", "", []byte(`{"properties":{"desired":`+oversize+`}}`), "*")
	if !twin.IsTooLarge(err) {
		t.Errorf("oversize desired: %v", err)
	}
	_, err = h.PatchTwin(ctx, "d", "", []byte(`{"tags":{"a":"`+big+`","b":"`+big+`","c":"`+big+`"}}`), "*")
	if !twin.IsTooLarge(err) {
		t.Errorf("oversize tags: %v", err)
	}
	deep := strings.Repeat(`{"a":`, 12) + "1" + strings.Repeat("}", 12)
	_, err = h.UpdateReported(ctx, "d", "", []byte(deep))
	wantCode(t, err, errcode.ArgumentInvalid)
	tw := must(h.GetTwin(ctx, "d", ""))(t)
	if tw.Version != 1 || tw.Properties.Reported["$version"] != int64(1) || len(h.takeDesired()) != 0 {
		t.Errorf("refused changes moved the twin: %+v", tw)
	}
}

func TestUpdateReported(t *testing.T) {
	h := newHarness(t)
	must(h.CreateDevice(ctx, registry.Device{DeviceID: "d"}))(t)
	tw0 := must(h.GetTwin(ctx, "d", ""))(t)
	for i, p := range []string{`{"a":1}`, `{"b":{"c":true}}`, `{"a":null,"$version":99}`} {
		v := must(h.UpdateReported(ctx, "d", "", []byte(p)))(t)
		if v != int64(i+2) {
			t.Errorf("patch %d: version %d", i, v)
		}
	}
	tw := must(h.GetTwin(ctx, "d", ""))(t)
	r := tw.Properties.Reported
	if r["$version"] != int64(4) || r["a"] != nil || fmt.Sprint(r["b"]) != "map[c:true]" {
		t.Errorf("reported = %v", r)
	}
	if tw.ETag != tw0.ETag || tw.Version != 4 {
		t.Errorf("twin etag %q->%q version %d", tw0.ETag, tw.ETag, tw.Version)
	}
	for _, bad := range []string{`[1]`, `{"$x":1}`, `nope`, ``} {
		if _, err := h.UpdateReported(ctx, "d", "", []byte(bad)); err == nil {
			t.Errorf("UpdateReported(%q) accepted", bad)
		}
	}
	_, err := h.UpdateReported(ctx, "nodev", "", []byte(`{}`))
	wantCode(t, err, errcode.DeviceNotFound)
	_, err = h.UpdateReported(ctx, "d", "m", []byte(`{}`))
	wantCode(t, err, errcode.ModuleNotFound)
}

func TestSetConnectionState(t *testing.T) {
	h := newHarness(t)
	d := must(h.CreateDevice(ctx, registry.Device{DeviceID: "d"}))(t)
	must(h.CreateModule(ctx, registry.Module{DeviceID: "d", ModuleID: "m"}))(t)
	tw := must(h.GetTwin(ctx, "d", ""))(t)
	h.advance(time.Minute)
	if err := h.SetConnectionState(ctx, "d", "", true); err != nil {
		t.Fatal(err)
	}
	got := must(h.GetDevice(ctx, "d"))(t)
	at := time.Date(2024, 1, 2, 2, 5, 5, 0, time.UTC)
	if got.ConnectionState != registry.Connected || !got.ConnectionStateUpdatedTime.Equal(at) || !got.LastActivityTime.Equal(at) || got.ETag != d.ETag {
		t.Errorf("after connect %+v", got)
	}
	tw2 := must(h.GetTwin(ctx, "d", ""))(t)
	if tw2.ConnectionState != registry.Connected || tw2.ETag != tw.ETag || tw2.Version != tw.Version || !tw2.LastActivityTime.Equal(at) {
		t.Errorf("twin after connect %+v", tw2)
	}
	if err := h.SetConnectionState(ctx, "d", "m", true); err != nil {
		t.Fatal(err)
	}
	if m := must(h.GetModule(ctx, "d", "m"))(t); m.ConnectionState != registry.Connected {
		t.Errorf("module %+v", m)
	}
	h.advance(time.Minute)
	if err := h.SetConnectionState(ctx, "d", "", false); err != nil {
		t.Fatal(err)
	}
	if got := must(h.GetDevice(ctx, "d"))(t); got.ConnectionState != registry.Disconnected || !got.ConnectionStateUpdatedTime.Equal(at.Add(time.Minute)) {
		t.Errorf("after disconnect %+v", got)
	}
	// An update keeps the connection state.
	if got := must(h.UpdateDevice(ctx, registry.Device{DeviceID: "d", Status: "enabled"}, "*"))(t); !got.ConnectionStateUpdatedTime.Equal(at.Add(time.Minute)) {
		t.Errorf("update lost connection time: %+v", got)
	}
	wantCode(t, h.SetConnectionState(ctx, "x", "", true), errcode.DeviceNotFound)
	wantCode(t, h.SetConnectionState(ctx, "d", "x", true), errcode.ModuleNotFound)
}

// TestConcurrentReported: parallel reported patches all land, each gets its
// own version, and the final version counts them all.
func TestConcurrentReported(t *testing.T) {
	h := newHarness(t)
	must(h.CreateDevice(ctx, registry.Device{DeviceID: "d"}))(t)
	const workers, each = 8, 20
	versions := make(chan int64, workers*each)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := int64(0)
			for i := range each {
				v, err := h.UpdateReported(ctx, "d", "", []byte(fmt.Sprintf(`{"w%d":%d}`, w, i)))
				if err != nil {
					t.Error(err)
					return
				}
				if v <= last {
					t.Errorf("worker %d: version %d after %d", w, v, last)
				}
				last = v
				versions <- v
			}
		}()
	}
	wg.Wait()
	close(versions)
	var all []int
	for v := range versions {
		all = append(all, int(v))
	}
	sort.Ints(all)
	for i, v := range all {
		if v != i+2 {
			t.Fatalf("versions %v are not 2..%d without gaps", all, workers*each+1)
		}
	}
	tw := must(h.GetTwin(ctx, "d", ""))(t)
	if tw.Properties.Reported["$version"] != int64(workers*each+1) {
		t.Errorf("final reported version %v", tw.Properties.Reported["$version"])
	}
	for w := range workers {
		if fmt.Sprint(tw.Properties.Reported[fmt.Sprint("w", w)]) != fmt.Sprint(each-1) {
			t.Errorf("w%d = %v", w, tw.Properties.Reported[fmt.Sprint("w", w)])
		}
	}
}

// queryReady skips the Query tests while internal/query is still a stub.
func queryReady(t *testing.T, h *harness) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			if fmt.Sprint(r) == "todo" {
				t.Skip("internal/query is not implemented yet")
			}
			panic(r)
		}
	}()
	_, _, _ = h.Query(ctx, "SELECT * FROM devices", 1, "")
}

func TestQuery(t *testing.T) {
	h := newHarness(t)
	queryReady(t, h)
	for i := range 5 {
		id := fmt.Sprint("q", i)
		must(h.CreateDevice(ctx, registry.Device{DeviceID: id}))(t)
		must(h.PatchTwin(ctx, id, "", []byte(fmt.Sprintf(`{"tags":{"n":%d,"even":%v}}`, i, i%2 == 0)), "*"))(t)
	}
	must(h.CreateModule(ctx, registry.Module{DeviceID: "q1", ModuleID: "m"}))(t)

	items, next, err := h.Query(ctx, "SELECT * FROM devices", 0, "")
	if err != nil || len(items) != 5 || next != "" {
		t.Fatalf("all devices: %d items, next %q, %v", len(items), next, err)
	}
	if m, ok := items[0].(map[string]any); !ok || m["deviceId"] != "q0" {
		t.Errorf("first item %v", items[0])
	}
	items, _, err = h.Query(ctx, "SELECT * FROM devices WHERE tags.even = true", 0, "")
	if err != nil || len(items) != 3 {
		t.Errorf("WHERE: %d items, %v", len(items), err)
	}
	items, _, err = h.Query(ctx, "SELECT deviceId FROM devices WHERE tags.n >= 3", 0, "")
	if err != nil || len(items) != 2 || fmt.Sprint(items[0]) != "map[deviceId:q3]" {
		t.Errorf("numeric WHERE: %v, %v", items, err)
	}
	items, _, err = h.Query(ctx, "SELECT COUNT() AS n FROM devices WHERE status = 'enabled'", 0, "")
	if err != nil || len(items) != 1 || fmt.Sprint(items[0]) != "map[n:5]" {
		t.Errorf("COUNT: %v, %v", items, err)
	}
	items, _, err = h.Query(ctx, "SELECT * FROM devices.modules", 0, "")
	if err != nil || len(items) != 1 {
		t.Errorf("modules: %v, %v", items, err)
	}

	// Paging: 2 + 2 + 1, continuation opaque, "" on the last page.
	var seen []string
	cont := ""
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		items, next, err := h.Query(ctx, "SELECT * FROM devices", 2, cont)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			seen = append(seen, it.(map[string]any)["deviceId"].(string))
		}
		if next == "" {
			break
		}
		cont = next
	}
	if !slices.Equal(seen, []string{"q0", "q1", "q2", "q3", "q4"}) {
		t.Errorf("paged ids %v", seen)
	}
	_, _, err = h.Query(ctx, "SELECT * FROM devices", 2, "!!garbage")
	wantCode(t, err, errcode.ArgumentInvalid)
	_, _, err = h.Query(ctx, "SELEKT nonsense", 2, "")
	if ce := errcode.From(err); ce.Code.Status != 400 {
		t.Errorf("bad query: %v", err)
	}
}

func TestParseDevice(t *testing.T) {
	cases := []struct {
		body string
		code *errcode.Code
	}{
		{`{"deviceId":"d1"}`, nil},
		{`{"deviceId":"d1","status":"Disabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}`, nil},
		{`{"deviceId":"d1","authentication":{"type":"selfSigned"}}`, nil}, // an update may keep thumbprints
		{`{"DeviceId":"d1"}`, nil},
		{`{"deviceId":"d/1"}`, &errcode.ArgumentInvalid},
		{`{"deviceId":"d1","status":"maybe"}`, &errcode.ArgumentInvalid},
		{`{"deviceId":"d1","authentication":{"type":"magic"}}`, &errcode.ArgumentInvalid},
		{`{"deviceId":"d1","authentication":{"symmetricKey":{"primaryKey":"abc"}}}`, &errcode.ArgumentInvalid},
		{`{"deviceId":"d1","parentScopes":["a","b"]}`, &errcode.ArgumentInvalid},
		{`{"deviceId":5}`, &errcode.IotHubFormatError},
		{`{"deviceId":"d1"} x`, &errcode.IotHubFormatError},
		{``, &errcode.IotHubFormatError},
	}
	for _, c := range cases {
		_, err := registry.ParseDevice([]byte(c.body))
		switch {
		case c.code == nil && err != nil:
			t.Errorf("ParseDevice(%s): %v", c.body, err)
		case c.code != nil && !errcode.Is(err, *c.code):
			t.Errorf("ParseDevice(%s) = %v, want %s", c.body, err, c.code.Name)
		}
	}
}

// FuzzDeviceJSON: any body either parses or fails with an IoT Hub error, and
// whatever parses can be created without a panic or an internal error.
func FuzzDeviceJSON(f *testing.F) {
	for _, s := range []string{
		`{"deviceId":"d1"}`,
		`{"deviceId":"e","capabilities":{"iotEdge":true}}`,
		`{"deviceId":"c","deviceScope":"ms-azure-iot-edge://e-1","parentScopes":["ms-azure-iot-edge://e-1"]}`,
		`{"deviceId":"x","authentication":{"x509Thumbprint":{"primaryThumbprint":"` + thumbA + `"}}}`,
		`{"deviceId":"y","authentication":{"type":"certificateAuthority"},"status":"DISABLED"}`,
		`{"deviceId":"z","authentication":{"type":"sas","symmetricKey":{"primaryKey":"` + key('k') + `"}}}`,
		`{"deviceId":""}`, `[]`, `{"deviceId":"a","status":7}`,
	} {
		f.Add([]byte(s))
	}
	h := newHarness(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		d, err := registry.ParseDevice(body)
		if err != nil {
			var ce *errcode.Error
			if !errors.As(err, &ce) || ce.Code.Status != 400 {
				t.Fatalf("ParseDevice error %v is not a 400", err)
			}
			return
		}
		_, err = h.CreateDevice(ctx, d)
		if err != nil {
			if ce := errcode.From(err); ce.Code.Status >= 500 {
				t.Fatalf("CreateDevice: internal error %v", err)
			}
			return
		}
		if _, err := h.UpdateDevice(ctx, d, "*"); errcode.From(err).Code.Status >= 500 && err != nil {
			t.Fatalf("UpdateDevice: internal error %v", err)
		}
		if err := h.DeleteDevice(ctx, d.DeviceID, "*"); err != nil {
			t.Fatalf("DeleteDevice: %v", err)
		}
	})
}

func BenchmarkGetTwin(b *testing.B) {
	h := newHarness(b)
	must(h.CreateDevice(ctx, registry.Device{DeviceID: "d"}))(b)
	must(h.PatchTwin(ctx, "d", "", []byte(`{"tags":{"a":1},"properties":{"desired":{"x":{"y":"z"},"n":[1,2,3]}}}`), "*"))(b)
	must(h.UpdateReported(ctx, "d", "", []byte(`{"fw":"1.2.3","temp":21.5}`)))(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := h.GetTwin(ctx, "d", ""); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUpdateReported(b *testing.B) {
	h := newHarness(b)
	must(h.CreateDevice(ctx, registry.Device{DeviceID: "d"}))(b)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := h.UpdateReported(ctx, "d", "", []byte(fmt.Sprintf(`{"temp":%d,"fw":"1.2.3"}`, i))); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpdateReportedParallel is the shape of real load: many devices
// reporting at once, which group commit turns into few fsyncs.
func BenchmarkUpdateReportedParallel(b *testing.B) {
	h := newHarness(b)
	const devices = 64
	for i := range devices {
		must(h.CreateDevice(ctx, registry.Device{DeviceID: fmt.Sprintf("d%d", i)}))(b)
	}
	var next atomic.Int64
	b.SetParallelism(32)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		id := fmt.Sprintf("d%d", next.Add(1)%devices)
		i := 0
		for pb.Next() {
			i++
			if _, err := h.UpdateReported(ctx, id, "", []byte(fmt.Sprintf(`{"temp":%d}`, i))); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkSetConnectionStateParallel(b *testing.B) {
	h := newHarness(b)
	const devices = 256
	for i := range devices {
		must(h.CreateDevice(ctx, registry.Device{DeviceID: fmt.Sprintf("d%d", i)}))(b)
	}
	var next atomic.Int64
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := next.Add(1)
			if err := h.SetConnectionState(ctx, fmt.Sprintf("d%d", n%devices), "", n%2 == 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkPatchTwinParallel is the shape of moatbench's twin updates: 32
// service clients patching the desired properties of 1,000 SAS devices.
func BenchmarkPatchTwinParallel(b *testing.B) {
	h := newHarness(b)
	const devices = 1000
	for i := range devices {
		d := registry.Device{DeviceID: fmt.Sprintf("device-%05d", i)}
		must(h.CreateDevice(ctx, d))(b)
	}
	var next atomic.Int64
	b.SetParallelism(16) // 32 goroutines on 2 cores, more on bigger machines
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		w := next.Add(1)
		i := 0
		for pb.Next() {
			i++
			id := fmt.Sprintf("device-%05d", (int(w)+i*32)%devices)
			patch := fmt.Sprintf(`{"properties":{"desired":{"bench":%d,"worker":%d}}}`, i, w)
			if _, err := h.PatchTwin(ctx, id, "", []byte(patch), ""); err != nil {
				b.Fatal(err)
			}
		}
	})
}
