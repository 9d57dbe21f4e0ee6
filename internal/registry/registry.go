// Package registry keeps the hub's identities — devices and modules — and their
// twins. Registry holds IoT Hub's rules (ids, keys, etags, generation ids, status,
// twin versions and limits, queries); Store is the narrow persistence seam that the
// embedded SQLite store implements today and a PostgreSQL store will tomorrow.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/moat-iot/moat/internal/errcode"

	"github.com/moat-iot/moat/internal/twin"
)

// Options wires a Registry to the rest of the hub.
type Options struct {
	// HubName is the hub's host name, used for $iothubname and deviceScope.
	HubName string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// OnDesiredChange is called after a committed change to a twin's desired
	// properties with the patch a device must receive (it includes "$version";
	// removed keys are null).
	OnDesiredChange func(deviceID, moduleID string, version int64, patch map[string]any)
	// OnIdentityChange is called after a committed change to an identity's status,
	// credentials or existence, so live connections can be re-checked.
	OnIdentityChange func(deviceID, moduleID string)
	// OnLifecycle is called after an identity is created or deleted, for IoT
	// Hub's lifecycle events (a deleted device reports each of its modules too).
	OnLifecycle func(deviceID, moduleID string, created bool)
	// OnTwinChange is called after a committed twin change (service patch or
	// replacement, device reported patch) with IoT Hub's twin change event
	// body: the twin's new version and what changed.
	OnTwinChange func(deviceID, moduleID, opType string, body map[string]any)
	// WantTwinChanges says whether OnTwinChange has a taker now (nil: always).
	// Building an event re-reads the change; without a route for twin change
	// events that was a tenth of a service twin patch's cost.
	WantTwinChanges func() bool
}

// Registry is the identity registry. All methods are safe for concurrent use.
// Errors are *errcode.Error where a caller should see an IoT Hub error.
type Registry struct {
	store Store
	opts  Options
}

// New returns a Registry over store.
func New(store Store, opts Options) *Registry {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Registry{store: store, opts: opts}
}

func (r *Registry) now() time.Time { return r.opts.Now().UTC() }

// DefaultListMax is how many devices ListDevices returns when max <= 0.
const DefaultListMax = 1000

// CreateDevice creates d (PUT /devices/{id} without If-Match). Empty SAS keys are
// generated. DeviceAlreadyExists if the id is taken.
func (r *Registry) CreateDevice(ctx context.Context, d Device) (Device, error) {
	if err := checkDevice(d); err != nil {
		return Device{}, err
	}
	now := r.now()
	status, _ := normStatus(d.Status, StatusEnabled)
	auth, err := normalizeAuth(d.Authentication, nil)
	if err != nil {
		return Device{}, err
	}
	nd := Device{
		DeviceID:        d.DeviceID,
		GenerationID:    newGenerationID(),
		ETag:            newETag(),
		ConnectionState: Disconnected,
		Status:          status,
		StatusReason:    d.StatusReason,
		Authentication:  auth,
		Capabilities:    d.Capabilities,
	}
	if err := r.assignScopes(ctx, &nd, d, nil, now); err != nil {
		return Device{}, err
	}
	rec := &Record{Key: Key{DeviceID: d.DeviceID}, Status: status}
	if rec.Identity, err = encodeIdentity(identityDoc(nd)); err != nil {
		return Device{}, err
	}
	if rec.Twin, err = twin.New(now).Encode(); err != nil {
		return Device{}, err
	}
	if err := r.store.Create(ctx, rec); err != nil {
		if errors.Is(err, ErrExists) {
			return Device{}, errcode.New(errcode.DeviceAlreadyExists, "a device with id %q is already registered", d.DeviceID)
		}
		return Device{}, fmt.Errorf("create device: %w", err)
	}
	if r.opts.OnLifecycle != nil {
		r.opts.OnLifecycle(nd.DeviceID, "", true)
	}
	return withConn(nd, Connection{}), nil
}

