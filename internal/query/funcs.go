package query

import (
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// funcDef is a built-in scalar function. Exactly one of f1, f2, f3, fn is set
// unless the function has optional arguments (SUBSTRING), in which case both
// f2 and f3 are.
type funcDef struct {
	min, max int // argument counts; max < 0 means unbounded
	f1       func(value) value
	f2       func(value, value) value
	f3       func(value, value, value) value
	fn       func([]value) value
}

// Names are matched case-insensitively (they are stored in upper case).
// String positions and lengths count Unicode code points.
var funcs = map[string]*funcDef{
	"ABS":     {min: 1, max: 1, f1: num1(math.Abs)},
	"EXP":     {min: 1, max: 1, f1: num1(math.Exp)},
	"POWER":   {min: 2, max: 2, f2: fnPower},
	"SQUARE":  {min: 1, max: 1, f1: num1(func(x float64) float64 { return x * x })},
	"CEILING": {min: 1, max: 1, f1: num1(math.Ceil)},
	"FLOOR":   {min: 1, max: 1, f1: num1(math.Floor)},
	"SIGN":    {min: 1, max: 1, f1: num1(sign)},
	"SQRT":    {min: 1, max: 1, f1: num1(math.Sqrt)},

	"AS_NUMBER":    {min: 1, max: 1, f1: fnAsNumber},
	"IS_ARRAY":     {min: 1, max: 1, f1: isKind(kArr)},
	"IS_BOOL":      {min: 1, max: 1, f1: isKind(kBool)},
	"IS_DEFINED":   {min: 1, max: 1, f1: func(v value) value { return boolVal(v.k != kUndef) }},
	"IS_NULL":      {min: 1, max: 1, f1: isKind(kNull)},
	"IS_NUMBER":    {min: 1, max: 1, f1: isKind(kNum)},
	"IS_OBJECT":    {min: 1, max: 1, f1: isKind(kObj)},
	"IS_PRIMITIVE": {min: 1, max: 1, f1: fnIsPrimitive},
	"IS_STRING":    {min: 1, max: 1, f1: isKind(kStr)},

	"CONCAT":      {min: 2, max: -1, fn: fnConcat},
	"LENGTH":      {min: 1, max: 1, f1: fnLength},
	"LOWER":       {min: 1, max: 1, f1: str1(strings.ToLower)},
	"UPPER":       {min: 1, max: 1, f1: str1(strings.ToUpper)},
	"SUBSTRING":   {min: 2, max: 3, f2: fnSubstring2, f3: fnSubstring},
	"INDEX_OF":    {min: 2, max: 2, f2: fnIndexOf},
	"STARTS_WITH": {min: 2, max: 2, f2: str2(strings.HasPrefix)},
	"ENDS_WITH":   {min: 2, max: 2, f2: str2(strings.HasSuffix)},
	"CONTAINS":    {min: 2, max: 2, f2: str2(strings.Contains)},
}

// aggregates are only valid as SELECT items of a registry query.
var aggregates = map[string]struct{ min, max int }{
	"COUNT": {0, 1},
	"SUM":   {1, 1},
	"AVG":   {1, 1},
	"MIN":   {1, 1},
	"MAX":   {1, 1},
}

func num1(f func(float64) float64) func(value) value {
	return func(v value) value {
		if v.k != kNum {
			return undef
		}
		return numVal(f(v.n))
	}
}

func sign(x float64) float64 {
	switch {
	case x > 0:
		return 1
	case x < 0:
		return -1
	}
	return 0
}

func fnPower(a, b value) value {
	if a.k != kNum || b.k != kNum {
		return undef
	}
	return numVal(math.Pow(a.n, b.n))
}

// fnAsNumber: a number is returned as is; a string that is a decimal number
// (JSON number syntax, surrounding spaces allowed) is converted; anything else
// is undefined. Hex, "NaN" and "Infinity" are not numbers here.
func fnAsNumber(v value) value {
	switch v.k {
	case kNum:
		return v
	case kStr:
		s := strings.TrimSpace(v.s)
		if !isDecimal(s) {
			return undef
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return undef
		}
		return numVal(f)
	}
	return undef
}

func isDecimal(s string) bool {
	i := 0
	if i < len(s) && (s[i] == '-' || s[i] == '+') {
		i++
	}
	start := i
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	digits := i - start
	if i < len(s) && s[i] == '.' {
		i++
		f := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		digits += i - f
	}
	if digits == 0 {
		return false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '-' || s[i] == '+') {
			i++
		}
		e := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		if i == e {
			return false
		}
	}
	return i == len(s)
}

func isKind(k kind) func(value) value {
	return func(v value) value { return boolVal(v.k == k) }
}

func fnIsPrimitive(v value) value {
	return boolVal(v.k == kNull || v.k == kBool || v.k == kNum || v.k == kStr)
}

// maxConcat bounds the result of CONCAT. Without it, nested CONCATs over
// large property values let a short query allocate without limit; a longer
// result is undefined.
const maxConcat = 64 << 10

func fnConcat(vs []value) value {
	n := 0
	for _, v := range vs {
		if v.k != kStr {
			return undef
		}
		n += len(v.s)
	}
	if n > maxConcat {
		return undef
	}
	var b strings.Builder
	b.Grow(n)
	for _, v := range vs {
		b.WriteString(v.s)
	}
	return strVal(b.String())
}

func fnLength(v value) value {
	if v.k != kStr {
		return undef
	}
	return value{k: kNum, n: float64(utf8.RuneCountInString(v.s))}
}

func str1(f func(string) string) func(value) value {
	return func(v value) value {
		if v.k != kStr {
			return undef
		}
		return strVal(f(v.s))
	}
}

func str2(f func(string, string) bool) func(value, value) value {
	return func(a, b value) value {
		if a.k != kStr || b.k != kStr {
			return undef
		}
		return boolVal(f(a.s, b.s))
	}
}

// intArg truncates a numeric argument and clamps it to [lo, hi].
func intArg(v value, lo, hi int) int {
	f := math.Trunc(v.n)
	if f < float64(lo) {
		return lo
	}
	if f > float64(hi) {
		return hi
	}
	return int(f)
}

func fnSubstring2(s, start value) value {
	if s.k != kStr || start.k != kNum {
		return undef
	}
	return substring(s.s, start, -1)
}

// fnSubstring is SUBSTRING(string, start, length): start is a zero-based code
// point position and length a count of code points, as in the IoT Hub (and
// Cosmos DB) reference; out-of-range positions give a shorter or empty string.
func fnSubstring(s, start, length value) value {
	if s.k != kStr || start.k != kNum || length.k != kNum {
		return undef
	}
	return substring(s.s, start, intArg(length, 0, len(s.s)))
}

func substring(s string, start value, length int) value {
	from := intArg(start, 0, len(s))
	// Walk code points to byte offsets.
	i, cp := 0, 0
	for i < len(s) && cp < from {
		_, n := utf8.DecodeRuneInString(s[i:])
		i += n
		cp++
	}
	if length < 0 {
		return strVal(s[i:])
	}
	j := i
	for j < len(s) && length > 0 {
		_, n := utf8.DecodeRuneInString(s[j:])
		j += n
		length--
	}
	return strVal(s[i:j])
}

func fnIndexOf(a, b value) value {
	if a.k != kStr || b.k != kStr {
		return undef
	}
	i := strings.Index(a.s, b.s)
	if i < 0 {
		return value{k: kNum, n: -1}
	}
	return value{k: kNum, n: float64(utf8.RuneCountInString(a.s[:i]))}
}
