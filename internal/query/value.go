package query

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
)

// kind is the JSON type of a value, plus undefined: the result of a missing
// property or of an operation on mismatched types. Undefined is not null.
type kind uint8

const (
	kUndef kind = iota
	kNull
	kBool
	kNum
	kStr
	kArr
	kObj
)

// value is an evaluated operand. It is a plain struct passed by value so that
// evaluating a condition does not allocate; arrays and objects keep the
// decoded JSON ([]any, map[string]any) they came from.
type value struct {
	k kind
	b bool
	n float64
	s string
	c any
}

var (
	undef  = value{}
	vTrue  = value{k: kBool, b: true}
	vFalse = value{k: kBool}
)

func boolVal(b bool) value {
	if b {
		return vTrue
	}
	return vFalse
}

func numVal(f float64) value {
	// JSON has no NaN or infinities; an operation that yields one has no
	// meaningful result.
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return undef
	}
	return value{k: kNum, n: f}
}

func strVal(s string) value { return value{k: kStr, s: s} }

// fromAny converts a decoded JSON value. Numbers may be float64 (plain
// encoding/json), json.Number (Decoder.UseNumber) or Go integer types (twins
// built in code); all become float64, so integers beyond 2^53 lose precision in
// comparisons, as they do in JavaScript clients. Unknown Go types are undefined.
func fromAny(x any) value {
	switch v := x.(type) {
	case nil:
		return value{k: kNull}
	case string:
		return value{k: kStr, s: v}
	case bool:
		return boolVal(v)
	case float64:
		return numVal(v)
	case json.Number:
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil {
			return undef
		}
		return numVal(f)
	case int:
		return value{k: kNum, n: float64(v)}
	case int64:
		return value{k: kNum, n: float64(v)}
	case int32:
		return value{k: kNum, n: float64(v)}
	case int16:
		return value{k: kNum, n: float64(v)}
	case int8:
		return value{k: kNum, n: float64(v)}
	case uint:
		return value{k: kNum, n: float64(v)}
	case uint64:
		return value{k: kNum, n: float64(v)}
	case uint32:
		return value{k: kNum, n: float64(v)}
	case uint16:
		return value{k: kNum, n: float64(v)}
	case uint8:
		return value{k: kNum, n: float64(v)}
	case float32:
		return numVal(float64(v))
	case []any:
		return value{k: kArr, c: v}
	case map[string]any:
		return value{k: kObj, c: v}
	}
	return undef
}

// toAny converts back to a JSON-encodable Go value; ok is false for undefined.
func (v value) toAny() (any, bool) {
	switch v.k {
	case kNull:
		return nil, true
	case kBool:
		return v.b, true
	case kNum:
		return v.n, true
	case kStr:
		return v.s, true
	case kArr, kObj:
		return v.c, true
	}
	return nil, false
}

// isTrue is the filter rule: only Boolean true selects.
func (v value) isTrue() bool { return v.k == kBool && v.b }

// equal reports equality of two defined primitives of the same type; ok is
// false when the comparison is undefined (a missing operand, different types,
// or arrays and objects, which IoT Hub does not compare).
func equal(a, b value) (eq, ok bool) {
	if a.k != b.k {
		return false, false
	}
	switch a.k {
	case kNull:
		return true, true
	case kBool:
		return a.b == b.b, true
	case kNum:
		return a.n == b.n, true
	case kStr:
		return a.s == b.s, true
	}
	return false, false
}

// order compares two numbers or two strings (ordinal, case-sensitive); ok is
// false for every other pairing.
func order(a, b value) (c int, ok bool) {
	if a.k != b.k {
		return 0, false
	}
	switch a.k {
	case kNum:
		switch {
		case a.n < b.n:
			return -1, true
		case a.n > b.n:
			return 1, true
		}
		return 0, true
	case kStr:
		return strings.Compare(a.s, b.s), true
	}
	return 0, false
}

// typeRank orders values of different types for MIN and MAX, the way Cosmos
// DB (whose dialect IoT Hub's query language is) does.
func typeRank(k kind) int {
	switch k {
	case kNull:
		return 1
	case kBool:
		return 2
	case kNum:
		return 3
	case kStr:
		return 4
	}
	return 0
}

// lookupKey finds key in m: an exact match first, then a case-insensitive one.
// IoT Hub documents routing queries (message properties, twin paths) as case
// insensitive, and its twin query examples rely on it too ("SELECT DeviceId"
// returns "deviceId"); exact-first keeps documents whose keys differ only in
// case deterministic. It returns the key as it appears in m.
func lookupKey(m map[string]any, key string) (any, string, bool) {
	if v, ok := m[key]; ok {
		return v, key, true
	}
	for k, v := range m {
		if strings.EqualFold(k, key) {
			return v, k, true
		}
	}
	return nil, "", false
}

// seg is one step of a path: a property name or an array index.
type seg struct {
	name  string
	idx   int
	isIdx bool
}

// walk follows segs from root. It returns the value found, the name of the
// last property step as spelled in the document (for projection names), and
// whether the path exists.
func walk(root any, segs []seg) (any, string, bool) {
	cur := root
	last := ""
	for _, s := range segs {
		if s.isIdx {
			arr, ok := cur.([]any)
			if !ok || s.idx < 0 || s.idx >= len(arr) {
				return nil, "", false
			}
			cur = arr[s.idx]
			continue
		}
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, "", false
		}
		v, k, ok := lookupKey(m, s.name)
		if !ok {
			return nil, "", false
		}
		cur, last = v, k
	}
	return cur, last, true
}

func pathString(segs []seg) string {
	var b strings.Builder
	for i, s := range segs {
		if s.isIdx {
			b.WriteByte('[')
			b.WriteString(strconv.Itoa(s.idx))
			b.WriteByte(']')
			continue
		}
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(s.name)
	}
	return b.String()
}
