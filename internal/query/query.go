// Package query is IoT Hub's query language: one grammar, compiled once, with two
// uses — registry queries over device and module twins (SELECT … FROM devices …)
// and routing conditions over messages ($body, $twin, system and application
// properties).
//
// One lexer and parser serve both; only the meaning of a property reference
// differs (a path into a twin document, or a message property, body or twin
// path), and each use binds references its own way. Expressions follow the
// Cosmos DB–style semantics IoT Hub documents:
//
//   - Missing properties are undefined, which is not null. Comparing values of
//     different types (the string "5" and the number 5), or arrays and objects,
//     is undefined rather than an error; arithmetic is on numbers only.
//   - Logic is three-valued: NOT undefined is undefined, false AND undefined is
//     false, true OR undefined is true. A filter keeps a document, and a route
//     matches, only when the result is Boolean true.
//   - Keywords and function names are case-insensitive; strings compare
//     ordinally (case-sensitive). String literals use '…' or "…".
//
// Parse errors are *ParseError values ("query: line 1, column 34: expected
// identifier after '.'") that unwrap to an errcode ArgumentInvalid error.
// Input length and nesting depth are bounded so hostile input stays cheap.
package query

import (
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
)

// MaxSelectLength is the longest registry query accepted, in characters: the
// 8192 IoT Hub documents for query expressions.
const MaxSelectLength = 8192

// Select is a compiled registry query. It is safe for concurrent use.
type Select struct {
	src     string
	from    string
	star    bool
	top     int // -1 when there is no TOP
	items   []selItem
	where   expr
	groupBy []*docPath
	grouped bool // aggregates or GROUP BY: one row per group
}

type selItem struct {
	x    expr
	path *docPath // x as a plain path, if it is one
	agg  *aggExpr // x as an aggregate, if it is one
	name string   // alias, or a generated "$n"; "" means the path's last property name
	pos  int
}

// ParseSelect compiles a registry query such as
// "SELECT * FROM devices WHERE tags.x = 'y' AND properties.reported.z > 3".
// Errors name the position of the problem.
//
// Grammar (keywords case-insensitive):
//
//	SELECT [TOP n] ( * | item [AS alias] {, item [AS alias]} )
//	FROM devices | devices.modules | devices.jobs
//	[WHERE condition]
//	[GROUP BY path {, path}]
//
// An item is a property path, any expression, or an aggregate COUNT(),
// COUNT(x), SUM(x), AVG(x), MIN(x), MAX(x). With aggregates or GROUP BY, the
// other items must be GROUP BY paths. Paths may start with the collection
// name (devices.jobs.jobId means jobId). Property names match exactly first,
// then ignoring case, so "SELECT DeviceId" returns the twin's "deviceId".
func ParseSelect(src string) (*Select, error) {
	p, perr := newParser(src, MaxSelectLength, false, bindDoc)
	if perr != nil {
		return nil, perr
	}
	s, perr := p.parseSelect()
	if perr != nil {
		return nil, perr
	}
	s.src = src
	return s, nil
}