// assignScopes sets nd's deviceScope and parentScopes from the request req and
// the current device cur (nil on create). An edge device owns its scope; any
// other device may only name an existing edge device's scope (its parent).
func (r *Registry) assignScopes(ctx context.Context, nd *Device, req Device, cur *Device, now time.Time) error {
	if len(req.ParentScopes) > 1 {
		return errcode.New(errcode.ArgumentInvalid, "a device may have only one parent scope")
	}
	for _, s := range req.ParentScopes {
		if cur != nil && slices.Contains(cur.ParentScopes, s) {
			continue // already accepted; the parent may be gone since
		}
		if err := r.checkParentScope(ctx, s, req.DeviceID); err != nil {
			return err
		}
	}
	if nd.Capabilities.IotEdge {
		switch {
		case cur != nil && cur.Capabilities.IotEdge && cur.DeviceScope != "":
			nd.DeviceScope = cur.DeviceScope
		default:
			nd.DeviceScope = newEdgeScope(nd.DeviceID, now)
		}
		switch {
		case len(req.ParentScopes) > 0:
			nd.ParentScopes = req.ParentScopes
		case cur != nil && len(cur.ParentScopes) > 0:
			nd.ParentScopes = cur.ParentScopes
		case cur != nil && !cur.Capabilities.IotEdge && cur.DeviceScope != "":
			nd.ParentScopes = []string{cur.DeviceScope}
		default:
			nd.ParentScopes = nil
		}
		return nil
	}
	scope := req.DeviceScope
	if scope == "" && len(req.ParentScopes) > 0 {
		scope = req.ParentScopes[0]
	}
	if scope != "" {
		if cur == nil || scope != cur.DeviceScope || cur.Capabilities.IotEdge {
			if err := r.checkParentScope(ctx, scope, req.DeviceID); err != nil {
				return err
			}
		}
		nd.DeviceScope = scope
		nd.ParentScopes = []string{scope}
		return nil
	}
	// Nothing asked: keep the current parent, if any. A device that stops
	// being an edge device gives up its own scope but keeps its parent.
	switch {
	case cur == nil:
	case !cur.Capabilities.IotEdge:
		nd.DeviceScope, nd.ParentScopes = cur.DeviceScope, cur.ParentScopes
	case len(cur.ParentScopes) > 0:
		nd.DeviceScope, nd.ParentScopes = cur.ParentScopes[0], cur.ParentScopes[:1]
	}
	return nil
}

// checkParentScope requires scope to be the scope of an existing edge device
// other than selfID.
func (r *Registry) checkParentScope(ctx context.Context, scope, selfID string) error {
	bad := errcode.New(errcode.ArgumentInvalid, "scope %q is not the scope of an existing IoT Edge device", scope)
	id, ok := parseEdgeScope(scope)
	if !ok || id == selfID {
		return bad
	}
	rec, err := r.store.Get(ctx, Key{DeviceID: id})
	if errors.Is(err, ErrNotFound) {
		return bad
	}
	if err != nil {
		return fmt.Errorf("look up parent scope: %w", err)
	}
	p, err := decodeDevice(rec)
	if err != nil {
		return err
	}
	if !p.Capabilities.IotEdge || p.DeviceScope != scope {
		return bad
	}
	return nil
}

// UpdateDevice replaces d's mutable fields (PUT /devices/{id} with If-Match);
// empty keys keep the current ones. ifMatch is the raw If-Match header value.
func (r *Registry) UpdateDevice(ctx context.Context, d Device, ifMatch string) (Device, error) {
	return r.updateDevice(ctx, d, ifMatch, false)
}

