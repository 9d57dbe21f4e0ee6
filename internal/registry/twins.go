package registry

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/query"
	"github.com/moat-iot/moat/internal/twin"
)

// DefaultPageSize is the query page size when the caller gives none.
const DefaultPageSize = 100

// GetTwin returns the device twin (moduleID "") or module twin.
func (r *Registry) GetTwin(ctx context.Context, deviceID, moduleID string) (twin.Twin, error) {
	key := Key{DeviceID: deviceID, ModuleID: moduleID}
	rec, err := r.store.Get(ctx, key)
	if err != nil {
		return twin.Twin{}, r.mapErr(ctx, err, key)
	}
	doc, err := twin.Decode(rec.Twin)
	if err != nil {
		return twin.Twin{}, fmt.Errorf("twin %s: %w", key, err)
	}
	return renderTwin(rec, doc)
}

// GetTwinDocument returns the stored twin document of an identity, for the
// device side (twin GET over MQTT renders doc.DeviceView()).
func (r *Registry) GetTwinDocument(ctx context.Context, deviceID, moduleID string) (*twin.Document, error) {
	key := Key{DeviceID: deviceID, ModuleID: moduleID}
	rec, err := r.store.Get(ctx, key)
	if err != nil {
		return nil, r.mapErr(ctx, err, key)
	}
	doc, err := twin.Decode(rec.Twin)
	if err != nil {
		return nil, fmt.Errorf("twin %s: %w", key, err)
	}
	return doc, nil
}

// PatchTwin merges a service patch (PATCH /twins/{id}: tags and
// properties.desired) and returns the new twin.
func (r *Registry) PatchTwin(ctx context.Context, deviceID, moduleID string, patch []byte, ifMatch string) (twin.Twin, error) {
	c, err := twin.ParseServicePatch(patch)
	if err != nil {
		return twin.Twin{}, err
	}
	out, err := r.changeTwin(ctx, Key{DeviceID: deviceID, ModuleID: moduleID}, c, ifMatch)
	if err == nil {
		r.twinChanged(deviceID, moduleID, "updateTwin", out.Version, patch)
	}
	return out, err
}

// twinChangesWanted says whether to build twin change events.
func (r *Registry) twinChangesWanted() bool {
	return r.opts.OnTwinChange != nil && (r.opts.WantTwinChanges == nil || r.opts.WantTwinChanges())
}

// twinChanged reports a committed twin change; change is the JSON that was
// applied (a patch, or the replacement).
func (r *Registry) twinChanged(deviceID, moduleID, opType string, version int64, change []byte) {
	if !r.twinChangesWanted() {
		return
	}
	var body map[string]any
	if json.Unmarshal(change, &body) != nil || body == nil {
		body = map[string]any{}
	}
	for k := range body {
		if k != "tags" && k != "properties" {
			delete(body, k) // only what a twin change carries
		}
	}
	body["version"] = version
	r.opts.OnTwinChange(deviceID, moduleID, opType, body)
}

// ReplaceTwin replaces tags and desired properties (PUT /twins/{id}).
func (r *Registry) ReplaceTwin(ctx context.Context, deviceID, moduleID string, body []byte, ifMatch string) (twin.Twin, error) {
	c, err := twin.ParseReplacement(body)
	if err != nil {
		return twin.Twin{}, err
	}
	out, err := r.changeTwin(ctx, Key{DeviceID: deviceID, ModuleID: moduleID}, c, ifMatch)
	if err == nil {
		r.twinChanged(deviceID, moduleID, "replaceTwin", out.Version, body)
	}
	return out, err
}

func (r *Registry) changeTwin(ctx context.Context, key Key, c twin.Change, ifMatch string) (twin.Twin, error) {
	now := r.now()
	var out twin.Twin
	var devicePatch map[string]any
	var version int64
	err := r.store.Update(ctx, key, func(rec *Record) error {
		doc, err := twin.Decode(rec.Twin)
		if err != nil {
			return err
		}
		if !matchETag(ifMatch, doc.ETag) {
			return preconditionFailed()
		}
		if devicePatch, err = doc.ApplyChange(c, now); err != nil {
			return err
		}
		version = doc.Desired.Version
		if rec.Twin, err = doc.Encode(); err != nil {
			return err
		}
		out, err = renderTwin(rec, doc)
		return err
	})
	if err != nil {
		return twin.Twin{}, r.mapErr(ctx, err, key)
	}
	if devicePatch != nil && r.opts.OnDesiredChange != nil {
		r.opts.OnDesiredChange(key.DeviceID, key.ModuleID, version, devicePatch)
	}
	return out, nil
}

// UpdateReported merges a device's reported-properties patch and returns the new
// reported $version.
func (r *Registry) UpdateReported(ctx context.Context, deviceID, moduleID string, patch []byte) (int64, error) {
	p, err := twin.ParsePatch(patch)
	if err != nil {
		return 0, err
	}
	now := r.now()
	key := Key{DeviceID: deviceID, ModuleID: moduleID}
	var version, twinVersion int64
	err = r.store.Update(ctx, key, func(rec *Record) error {
		doc, err := twin.Decode(rec.Twin)
		if err != nil {
			return err
		}
		if version, err = doc.ApplyReported(p, now); err != nil {
			return err
		}
		twinVersion = doc.Version
		rec.Twin, err = doc.Encode()
		return err
	})
	if err != nil {
		return 0, r.mapErr(ctx, err, key)
	}
	if r.twinChangesWanted() {
		var reported map[string]any
		_ = json.Unmarshal(patch, &reported)
		if reported == nil {
			reported = map[string]any{}
		}
		reported["$version"] = version
		r.opts.OnTwinChange(deviceID, moduleID, "updateTwin", map[string]any{"version": twinVersion, "properties": map[string]any{"reported": reported}})
	}
	return version, nil
}

