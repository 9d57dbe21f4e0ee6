package configurations

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/query"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/twin"
)

// input is the writable part of a configuration as a caller sends it; keys
// match case-insensitively. Read-only fields (times, systemMetrics, results)
// are ignored so that a configuration read with GET can be sent back.
type input struct {
	ID              string            `json:"id"`
	SchemaVersion   string            `json:"schemaVersion"`
	Labels          map[string]string `json:"labels"`
	Content         *Content          `json:"content"`
	ContentType     string            `json:"contentType"`
	TargetCondition string            `json:"targetCondition"`
	Priority        *int              `json:"priority"`
	Metrics         *struct {
		Queries map[string]string `json:"queries"`
	} `json:"metrics"`
}

// desiredPrefix starts every deviceContent key.
const desiredPrefix = "properties.desired"

// ParseConfiguration decodes and checks the body of PUT /configurations/{pathID}.
// The result carries the caller's fields only (no times, metrics results or
// etag). Errors are *errcode.Error values.
func ParseConfiguration(body []byte, pathID string) (Configuration, error) {
	if err := ValidateID(pathID); err != nil {
		return Configuration{}, err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return Configuration{}, errcode.New(errcode.ArgumentNull, "request body is required")
	}
	var in input
	if err := json.Unmarshal(body, &in); err != nil {
		return Configuration{}, formatError("configuration", err)
	}
	if in.ID != "" && in.ID != pathID {
		return Configuration{}, errcode.New(errcode.ArgumentInvalid, "id %q in the body does not match %q in the path", truncate(in.ID, 140), pathID)
	}
	c := Configuration{
		ID:              pathID,
		SchemaVersion:   in.SchemaVersion,
		Labels:          map[string]string{},
		ContentType:     in.ContentType,
		TargetCondition: strings.TrimSpace(in.TargetCondition),
		SystemMetrics:   Metrics{Results: map[string]int64{}, Queries: map[string]string{}},
		Metrics:         Metrics{Results: map[string]int64{}, Queries: map[string]string{}},
	}
	if c.SchemaVersion == "" {
		c.SchemaVersion = "1.0"
	}
	if len(in.Labels) > MaxLabels {
		return Configuration{}, errcode.New(errcode.ArgumentInvalid, "a configuration may have at most %d labels", MaxLabels)
	}
	for k, v := range in.Labels {
		if k == "" || len(k) > MaxLabelLength || len(v) > MaxLabelLength {
			return Configuration{}, errcode.New(errcode.ArgumentInvalid, "label names must be 1 to %d characters and values at most %d", MaxLabelLength, MaxLabelLength)
		}
		c.Labels[k] = v
	}
	if in.Content == nil {
		return Configuration{}, errcode.New(errcode.ArgumentNull, "content is required")
	}
	if err := checkContent(*in.Content); err != nil {
		return Configuration{}, err
	}
	c.Content = *in.Content
	if _, err := compileTarget(c.TargetCondition); err != nil {
		return Configuration{}, err
	}
	if in.Priority != nil {
		if *in.Priority < 0 {
			return Configuration{}, errcode.New(errcode.ArgumentInvalid, "priority must not be negative")
		}
		c.Priority = *in.Priority
	}
	if in.Metrics != nil {
		if len(in.Metrics.Queries) > MaxCustomMetrics {
			return Configuration{}, errcode.New(errcode.ArgumentInvalid, "a configuration may have at most %d custom metrics", MaxCustomMetrics)
		}
		for name, q := range in.Metrics.Queries {
			if name == "" || len(name) > MaxLabelLength {
				return Configuration{}, errcode.New(errcode.ArgumentInvalid, "metric names must be 1 to %d characters", MaxLabelLength)
			}
			sel, err := query.ParseSelect(q)
			if err != nil {
				return Configuration{}, errcode.New(errcode.ArgumentInvalid, "metric %q: %s", truncate(name, 64), err.Error())
			}
			if !strings.EqualFold(sel.From(), "devices") && !strings.EqualFold(sel.From(), "devices.modules") {
				return Configuration{}, errcode.New(errcode.ArgumentInvalid, "metric %q must query devices or devices.modules", truncate(name, 64))
			}
			c.Metrics.Queries[name] = q
		}
	}
	return c, nil
}

// ParseContent decodes and checks the body of POST
// /devices/{id}/applyConfigurationContent: a Content object.
func ParseContent(body []byte) (Content, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return Content{}, errcode.New(errcode.ArgumentNull, "request body is required")
	}
	var c Content
	if err := json.Unmarshal(body, &c); err != nil {
		return Content{}, formatError("configuration content", err)
	}
	if err := checkContent(c); err != nil {
		return Content{}, err
	}
	return c, nil
}

func formatError(what string, err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return errcode.New(errcode.IotHubFormatError, "%s: field %q must not be a JSON %s", what, te.Field, te.Value)
	}
	return errcode.Wrap(errcode.IotHubFormatError, err, "%s is not a valid JSON object", what)
}