// updateDevice is UpdateDevice; keepCaps keeps the current capabilities (a
// bulk entry without "capabilities").
func (r *Registry) updateDevice(ctx context.Context, d Device, ifMatch string, keepCaps bool) (Device, error) {
	if err := checkDevice(d); err != nil {
		return Device{}, err
	}
	now := r.now()
	// The current device is read first to check scopes outside the
	// transaction (they name other devices); the transaction re-checks that
	// the edge capability did not change in between.
	before, err := r.GetDevice(ctx, d.DeviceID)
	if err != nil {
		return Device{}, err
	}
	planned := before
	if !keepCaps {
		planned.Capabilities = d.Capabilities
	}
	if err := r.assignScopes(ctx, &planned, d, &before, now); err != nil {
		return Device{}, err
	}
	var out Device
	var notify bool
	err = r.store.Update(ctx, Key{DeviceID: d.DeviceID}, func(rec *Record) error {
		cur, err := decodeDevice(rec)
		if err != nil {
			return err
		}
		if !matchETag(ifMatch, cur.ETag) {
			return preconditionFailed()
		}
		if cur.Capabilities.IotEdge != before.Capabilities.IotEdge || cur.DeviceScope != before.DeviceScope {
			return errcode.New(errcode.PreconditionFailed, "the device changed during the update")
		}
		nd := cur
		if nd.Status, err = normStatus(d.Status, cur.Status); err != nil {
			return err
		}
		if nd.Status != cur.Status {
			nd.StatusUpdatedTime = now
		}
		nd.StatusReason = d.StatusReason
		if nd.Authentication, err = normalizeAuth(d.Authentication, &cur.Authentication); err != nil {
			return err
		}
		nd.Capabilities = planned.Capabilities
		nd.DeviceScope, nd.ParentScopes = planned.DeviceScope, planned.ParentScopes
		nd.ETag = newETag()
		notify = nd.Status != cur.Status || !sameAuth(nd.Authentication, cur.Authentication)
		if rec.Identity, err = encodeIdentity(identityDoc(nd)); err != nil {
			return err
		}
		rec.Status = nd.Status
		out = withConn(nd, rec.Conn)
		return nil
	})
	if err != nil {
		return Device{}, r.mapErr(ctx, err, Key{DeviceID: d.DeviceID})
	}
	if notify && r.opts.OnIdentityChange != nil {
		r.opts.OnIdentityChange(d.DeviceID, "")
	}
	return out, nil
}

func sameAuth(a, b Authentication) bool { return a == b }

// GetDevice returns a device or DeviceNotFound.
func (r *Registry) GetDevice(ctx context.Context, id string) (Device, error) {
	key := Key{DeviceID: id}
	rec, err := r.store.Get(ctx, key)
	if err != nil {
		return Device{}, r.mapErr(ctx, err, key)
	}
	d, err := decodeDevice(rec)
	if err != nil {
		return Device{}, err
	}
	return withConn(d, rec.Conn), nil
}

// DeleteDevice deletes a device, its modules and twins.
func (r *Registry) DeleteDevice(ctx context.Context, id, ifMatch string) error {
	return r.deleteIdentity(ctx, Key{DeviceID: id}, ifMatch)
}

func (r *Registry) deleteIdentity(ctx context.Context, key Key, ifMatch string) error {
	keys, err := r.store.Delete(ctx, key, func(rec *Record) error {
		var etag struct {
			ETag string `json:"etag"`
		}
		if err := json.Unmarshal(rec.Identity, &etag); err != nil {
			return fmt.Errorf("decode identity %s: %w", key, err)
		}
		if !matchETag(ifMatch, etag.ETag) {
			return preconditionFailed()
		}
		return nil
	})
	if err != nil {
		return r.mapErr(ctx, err, key)
	}
	for _, k := range keys {
		if r.opts.OnIdentityChange != nil {
			r.opts.OnIdentityChange(k.DeviceID, k.ModuleID)
		}
		if r.opts.OnLifecycle != nil {
			r.opts.OnLifecycle(k.DeviceID, k.ModuleID, false)
		}
	}
	return nil
}

