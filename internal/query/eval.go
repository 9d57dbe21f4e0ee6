package query

import "math"

// ctx is what an expression is evaluated against: a twin document (registry
// queries, twin conditions) or a message environment (routing). It is passed
// by value so that the compiler keeps it on the stack.
type ctx struct {
	doc map[string]any
	env Env
}

// expr is a compiled expression node.
type expr interface {
	eval(c ctx) value
}

type litExpr struct{ v value }

func (e *litExpr) eval(ctx) value { return e.v }

// arrExpr builds an array from non-constant elements; constant arrays are
// folded into a litExpr at parse time.
type arrExpr struct{ elems []expr }

func (e *arrExpr) eval(c ctx) value {
	out := make([]any, 0, len(e.elems))
	for _, x := range e.elems {
		if a, ok := x.eval(c).toAny(); ok {
			out = append(out, a)
		}
	}
	return value{k: kArr, c: out}
}

type notExpr struct{ x expr }

// NOT is only defined on Booleans: NOT undefined stays undefined.
func (e *notExpr) eval(c ctx) value {
	v := e.x.eval(c)
	if v.k != kBool {
		return undef
	}
	return boolVal(!v.b)
}

type negExpr struct{ x expr }

func (e *negExpr) eval(c ctx) value {
	v := e.x.eval(c)
	if v.k != kNum {
		return undef
	}
	return numVal(-v.n)
}

// logicExpr is an n-ary AND or OR with SQL three-valued logic: false AND x is
// false and true OR x is true whatever x is (so evaluation stops there);
// otherwise any operand that is not a Boolean makes the result undefined.
type logicExpr struct {
	and bool
	xs  []expr
}

func (e *logicExpr) eval(c ctx) value {
	defined := true
	for _, x := range e.xs {
		v := x.eval(c)
		if v.k != kBool {
			defined = false
			continue
		}
		if v.b != e.and {
			return boolVal(v.b)
		}
	}
	if !defined {
		return undef
	}
	return boolVal(e.and)
}

// arithExpr is a left-to-right chain of operators of one precedence level
// (+ - or * / %). Arithmetic is numeric only: strings are joined with CONCAT,
// and any non-number operand, division by zero or overflow is undefined.
type arithExpr struct {
	first expr
	ops   []tokKind
	rest  []expr
}

func (e *arithExpr) eval(c ctx) value {
	acc := e.first.eval(c)
	if acc.k != kNum {
		return undef
	}
	n := acc.n
	for i, op := range e.ops {
		v := e.rest[i].eval(c)
		if v.k != kNum {
			return undef
		}
		switch op {
		case tPlus:
			n += v.n
		case tMinus:
			n -= v.n
		case tStar:
			n *= v.n
		case tSlash:
			if v.n == 0 {
				return undef
			}
			n /= v.n
		case tPercent:
			if v.n == 0 {
				return undef
			}
			n = math.Mod(n, v.n)
		}
	}
	return numVal(n)
}

// cmpExpr compares two operands. Operands of different types (the string "35"
// and the number 30), undefined operands, and arrays or objects give
// undefined, never an error.
type cmpExpr struct {
	op   tokKind
	l, r expr
}

func (e *cmpExpr) eval(c ctx) value {
	a := e.l.eval(c)
	if a.k == kUndef {
		return undef
	}
	b := e.r.eval(c)
	switch e.op {
	case tEq, tNe:
		eq, ok := equal(a, b)
		if !ok {
			return undef
		}
		return boolVal(eq == (e.op == tEq))
	}
	o, ok := order(a, b)
	if !ok {
		return undef
	}
	switch e.op {
	case tLt:
		return boolVal(o < 0)
	case tGt:
		return boolVal(o > 0)
	case tLe:
		return boolVal(o <= 0)
	default: // tGe
		return boolVal(o >= 0)
	}
}

// inExpr is x IN [..] (or NIN / NOT IN). It is undefined when x is undefined or
// the list is not an array; otherwise true when some element equals x.
type inExpr struct {
	x, list expr
	not     bool
}

