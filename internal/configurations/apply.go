package configurations

import (
	"encoding/json"
	"reflect"
	"strings"
)

// desiredPatch returns the smallest desired-properties patch that gives cur
// (a twin's desired section, "$" keys ignored) the state the ops ask for, or
// nil when cur already has it. Values are plain JSON values (float64
// numbers). A whole-section op replaces everything; a path op replaces the
// value at its path and leaves the rest alone.
func desiredPatch(cur map[string]any, ops []op) map[string]any {
	base := map[string]any{}
	for k, v := range cur {
		if !strings.HasPrefix(k, "$") {
			base[k] = v
		}
	}
	want := cloneValue(base).(map[string]any)
	for _, o := range ops {
		v := stripNulls(cloneValue(o.value))
		if len(o.path) == 0 {
			if m, ok := v.(map[string]any); ok {
				want = m
			}
			continue
		}
		setPath(want, o.path, v)
	}
	p := diff(base, want)
	if len(p) == 0 {
		return nil
	}
	return p
}

// setPath sets m[path...] = v, making objects on the way; nil removes.
func setPath(m map[string]any, path []string, v any) {
	for _, seg := range path[:len(path)-1] {
		next, ok := m[seg].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[seg] = next
		}
		m = next
	}
	last := path[len(path)-1]
	if v == nil {
		delete(m, last)
		return
	}
	m[last] = v
}

// diff returns the merge patch that turns old into new: changed keys (objects
// recursively), removed keys as null.
func diff(old, new map[string]any) map[string]any {
	p := map[string]any{}
	for k, nv := range new {
		ov, ok := old[k]
		if ok && reflect.DeepEqual(ov, nv) {
			continue
		}
		om, oIsMap := ov.(map[string]any)
		nm, nIsMap := nv.(map[string]any)
		if ok && oIsMap && nIsMap {
			p[k] = diff(om, nm)
			continue
		}
		p[k] = nv
	}
	for k := range old {
		if _, ok := new[k]; !ok {
			p[k] = nil
		}
	}
	return p
}

// stripNulls removes null members, which a desired section cannot hold.
func stripNulls(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if e == nil {
				delete(x, k)
				continue
			}
			x[k] = stripNulls(e)
		}
	case []any:
		for i, e := range x {
			x[i] = stripNulls(e)
		}
	}
	return v
}

func cloneValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = cloneValue(e)
		}
		return m
	case []any:
		s := make([]any, len(x))
		for i, e := range x {
			s[i] = cloneValue(e)
		}
		return s
	}
	return v
}

// plain turns any JSON-shaped value (json.Number, typed maps) into plain
// decoded JSON, so that values compare with reflect.DeepEqual.
func plain(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if m == nil {
		m = map[string]any{}
	}
	return m, nil
}

// patchBody wraps a desired patch as a twin PATCH body.
func patchBody(p map[string]any) ([]byte, error) {
	return json.Marshal(map[string]any{"properties": map[string]any{"desired": p}})
}