func (p *parser) parseSelect() (*Select, *ParseError) {
	if !p.acceptKeyword("SELECT") {
		return nil, p.unexpected(p.peek(), "SELECT")
	}
	s := &Select{top: -1}
	if isKeyword(p.peek(), "TOP") && p.peekAt(1).kind == tNumber {
		p.i++
		n := p.advance()
		if n.num != math.Trunc(n.num) || n.num > math.MaxInt32 {
			return nil, p.errAt(n, "TOP needs a whole number")
		}
		s.top = int(n.num)
	}
	unnamed := 0
	if p.peek().kind == tStar {
		p.i++
		s.star = true
	} else {
		for {
			start := p.peek()
			p.allowAgg = true
			x, err := p.parseExpr()
			p.allowAgg = false
			if err != nil {
				return nil, err
			}
			it := selItem{x: x, pos: start.pos}
			switch e := x.(type) {
			case *aggExpr:
				if e.arg != nil {
					if a := containsAgg(e.arg); a != nil {
						return nil, errorAt(p.src, a.pos, "aggregates cannot be nested")
					}
				}
				it.agg = e
				s.grouped = true
			case *docPath:
				it.path = e
			default:
				if a := containsAgg(x); a != nil {
					return nil, errorAt(p.src, a.pos, "aggregate %s must be a SELECT item of its own", a.name)
				}
			}
			if p.acceptKeyword("AS") {
				t := p.peek()
				if t.kind != tIdent || reserved[strings.ToUpper(t.text)] {
					return nil, p.unexpected(t, "an alias after AS")
				}
				p.i++
				it.name = t.text
			} else if it.path == nil {
				unnamed++
				it.name = "$" + strconv.Itoa(unnamed)
			}
			s.items = append(s.items, it)
			if p.peek().kind != tComma {
				break
			}
			p.i++
		}
	}
	if !p.acceptKeyword("FROM") {
		return nil, p.unexpected(p.peek(), "',' or FROM")
	}
	coll := p.peek()
	if !isKeyword(coll, "devices") {
		return nil, p.unexpected(coll, "devices, devices.modules or devices.jobs")
	}
	p.i++
	s.from = "devices"
	if p.peek().kind == tDot {
		p.i++
		sub := p.peek()
		switch {
		case isKeyword(sub, "modules"):
			s.from = "devices.modules"
		case isKeyword(sub, "jobs"):
			s.from = "devices.jobs"
		case sub.kind == tIdent:
			return nil, p.errAt(sub, "unknown collection devices.%s (want devices, devices.modules or devices.jobs)", sub.text)
		default:
			return nil, p.errAt(sub, "expected identifier after '.'")
		}
		p.i++
	}
	if p.acceptKeyword("WHERE") {
		x, err := p.parseExpr()
		if err != nil {
			return nil, err
		}
		s.where = x
	}
	if g := p.peek(); isKeyword(g, "GROUP") {
		p.i++
		if !p.acceptKeyword("BY") {
			return nil, p.unexpected(p.peek(), "BY after GROUP")
		}
		if s.star {
			return nil, p.errAt(g, "GROUP BY needs a list of items, not SELECT *")
		}
		for {
			t := p.peek()
			x, err := p.parseExpr()
			if err != nil {
				return nil, err
			}
			dp, ok := x.(*docPath)
			if !ok || len(dp.segs) == 0 {
				return nil, p.errAt(t, "GROUP BY takes property paths")
			}
			s.groupBy = append(s.groupBy, dp)
			if p.peek().kind != tComma {
				break
			}
			p.i++
		}
		s.grouped = true
	}
	if t := p.peek(); t.kind != tEOF {
		return nil, p.unexpected(t, "end of query")
	}
	if s.grouped {
		for _, it := range s.items {
			if it.agg != nil {
				continue
			}
			if it.path == nil || !s.isGroupPath(it.path) {
				return nil, errorAt(p.src, it.pos, "with aggregates, every SELECT item must be an aggregate or a GROUP BY path")
			}
		}
	}
	return s, nil
}

func (s *Select) isGroupPath(dp *docPath) bool {
	ps := pathString(dp.segs)
	for _, g := range s.groupBy {
		if strings.EqualFold(ps, pathString(g.segs)) {
			return true
		}
	}
	return false
}

// bindDoc binds a reference to a path in a twin document. A leading
// collection name (devices, devices.modules, devices.jobs) is dropped, as in
// IoT Hub's "WHERE devices.jobs.deviceId = 'x'"; twin documents have no
// top-level "devices" property for it to shadow.
func bindDoc(_ *parser, r rawRef) (expr, *ParseError) {
	segs := make([]seg, 0, len(r.segs)+1)
	segs = append(segs, seg{name: r.root})
	segs = append(segs, r.segs...)
	if len(segs) > 1 && strings.EqualFold(segs[0].name, "devices") && !segs[1].isIdx {
		segs = segs[1:]
		if len(segs) > 1 && !segs[1].isIdx && (strings.EqualFold(segs[0].name, "modules") || strings.EqualFold(segs[0].name, "jobs")) {
			segs = segs[1:]
		}
	}
	return &docPath{segs: segs}, nil
}

// From is the collection the query reads: "devices", "devices.modules" or
// "devices.jobs".
func (s *Select) From() string { return s.from }

// String returns the query's source text.
func (s *Select) String() string { return s.src }

// Matches reports whether the WHERE clause is Boolean true for doc (always,
// without a WHERE clause).
func (s *Select) Matches(doc map[string]any) bool {
	return s.where == nil || s.where.eval(ctx{doc: doc}).isTrue()
}

// Execute applies the WHERE filter, the projection and any aggregation (COUNT()
// … GROUP BY) to docs, the twins of the collection as JSON-decoded values, and
// returns the result rows in order.
//
// SELECT * returns the matching documents themselves (not copies). Projections
// return map[string]any rows keyed by alias, or by the path's last property
// name as spelled in the document; undefined values are left out of a row.
// Projected values are the document's own (json.Number stays json.Number);
// computed values are float64, string, bool, nil, []any or map[string]any.
// Aggregate rows come one per group, in order of each group's first document;
// COUNT is an int, SUM and AVG float64, and without GROUP BY there is exactly
// one row, even over no documents. TOP n limits the rows returned.
func (s *Select) Execute(docs []map[string]any) ([]any, error) {
	if s == nil {
		return nil, errors.New("query: Execute on a nil *Select")
	}
	rows := make([]any, 0)
	if s.top == 0 {
		return rows, nil
	}
	if !s.grouped {
		for _, d := range docs {
			if !s.Matches(d) {
				continue
			}
			if s.star {
				rows = append(rows, d)
			} else {
				rows = append(rows, s.project(d))
			}
			if s.top > 0 && len(rows) >= s.top {
				break
			}
		}
		return rows, nil
	}
	return s.aggregate(docs), nil
}