// renderTwin joins a twin document with its identity's fields.
func renderTwin(rec *Record, doc *twin.Document) (twin.Twin, error) {
	tags, props := doc.Render()
	t := twin.Twin{
		DeviceID:         rec.Key.DeviceID,
		ModuleID:         rec.Key.ModuleID,
		ETag:             doc.ETag,
		Version:          doc.Version,
		ConnectionState:  connState(rec.Conn),
		LastActivityTime: rec.Conn.LastActivity.UTC(),
		Tags:             tags,
		Properties:       props,
	}
	var auth Authentication
	if rec.Key.ModuleID == "" {
		d, err := decodeDevice(rec)
		if err != nil {
			return twin.Twin{}, err
		}
		t.DeviceEtag = d.ETag
		t.Status = d.Status
		t.StatusReason = d.StatusReason
		t.StatusUpdateTime = d.StatusUpdatedTime.UTC()
		t.CloudToDeviceMessageCount = d.CloudToDeviceMessageCount
		t.Capabilities = map[string]any{"iotEdge": d.Capabilities.IotEdge}
		t.DeviceScope = d.DeviceScope
		t.ParentScopes = d.ParentScopes
		auth = d.Authentication
	} else {
		m, err := decodeModule(rec)
		if err != nil {
			return twin.Twin{}, err
		}
		t.DeviceEtag = m.ETag
		t.CloudToDeviceMessageCount = m.CloudToDeviceMessageCount
		auth = m.Authentication
	}
	t.AuthenticationType = auth.Type
	t.X509Thumbprint = map[string]any{
		"primaryThumbprint":   nullIfEmpty(auth.X509Thumbprint.PrimaryThumbprint),
		"secondaryThumbprint": nullIfEmpty(auth.X509Thumbprint.SecondaryThumbprint),
	}
	return t, nil
}

func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// Query runs an IoT Hub query (POST /devices/query). pageSize <= 0 means 100;
// continuation is the opaque token from the previous page ("" for the first).
// next is "" on the last page.
//
// Every page loads and filters all twins of the collection: a full scan, fine
// for the embedded store's sizes (≈100 ms per 100k twins) but the first thing
// to push down into the store (JSONB + GIN in PostgreSQL) when it matters.
func (r *Registry) Query(ctx context.Context, q string, pageSize int, continuation string) (items []any, next string, err error) {
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	offset, err := decodeContinuation(continuation)
	if err != nil {
		return nil, "", err
	}
	sel, err := query.ParseSelect(q)
	if err != nil {
		return nil, "", asArgumentInvalid(err, "invalid query")
	}
	var f ScanFilter
	switch from := strings.ToLower(sel.From()); from {
	case "devices":
	case "devices.modules":
		f.Modules = true
	default:
		return nil, "", errcode.New(errcode.ArgumentInvalid, "cannot query %q: only devices and devices.modules", from)
	}
	var docs []map[string]any
	err = r.store.Scan(ctx, f, func(rec *Record) error {
		doc, err := twin.Decode(rec.Twin)
		if err != nil {
			return err
		}
		t, err := renderTwin(rec, doc)
		if err != nil {
			return err
		}
		// The query engine works on plain JSON values (float64 numbers), so
		// the twin goes through JSON once more.
		b, err := json.Marshal(t)
		if err != nil {
			return fmt.Errorf("encode twin %s: %w", rec.Key, err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("decode twin %s: %w", rec.Key, err)
		}
		docs = append(docs, m)
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("query scan: %w", err)
	}
	rows, err := sel.Execute(docs)
	if err != nil {
		return nil, "", asArgumentInvalid(err, "query failed")
	}
	if offset > len(rows) {
		offset = len(rows)
	}
	end := min(offset+pageSize, len(rows))
	items = rows[offset:end]
	if items == nil {
		items = []any{}
	}
	if end < len(rows) {
		next = base64.RawURLEncoding.EncodeToString([]byte(strconv.Itoa(end)))
	}
	return items, next, nil
}

func decodeContinuation(c string) (int, error) {
	if c == "" {
		return 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err == nil {
		if n, err := strconv.Atoi(string(b)); err == nil && n >= 0 {
			return n, nil
		}
	}
	return 0, errcode.New(errcode.ArgumentInvalid, "invalid continuation token")
}

// asArgumentInvalid keeps an *errcode.Error and makes anything else a 400:
// query errors are the caller's.
func asArgumentInvalid(err error, msg string) error {
	var ce *errcode.Error
	if errors.As(err, &ce) {
		return err
	}
	return errcode.New(errcode.ArgumentInvalid, "%s: %s", msg, err.Error())
}
