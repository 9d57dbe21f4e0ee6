package twin

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"time"
	"unicode/utf8"

	"github.com/moat-iot/moat/internal/errcode"
)

// IoT Hub's twin limits (iot-hub-devguide-device-twins.md).
const (
	MaxTagsSize       = 8 * 1024  // tags
	MaxPropertiesSize = 32 * 1024 // desired, and reported, each
	MaxDepth          = 10        // nested objects below tags, desired or reported
	MaxKeyLength      = 1024      // bytes of one key
	MaxStringLength   = 4096      // bytes of one string value
)

// ErrTooLarge is the cause of errors for changes that would take tags, desired
// or reported over its size limit. The REST API answers these with 400
// ArgumentInvalid as IoT Hub does; the MQTT twin channel answers 413, so it
// should test for this cause with errors.Is (or IsTooLarge).
var ErrTooLarge = errors.New("twin size limit exceeded")

// IsTooLarge reports whether err is a twin size violation.
func IsTooLarge(err error) bool { return errors.Is(err, ErrTooLarge) }

// TimeLayout is how $metadata timestamps are written: UTC with seven decimals,
// as IoT Hub writes them.
const TimeLayout = "2006-01-02T15:04:05.0000000Z"

// FormatTime formats t for $metadata.
func FormatTime(t time.Time) string { return t.UTC().Format(TimeLayout) }

// Section is the desired or the reported part of a twin as stored: the
// properties, their version, and a $metadata tree that mirrors the properties
// (every node holds "$lastUpdated", desired nodes also "$lastUpdatedVersion").
type Section struct {
	Version            int64          `json:"version"`
	Props              map[string]any `json:"props"`
	Meta               map[string]any `json:"meta"`
	LastUpdated        string         `json:"lastUpdated"`
	LastUpdatedVersion int64          `json:"lastUpdatedVersion,omitempty"`
}

// Document is a twin as the registry stores it. Identity fields (status,
// connection state, …) are not part of it: the registry adds them when it
// renders a Twin.
type Document struct {
	ETag     string         `json:"etag"`
	Version  int64          `json:"version"`
	Tags     map[string]any `json:"tags"`
	Desired  Section        `json:"desired"`
	Reported Section        `json:"reported"`
}

// New returns the twin of a new identity: no tags, desired and reported at
// $version 1.
func New(now time.Time) *Document {
	ts := FormatTime(now)
	return &Document{
		ETag:     newETag(),
		Version:  1,
		Tags:     map[string]any{},
		Desired:  Section{Version: 1, Props: map[string]any{}, Meta: map[string]any{}, LastUpdated: ts, LastUpdatedVersion: 1},
		Reported: Section{Version: 1, Props: map[string]any{}, Meta: map[string]any{}, LastUpdated: ts},
	}
}

// Decode reads a Document written by Encode. Numbers stay json.Number so that
// they come back exactly as they were sent.
func Decode(data []byte) (*Document, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var d Document
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("decode twin document: %w", err)
	}
	if d.Tags == nil {
		d.Tags = map[string]any{}
	}
	for _, s := range []*Section{&d.Desired, &d.Reported} {
		if s.Props == nil {
			s.Props = map[string]any{}
		}
		if s.Meta == nil {
			s.Meta = map[string]any{}
		}
	}
	return &d, nil
}

// Encode writes d for storage.
func (d *Document) Encode() ([]byte, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("encode twin document: %w", err)
	}
	return b, nil
}

// Render returns the tags and the properties in IoT Hub's REST shape. The
// result shares nested values with d.
func (d *Document) Render() (map[string]any, Properties) {
	tags := make(map[string]any, len(d.Tags))
	for k, v := range d.Tags {
		tags[k] = v
	}
	return tags, Properties{Desired: d.Desired.render(true), Reported: d.Reported.render(false)}
}

// DeviceView returns the body of a device's twin GET over MQTT:
// {"desired":{…},"reported":{…}} with $version and $metadata.
func (d *Document) DeviceView() map[string]any {
	return map[string]any{"desired": d.Desired.render(true), "reported": d.Reported.render(false)}
}

func (s *Section) render(desired bool) map[string]any {
	out := make(map[string]any, len(s.Props)+2)
	for k, v := range s.Props {
		out[k] = v
	}
	meta := make(map[string]any, len(s.Meta)+2)
	for k, v := range s.Meta {
		meta[k] = v
	}
	meta["$lastUpdated"] = s.LastUpdated
	if desired {
		meta["$lastUpdatedVersion"] = s.LastUpdatedVersion
	}
	out["$metadata"] = meta
	out["$version"] = s.Version
	return out
}

