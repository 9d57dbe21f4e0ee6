package serviceapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/c2d"
	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/methods"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/registry/sqlitestore"
)

// fakeTransport stands in for the MQTT layer: identities in online answer
// methods at once ("echo" returns the payload with status 200, "fail" 500,
// "silent" never answers); others are offline.
type fakeTransport struct {
	inv    *methods.Invoker
	mu     sync.Mutex
	online map[string]bool
	calls  []string
}

func (f *fakeTransport) SendMethod(deviceID, moduleID, name, rid string, payload []byte) error {
	f.mu.Lock()
	on := f.online[deviceID+"/"+moduleID]
	f.calls = append(f.calls, deviceID+"/"+moduleID+":"+name)
	f.mu.Unlock()
	if !on {
		return errcode.New(errcode.DeviceNotOnline, "device %s is not online", deviceID)
	}
	switch name {
	case "echo":
		return f.inv.Respond(deviceID, moduleID, rid, 200, payload)
	case "fail":
		return f.inv.Respond(deviceID, moduleID, rid, 500, []byte(`{"err":"x"}`))
	}
	return nil
}

type fullHub struct {
	*testHub
	reg   *registry.Registry
	queue *c2d.Queue
	tr    *fakeTransport
	c     *Client // iothubowner
}

func newFullHub(t *testing.T) *fullHub {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := sqlitestore.Open(ctx, filepath.Join(dir, "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cst, err := c2d.OpenSQLite(ctx, filepath.Join(dir, "c2d.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cst.Close() })
	f := &fullHub{
		reg:   registry.New(st, registry.Options{HubName: testHost}),
		queue: c2d.New(cst, nil, nil),
		tr:    &fakeTransport{online: map[string]bool{}},
	}
	inv := methods.New(f.tr)
	f.tr.inv = inv
	f.testHub = newTestHub(t, hubParts{reg: f.reg, inv: inv, c2d: f.queue, connected: func() int { return 7 }})
	f.c = f.client(t, "iothubowner")
	return f
}

// rawJSON sends an iothubowner request with a JSON body.
func (f *fullHub) rawJSON(t *testing.T, method, path string, header http.Header, body string) (*http.Response, []byte) {
	t.Helper()
	h := authHeader(f.token(t, "iothubowner"))
	h.Set("Content-Type", "application/json; charset=utf-8")
	for k, vs := range header {
		h[k] = vs
	}
	return f.raw(t, method, path, "", h, body)
}

func wantOK(t *testing.T, resp *http.Response, body []byte, status int) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, status, body)
	}
	if status == http.StatusNoContent {
		if len(body) != 0 {
			t.Errorf("204 with body %q", body)
		}
		return
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("content type %q", ct)
	}
	if strings.Contains(string(body), "+00:00") {
		t.Errorf("timestamp without Z in %s", body)
	}
}

