package query

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxDepth bounds how deeply expressions may nest (parentheses, function
// arguments, arrays, NOT and unary minus), so hostile input cannot drive deep
// recursion. Chains of AND, OR, + - and * / % do not nest: they compile to one
// n-ary node, so long generated conditions stay cheap.
const MaxDepth = 64

// rawRef is a property reference as written: a first name and the steps that
// follow it. Each use of the grammar binds it to its own kind of node.
type rawRef struct {
	pos  int
	root string
	segs []seg
}

// binder turns a property reference into an evaluable node for one use of
// the language (registry documents or routing messages).
type binder func(p *parser, r rawRef) (expr, *ParseError)

type parser struct {
	src      string
	toks     []token
	i        int
	depth    int
	bind     binder
	allowAgg bool
}

// reserved words cannot start an operand. Clause words (GROUP, BY, TOP) are
// not reserved: they only matter where an operator or clause is expected, so
// application properties may still be called "group" or "top".
var reserved = map[string]bool{
	"SELECT": true, "FROM": true, "WHERE": true, "AND": true, "OR": true,
	"NOT": true, "IN": true, "NIN": true, "AS": true,
}

func newParser(src string, maxLen int, dashNames bool, bind binder) (*parser, *ParseError) {
	if len(src) > maxLen && utf8.RuneCountInString(src) > maxLen {
		off := 0
		for n := 0; n < maxLen; n++ {
			_, w := utf8.DecodeRuneInString(src[off:])
			off += w
		}
		return nil, errorAt(src, off, "query is longer than %d characters", maxLen)
	}
	toks, err := lex(src, dashNames)
	if err != nil {
		return nil, err
	}
	return &parser{src: src, toks: toks, bind: bind}, nil
}

func (p *parser) peek() token { return p.toks[p.i] }

func (p *parser) peekAt(n int) token {
	if p.i+n >= len(p.toks) {
		return p.toks[len(p.toks)-1]
	}
	return p.toks[p.i+n]
}

func (p *parser) advance() token {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}

// isKeyword reports whether t is the (case-insensitive) word kw.
func isKeyword(t token, kw string) bool {
	return t.kind == tIdent && strings.EqualFold(t.text, kw)
}

func (p *parser) acceptKeyword(kw string) bool {
	if isKeyword(p.peek(), kw) {
		p.i++
		return true
	}
	return false
}

func (p *parser) errAt(t token, format string, args ...any) *ParseError {
	return errorAt(p.src, t.pos, format, args...)
}

// describe names a token for error messages.
func (p *parser) describe(t token) string {
	switch t.kind {
	case tEOF:
		return "end of query"
	case tIdent:
		return fmt.Sprintf("'%s'", t.text)
	case tNumber:
		return "number " + p.src[t.pos:t.end]
	case tString:
		return "string " + p.src[t.pos:t.end]
	}
	return tokNames[t.kind]
}

func (p *parser) unexpected(t token, want string) *ParseError {
	if want == "" {
		return p.errAt(t, "unexpected %s", p.describe(t))
	}
	return p.errAt(t, "expected %s, found %s", want, p.describe(t))
}

func (p *parser) expect(k tokKind, want string) (token, *ParseError) {
	t := p.peek()
	if t.kind != k {
		return t, p.unexpected(t, want)
	}
	p.i++
	return t, nil
}

func (p *parser) enter(t token) *ParseError {
	p.depth++
	if p.depth > MaxDepth {
		return p.errAt(t, "expression nested more than %d levels deep", MaxDepth)
	}
	return nil
}

func (p *parser) leave() { p.depth-- }

// parseExpr parses a full expression:
//
//	or      := and { OR and }
//	and     := not { AND not }
//	not     := NOT not | cmp
//	cmp     := add [ (= | != | <> | < | > | <= | >=) add | [NOT] IN add | NIN add ]
//	add     := mul { (+ | -) mul }
//	mul     := unary { (* | / | %) unary }
//	unary   := (- | +) unary | primary
//	primary := literal | array | '(' or ')' | name '(' args ')' | path
func (p *parser) parseExpr() (expr, *ParseError) { return p.parseLogic(false) }

func (p *parser) parseLogic(and bool) (expr, *ParseError) {
	kw := "OR"
	sub := func() (expr, *ParseError) { return p.parseLogic(true) }
	if and {
		kw = "AND"
		sub = p.parseNot
	}
	first, err := sub()
	if err != nil {
		return nil, err
	}
	if !isKeyword(p.peek(), kw) {
		return first, nil
	}
	xs := []expr{first}
	for p.acceptKeyword(kw) {
		x, err := sub()
		if err != nil {
			return nil, err
		}
		xs = append(xs, x)
	}
	return &logicExpr{and: and, xs: xs}, nil
}

func (p *parser) parseNot() (expr, *ParseError) {
	t := p.peek()
	if !isKeyword(t, "NOT") {
		return p.parseCmp()
	}
	p.i++
	if err := p.enter(t); err != nil {
		return nil, err
	}
	defer p.leave()
	x, err := p.parseNot()
	if err != nil {
		return nil, err
	}
	return &notExpr{x: x}, nil
}

func (p *parser) parseCmp() (expr, *ParseError) {
	l, err := p.parseArith(false)
	if err != nil {
		return nil, err
	}
	t := p.peek()
	switch t.kind {
	case tEq, tNe, tLt, tGt, tLe, tGe:
		p.i++
		r, err := p.parseArith(false)
		if err != nil {
			return nil, err
		}
		return &cmpExpr{op: t.kind, l: l, r: r}, nil
	case tIdent:
		not := false
		switch {
		case isKeyword(t, "IN"):
			p.i++
		case isKeyword(t, "NIN"):
			p.i++
			not = true
		case isKeyword(t, "NOT") && isKeyword(p.peekAt(1), "IN"):
			p.i += 2
			not = true
		default:
			return l, nil
		}
		r, err := p.parseArith(false)
		if err != nil {
			return nil, err
		}
		return &inExpr{x: l, list: r, not: not}, nil
	}
	return l, nil
}

func (p *parser) parseArith(mul bool) (expr, *ParseError) {
	sub := func() (expr, *ParseError) { return p.parseArith(true) }
	isOp := func(k tokKind) bool { return k == tPlus || k == tMinus }
	if mul {
		sub = p.parseUnary
		isOp = func(k tokKind) bool { return k == tStar || k == tSlash || k == tPercent }
	}
	first, err := sub()
	if err != nil {
		return nil, err
	}
	if !isOp(p.peek().kind) {
		return first, nil
	}
	e := &arithExpr{first: first}
	for isOp(p.peek().kind) {
		op := p.advance().kind
		x, err := sub()
		if err != nil {
			return nil, err
		}
		e.ops = append(e.ops, op)
		e.rest = append(e.rest, x)
	}
	return e, nil
}

func (p *parser) parseUnary() (expr, *ParseError) {
	t := p.peek()
	if t.kind != tMinus && t.kind != tPlus {
		return p.parsePrimary()
	}
	p.i++
	if err := p.enter(t); err != nil {
		return nil, err
	}
	defer p.leave()
	x, err := p.parseUnary()
	if err != nil {
		return nil, err
	}
	if lit, ok := x.(*litExpr); ok && lit.v.k == kNum {
		if t.kind == tMinus {
			return &litExpr{v: numVal(-lit.v.n)}, nil
		}
		return lit, nil
	}
	if t.kind == tPlus {
		return &arithExpr{first: x, ops: []tokKind{tPlus}, rest: []expr{&litExpr{v: value{k: kNum}}}}, nil
	}
	return &negExpr{x: x}, nil
}

func (p *parser) parsePrimary() (expr, *ParseError) {
	t := p.peek()
	switch t.kind {
	case tNumber:
		p.i++
		return &litExpr{v: value{k: kNum, n: t.num}}, nil
	case tString:
		p.i++
		return &litExpr{v: strVal(t.text)}, nil
	case tLParen:
		p.i++
		if err := p.enter(t); err != nil {
			return nil, err
		}
		defer p.leave()
		x, err := p.parseExpr()
		if err != nil {
			return nil, err
		}
		if _, err := p.expect(tRParen, "')'"); err != nil {
			return nil, err
		}
		return x, nil
	case tLBrack:
		p.i++
		if err := p.enter(t); err != nil {
			return nil, err
		}
		defer p.leave()
		return p.parseArray()
	case tIdent:
		return p.parseName()
	}
	return nil, p.unexpected(t, "")
}

func (p *parser) parseArray() (expr, *ParseError) {
	var elems []expr
	if p.peek().kind != tRBrack {
		for {
			x, err := p.parseExpr()
			if err != nil {
				return nil, err
			}
			elems = append(elems, x)
			if p.peek().kind != tComma {
				break
			}
			p.i++
		}
	}
	if _, err := p.expect(tRBrack, "',' or ']'"); err != nil {
		return nil, err
	}
	consts := make([]any, 0, len(elems))
	for _, x := range elems {
		lit, ok := x.(*litExpr)
		if !ok {
			return &arrExpr{elems: elems}, nil
		}
		if a, ok := lit.v.toAny(); ok {
			consts = append(consts, a)
		}
	}
	return &litExpr{v: value{k: kArr, c: consts}}, nil
}

func (p *parser) parseName() (expr, *ParseError) {
	t := p.advance()
	up := strings.ToUpper(t.text)
	if p.peek().kind == tLParen && !strings.HasPrefix(t.text, "$") {
		return p.parseCall(t, up)
	}
	switch up {
	case "TRUE":
		return &litExpr{v: vTrue}, nil
	case "FALSE":
		return &litExpr{v: vFalse}, nil
	case "NULL":
		return &litExpr{v: value{k: kNull}}, nil
	case "UNDEFINED":
		return &litExpr{v: undef}, nil
	}
	if reserved[up] {
		return nil, p.errAt(t, "unexpected keyword %s", up)
	}
	r := rawRef{pos: t.pos, root: t.text}
	for {
		switch p.peek().kind {
		case tDot:
			p.i++
			n := p.peek()
			if n.kind != tIdent {
				return nil, p.errAt(n, "expected identifier after '.'")
			}
			p.i++
			r.segs = append(r.segs, seg{name: n.text})
			continue
		case tLBrack:
			p.i++
			n := p.advance()
			switch {
			case n.kind == tString:
				r.segs = append(r.segs, seg{name: n.text})
			case n.kind == tNumber && n.num >= 0 && n.num == float64(int(n.num)) && n.num < 1<<31:
				r.segs = append(r.segs, seg{idx: int(n.num), isIdx: true})
			default:
				return nil, p.errAt(n, "expected an array index or a quoted property name after '['")
			}
			if _, err := p.expect(tRBrack, "']'"); err != nil {
				return nil, err
			}
			continue
		}
		break
	}
	return p.bind(p, r)
}

func (p *parser) parseCall(name token, up string) (expr, *ParseError) {
	open := p.advance() // '('
	if err := p.enter(open); err != nil {
		return nil, err
	}
	defer p.leave()
	var args []expr
	if p.peek().kind != tRParen {
		for {
			x, err := p.parseExpr()
			if err != nil {
				return nil, err
			}
			args = append(args, x)
			if p.peek().kind != tComma {
				break
			}
			p.i++
		}
	}
	if _, err := p.expect(tRParen, "',' or ')'"); err != nil {
		return nil, err
	}
	if a, ok := aggregates[up]; ok {
		if !p.allowAgg {
			return nil, p.errAt(name, "aggregate %s is only allowed in a SELECT list", up)
		}
		if len(args) < a.min || len(args) > a.max {
			return nil, p.errAt(name, "%s takes %s", up, arity(a.min, a.max))
		}
		e := &aggExpr{pos: name.pos, name: up}
		if len(args) == 1 {
			e.arg = args[0]
		}
		return e, nil
	}
	f, ok := funcs[up]
	if !ok {
		return nil, p.errAt(name, "unknown function %s", name.text)
	}
	if len(args) < f.min || (f.max >= 0 && len(args) > f.max) {
		return nil, p.errAt(name, "%s takes %s", up, arity(f.min, f.max))
	}
	switch {
	case f.fn != nil:
		return &callN{f: f.fn, args: args}, nil
	case len(args) == 1:
		return &call1{f: f.f1, a: args[0]}, nil
	case len(args) == 2:
		return &call2{f: f.f2, a: args[0], b: args[1]}, nil
	default:
		return &call3{f: f.f3, a: args[0], b: args[1], d: args[2]}, nil
	}
}

func arity(lo, hi int) string {
	switch {
	case lo == hi && lo == 0:
		return "no arguments"
	case lo == hi && lo == 1:
		return "1 argument"
	case lo == hi:
		return fmt.Sprintf("%d arguments", lo)
	case hi < 0:
		return fmt.Sprintf("at least %d arguments", lo)
	}
	return fmt.Sprintf("%d to %d arguments", lo, hi)
}

// containsAgg reports the first aggregate inside x, for the rule that
// aggregates stand alone as SELECT items.
func containsAgg(x expr) *aggExpr {
	switch e := x.(type) {
	case *aggExpr:
		return e
	case *arrExpr:
		for _, y := range e.elems {
			if a := containsAgg(y); a != nil {
				return a
			}
		}
	case *notExpr:
		return containsAgg(e.x)
	case *negExpr:
		return containsAgg(e.x)
	case *logicExpr:
		for _, y := range e.xs {
			if a := containsAgg(y); a != nil {
				return a
			}
		}
	case *arithExpr:
		if a := containsAgg(e.first); a != nil {
			return a
		}
		for _, y := range e.rest {
			if a := containsAgg(y); a != nil {
				return a
			}
		}
	case *cmpExpr:
		if a := containsAgg(e.l); a != nil {
			return a
		}
		return containsAgg(e.r)
	case *inExpr:
		if a := containsAgg(e.x); a != nil {
			return a
		}
		return containsAgg(e.list)
	case *call1:
		return containsAgg(e.a)
	case *call2:
		if a := containsAgg(e.a); a != nil {
			return a
		}
		return containsAgg(e.b)
	case *call3:
		for _, y := range []expr{e.a, e.b, e.d} {
			if a := containsAgg(y); a != nil {
				return a
			}
		}
	case *callN:
		for _, y := range e.args {
			if a := containsAgg(y); a != nil {
				return a
			}
		}
	}
	return nil
}