// Change is a service-side change to a twin, from ParseServicePatch (merge) or
// ParseReplacement (replace).
type Change struct {
	// Replace makes Tags and Desired the whole new sections instead of patches.
	Replace bool
	// TagsSet says the change touches tags; with a nil Tags it removes them all.
	TagsSet bool
	Tags    map[string]any
	// DesiredSet says the change touches desired properties; with a nil
	// Desired it removes them all.
	DesiredSet bool
	Desired    map[string]any
}

// ParseServicePatch parses the body of PATCH /twins/{id}: "tags" and
// "properties.desired" are merged; null removes a key, and "desired": null or
// "tags": null removes every key. Reported properties are read-only for the
// service. Other top-level fields (deviceId, etag, …) are ignored.
func ParseServicePatch(body []byte) (Change, error) {
	top, err := decodeObject(body)
	if err != nil {
		return Change{}, err
	}
	c := Change{}
	if v, ok := top["tags"]; ok {
		if c.Tags, err = sectionPatch("tags", v); err != nil {
			return Change{}, err
		}
		c.TagsSet = true
	}
	props, err := propertiesOf(top)
	if err != nil {
		return Change{}, err
	}
	if _, ok := props["reported"]; ok {
		return Change{}, errcode.New(errcode.ArgumentInvalid, "reported properties are read-only for the service")
	}
	if v, ok := props["desired"]; ok {
		if c.Desired, err = sectionPatch("properties.desired", v); err != nil {
			return Change{}, err
		}
		c.DesiredSet = true
	}
	return c, nil
}

// ParseReplacement parses the body of PUT /twins/{id}: tags and desired
// properties replace the current ones (absent means empty). Reported
// properties, and the "$version" and "$metadata" of desired, are ignored so that
// a twin read with GET can be sent back.
func ParseReplacement(body []byte) (Change, error) {
	top, err := decodeObject(body)
	if err != nil {
		return Change{}, err
	}
	c := Change{Replace: true, TagsSet: true, DesiredSet: true}
	if c.Tags, err = sectionPatch("tags", top["tags"]); err != nil {
		return Change{}, err
	}
	props, err := propertiesOf(top)
	if err != nil {
		return Change{}, err
	}
	if d, ok := props["desired"].(map[string]any); ok {
		delete(d, "$metadata")
	}
	if c.Desired, err = sectionPatch("properties.desired", props["desired"]); err != nil {
		return Change{}, err
	}
	c.Tags = stripNulls(c.Tags)
	c.Desired = stripNulls(c.Desired)
	return c, nil
}

func propertiesOf(top map[string]any) (map[string]any, error) {
	switch p := top["properties"].(type) {
	case nil:
		return map[string]any{}, nil
	case map[string]any:
		return p, nil
	default:
		return nil, errcode.New(errcode.ArgumentInvalid, "properties must be an object")
	}
}

// sectionPatch checks one section's value from a request body. null gives a
// nil map.
func sectionPatch(name string, v any) (map[string]any, error) {
	switch m := v.(type) {
	case nil:
		return nil, nil
	case map[string]any:
		delete(m, "$version")
		if err := validateObject(name, m, 0); err != nil {
			return nil, err
		}
		return m, nil
	default:
		return nil, errcode.New(errcode.ArgumentInvalid, "%s must be an object", name)
	}
}

// ParsePatch parses a desired or reported properties patch: a JSON object whose
// keys follow IoT Hub's rules, with null values removing keys. A top-level
// "$version" is dropped.
func ParsePatch(data []byte) (map[string]any, error) {
	m, err := decodeObject(data)
	if err != nil {
		return nil, err
	}
	delete(m, "$version")
	if err := validateObject("patch", m, 0); err != nil {
		return nil, err
	}
	return m, nil
}

func decodeObject(data []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, errcode.Wrap(errcode.IotHubFormatError, err, "body is not valid JSON")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errcode.New(errcode.IotHubFormatError, "body has data after the JSON value")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errcode.New(errcode.IotHubFormatError, "body must be a JSON object")
	}
	return m, nil
}