// ValidateID applies IoT Hub's rules for configuration ids: at most 128
// lower-case ASCII letters, digits and -:+%_#*?!(),=@;$'.
func ValidateID(id string) error {
	if id == "" {
		return errcode.New(errcode.ArgumentInvalid, "configuration id is empty")
	}
	if len(id) > MaxIDLength {
		return errcode.New(errcode.ArgumentInvalid, "configuration id is longer than %d characters", MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strings.IndexByte("-:+%_#*?!(),=@;$'", c) >= 0 {
			continue
		}
		return errcode.New(errcode.ArgumentInvalid, "configuration id %q has a character IoT Hub does not allow at position %d (ids are lower case)", truncate(id, 140), i)
	}
	return nil
}

func checkContent(c Content) error {
	kinds := 0
	for _, m := range []map[string]json.RawMessage{c.DeviceContent, c.ModulesContent, c.ModuleContent} {
		if len(m) > 0 {
			kinds++
		}
	}
	switch {
	case kinds == 0:
		return errcode.New(errcode.ArgumentInvalid, "content must have deviceContent, modulesContent or moduleContent")
	case kinds > 1:
		return errcode.New(errcode.ArgumentInvalid, "content may have only one of deviceContent, modulesContent and moduleContent")
	}
	if _, err := desiredOps("deviceContent", c.DeviceContent, false); err != nil {
		return err
	}
	if _, err := desiredOps("moduleContent", c.ModuleContent, false); err != nil {
		return err
	}
	_, err := moduleOps(c.ModulesContent)
	return err
}

// op sets the desired property at path (nil: the whole desired section) to
// value; a nil value removes it.
type op struct {
	path  []string
	value any
}

// desiredOps turns "properties.desired.a.b": v entries into ops, in key order.
// whole allows the key "properties.desired" itself (module content).
func desiredOps(what string, m map[string]json.RawMessage, whole bool) ([]op, error) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	// The whole-section key sorts first, so paths below it apply on top.
	sort.Strings(keys)
	var ops []op
	for _, k := range keys {
		var path []string
		switch {
		case k == desiredPrefix && whole:
		case strings.HasPrefix(k, desiredPrefix+"."):
			path = strings.Split(k[len(desiredPrefix)+1:], ".")
			for _, seg := range path {
				if err := checkKey(seg); err != nil {
					return nil, errcode.New(errcode.ArgumentInvalid, "%s key %q: %s", what, truncate(k, 140), err.Error())
				}
			}
		default:
			return nil, errcode.New(errcode.ArgumentInvalid, "%s key %q must start with %q", what, truncate(k, 140), desiredPrefix+".")
		}
		v, err := decodeValue(m[k])
		if err != nil {
			return nil, errcode.New(errcode.IotHubFormatError, "%s %q: %s", what, truncate(k, 140), err.Error())
		}
		if path == nil {
			if _, ok := v.(map[string]any); !ok {
				return nil, errcode.New(errcode.ArgumentInvalid, "%s %q must be an object", what, k)
			}
		}
		// The twin's own rules on keys, values and depth.
		if err := checkDesiredValue(path, v); err != nil {
			return nil, errcode.New(errcode.ArgumentInvalid, "%s %q: %s", what, truncate(k, 140), errcode.From(err).Message)
		}
		ops = append(ops, op{path: path, value: v})
	}
	return ops, nil
}

// moduleOps parses modulesContent into ops per module id.
func moduleOps(m map[string]json.RawMessage) (map[string][]op, error) {
	out := make(map[string][]op, len(m))
	for mid, raw := range m {
		if err := registry.ValidateID("module", mid); err != nil {
			return nil, err
		}
		var sections map[string]json.RawMessage
		if err := json.Unmarshal(raw, &sections); err != nil || sections == nil {
			return nil, errcode.New(errcode.ArgumentInvalid, "modulesContent %q must be an object of properties.desired entries", truncate(mid, 140))
		}
		ops, err := desiredOps("modulesContent."+mid, sections, true)
		if err != nil {
			return nil, err
		}
		out[mid] = ops
	}
	return out, nil
}

func decodeValue(raw json.RawMessage) (any, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	return v, nil
}

// checkDesiredValue runs the twin package's patch validation over the value
// placed at path.
func checkDesiredValue(path []string, v any) error {
	var doc any = v
	for i := len(path) - 1; i >= 0; i-- {
		doc = map[string]any{path[i]: doc}
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	_, err = twin.ParsePatch(b)
	return err
}

// checkKey follows the twin key rules for one path segment.
func checkKey(k string) error {
	switch {
	case k == "":
		return errors.New("empty path segment")
	case len(k) > 1024:
		return errors.New("path segment longer than 1024 bytes")
	case !utf8.ValidString(k):
		return errors.New("path segment is not valid UTF-8")
	}
	for _, r := range k {
		if r == '$' || r == ' ' || r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return fmt.Errorf("path segments may not contain %q", r)
		}
	}
	return nil
}

// target is a compiled targetCondition: "" targets nothing, "*" everything.
type target struct {
	all  bool
	cond *query.TwinCondition
}

func (t target) match(doc map[string]any) bool {
	return t.all || (t.cond != nil && t.cond.Match(doc))
}

func compileTarget(src string) (target, error) {
	switch strings.TrimSpace(src) {
	case "":
		return target{}, nil
	case "*":
		return target{all: true}, nil
	}
	c, err := query.ParseTwinCondition(src)
	if err != nil {
		return target{}, errcode.New(errcode.ArgumentInvalid, "targetCondition %q: %s", truncate(src, maxConditionPreview), err.Error())
	}
	return target{cond: c}, nil
}

// sameContent compares two contents as JSON values.
func sameContent(a, b Content) bool {
	norm := func(c Content) any {
		bs, _ := json.Marshal(c)
		var v any
		_ = json.Unmarshal(bs, &v)
		return v
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