func TestDeviceLifecycle(t *testing.T) {
	f := newFullHub(t)
	ctx := context.Background()

	// Create as the Node SDK does when no authentication is given: empty
	// keys mean "generate".
	resp, body := f.rawJSON(t, "PUT", "/devices/d1", nil,
		`{"deviceId":"d1","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}},"unknownField":1}`)
	wantOK(t, resp, body, http.StatusOK)
	var d1 registry.Device
	if err := json.Unmarshal(body, &d1); err != nil {
		t.Fatal(err)
	}
	if d1.DeviceID != "d1" || d1.ETag == "" || d1.Authentication.SymmetricKey.PrimaryKey == "" || d1.Status != registry.StatusEnabled {
		t.Fatalf("created %+v", d1)
	}
	if got := resp.Header.Get("ETag"); got != `"`+d1.ETag+`"` {
		t.Errorf("ETag header %q, etag %q", got, d1.ETag)
	}

	_, err := f.c.CreateDevice(ctx, registry.Device{DeviceID: "d1"})
	wantCode(t, err, errcode.DeviceAlreadyExists)

	// Partial update with If-Match "*": status changes, keys stay.
	resp, body = f.rawJSON(t, "PUT", "/devices/d1", http.Header{"If-Match": {`"*"`}},
		`{"deviceId":"d1","status":"disabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}},"statusUpdatedTime":"0001-01-01T00:00:00"}`)
	wantOK(t, resp, body, http.StatusOK)
	got, err := f.c.GetDevice(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != registry.StatusDisabled || got.Authentication.SymmetricKey != d1.Authentication.SymmetricKey {
		t.Fatalf("after partial update: %+v", got)
	}

	// Etag preconditions: made-up → 412, current → applied, bare * too.
	_, err = f.c.UpdateDevice(ctx, registry.Device{DeviceID: "d1", Status: "enabled"}, "abc")
	wantCode(t, err, errcode.PreconditionFailed)
	upd, err := f.c.UpdateDevice(ctx, registry.Device{DeviceID: "d1", Status: "enabled"}, got.ETag)
	if err != nil || upd.Status != registry.StatusEnabled {
		t.Fatalf("update with current etag: %+v %v", upd, err)
	}
	resp, body = f.rawJSON(t, "PUT", "/devices/d1", http.Header{"If-Match": {"*"}}, `{"deviceId":"d1","status":"enabled"}`)
	wantOK(t, resp, body, http.StatusOK)

	// GET answers JSON with the etag header.
	resp, body = f.rawJSON(t, "GET", "/devices/d1", nil, "")
	wantOK(t, resp, body, http.StatusOK)
	if resp.Header.Get("ETag") == "" {
		t.Error("GET without ETag")
	}

	// Bad input.
	resp, body = f.rawJSON(t, "PUT", "/devices/d2", nil, `{"deviceId":"other"}`)
	wantError(t, resp, body, http.StatusBadRequest, "ArgumentInvalid")
	resp, body = f.rawJSON(t, "PUT", "/devices/d2", nil, `{"deviceId":`)
	wantError(t, resp, body, http.StatusBadRequest, "IotHubFormatError")
	resp, body = f.rawJSON(t, "PUT", "/devices/d2", nil, `["not an object"]`)
	wantError(t, resp, body, http.StatusBadRequest, "IotHubFormatError")
	resp, body = f.rawJSON(t, "PUT", "/devices/d2", nil, ``)
	wantError(t, resp, body, http.StatusBadRequest, "ArgumentNull")
	resp, body = f.rawJSON(t, "PUT", "/devices/d2", nil, `{"deviceId":"d2","statusReason":"`+strings.Repeat("x", MaxBodyBytes)+`"}`)
	wantError(t, resp, body, http.StatusRequestEntityTooLarge, "MessageTooLarge")
	_, err = f.c.CreateDevice(ctx, registry.Device{DeviceID: "has space"})
	wantCode(t, err, errcode.ArgumentInvalid)
	_, err = f.c.CreateDevice(ctx, registry.Device{DeviceID: "d2", Status: "sleepy"})
	wantCode(t, err, errcode.ArgumentInvalid)

	// Delete: stale etag refused, then 204, then gone; a deleted id can be
	// created again at once.
	wantCode(t, f.c.DeleteDevice(ctx, "d1", "abc"), errcode.PreconditionFailed)
	resp, body = f.rawJSON(t, "DELETE", "/devices/d1", http.Header{"If-Match": {`"*"`}}, "")
	wantOK(t, resp, body, http.StatusNoContent)
	_, err = f.c.GetDevice(ctx, "d1")
	wantCode(t, err, errcode.DeviceNotFound)
	if !strings.HasPrefix(err.Error(), "DeviceNotFound: ") {
		t.Errorf("error text %q", err)
	}
	wantCode(t, f.c.DeleteDevice(ctx, "d1", ""), errcode.DeviceNotFound)
	if _, err := f.c.CreateDevice(ctx, registry.Device{DeviceID: "d1"}); err != nil {
		t.Fatalf("re-create: %v", err)
	}
}

func TestDeviceIDsRoundTrip(t *testing.T) {
	f := newFullHub(t)
	ctx := context.Background()
	for _, id := range []string{"dev$1", "p%25x", "50%", "a:b=c@d'e(f)!*,", "q?x", "dots.and-dash_", "$edgeHub"} {
		d, err := f.c.CreateDevice(ctx, registry.Device{DeviceID: id})
		if err != nil {
			t.Fatalf("create %q: %v", id, err)
		}
		if d.DeviceID != id {
			t.Fatalf("created %q as %q", id, d.DeviceID)
		}
		// As the Node SDK escapes it (encodeURIComponent).
		resp, body := f.rawJSON(t, "GET", "/devices/"+url.PathEscape(id), nil, "")
		wantOK(t, resp, body, http.StatusOK)
		var got registry.Device
		if err := json.Unmarshal(body, &got); err != nil || got.DeviceID != id {
			t.Fatalf("GET %q: %s %v", id, body, err)
		}
		tw, err := f.c.GetTwin(ctx, id, "")
		if err != nil || tw.DeviceID != id {
			t.Fatalf("twin %q: %+v %v", id, tw, err)
		}
		if err := f.c.DeleteDevice(ctx, id, ""); err != nil {
			t.Fatalf("delete %q: %v", id, err)
		}
	}
	// A '/' in an id reaches the registry as one segment and is refused there.
	_, err := f.c.CreateDevice(ctx, registry.Device{DeviceID: "a/b"})
	wantCode(t, err, errcode.ArgumentInvalid)
}

func TestListAndStatistics(t *testing.T) {
	f := newFullHub(t)
	ctx := context.Background()

	for _, path := range []string{"/devices", "/devices/"} {
		resp, body := f.rawJSON(t, "GET", path, nil, "")
		wantOK(t, resp, body, http.StatusOK)
		if strings.TrimSpace(string(body)) != "[]" {
			t.Errorf("empty list %s: %s", path, body)
		}
	}
	for i := range 3 {
		if _, err := f.c.CreateDevice(ctx, registry.Device{DeviceID: fmt.Sprintf("d%d", i), Status: []string{"enabled", "disabled", "enabled"}[i]}); err != nil {
			t.Fatal(err)
		}
	}
	all, err := f.c.ListDevices(ctx, 0)
	if err != nil || len(all) != 3 {
		t.Fatalf("list: %d %v", len(all), err)
	}
	two, err := f.c.ListDevices(ctx, 2)
	if err != nil || len(two) != 2 {
		t.Fatalf("list top=2: %d %v", len(two), err)
	}
	for _, q := range []string{"top=0", "top=x", "top=1001"} {
		resp, body := f.raw(t, "GET", "/devices/", q+"&api-version="+APIVersion, authHeader(f.token(t, "registryRead")), "")
		wantError(t, resp, body, http.StatusBadRequest, "ArgumentInvalid")
	}
	st, err := f.c.DeviceStatistics(ctx)
	if err != nil || st != (registry.Statistics{TotalDeviceCount: 3, EnabledDeviceCount: 2, DisabledDeviceCount: 1}) {
		t.Fatalf("statistics %+v %v", st, err)
	}
	ss, err := f.c.ServiceStatistics(ctx)
	if err != nil || ss.ConnectedDeviceCount != 7 {
		t.Fatalf("service statistics %+v %v", ss, err)
	}

	// The read-only policy reads; it cannot write.
	ro := f.client(t, "registryRead")
	if _, err := ro.ListDevices(ctx, 0); err != nil {
		t.Fatal(err)
	}
	_, err = ro.CreateDevice(ctx, registry.Device{DeviceID: "x"})
	wantCode(t, err, errcode.IotHubUnauthorizedAccess)
	rw := f.client(t, "registryReadWrite")
	if _, err := rw.CreateDevice(ctx, registry.Device{DeviceID: "x"}); err != nil {
		t.Fatal(err)
	}
}

func TestBulk(t *testing.T) {
	f := newFullHub(t)
	ctx := context.Background()

	res, err := f.c.Bulk(ctx, []registry.BulkOp{{ID: "b1", ImportMode: "create"}, {ID: "b2", ImportMode: "Create"}})
	if err != nil || !res.IsSuccessful || len(res.Errors) != 0 {
		t.Fatalf("bulk create: %+v %v", res, err)
	}
	resp, body := f.rawJSON(t, "POST", "/devices", nil, `[{"id":"b3","importMode":"create"}]`)
	wantOK(t, resp, body, http.StatusOK)
	if !strings.Contains(string(body), `"errors":[]`) || !strings.Contains(string(body), `"warnings":[]`) {
		t.Errorf("bulk answer %s", body)
	}
	// A failing entry is reported per device with a numeric code.
	res, err = f.c.Bulk(ctx, []registry.BulkOp{{ID: "b1", ImportMode: "create"}, {ID: "b4", ImportMode: "create"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.IsSuccessful || len(res.Errors) != 1 || res.Errors[0].DeviceID != "b1" || res.Errors[0].ErrorCode != errcode.DeviceAlreadyExists.Number {
		t.Fatalf("bulk with a duplicate: %+v", res)
	}
	res, err = f.c.Bulk(ctx, []registry.BulkOp{{ID: "b1", ImportMode: "delete"}, {ID: "b2", ImportMode: "Delete"}})
	if err != nil || !res.IsSuccessful {
		t.Fatalf("bulk delete: %+v %v", res, err)
	}
	if _, err := f.c.GetDevice(ctx, "b2"); !errcode.Is(err, errcode.DeviceNotFound) {
		t.Fatalf("b2 after delete: %v", err)
	}

	ops := make([]registry.BulkOp, MaxBulkOps+1)
	for i := range ops {
		ops[i] = registry.BulkOp{ID: fmt.Sprintf("m%d", i), ImportMode: "create"}
	}
	_, err = f.c.Bulk(ctx, ops)
	wantCode(t, err, errcode.TooManyDevices)
	_, err = f.c.Bulk(ctx, []registry.BulkOp{})
	wantCode(t, err, errcode.ArgumentInvalid)
	resp, body = f.rawJSON(t, "POST", "/devices", nil, `{"id":"x"}`)
	wantError(t, resp, body, http.StatusBadRequest, "IotHubFormatError")
}

func TestModules(t *testing.T) {
	f := newFullHub(t)
	ctx := context.Background()

	_, err := f.c.CreateModule(ctx, registry.Module{DeviceID: "nodev", ModuleID: "m1"})
	wantCode(t, err, errcode.DeviceNotFound)
	if _, err := f.c.CreateDevice(ctx, registry.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	m, err := f.c.CreateModule(ctx, registry.Module{DeviceID: "d1", ModuleID: "m1"})
	if err != nil || m.ModuleID != "m1" || m.DeviceID != "d1" || m.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("create module: %+v %v", m, err)
	}
	_, err = f.c.CreateModule(ctx, registry.Module{DeviceID: "d1", ModuleID: "m1"})
	wantCode(t, err, errcode.ModuleAlreadyExistsOnDevice)

	resp, body := f.rawJSON(t, "PUT", "/devices/d1/modules/m2", nil, `{"deviceId":"d1","moduleId":"m3"}`)
	wantError(t, resp, body, http.StatusBadRequest, "ArgumentInvalid")
	resp, body = f.rawJSON(t, "PUT", "/devices/d1/modules/m2", nil, `{"deviceId":"d9","moduleId":"m2"}`)
	wantError(t, resp, body, http.StatusBadRequest, "ArgumentInvalid")
	resp, body = f.rawJSON(t, "PUT", "/devices/d1/modules/m2", nil, `{"managedBy":"me"}`)
	wantOK(t, resp, body, http.StatusOK)

	_, err = f.c.UpdateModule(ctx, registry.Module{DeviceID: "d1", ModuleID: "m1", ManagedBy: "x"}, "stale")
	wantCode(t, err, errcode.PreconditionFailed)
	if _, err := f.c.UpdateModule(ctx, registry.Module{DeviceID: "d1", ModuleID: "m1", ManagedBy: "x"}, ""); err != nil {
		t.Fatal(err)
	}
	got, err := f.c.GetModule(ctx, "d1", "m1")
	if err != nil || got.ManagedBy != "x" {
		t.Fatalf("get module: %+v %v", got, err)
	}
	for _, path := range []string{"/devices/d1/modules", "/devices/d1/modules/"} {
		resp, body := f.rawJSON(t, "GET", path, nil, "")
		wantOK(t, resp, body, http.StatusOK)
		var list []registry.Module
		if err := json.Unmarshal(body, &list); err != nil || len(list) != 2 {
			t.Fatalf("list %s: %s", path, body)
		}
	}
	resp, body = f.rawJSON(t, "DELETE", "/devices/d1/modules/m1", http.Header{"If-Match": {`"*"`}}, "")
	wantOK(t, resp, body, http.StatusNoContent)
	_, err = f.c.GetModule(ctx, "d1", "m1")
	wantCode(t, err, errcode.ModuleNotFound)
	wantCode(t, f.c.DeleteModule(ctx, "d1", "m1", ""), errcode.ModuleNotFound)
}

func TestTwins(t *testing.T) {
	f := newFullHub(t)
	ctx := context.Background()
	if _, err := f.c.CreateDevice(ctx, registry.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.CreateModule(ctx, registry.Module{DeviceID: "d1", ModuleID: "m1"}); err != nil {
		t.Fatal(err)
	}

	resp, body := f.rawJSON(t, "GET", "/twins/d1", nil, "")
	wantOK(t, resp, body, http.StatusOK)
	tw, err := f.c.GetTwin(ctx, "d1", "")
	if err != nil || tw.DeviceID != "d1" || tw.ETag == "" {
		t.Fatalf("get twin: %+v %v", tw, err)
	}
	if resp.Header.Get("ETag") != `"`+tw.ETag+`"` {
		t.Errorf("twin ETag header %q, etag %q", resp.Header.Get("ETag"), tw.ETag)
	}
	if v := tw.Properties.Desired["$version"]; v != float64(1) {
		t.Errorf("new twin desired $version %v", v)
	}

	// PATCH answers the whole new twin with a new etag.
	patched, err := f.c.PatchTwin(ctx, "d1", "", json.RawMessage(`{"tags":{"site":"a"},"properties":{"desired":{"fw":"1.0"}}}`), tw.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if patched.ETag == tw.ETag || patched.Tags["site"] != "a" || patched.Properties.Desired["fw"] != "1.0" || patched.Properties.Desired["$version"] != float64(2) {
		t.Fatalf("patched: %+v", patched)
	}
	_, err = f.c.PatchTwin(ctx, "d1", "", json.RawMessage(`{"tags":{"x":1}}`), "abc")
	wantCode(t, err, errcode.PreconditionFailed)
	_, err = f.c.PatchTwin(ctx, "d1", "", json.RawMessage(`{"tags":{"x":1}}`), tw.ETag) // stale now
	wantCode(t, err, errcode.PreconditionFailed)
	resp, body = f.rawJSON(t, "PATCH", "/twins/d1", http.Header{"If-Match": {`"*"`}}, `{"properties":{"desired":{"fw":null}}}`)
	wantOK(t, resp, body, http.StatusOK)
	if strings.Contains(string(body), `"fw"`) {
		t.Errorf("null did not delete: %s", body)
	}

	// Replace.
	repl, err := f.c.ReplaceTwin(ctx, "d1", "", json.RawMessage(`{"deviceId":"d1","tags":{"only":true},"properties":{"desired":{"b":2}}}`), "")
	if err != nil || repl.Tags["only"] != true || repl.Tags["site"] != nil || repl.Properties.Desired["b"] != float64(2) {
		t.Fatalf("replace: %+v %v", repl, err)
	}

	// Module twin.
	mt, err := f.c.PatchTwin(ctx, "d1", "m1", json.RawMessage(`{"properties":{"desired":{"m":1}}}`), "")
	if err != nil || mt.ModuleID != "m1" || mt.Properties.Desired["m"] != float64(1) {
		t.Fatalf("module twin: %+v %v", mt, err)
	}
	if got, err := f.c.GetTwin(ctx, "d1", "m1"); err != nil || got.Properties.Desired["m"] != float64(1) {
		t.Fatalf("get module twin: %+v %v", got, err)
	}

	// Bad input and missing twins.
	resp, body = f.rawJSON(t, "PATCH", "/twins/d1", nil, `{"deviceId":"d2","tags":{}}`)
	wantError(t, resp, body, http.StatusBadRequest, "ArgumentInvalid")
	resp, body = f.rawJSON(t, "PATCH", "/twins/d1/modules/m1", nil, `{"moduleId":"m2"}`)
	wantError(t, resp, body, http.StatusBadRequest, "ArgumentInvalid")
	resp, body = f.rawJSON(t, "PATCH", "/twins/d1", nil, `{"tags":`)
	wantError(t, resp, body, http.StatusBadRequest, "IotHubFormatError")
	_, err = f.c.GetTwin(ctx, "nope", "")
	wantCode(t, err, errcode.DeviceNotFound)

	// Twin reads are open to registry readers and services; writes to services.
	if _, err := f.client(t, "registryRead").GetTwin(ctx, "d1", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client(t, "service").PatchTwin(ctx, "d1", "", json.RawMessage(`{"tags":{"s":1}}`), ""); err != nil {
		t.Fatal(err)
	}
	_, err = f.client(t, "registryReadWrite").PatchTwin(ctx, "d1", "", json.RawMessage(`{"tags":{"s":1}}`), "")
	wantCode(t, err, errcode.IotHubUnauthorizedAccess)
}

func TestQueryPaging(t *testing.T) {
	f := newFullHub(t)
	ctx := context.Background()
	for i := range 5 {
		if _, err := f.c.CreateDevice(ctx, registry.Device{DeviceID: fmt.Sprintf("q%d", i)}); err != nil {
			t.Fatal(err)
		}
	}

	var ids []string
	cont, pages := "", 0
	for {
		h := http.Header{"X-Ms-Max-Item-Count": {"2"}}
		if cont != "" {
			h.Set("x-ms-continuation", cont)
		}
		resp, body := f.rawJSON(t, "POST", "/devices/query", h, `{"query":"SELECT * FROM devices"}`)
		wantOK(t, resp, body, http.StatusOK)
		pages++
		if it := resp.Header.Get("x-ms-item-type"); it != "Twin" {
			t.Errorf("x-ms-item-type %q", it)
		}
		var items []struct {
			DeviceID string `json:"deviceId"`
		}
		if err := json.Unmarshal(body, &items); err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			ids = append(ids, it.DeviceID)
		}
		vs, present := resp.Header[http.CanonicalHeaderKey("x-ms-continuation")]
		if !present {
			break
		}
		if len(vs) != 1 || vs[0] == "" {
			t.Fatalf("empty continuation header %q", vs)
		}
		cont = vs[0]
		if pages > 5 {
			t.Fatal("query does not end")
		}
	}
	if pages != 3 || len(ids) != 5 {
		t.Fatalf("pages %d, ids %v", pages, ids)
	}

	// The client pages the same way; the body key is matched in any case.
	all, err := f.c.QueryAll(ctx, "SELECT * FROM devices WHERE deviceId = 'q3'", 1, 0)
	if err != nil || len(all) != 1 || !strings.Contains(string(all[0]), `"q3"`) {
		t.Fatalf("QueryAll: %s %v", all, err)
	}
	resp, body := f.rawJSON(t, "POST", "/devices/query", nil, `{"Query":"SELECT deviceId FROM devices WHERE deviceId = 'q1'"}`)
	wantOK(t, resp, body, http.StatusOK)
	if resp.Header.Get("x-ms-item-type") != "Raw" || !strings.Contains(string(body), `"q1"`) {
		t.Errorf("projection: %q %s", resp.Header.Get("x-ms-item-type"), body)
	}
	if _, ok := resp.Header[http.CanonicalHeaderKey("x-ms-continuation")]; ok {
		t.Error("continuation header on a single page")
	}
	page, err := f.client(t, "registryRead").Query(ctx, "SELECT * FROM devices", 10, "")
	if err != nil || len(page.Items) != 5 || page.Continuation != "" || page.ItemType != "Twin" {
		t.Fatalf("Query as registryRead: %+v %v", page, err)
	}

	_, err = f.c.Query(ctx, "SELEKT nonsense", 0, "")
	wantCode(t, err, errcode.ArgumentInvalid)
	_, err = f.c.Query(ctx, "", 0, "")
	wantCode(t, err, errcode.ArgumentNull)
	_, err = f.c.Query(ctx, "SELECT * FROM devices", 0, "%%%")
	wantCode(t, err, errcode.ArgumentInvalid)
	resp, body = f.rawJSON(t, "POST", "/devices/query", http.Header{"X-Ms-Max-Item-Count": {"many"}}, `{"query":"SELECT * FROM devices"}`)
	wantError(t, resp, body, http.StatusBadRequest, "ArgumentInvalid")
}

func TestInvokeMethod(t *testing.T) {
	f := newFullHub(t)
	ctx := context.Background()
	if _, err := f.c.CreateDevice(ctx, registry.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.CreateModule(ctx, registry.Module{DeviceID: "d1", ModuleID: "m1"}); err != nil {
		t.Fatal(err)
	}
	f.tr.mu.Lock()
	f.tr.online["d1/"] = true
	f.tr.online["d1/m1"] = true
	f.tr.mu.Unlock()

	// Payloads pass through as exact JSON, for devices and modules.
	for _, p := range []string{`null`, `""`, `"foo"`, `{}`, `{"a":[1,2,{"b":null}]}`, `42`} {
		for _, mod := range []string{"", "m1"} {
			res, err := f.c.InvokeMethod(ctx, "d1", mod, methods.Request{MethodName: "echo", Payload: json.RawMessage(p)})
			if err != nil || res.Status != 200 || string(res.Payload) != p {
				t.Fatalf("echo %s on %q: %+v %v", p, mod, res, err)
			}
		}
	}
	// The Node SDK's body, raw.
	resp, body := f.rawJSON(t, "POST", "/twins/d1/methods", nil,
		`{"methodName":"fail","payload":{"x":1},"responseTimeoutInSeconds":30,"connectTimeoutInSeconds":0}`)
	wantOK(t, resp, body, http.StatusOK)
	if string(body) != `{"status":500,"payload":{"err":"x"}}` {
		t.Errorf("method answer %s", body)
	}
	// Without a payload field the device gets null.
	resp, body = f.rawJSON(t, "POST", "/twins/d1/modules/m1/methods", nil, `{"methodName":"echo"}`)
	wantOK(t, resp, body, http.StatusOK)
	if string(body) != `{"status":200,"payload":null}` {
		t.Errorf("method answer %s", body)
	}

	_, err := f.c.InvokeMethod(ctx, "nodev", "", methods.Request{MethodName: "echo"})
	wantCode(t, err, errcode.DeviceNotFound)
	_, err = f.c.InvokeMethod(ctx, "d1", "nomod", methods.Request{MethodName: "echo"})
	wantCode(t, err, errcode.ModuleNotFound)
	_, err = f.c.InvokeMethod(ctx, "d1", "", methods.Request{MethodName: ""})
	wantCode(t, err, errcode.ArgumentInvalid)
	resp, body = f.rawJSON(t, "POST", "/twins/d1/methods", nil, `{"methodName":"echo","payload":`)
	wantError(t, resp, body, http.StatusBadRequest, "IotHubFormatError")

	if _, err := f.c.CreateDevice(ctx, registry.Device{DeviceID: "off"}); err != nil {
		t.Fatal(err)
	}
	_, err = f.c.InvokeMethod(ctx, "off", "", methods.Request{MethodName: "echo"})
	wantCode(t, err, errcode.DeviceNotOnline)
}

func TestInvokeMethodTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the 5 s minimum response timeout")
	}
	f := newFullHub(t)
	ctx := context.Background()
	if _, err := f.c.CreateDevice(ctx, registry.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	f.tr.mu.Lock()
	f.tr.online["d1/"] = true
	f.tr.mu.Unlock()
	five := 5
	_, err := f.c.InvokeMethod(ctx, "d1", "", methods.Request{MethodName: "silent", ResponseTimeoutInSeconds: &five})
	wantCode(t, err, errcode.GatewayTimeout)
}

func TestCloudToDevice(t *testing.T) {
	f := newFullHub(t)
	ctx := context.Background()
	if _, err := f.c.CreateDevice(ctx, registry.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	err := f.c.SendC2D(ctx, "d1", message.Message{
		Body: []byte(`{"cmd":"reboot"}`),
		System: map[string]string{
			message.SysMessageID: "m-1", message.SysCorrelationID: "c-1", message.SysAck: "full",
			message.SysExpiry: exp.Format(time.RFC3339), message.SysContentType: "application/json",
			message.SysContentEncoding: "utf-8",
		},
		Properties: map[string]string{"Color": "red", "a b": "c&d"},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Raw, as curl would send it.
	h := authHeader(f.token(t, "service"))
	h.Set("iothub-app-kind", "raw")
	resp, body := f.raw(t, "POST", "/devices/d1/messages/deviceBound", "", h, "hello")
	wantOK(t, resp, body, http.StatusNoContent)

	entries, err := f.queue.Deliverable(ctx, "d1", nil)
	if err != nil || len(entries) != 2 {
		t.Fatalf("queue: %d %v", len(entries), err)
	}
	m := entries[0].Message
	if string(m.Body) != `{"cmd":"reboot"}` || m.System[message.SysMessageID] != "m-1" || m.System[message.SysCorrelationID] != "c-1" ||
		m.System[message.SysAck] != "full" || m.System[message.SysContentType] != "application/json" ||
		m.System[message.SysContentEncoding] != "utf-8" || m.Properties["Color"] != "red" || m.Properties["a b"] != "c&d" {
		t.Fatalf("queued message %+v", m)
	}
	if !entries[0].Expiry.Equal(exp) {
		t.Errorf("expiry %v, want %v", entries[0].Expiry, exp)
	}
	if m2 := entries[1].Message; string(m2.Body) != "hello" || m2.Properties["kind"] != "raw" {
		t.Errorf("raw message %+v", m2)
	}

	err = f.c.SendC2D(ctx, "nodev", message.Message{Body: []byte("x")})
	wantCode(t, err, errcode.DeviceNotFound)
	err = f.c.SendC2D(ctx, "d1", message.Message{Body: make([]byte, c2d.MaxMessageSize+1)})
	wantCode(t, err, errcode.MessageTooLarge)
	h.Set("iothub-expiry", "soon")
	resp, body = f.raw(t, "POST", "/devices/d1/messages/deviceBound", "", h, "x")
	wantError(t, resp, body, http.StatusBadRequest, "ArgumentInvalid")

	pr, err := f.c.PurgeC2D(ctx, "d1")
	if err != nil || pr != (PurgeResult{TotalMessagesPurged: 2, DeviceID: "d1"}) {
		t.Fatalf("purge: %+v %v", pr, err)
	}
	resp, body = f.rawJSON(t, "DELETE", "/devices/d1/commands", nil, "")
	wantOK(t, resp, body, http.StatusOK)
	if string(body) != `{"totalMessagesPurged":0,"deviceId":"d1"}` {
		t.Errorf("purge answer %s", body)
	}
	_, err = f.c.PurgeC2D(ctx, "nodev")
	wantCode(t, err, errcode.DeviceNotFound)

	// The queue limit surfaces as IoT Hub's error.
	for i := range c2d.MaxPending {
		if err := f.c.SendC2D(ctx, "d1", message.Message{Body: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	err = f.c.SendC2D(ctx, "d1", message.Message{Body: []byte("one too many")})
	wantCode(t, err, errcode.DeviceMaxQueueDepthExceeded)
}