// validateObject applies IoT Hub's key and value rules to m, an object at
// depth below a section's root.
func validateObject(path string, m map[string]any, depth int) error {
	if depth > MaxDepth {
		return errcode.New(errcode.ArgumentInvalid, "%s: nesting deeper than %d levels", path, MaxDepth)
	}
	for k, v := range m {
		if err := validateKey(k); err != nil {
			return errcode.New(errcode.ArgumentInvalid, "%s: %s", path, err.Error())
		}
		if err := validateValue(path+"."+k, v, depth); err != nil {
			return err
		}
	}
	return nil
}

func validateValue(path string, v any, depth int) error {
	switch x := v.(type) {
	case map[string]any:
		return validateObject(path, x, depth+1)
	case []any:
		for _, e := range x {
			if err := validateValue(path+"[]", e, depth); err != nil {
				return err
			}
		}
	case string:
		if len(x) > MaxStringLength {
			return errcode.New(errcode.ArgumentInvalid, "%s: string longer than %d bytes", path, MaxStringLength)
		}
	}
	return nil
}

// validateKey follows the twin key rules: UTF-8, at most 1 KB, none of '.',
// '$', space or control characters. Keys are echoed only by their problem, as
// they may be long.
func validateKey(k string) error {
	if k == "" {
		return errors.New("empty key")
	}
	if len(k) > MaxKeyLength {
		return fmt.Errorf("key longer than %d bytes", MaxKeyLength)
	}
	if !utf8.ValidString(k) {
		return errors.New("key is not valid UTF-8")
	}
	for _, r := range k {
		switch {
		case r == '$':
			return errors.New("keys may not contain '$'")
		case r == '.':
			return errors.New("keys may not contain '.'")
		case r == ' ':
			return errors.New("keys may not contain spaces")
		case r < 0x20 || (r >= 0x7f && r <= 0x9f):
			return errors.New("keys may not contain control characters")
		}
	}
	return nil
}

// ApplyChange applies a service change to d and returns the patch a device must
// receive (changed keys, removed keys as null, and "$version"), or nil when the
// desired properties did not change. On error d is unchanged.
func (d *Document) ApplyChange(c Change, now time.Time) (map[string]any, error) {
	ts := FormatTime(now)
	newTags := d.Tags
	if c.TagsSet {
		switch {
		case c.Tags == nil:
			newTags = map[string]any{}
		case c.Replace:
			newTags = cloneMap(c.Tags)
		default:
			newTags = cloneMap(d.Tags)
			merge(newTags, nil, c.Tags, nil)
		}
		if n := Size(newTags); n > MaxTagsSize {
			return nil, errcode.Wrap(errcode.ArgumentInvalid, ErrTooLarge, "tags would be %d bytes, over the %d byte limit", n, MaxTagsSize)
		}
	}
	tagsChanged := !reflect.DeepEqual(newTags, d.Tags)

	var desiredPatch map[string]any
	if c.DesiredSet {
		switch {
		case c.Desired == nil:
			desiredPatch = diff(d.Desired.Props, map[string]any{})
		case c.Replace:
			desiredPatch = diff(d.Desired.Props, c.Desired)
		default:
			desiredPatch = c.Desired
		}
	}
	var devicePatch map[string]any
	newDesired := d.Desired
	if len(desiredPatch) > 0 {
		newDesired.Version++
		newDesired.Props = cloneMap(d.Desired.Props)
		newDesired.Meta = cloneMap(d.Desired.Meta)
		newDesired.LastUpdated = ts
		newDesired.LastUpdatedVersion = newDesired.Version
		merge(newDesired.Props, newDesired.Meta, desiredPatch, &stamp{ts: ts, version: newDesired.Version, withVersion: true})
		if n := Size(newDesired.Props); n > MaxPropertiesSize {
			return nil, errcode.Wrap(errcode.ArgumentInvalid, ErrTooLarge, "desired properties would be %d bytes, over the %d byte limit", n, MaxPropertiesSize)
		}
		devicePatch = cloneMap(desiredPatch)
		devicePatch["$version"] = newDesired.Version
	}
	if !tagsChanged && devicePatch == nil {
		return nil, nil
	}
	d.Tags = newTags
	d.Desired = newDesired
	d.Version++
	d.ETag = newETag()
	return devicePatch, nil
}