func (s *Select) project(d map[string]any) map[string]any {
	row := make(map[string]any, len(s.items))
	for _, it := range s.items {
		if it.path != nil {
			v, key, ok := walk(d, it.path.segs)
			if !ok || fromAny(v).k == kUndef {
				continue
			}
			name := it.name
			if name == "" {
				name = key
			}
			row[name] = v
			continue
		}
		if v, ok := it.x.eval(ctx{doc: d}).toAny(); ok {
			row[it.name] = v
		}
	}
	return row
}

type group struct {
	doc  map[string]any // first document of the group
	accs []aggState
}

type aggState struct {
	count int
	sum   float64
	nums  int
	best  value
}

func (s *Select) aggregate(docs []map[string]any) []any {
	index := make(map[string]*group)
	var order []*group
	var kb strings.Builder
	for _, d := range docs {
		if !s.Matches(d) {
			continue
		}
		kb.Reset()
		for _, g := range s.groupBy {
			writeGroupKey(&kb, d, g)
		}
		key := kb.String()
		g := index[key]
		if g == nil {
			g = &group{doc: d, accs: make([]aggState, len(s.items))}
			index[key] = g
			order = append(order, g)
		}
		for i, it := range s.items {
			if it.agg != nil {
				g.accs[i].add(it.agg, d)
			}
		}
	}
	if len(order) == 0 && len(s.groupBy) == 0 {
		order = append(order, &group{accs: make([]aggState, len(s.items))})
	}
	if s.top > 0 && len(order) > s.top {
		order = order[:s.top]
	}
	rows := make([]any, 0, len(order))
	for _, g := range order {
		row := make(map[string]any, len(s.items))
		for i, it := range s.items {
			if it.agg != nil {
				if v, ok := g.accs[i].result(it.agg.name); ok {
					row[it.name] = v
				}
				continue
			}
			if g.doc == nil {
				continue
			}
			v, key, ok := walk(g.doc, it.path.segs)
			if !ok || fromAny(v).k == kUndef {
				continue
			}
			name := it.name
			if name == "" {
				name = key
			}
			row[name] = v
		}
		rows = append(rows, row)
	}
	return rows
}

// writeGroupKey appends an unambiguous encoding of the group value of d.
// Numbers group by value, whatever their Go type; undefined is its own group.
func writeGroupKey(b *strings.Builder, d map[string]any, g *docPath) {
	raw, _, ok := walk(d, g.segs)
	v := undef
	if ok {
		v = fromAny(raw)
	}
	switch v.k {
	case kUndef:
		b.WriteString("u;")
	case kNull:
		b.WriteString("z;")
	case kBool:
		if v.b {
			b.WriteString("t;")
		} else {
			b.WriteString("f;")
		}
	case kNum:
		b.WriteByte('n')
		b.WriteString(strconv.FormatFloat(v.n, 'g', -1, 64))
		b.WriteByte(';')
	case kStr:
		b.WriteByte('s')
		b.WriteString(strconv.Itoa(len(v.s)))
		b.WriteByte(':')
		b.WriteString(v.s)
	default:
		j, err := json.Marshal(v.c)
		if err != nil {
			b.WriteString("x;")
			return
		}
		b.WriteByte('j')
		b.WriteString(strconv.Itoa(len(j)))
		b.WriteByte(':')
		b.Write(j)
	}
}

func (a *aggState) add(e *aggExpr, d map[string]any) {
	if e.arg == nil {
		a.count++
		return
	}
	v := e.arg.eval(ctx{doc: d})
	switch e.name {
	case "COUNT":
		if v.k != kUndef {
			a.count++
		}
	case "SUM", "AVG":
		if v.k == kNum {
			a.sum += v.n
			a.nums++
		}
	case "MIN", "MAX":
		if typeRank(v.k) == 0 {
			return
		}
		if a.best.k == kUndef {
			a.best = v
			return
		}
		c := typeRank(v.k) - typeRank(a.best.k)
		if c == 0 {
			switch v.k {
			case kBool:
				c = boolRank(v.b) - boolRank(a.best.b)
			case kNum, kStr:
				c, _ = order(v, a.best)
			}
		}
		if (e.name == "MIN" && c < 0) || (e.name == "MAX" && c > 0) {
			a.best = v
		}
	}
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (a *aggState) result(name string) (any, bool) {
	switch name {
	case "COUNT":
		return a.count, true
	case "SUM":
		return a.sum, true
	case "AVG":
		if a.nums == 0 {
			return nil, false
		}
		return a.sum / float64(a.nums), true
	}
	return a.best.toAny()
}
