package query

import (
	"math"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

type tokKind uint8

const (
	tEOF tokKind = iota
	tIdent
	tNumber
	tString
	tLParen
	tRParen
	tLBrack
	tRBrack
	tComma
	tDot
	tStar
	tPlus
	tMinus
	tSlash
	tPercent
	tEq
	tNe
	tLt
	tGt
	tLe
	tGe
)

var tokNames = [...]string{
	tLParen: "'('", tRParen: "')'", tLBrack: "'['", tRBrack: "']'", tComma: "','", tDot: "'.'",
	tStar: "'*'", tPlus: "'+'", tMinus: "'-'", tSlash: "'/'", tPercent: "'%'",
	tEq: "'='", tNe: "'!='", tLt: "'<'", tGt: "'>'", tLe: "'<='", tGe: "'>='",
}

type token struct {
	kind tokKind
	pos  int // byte offset of the first character
	end  int // byte offset just past the token
	text string
	num  float64
}

// lexer turns source text into tokens. dashNames lets names contain interior
// '-' (routing conditions: $dt-dataschema, $iothub-message-source, and
// application properties such as iothub-message-schema); see lexIdent.
type lexer struct {
	src       string
	dashNames bool
}

func lex(src string, dashNames bool) ([]token, *ParseError) {
	lx := lexer{src: src, dashNames: dashNames}
	toks := make([]token, 0, 16)
	i := 0
	for {
		for i < len(src) && isSpace(src[i]) {
			i++
		}
		if i >= len(src) {
			toks = append(toks, token{kind: tEOF, pos: len(src), end: len(src)})
			return toks, nil
		}
		t, err := lx.next(i)
		if err != nil {
			return nil, err
		}
		toks = append(toks, t)
		i = t.end
	}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isIdentStart(r rune) bool { return r == '_' || unicode.IsLetter(r) }
func isIdentPart(r rune) bool  { return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) }

func (lx *lexer) next(i int) (token, *ParseError) {
	src := lx.src
	c := src[i]
	punct := func(k tokKind, n int) (token, *ParseError) { return token{kind: k, pos: i, end: i + n}, nil }
	switch {
	case c == '(':
		return punct(tLParen, 1)
	case c == ')':
		return punct(tRParen, 1)
	case c == '[':
		return punct(tLBrack, 1)
	case c == ']':
		return punct(tRBrack, 1)
	case c == ',':
		return punct(tComma, 1)
	case c == '.':
		return punct(tDot, 1)
	case c == '*':
		return punct(tStar, 1)
	case c == '+':
		return punct(tPlus, 1)
	case c == '-':
		return punct(tMinus, 1)
	case c == '/':
		return punct(tSlash, 1)
	case c == '%':
		return punct(tPercent, 1)
	case c == '=':
		return punct(tEq, 1)
	case c == '!':
		if i+1 < len(src) && src[i+1] == '=' {
			return punct(tNe, 2)
		}
		return token{}, errorAt(src, i, "unexpected '!' (use NOT or !=)")
	case c == '<':
		if i+1 < len(src) && src[i+1] == '=' {
			return punct(tLe, 2)
		}
		if i+1 < len(src) && src[i+1] == '>' {
			return punct(tNe, 2)
		}
		return punct(tLt, 1)
	case c == '>':
		if i+1 < len(src) && src[i+1] == '=' {
			return punct(tGe, 2)
		}
		return punct(tGt, 1)
	case c == '\'' || c == '"':
		return lx.lexString(i)
	case c >= '0' && c <= '9':
		return lx.lexNumber(i)
	case c == '$':
		r, _ := utf8.DecodeRuneInString(src[i+1:])
		if !isIdentStart(r) {
			return token{}, errorAt(src, i, "expected a name after '$'")
		}
		return lx.lexIdent(i, i+1), nil
	}
	r, _ := utf8.DecodeRuneInString(src[i:])
	if isIdentStart(r) {
		return lx.lexIdent(i, i), nil
	}
	if r == utf8.RuneError {
		return token{}, errorAt(src, i, "invalid UTF-8")
	}
	return token{}, errorAt(src, i, "unexpected character %q", r)
}

// lexIdent reads a name starting at start (the '$', if any) whose first name
// character is at j. With dashNames, '-' joins two name parts when a letter or
// '_' follows it, so "$dt-subject" and "iothub-message-schema" are single
// names, while "temp-1" and "a - b" stay subtractions.
func (lx *lexer) lexIdent(start, j int) token {
	src := lx.src
	for j < len(src) {
		r, n := utf8.DecodeRuneInString(src[j:])
		if isIdentPart(r) {
			j += n
			continue
		}
		if r == '-' && lx.dashNames && j+1 < len(src) {
			r2, _ := utf8.DecodeRuneInString(src[j+1:])
			if isIdentStart(r2) {
				j++
				continue
			}
		}
		break
	}
	return token{kind: tIdent, pos: start, end: j, text: src[start:j]}
}

func (lx *lexer) lexNumber(i int) (token, *ParseError) {
	src := lx.src
	j := i
	var v float64
	if src[i] == '0' && i+1 < len(src) && (src[i+1] == 'x' || src[i+1] == 'X') {
		j = i + 2
		for j < len(src) && isHex(src[j]) {
			j++
		}
		if j == i+2 {
			return token{}, errorAt(src, i, "hexadecimal number needs digits after 0x")
		}
		u, err := strconv.ParseUint(src[i+2:j], 16, 64)
		if err != nil {
			return token{}, errorAt(src, i, "number out of range")
		}
		v = float64(u)
	} else {
		for j < len(src) && isDigit(src[j]) {
			j++
		}
		if j+1 < len(src) && src[j] == '.' && isDigit(src[j+1]) {
			j++
			for j < len(src) && isDigit(src[j]) {
				j++
			}
		}
		if j < len(src) && (src[j] == 'e' || src[j] == 'E') {
			k := j + 1
			if k < len(src) && (src[k] == '+' || src[k] == '-') {
				k++
			}
			if k >= len(src) || !isDigit(src[k]) {
				return token{}, errorAt(src, i, "malformed number exponent")
			}
			for k < len(src) && isDigit(src[k]) {
				k++
			}
			j = k
		}
		f, err := strconv.ParseFloat(src[i:j], 64)
		if err != nil || math.IsInf(f, 0) {
			return token{}, errorAt(src, i, "number out of range")
		}
		v = f
	}
	if j < len(src) {
		if r, _ := utf8.DecodeRuneInString(src[j:]); isIdentStart(r) || r == '$' {
			return token{}, errorAt(src, i, "malformed number")
		}
	}
	return token{kind: tNumber, pos: i, end: j, num: v}, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isHex(c byte) bool {
	return isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// lexString reads a '…' or "…" literal. Escapes follow the IoT Hub query
// reference (\' \" \\ \uXXXX) plus JSON's \/ \b \f \n \r \t.
func (lx *lexer) lexString(i int) (token, *ParseError) {
	src := lx.src
	q := src[i]
	j := i + 1
	// Fast path: no escapes, the value is a slice of the source.
	for j < len(src) && src[j] != q && src[j] != '\\' {
		j++
	}
	if j < len(src) && src[j] == q {
		return token{kind: tString, pos: i, end: j + 1, text: src[i+1 : j]}, nil
	}
	var b strings.Builder
	b.WriteString(src[i+1 : j])
	for {
		if j >= len(src) {
			return token{}, errorAt(src, i, "unterminated string")
		}
		c := src[j]
		if c == q {
			return token{kind: tString, pos: i, end: j + 1, text: b.String()}, nil
		}
		if c != '\\' {
			b.WriteByte(c)
			j++
			continue
		}
		if j+1 >= len(src) {
			return token{}, errorAt(src, i, "unterminated string")
		}
		e := src[j+1]
		switch e {
		case '\'', '"', '\\', '/':
			b.WriteByte(e)
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'u':
			r, ok := hex4(src, j+2)
			if !ok {
				return token{}, errorAt(src, j, "malformed \\u escape (want 4 hexadecimal digits)")
			}
			j += 6
			if r >= 0xD800 && r < 0xDC00 {
				if r2, ok := hex4(src, j+2); ok && j+1 < len(src) && src[j] == '\\' && src[j+1] == 'u' && r2 >= 0xDC00 && r2 < 0xE000 {
					r = 0x10000 + (r-0xD800)<<10 + (r2 - 0xDC00)
					j += 6
				} else {
					r = utf8.RuneError
				}
			} else if r >= 0xDC00 && r < 0xE000 {
				r = utf8.RuneError
			}
			b.WriteRune(r)
			continue
		default:
			return token{}, errorAt(src, j, "unknown escape '\\%c' in string", e)
		}
		j += 2
	}
}

func hex4(s string, i int) (rune, bool) {
	if i < 0 || i+4 > len(s) {
		return 0, false
	}
	var r rune
	for k := i; k < i+4; k++ {
		c := s[k]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(d)
	}
	return r, true
}