// ApplyReported merges a device's reported-properties patch (from ParsePatch)
// and returns the new reported $version. On error d is unchanged.
func (d *Document) ApplyReported(patch map[string]any, now time.Time) (int64, error) {
	ts := FormatTime(now)
	r := d.Reported
	r.Version++
	r.Props = cloneMap(d.Reported.Props)
	r.Meta = cloneMap(d.Reported.Meta)
	r.LastUpdated = ts
	merge(r.Props, r.Meta, patch, &stamp{ts: ts})
	if n := Size(r.Props); n > MaxPropertiesSize {
		return 0, errcode.Wrap(errcode.ArgumentInvalid, ErrTooLarge, "reported properties would be %d bytes, over the %d byte limit", n, MaxPropertiesSize)
	}
	d.Reported = r
	d.Version++
	return r.Version, nil
}

// stamp is the $metadata written for every node a patch touches.
type stamp struct {
	ts          string
	version     int64
	withVersion bool
}

func (s *stamp) node() map[string]any {
	m := map[string]any{"$lastUpdated": s.ts}
	if s.withVersion {
		m["$lastUpdatedVersion"] = s.version
	}
	return m
}

// merge deep-merges patch into dst: objects merge key by key, null removes,
// anything else replaces. With a stamp, meta (the $metadata tree of dst) is
// kept in step.
func merge(dst, meta, patch map[string]any, st *stamp) {
	for k, v := range patch {
		if v == nil {
			delete(dst, k)
			if meta != nil {
				delete(meta, k)
			}
			continue
		}
		pv, ok := v.(map[string]any)
		if !ok {
			dst[k] = cloneValue(v)
			if meta != nil {
				meta[k] = st.node()
			}
			continue
		}
		cur, isMap := dst[k].(map[string]any)
		if !isMap {
			cur = map[string]any{}
		}
		var curMeta map[string]any
		if meta != nil {
			curMeta = st.node()
			if old, ok := meta[k].(map[string]any); ok && isMap {
				for mk, mv := range old {
					if mk != "$lastUpdated" && mk != "$lastUpdatedVersion" {
						curMeta[mk] = mv
					}
				}
			}
			meta[k] = curMeta
		}
		merge(cur, curMeta, pv, st)
		dst[k] = cur
	}
}

// diff returns the patch that turns old into new: changed and added keys with
// their new values, removed keys as null; nested objects are compared key by
// key.
func diff(old, new map[string]any) map[string]any {
	out := map[string]any{}
	for k := range old {
		if _, ok := new[k]; !ok {
			out[k] = nil
		}
	}
	for k, nv := range new {
		ov, ok := old[k]
		if !ok {
			out[k] = cloneValue(nv)
			continue
		}
		om, oIsMap := ov.(map[string]any)
		nm, nIsMap := nv.(map[string]any)
		if oIsMap && nIsMap {
			if sub := diff(om, nm); len(sub) > 0 {
				out[k] = sub
			}
			continue
		}
		if !reflect.DeepEqual(ov, nv) {
			out[k] = cloneValue(nv)
		}
	}
	return out
}

// stripNulls drops null members of objects (a replacement has nothing to
// remove).
func stripNulls(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	for k, v := range m {
		switch x := v.(type) {
		case nil:
			delete(m, k)
		case map[string]any:
			stripNulls(x)
		}
	}
	return m
}

func cloneMap(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = cloneValue(v)
	}
	return out
}

func cloneValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		return cloneMap(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = cloneValue(e)
		}
		return out
	default:
		return v
	}
}

// Size is a section's size as IoT Hub counts it: every key's UTF-8 length plus
// its value's (strings by UTF-8 length without control characters, numbers 8,
// booleans 4, objects and arrays the sum of their contents).
func Size(m map[string]any) int {
	n := 0
	for k, v := range m {
		n += textSize(k) + valueSize(v)
	}
	return n
}

func valueSize(v any) int {
	switch x := v.(type) {
	case string:
		return textSize(x)
	case json.Number, float64, int, int64:
		return 8
	case bool:
		return 4
	case map[string]any:
		return Size(x)
	case []any:
		n := 0
		for _, e := range x {
			n += valueSize(e)
		}
		return n
	default:
		return 0
	}
}

func textSize(s string) int {
	n := 0
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			continue
		}
		n += utf8.RuneLen(r)
	}
	return n
}

// newETag returns an opaque twin etag in IoT Hub's style (base64 of 8 bytes).
// It is random rather than a counter so that a twin deleted and created again
// never repeats an etag a client may still hold.
func newETag() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return base64.StdEncoding.EncodeToString(b[:])
}
