package envelope

import (
	"unicode/utf16"
	"unicode/utf8"
)

// The package's one JSON grammar. Every walk over JSON text that is not the decoding of an
// envelope's own fields goes through walker: checking a payload (validJSON, the reader's
// skip of a value it does not keep), compacting it (compactJSON) and writing a v1 payload's
// two Python forms (appendPyForms). Each is one pass that checks exactly the same grammar
// (one JSON value, nesting at most maxDepth deep, nothing after it but whitespace) and
// reports the same first error, with its offset.

// walkMode is what a walk writes besides checking.
type walkMode uint8

const (
	// walkCheck writes nothing; it notes whether there is whitespace outside strings.
	walkCheck walkMode = iota
	// walkCompact writes the text without the whitespace outside strings to c (strings and
	// numbers as they are).
	walkCompact
	// walkPy writes json.dumps' form (", " and ": " separators, ASCII-only strings) to d and
	// pydantic's compact dump (no spaces, UTF-8 strings) to c. Strings are re-escaped from
	// their decoded value (escaped surrogate pairs joined, a lone surrogate kept as a \uXXXX
	// escape, as Python keeps it; invalid UTF-8 as U+FFFD); number and literal text is
	// copied.
	walkPy
)

// walker walks JSON text src from i. Its first error is err (msg empty while there is none).
type walker struct {
	src   []byte
	i     int
	mode  walkMode
	space bool // whitespace seen outside strings
	d, c  []byte
	err   errSyntax
}

// walkJSON walks all of src as one JSON value in mode, appending to d and c.
func walkJSON(src []byte, mode walkMode, d, c []byte) walker {
	w := walker{src: src, mode: mode, d: d, c: c}
	if w.value(0) {
		w.ws()
		if w.i != len(src) {
			w.fail("data after the JSON value")
		}
	}
	return w
}

// error returns the walk's first error, or nil.
func (w *walker) error() error {
	if w.err.msg == "" {
		return nil
	}
	e := w.err
	return &e
}

// fail records msg at the current offset, unless an error is recorded already; it returns
// false, for the caller to return.
func (w *walker) fail(msg string) bool {
	if w.err.msg == "" {
		w.err = errSyntax{msg: msg, off: w.i}
	}
	return false
}

func (w *walker) ws() {
	for w.i < len(w.src) {
		switch w.src[w.i] {
		case ' ', '\t', '\n', '\r':
			w.i++
			w.space = true
		default:
			return
		}
	}
}

// punct consumes the byte at w.i, which is p, writing it (and, in json.dumps' form when
// spaced, a space after it).
func (w *walker) punct(p byte, spaced bool) {
	w.i++
	switch w.mode {
	case walkPy:
		if spaced {
			w.d = append(w.d, p, ' ')
		} else {
			w.d = append(w.d, p)
		}
		w.c = append(w.c, p)
	case walkCompact:
		w.c = append(w.c, p)
	}
}

// text consumes the next n bytes, a number or a literal, writing them as they are.
func (w *walker) text(n int) {
	switch w.mode {
	case walkPy:
		w.d = append(w.d, w.src[w.i:w.i+n]...)
		w.c = append(w.c, w.src[w.i:w.i+n]...)
	case walkCompact:
		w.c = append(w.c, w.src[w.i:w.i+n]...)
	}
	w.i += n
}

// at reports whether the next byte after whitespace is b.
func (w *walker) at(b byte) bool {
	w.ws()
	return w.i < len(w.src) && w.src[w.i] == b
}

