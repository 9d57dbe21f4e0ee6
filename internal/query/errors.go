package query

import (
	"fmt"
	"unicode/utf8"

	"github.com/moat-iot/moat/internal/errcode"
)

// ParseError is a syntax error in a query or condition. Line and Column are
// 1-based; Column counts characters (runes), not bytes, so it matches what a
// person sees in an editor.
type ParseError struct {
	Line   int
	Column int
	Msg    string
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("query: line %d, column %d: %s", e.Line, e.Column, e.Msg)
}

// Unwrap exposes the IoT Hub error code for a bad query (400 ArgumentInvalid),
// so that errcode.From on a parse error gives callers the same answer a real
// hub gives, with the position in the text.
func (e *ParseError) Unwrap() error {
	return &errcode.Error{Code: errcode.ArgumentInvalid, Message: e.Error()}
}

// errorAt builds a ParseError for byte offset off of src. The position is only
// computed on failure, which keeps the happy path free of bookkeeping.
func errorAt(src string, off int, format string, args ...any) *ParseError {
	if off > len(src) {
		off = len(src)
	}
	line, col := 1, 1
	for i := 0; i < off; {
		r, n := utf8.DecodeRuneInString(src[i:])
		i += n
		if r == '\n' {
			line++
			col = 1
		} else {
			col++
		}
	}
	return &ParseError{Line: line, Column: col, Msg: fmt.Sprintf(format, args...)}
}