// ListDevices returns up to max devices (max <= 0: a default of 1000), sorted
// by id.
func (r *Registry) ListDevices(ctx context.Context, max int) ([]Device, error) {
	if max <= 0 {
		max = DefaultListMax
	}
	out := []Device{}
	err := r.store.Scan(ctx, ScanFilter{Limit: max}, func(rec *Record) error {
		d, err := decodeDevice(rec)
		if err != nil {
			return err
		}
		out = append(out, withConn(d, rec.Conn))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// Statistics counts devices.
func (r *Registry) Statistics(ctx context.Context) (Statistics, error) {
	counts, err := r.store.CountDevices(ctx)
	if err != nil {
		return Statistics{}, fmt.Errorf("count devices: %w", err)
	}
	var s Statistics
	for status, n := range counts {
		s.TotalDeviceCount += n
		switch status {
		case StatusEnabled:
			s.EnabledDeviceCount += n
		case StatusDisabled:
			s.DisabledDeviceCount += n
		}
	}
	return s, nil
}

// CreateModule, UpdateModule, GetModule, DeleteModule and ListModules mirror the
// device calls for modules of deviceID.
func (r *Registry) CreateModule(ctx context.Context, m Module) (Module, error) {
	if err := ValidateID("device", m.DeviceID); err != nil {
		return Module{}, err
	}
	if err := ValidateID("module", m.ModuleID); err != nil {
		return Module{}, err
	}
	auth, err := normalizeAuth(m.Authentication, nil)
	if err != nil {
		return Module{}, err
	}
	now := r.now()
	nm := Module{
		ModuleID:        m.ModuleID,
		DeviceID:        m.DeviceID,
		GenerationID:    newGenerationID(),
		ETag:            newETag(),
		ManagedBy:       m.ManagedBy,
		ConnectionState: Disconnected,
		Authentication:  auth,
	}
	key := Key{DeviceID: m.DeviceID, ModuleID: m.ModuleID}
	rec := &Record{Key: key}
	if rec.Identity, err = encodeIdentity(moduleDoc(nm)); err != nil {
		return Module{}, err
	}
	if rec.Twin, err = twin.New(now).Encode(); err != nil {
		return Module{}, err
	}
	if err := r.store.Create(ctx, rec); err != nil {
		switch {
		case errors.Is(err, ErrExists):
			return Module{}, errcode.New(errcode.ModuleAlreadyExistsOnDevice, "a module with id %q already exists on device %q", m.ModuleID, m.DeviceID)
		case errors.Is(err, ErrNotFound):
			return Module{}, errcode.New(errcode.DeviceNotFound, "device %q is not registered", m.DeviceID)
		}
		return Module{}, fmt.Errorf("create module: %w", err)
	}
	if r.opts.OnLifecycle != nil {
		r.opts.OnLifecycle(nm.DeviceID, nm.ModuleID, true)
	}
	return moduleWithConn(nm, Connection{}), nil
}

// UpdateModule replaces a module's mutable fields.
func (r *Registry) UpdateModule(ctx context.Context, m Module, ifMatch string) (Module, error) {
	if err := ValidateID("device", m.DeviceID); err != nil {
		return Module{}, err
	}
	if err := ValidateID("module", m.ModuleID); err != nil {
		return Module{}, err
	}
	if err := checkAuthShape(m.Authentication); err != nil {
		return Module{}, err
	}
	key := Key{DeviceID: m.DeviceID, ModuleID: m.ModuleID}
	var out Module
	var notify bool
	err := r.store.Update(ctx, key, func(rec *Record) error {
		cur, err := decodeModule(rec)
		if err != nil {
			return err
		}
		if !matchETag(ifMatch, cur.ETag) {
			return preconditionFailed()
		}
		nm := cur
		if nm.Authentication, err = normalizeAuth(m.Authentication, &cur.Authentication); err != nil {
			return err
		}
		if m.ManagedBy != "" {
			nm.ManagedBy = m.ManagedBy
		}
		nm.ETag = newETag()
		notify = !sameAuth(nm.Authentication, cur.Authentication)
		if rec.Identity, err = encodeIdentity(moduleDoc(nm)); err != nil {
			return err
		}
		out = moduleWithConn(nm, rec.Conn)
		return nil
	})
	if err != nil {
		return Module{}, r.mapErr(ctx, err, key)
	}
	if notify && r.opts.OnIdentityChange != nil {
		r.opts.OnIdentityChange(m.DeviceID, m.ModuleID)
	}
	return out, nil
}

// GetModule returns a module or ModuleNotFound (DeviceNotFound if the device is missing).
func (r *Registry) GetModule(ctx context.Context, deviceID, moduleID string) (Module, error) {
	key := Key{DeviceID: deviceID, ModuleID: moduleID}
	rec, err := r.store.Get(ctx, key)
	if err != nil {
		return Module{}, r.mapErr(ctx, err, key)
	}
	m, err := decodeModule(rec)
	if err != nil {
		return Module{}, err
	}
	return moduleWithConn(m, rec.Conn), nil
}

// DeleteModule deletes a module and its twin.
func (r *Registry) DeleteModule(ctx context.Context, deviceID, moduleID, ifMatch string) error {
	if moduleID == "" {
		return errcode.New(errcode.ArgumentInvalid, "module id is empty")
	}
	return r.deleteIdentity(ctx, Key{DeviceID: deviceID, ModuleID: moduleID}, ifMatch)
}

// ListModules lists a device's modules.
func (r *Registry) ListModules(ctx context.Context, deviceID string) ([]Module, error) {
	if _, err := r.store.Get(ctx, Key{DeviceID: deviceID}); err != nil {
		return nil, r.mapErr(ctx, err, Key{DeviceID: deviceID})
	}
	out := []Module{}
	err := r.store.Scan(ctx, ScanFilter{Modules: true, DeviceID: deviceID}, func(rec *Record) error {
		m, err := decodeModule(rec)
		if err != nil {
			return err
		}
		out = append(out, moduleWithConn(m, rec.Conn))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list modules of %q: %w", deviceID, err)
	}
	return out, nil
}

// ResetConnections marks every identity disconnected; the hub calls it at
// start, since no connection outlives the process that held it.
func (r *Registry) ResetConnections(ctx context.Context) error {
	if err := r.store.DisconnectAll(ctx, r.now()); err != nil {
		return fmt.Errorf("reset connection states: %w", err)
	}
	return nil
}

// SetConnectionState records a connect or disconnect of an identity. It
// changes neither etag.
func (r *Registry) SetConnectionState(ctx context.Context, deviceID, moduleID string, connected bool) error {
	now := r.now()
	key := Key{DeviceID: deviceID, ModuleID: moduleID}
	err := r.store.SetConnection(ctx, key, Connection{Connected: connected, UpdatedAt: now, LastActivity: now})
	if err != nil {
		return r.mapErr(ctx, err, key)
	}
	return nil
}

// mapErr turns a store's ErrNotFound into DeviceNotFound or ModuleNotFound
// (looking up the device for a module), passes *errcode.Error through, and
// wraps anything else.
func (r *Registry) mapErr(ctx context.Context, err error, key Key) error {
	var ce *errcode.Error
	if errors.As(err, &ce) {
		return ce
	}
	if !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("registry %s: %w", key, err)
	}
	if key.ModuleID == "" {
		return errcode.New(errcode.DeviceNotFound, "device %q is not registered", key.DeviceID)
	}
	if _, derr := r.store.Get(ctx, Key{DeviceID: key.DeviceID}); errors.Is(derr, ErrNotFound) {
		return errcode.New(errcode.DeviceNotFound, "device %q is not registered", key.DeviceID)
	}
	return errcode.New(errcode.ModuleNotFound, "module %q is not registered on device %q", key.ModuleID, key.DeviceID)
}

// String formats a key for messages.
func (k Key) String() string {
	if k.ModuleID == "" {
		return k.DeviceID
	}
	return k.DeviceID + "/" + k.ModuleID
}

// The identity documents keep no connection state: that lives in
// Record.Conn, so connects never rewrite them.
func identityDoc(d Device) Device {
	d.ConnectionState = ""
	d.ConnectionStateUpdatedTime = time.Time{}
	d.LastActivityTime = time.Time{}
	return d
}

func moduleDoc(m Module) Module {
	m.ConnectionState = ""
	m.ConnectionStateUpdatedTime = time.Time{}
	m.LastActivityTime = time.Time{}
	return m
}

func encodeIdentity(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode identity: %w", err)
	}
	return b, nil
}

func decodeDevice(rec *Record) (Device, error) {
	var d Device
	if err := json.Unmarshal(rec.Identity, &d); err != nil {
		return Device{}, fmt.Errorf("decode device %s: %w", rec.Key, err)
	}
	return d, nil
}

func decodeModule(rec *Record) (Module, error) {
	var m Module
	if err := json.Unmarshal(rec.Identity, &m); err != nil {
		return Module{}, fmt.Errorf("decode module %s: %w", rec.Key, err)
	}
	return m, nil
}

func connState(c Connection) string {
	if c.Connected {
		return Connected
	}
	return Disconnected
}

func withConn(d Device, c Connection) Device {
	d.ConnectionState = connState(c)
	d.ConnectionStateUpdatedTime = c.UpdatedAt.UTC()
	d.LastActivityTime = c.LastActivity.UTC()
	return d
}

func moduleWithConn(m Module, c Connection) Module {
	m.ConnectionState = connState(c)
	m.ConnectionStateUpdatedTime = c.UpdatedAt.UTC()
	m.LastActivityTime = c.LastActivity.UTC()
	return m
}
