package query

import (
	"strings"
)

// MaxConditionLength is the longest routing or twin condition accepted, in
// characters. IoT Hub documents 8192 characters for query expressions.
const MaxConditionLength = 8192

// Env is the message a routing condition is evaluated against. The routing
// engine implements it over its message type; MapEnv is a simple one.
// Implementations should answer from memory: Match calls them once per
// reference in the condition, so Body in particular should decode once and
// cache.
type Env interface {
	// SystemProperty returns a system property by its query name without the
	// '$' (contentType, contentEncoding, connectionDeviceId,
	// connectionModuleId, enqueuedTime, dt-dataschema, dt-subject,
	// correlationId, userId, messageId, iothub-…), matched case-insensitively.
	SystemProperty(name string) (string, bool)
	// AppProperty returns an application property, matched case-insensitively.
	AppProperty(name string) (string, bool)
	// Body returns the decoded JSON body. It reports false unless the message
	// is JSON that routing may query (content type application/json, encoding
	// UTF-8, UTF-16 or UTF-32, and a body that decodes); $body references are
	// then undefined.
	Body() (any, bool)
	// Twin returns the twin of the sending device, or of the sending module
	// for module messages, for $twin references.
	Twin() (map[string]any, bool)
}

// Truth is the three-valued result of a condition.
type Truth int8

// The results of a condition. Only True routes; IoT Hub logs Undefined (a
// condition that evaluates to undefined, null or a non-Boolean) as a routing
// error, so the routing engine may want to tell it from False.
const (
	Undefined Truth = iota
	False
	True
)

func (t Truth) String() string {
	switch t {
	case True:
		return "true"
	case False:
		return "false"
	}
	return "undefined"
}

// Condition is a compiled routing condition, such as
// "$connectionDeviceId = 'd1' AND as_number(severity) <= 2" or
// "$body.Weather.Temperature > 50 AND $twin.tags.floor = '1'". It is safe for
// concurrent use.
//
// References:
//   - $body.a.b[0].c — the JSON body (see Env.Body);
//   - $twin.tags.…, $twin.properties.desired|reported.… — the twin;
//   - $name — a system property, else an application property named "$name";
//   - name — an application property; "a.b" names the property "a.b".
//
// Names may contain '-' between letters ($dt-subject, iothub-message-schema);
// write "a - b" or "temp-1" for subtraction. Property and path lookups try the
// exact name, then ignore case, as IoT Hub documents for routing.
//
// Application and system property values are strings, as IoT Hub documents
// ("all message properties are strings"). A string never equals or orders
// against a number, so with severity="2", "severity <= 2" is undefined (no
// route) and "as_number(severity) <= 2" is true; likewise "verbose = true"
// needs "verbose = 'true'".
type Condition struct {
	src string
	x   expr
}

// ParseCondition compiles a routing condition. Errors are *ParseError values
// naming the line and column of the problem.
func ParseCondition(src string) (*Condition, error) {
	x, err := parseCondition(src, bindRoute)
	if err != nil {
		return nil, err
	}
	return &Condition{src: src, x: x}, nil
}

func parseCondition(src string, bind binder) (expr, error) {
	p, perr := newParser(src, MaxConditionLength, true, bind)
	if perr != nil {
		return nil, perr
	}
	if p.peek().kind == tEOF {
		return nil, p.errAt(p.peek(), "empty condition")
	}
	x, perr := p.parseExpr()
	if perr != nil {
		return nil, perr
	}
	if t := p.peek(); t.kind != tEOF {
		return nil, p.unexpected(t, "an operator or end of condition")
	}
	return x, nil
}

// String returns the condition's source text.
func (c *Condition) String() string { return c.src }

// Match reports whether the condition is Boolean true for env. A nil env
// leaves every reference undefined.
func (c *Condition) Match(env Env) bool { return c.x.eval(ctx{env: env}).isTrue() }

// Evaluate is Match with the three-valued result.
func (c *Condition) Evaluate(env Env) Truth { return truth(c.x.eval(ctx{env: env})) }

func truth(v value) Truth {
	if v.k != kBool {
		return Undefined
	}
	if v.b {
		return True
	}
	return False
}

func bindRoute(p *parser, r rawRef) (expr, *ParseError) {
	if strings.HasPrefix(r.root, "$") {
		name := r.root[1:]
		switch {
		case strings.EqualFold(name, "body"):
			return &bodyPath{segs: r.segs}, nil
		case strings.EqualFold(name, "twin"):
			return &twinPath{segs: r.segs}, nil
		}
		if len(r.segs) > 0 {
			return nil, errorAt(p.src, r.pos, "system property %s is a string and has no fields", r.root)
		}
		return &sysRef{name: name, appName: r.root}, nil
	}
	name := r.root
	if len(r.segs) > 0 {
		var b strings.Builder
		b.WriteString(r.root)
		for _, s := range r.segs {
			if s.isIdx {
				return nil, errorAt(p.src, r.pos, "application property %s is a string and has no elements", r.root)
			}
			b.WriteByte('.')
			b.WriteString(s.name)
		}
		name = b.String()
	}
	return &appRef{name: name}, nil
}

// TwinCondition is a compiled condition over one twin document: the WHERE
// part of a registry query on its own, as used by jobs (queryCondition) and
// configurations (targetCondition), e.g. "tags.environment = 'prod' AND
// properties.reported.fw < 3". It is safe for concurrent use.
type TwinCondition struct {
	src string
	x   expr
}

// ParseTwinCondition compiles a condition over twin documents with the same
// rules as a registry query's WHERE clause.
func ParseTwinCondition(src string) (*TwinCondition, error) {
	x, err := parseCondition(src, bindDoc)
	if err != nil {
		return nil, err
	}
	return &TwinCondition{src: src, x: x}, nil
}

// String returns the condition's source text.
func (c *TwinCondition) String() string { return c.src }

// Match reports whether the condition is Boolean true for the twin doc.
func (c *TwinCondition) Match(doc map[string]any) bool {
	return c.x.eval(ctx{doc: doc}).isTrue()
}

// MapEnv is an Env over plain maps, for tests and simple callers. Lookups
// try the exact key, then ignore case.
type MapEnv struct {
	System  map[string]string // system properties, keys without '$'
	App     map[string]string // application properties
	JSON    any               // decoded body, used when HasJSON
	HasJSON bool
	TwinDoc map[string]any
}

var _ Env = (*MapEnv)(nil)

func (m *MapEnv) SystemProperty(name string) (string, bool) { return foldGet(m.System, name) }
func (m *MapEnv) AppProperty(name string) (string, bool)    { return foldGet(m.App, name) }
func (m *MapEnv) Body() (any, bool)                         { return m.JSON, m.HasJSON }
func (m *MapEnv) Twin() (map[string]any, bool)              { return m.TwinDoc, m.TwinDoc != nil }

func foldGet(m map[string]string, k string) (string, bool) {
	if v, ok := m[k]; ok {
		return v, true
	}
	for kk, v := range m {
		if strings.EqualFold(kk, k) {
			return v, true
		}
	}
	return "", false
}