func (e *inExpr) eval(c ctx) value {
	v := e.x.eval(c)
	if v.k == kUndef {
		return undef
	}
	l := e.list.eval(c)
	arr, ok := l.c.([]any)
	if l.k != kArr || !ok {
		return undef
	}
	found := false
	for _, a := range arr {
		if eq, ok := equal(v, fromAny(a)); ok && eq {
			found = true
			break
		}
	}
	return boolVal(found != e.not)
}

// call1, call2, call3 and callN call built-in functions. Fixed arities take
// their arguments as values rather than a slice so that calls do not allocate.
type call1 struct {
	f func(value) value
	a expr
}

func (e *call1) eval(c ctx) value { return e.f(e.a.eval(c)) }

type call2 struct {
	f    func(value, value) value
	a, b expr
}

func (e *call2) eval(c ctx) value { return e.f(e.a.eval(c), e.b.eval(c)) }

type call3 struct {
	f       func(value, value, value) value
	a, b, d expr
}

func (e *call3) eval(c ctx) value { return e.f(e.a.eval(c), e.b.eval(c), e.d.eval(c)) }

type callN struct {
	f    func([]value) value
	args []expr
}

func (e *callN) eval(c ctx) value {
	vs := make([]value, len(e.args))
	for i, a := range e.args {
		vs[i] = a.eval(c)
	}
	return e.f(vs)
}

// aggExpr is an aggregate in a SELECT list. It has no per-row value; Execute
// computes it over each group.
type aggExpr struct {
	pos  int
	name string // upper case: COUNT, SUM, AVG, MIN, MAX
	arg  expr   // nil for COUNT()
}

func (e *aggExpr) eval(ctx) value { return undef }

// docPath is a property path into a twin document (registry queries).
type docPath struct {
	segs []seg
}

func (e *docPath) eval(c ctx) value {
	if c.doc == nil {
		return undef
	}
	v, _, ok := walk(c.doc, e.segs)
	if !ok {
		return undef
	}
	return fromAny(v)
}

// bodyPath is $body.… in a routing condition. It is undefined unless the
// environment has a JSON body, and, as IoT Hub documents, a path must start
// with a property name: the body as a whole ($body, $body[0]) is undefined.
type bodyPath struct {
	segs []seg
}

func (e *bodyPath) eval(c ctx) value {
	if c.env == nil || len(e.segs) == 0 || e.segs[0].isIdx {
		return undef
	}
	b, ok := c.env.Body()
	if !ok {
		return undef
	}
	v, _, ok := walk(b, e.segs)
	if !ok {
		return undef
	}
	return fromAny(v)
}

// twinPath is $twin.… in a routing condition: the device twin, or the module
// twin for messages from a module.
type twinPath struct {
	segs []seg
}

func (e *twinPath) eval(c ctx) value {
	if c.env == nil {
		return undef
	}
	t, ok := c.env.Twin()
	if !ok || t == nil {
		return undef
	}
	if len(e.segs) == 0 {
		return value{k: kObj, c: t}
	}
	v, _, ok := walk(t, e.segs)
	if !ok {
		return undef
	}
	return fromAny(v)
}

// sysRef is $name: a system property, else an application property whose
// name is "$name" (IoT Hub: "If an application property name begins with $,
// IoT Hub searches for it in the system properties, and if it is not found,
// looks in the application properties").
type sysRef struct {
	name    string // without '$'
	appName string // with '$'
}

func (e *sysRef) eval(c ctx) value {
	if c.env == nil {
		return undef
	}
	if s, ok := c.env.SystemProperty(e.name); ok {
		return strVal(s)
	}
	if s, ok := c.env.AppProperty(e.appName); ok {
		return strVal(s)
	}
	return undef
}

// appRef is a bare name in a routing condition: an application property.
// Its value is always a string; see the package documentation.
type appRef struct {
	name string
}

func (e *appRef) eval(c ctx) value {
	if c.env == nil {
		return undef
	}
	if s, ok := c.env.AppProperty(e.name); ok {
		return strVal(s)
	}
	return undef
}