// value walks the value after whitespace at w.i, at the given nesting depth.
func (w *walker) value(depth int) bool {
	if depth > maxDepth {
		return w.fail("nested too deeply")
	}
	w.ws()
	if w.i >= len(w.src) {
		return w.fail("unexpected end of input")
	}
	switch c := w.src[w.i]; c {
	case '{':
		if w.open('{', '}') {
			return true
		}
		for {
			if !w.at('"') {
				return w.fail("expected a field name")
			}
			if !w.str() {
				return false
			}
			if !w.at(':') {
				return w.fail("expected ':'")
			}
			w.punct(':', true)
			if !w.value(depth + 1) {
				return false
			}
			if more, ok := w.next('}', "expected ',' or '}'"); !more {
				return ok
			}
		}
	case '[':
		if w.open('[', ']') {
			return true
		}
		for {
			if !w.value(depth + 1) {
				return false
			}
			if more, ok := w.next(']', "expected ',' or ']'"); !more {
				return ok
			}
		}
	case '"':
		return w.str()
	case 't':
		return w.literal("true")
	case 'f':
		return w.literal("false")
	case 'n':
		return w.literal("null")
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		end, ok := scanNumber(w.src, w.i)
		if !ok {
			w.i = end
			return w.fail("invalid number")
		}
		w.text(end - w.i)
		return true
	}
	return w.fail("unexpected character")
}

// open consumes the opener at w.i and reports whether the object or array ends at once
// (closer consumed too).
func (w *walker) open(opener, closer byte) bool {
	w.punct(opener, false)
	if w.at(closer) {
		w.punct(closer, false)
		return true
	}
	return false
}

// next consumes what follows a member or an element: ',' (more to come) or closer (the end);
// anything else fails with msg.
func (w *walker) next(closer byte, msg string) (more, ok bool) {
	w.ws()
	if w.i < len(w.src) {
		switch w.src[w.i] {
		case ',':
			w.punct(',', true)
			return true, true
		case closer:
			w.punct(closer, false)
			return false, true
		}
	}
	return false, w.fail(msg)
}

func (w *walker) literal(word string) bool {
	if !hasLiteral(w.src, w.i, word) {
		return w.fail("invalid literal")
	}
	w.text(len(word))
	return true
}

// hasLiteral reports whether b holds word at i.
func hasLiteral(b []byte, i int, word string) bool {
	return len(b)-i >= len(word) && string(b[i:i+len(word)]) == word
}

// str walks the string token at w.i.
func (w *walker) str() bool {
	if w.mode == walkPy {
		return w.pyStr()
	}
	src := w.src
	start := w.i
	for i := start + 1; i < len(src); {
		switch c := src[i]; {
		case c == '"':
			w.i = i + 1
			if w.mode == walkCompact {
				w.c = append(w.c, src[start:w.i]...)
			}
			return true
		case c == '\\':
			n, ok := w.escape(i)
			if !ok {
				return false
			}
			i += n
		case c < 0x20:
			w.i = i
			return w.fail("control character in string")
		default:
			i = plainEnd(src, i+1)
		}
	}
	w.i = len(src)
	return w.fail("unterminated string")
}

// escape checks the escape sequence at i and returns its length.
func (w *walker) escape(i int) (int, bool) {
	src := w.src
	if i+1 >= len(src) {
		w.i = len(src)
		return 0, w.fail("unterminated string")
	}
	switch src[i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return 2, true
	case 'u':
		w.i = i
		if i+6 > len(src) {
			return 0, w.fail("short \\u escape")
		}
		if !isHex4(src[i+2 : i+6]) {
			return 0, w.fail("invalid \\u escape")
		}
		return 6, true
	}
	w.i = i
	return 0, w.fail("invalid escape")
}

// pyStr re-escapes the string token at w.i into both Python forms.
func (w *walker) pyStr() bool {
	src := w.src
	i := w.i + 1
	w.d = append(w.d, '"')
	w.c = append(w.c, '"')
	start := i
	for i < len(src) {
		c := src[i]
		if plainByte[c] {
			i = plainEnd(src, i+1)
			continue
		}
		w.d = append(w.d, src[start:i]...)
		w.c = append(w.c, src[start:i]...)
		switch {
		case c == '"':
			w.d = append(w.d, '"')
			w.c = append(w.c, '"')
			w.i = i + 1
			return true
		case c < 0x20:
			w.i = i
			return w.fail("control character in string")
		case c == '\\':
			n, ok := w.escape(i)
			if !ok {
				return false
			}
			if n == 2 {
				r := rune(unescapeChar(src[i+1]))
				w.d = appendPyRune(w.d, r, true)
				w.c = appendPyRune(w.c, r, false)
				i += 2
				break
			}
			u := hex4(src[i+2:])
			i += 6
			if utf16.IsSurrogate(u) {
				if u < 0xdc00 && i+1 < len(src) && src[i] == '\\' && src[i+1] == 'u' {
					if _, ok := w.escape(i); !ok {
						return false // the next escape is invalid
					}
					if lo := hex4(src[i+2:]); lo >= 0xdc00 && lo <= 0xdfff {
						r := utf16.DecodeRune(u, lo)
						w.d = appendUnicodeEscape(w.d, r)
						w.c = utf8.AppendRune(w.c, r)
						i += 6
						break
					}
				}
				// A lone surrogate stays an escape, as Python keeps it.
				w.d = appendEscape(w.d, u)
				w.c = appendEscape(w.c, u)
				break
			}
			w.d = appendPyRune(w.d, u, true)
			w.c = appendPyRune(w.c, u, false)
		case c < utf8.RuneSelf: // DEL
			w.d = appendEscape(w.d, rune(c))
			w.c = append(w.c, c)
			i++
		default:
			r, size := utf8.DecodeRune(src[i:])
			w.d = appendUnicodeEscape(w.d, r)
			if r != utf8.RuneError || size == 3 {
				w.c = append(w.c, src[i:i+size]...)
			} else {
				w.c = utf8.AppendRune(w.c, r) // invalid UTF-8 becomes U+FFFD
			}
			i += size
		}
		start = i
	}
	w.i = len(src)
	return w.fail("unterminated string")
}

// appendPyForms appends to dumps and compact the json.dumps and compact forms (walkPy) of
// the JSON text src. On error the buffers hold partial output.
func appendPyForms(dumps, compact, src []byte) (d, c []byte, err error) {
	w := walkJSON(src, walkPy, dumps, compact)
	return w.d, w.c, w.error()
}

// validJSON checks that src is exactly one JSON value (surrounding whitespace allowed).
func validJSON(src []byte) error {
	w := walkJSON(src, walkCheck, nil, nil)
	return w.error()
}

// compactJSON returns src without the whitespace outside strings, after checking that it is
// valid JSON. When there is no such whitespace it returns src itself (callers only read it).
func compactJSON(src []byte) ([]byte, error) {
	w := walkJSON(src, walkCheck, nil, nil)
	if err := w.error(); err != nil {
		return nil, err
	}
	if !w.space {
		return src, nil
	}
	w = walkJSON(src, walkCompact, nil, make([]byte, 0, len(src)))
	return w.c, nil
}

// plainByte marks the bytes a JSON string holds as they are in every form: ' '..'~' but the
// quote and the backslash.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < 0x7f; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// scanNumber returns the end of the JSON number at src[i:] and whether its grammar holds;
// on failure the end is where it breaks.
func scanNumber(src []byte, i int) (int, bool) {
	if i < len(src) && src[i] == '-' {
		i++
	}
	switch {
	case i >= len(src):
		return i, false
	case src[i] == '0':
		i++
	case src[i] >= '1' && src[i] <= '9':
		i = digitsEnd(src, i+1)
	default:
		return i, false
	}
	if i < len(src) && src[i] == '.' {
		d := i + 1
		if i = digitsEnd(src, d); i == d {
			return i, false
		}
	}
	if i < len(src) && (src[i] == 'e' || src[i] == 'E') {
		i++
		if i < len(src) && (src[i] == '+' || src[i] == '-') {
			i++
		}
		d := i
		if i = digitsEnd(src, d); i == d {
			return i, false
		}
	}
	return i, true
}

func digitsEnd(src []byte, i int) int {
	for i < len(src) && src[i] >= '0' && src[i] <= '9' {
		i++
	}
	return i
}
