package envelope

import (
	"bytes"
	"fmt"
	"math"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// Float is a float64 that marshals the way Python's json module writes floats (repr: the
// shortest text that round-trips, "1.0" rather than "1", "1e-05" rather than "0.00001").
// Payload types use it so that a v1 payload is byte-identical to the Python core's.
type Float float64

// MarshalJSON implements json.Marshaler.
func (f Float) MarshalJSON() ([]byte, error) { return appendPyFloat(nil, float64(f)) }

// appendPyFloat appends Python's repr of v. NaN and infinities are rejected: JSON has no such
// numbers (Python would write NaN, which no other reader accepts).
func appendPyFloat(dst []byte, v float64) ([]byte, error) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return dst, fmt.Errorf("envelope: %v is not a JSON number", v)
	}
	if v == 0 {
		if math.Signbit(v) {
			return append(dst, "-0.0"...), nil
		}
		return append(dst, "0.0"...), nil
	}
	// Shortest round-trip digits and exponent, e.g. "-1.2345e+09".
	var buf, dbuf [32]byte
	e := strconv.AppendFloat(buf[:0], v, 'e', -1, 64)
	neg := e[0] == '-'
	if neg {
		e = e[1:]
	}
	mant, expText, _ := bytes.Cut(e, []byte{'e'})
	exp := 0
	for _, c := range expText[1:] { // after the sign strconv always writes
		exp = exp*10 + int(c-'0')
	}
	if expText[0] == '-' {
		exp = -exp
	}
	digits := dbuf[:0]
	for _, c := range mant {
		if c != '.' {
			digits = append(digits, c)
		}
	}
	decpt := exp + 1 // value = 0.<digits> × 10^decpt
	if neg {
		dst = append(dst, '-')
	}
	switch {
	case decpt <= -4 || decpt > 16: // Python's repr switches to exponent form here
		dst = append(dst, digits[0])
		if len(digits) > 1 {
			dst = append(dst, '.')
			dst = append(dst, digits[1:]...)
		}
		dst = append(dst, 'e')
		if exp < 0 {
			dst = append(dst, '-')
			exp = -exp
		} else {
			dst = append(dst, '+')
		}
		if exp < 10 {
			dst = append(dst, '0')
		}
		dst = strconv.AppendInt(dst, int64(exp), 10)
	case decpt <= 0:
		dst = append(dst, "0."...)
		for i := 0; i < -decpt; i++ {
			dst = append(dst, '0')
		}
		dst = append(dst, digits...)
	case decpt >= len(digits):
		dst = append(dst, digits...)
		for i := len(digits); i < decpt; i++ {
			dst = append(dst, '0')
		}
		dst = append(dst, ".0"...)
	default:
		dst = append(dst, digits[:decpt]...)
		dst = append(dst, '.')
		dst = append(dst, digits[decpt:]...)
	}
	return dst, nil
}

// pyStyle is a way Python writes JSON.
type pyStyle struct {
	// spaced selects json.dumps' default ", " and ": " separators instead of "," and ":".
	spaced bool
	// ascii escapes every character outside ' '..'~' as \uXXXX (json.dumps' ensure_ascii);
	// otherwise non-ASCII characters and DEL are written as UTF-8 (pydantic's dump).
	ascii bool
}

var (
	// pyDumps is json.dumps(value): the v1 wire form of a payload.
	pyDumps = pyStyle{spaced: true, ascii: true}
	// pyCompact is pydantic's model_dump_json(): what the Python core hashes.
	pyCompact = pyStyle{}
)

// appendPyJSON appends the JSON text src re-written the way Python writes the value it
// denotes: insignificant whitespace dropped, the separators of st, and every string
// re-escaped from its decoded value (so "\u0041" and "A", "\/" and "/" no longer differ, and
// Go's HTML escapes such as "\u003c" become "<"). Object key order and number text are kept
// as they are; payload types use Float so that numbers read as Python's. src must be valid
// JSON (a string may hold invalid UTF-8, which becomes U+FFFD). The result does not depend on
// how src was laid out or escaped: appendPyJSON of its own output returns that output.
func appendPyJSON(dst, src []byte, st pyStyle) []byte {
	for i := 0; i < len(src); {
		switch c := src[i]; c {
		case ' ', '\t', '\n', '\r':
			i++
		case '"':
			var n int
			dst, n = appendPyStringToken(dst, src[i:], st.ascii)
			i += n
		case ',':
			dst = append(dst, ',')
			if st.spaced {
				dst = append(dst, ' ')
			}
			i++
		case ':':
			dst = append(dst, ':')
			if st.spaced {
				dst = append(dst, ' ')
			}
			i++
		default:
			dst = append(dst, c)
			i++
		}
	}
	return dst
}

// appendPyStringToken re-escapes the JSON string token at the start of src (which begins with
// its opening quote) and returns how many bytes of src it spans. Escaped surrogate pairs are
// joined; a lone escaped surrogate stays a \uXXXX escape, as Python keeps it.
func appendPyStringToken(dst, src []byte, ascii bool) ([]byte, int) {
	dst = append(dst, '"')
	for i := 1; i < len(src); {
		c := src[i]
		switch {
		case c == '"':
			return append(dst, '"'), i + 1
		case c >= 0x20 && c < 0x7f && c != '\\':
			dst = append(dst, c)
			i++
		case c == '\\':
			esc := src[i+1]
			if esc != 'u' {
				dst = appendPyRune(dst, rune(unescapeChar(esc)), ascii)
				i += 2
				continue
			}
			u := hex4(src[i+2:])
			i += 6
			if utf16.IsSurrogate(u) {
				if u < 0xdc00 && i+6 <= len(src) && src[i] == '\\' && src[i+1] == 'u' {
					if lo := hex4(src[i+2:]); lo >= 0xdc00 && lo <= 0xdfff {
						dst = appendPyRune(dst, utf16.DecodeRune(u, lo), ascii)
						i += 6
						continue
					}
				}
				dst = appendEscape(dst, u)
				continue
			}
			dst = appendPyRune(dst, u, ascii)
		case c < utf8.RuneSelf:
			dst = appendPyRune(dst, rune(c), ascii)
			i++
		default:
			r, size := utf8.DecodeRune(src[i:])
			dst = appendPyRune(dst, r, ascii)
			i += size
		}
	}
	return dst, len(src) // unreachable for valid JSON
}

// unescapeChar returns the character a one-letter JSON escape stands for.
func unescapeChar(esc byte) byte {
	switch esc {
	case 'b':
		return '\b'
	case 'f':
		return '\f'
	case 'n':
		return '\n'
	case 'r':
		return '\r'
	case 't':
		return '\t'
	}
	return esc // '"', '\\', '/'
}

// hex4 parses the four hex digits at the start of b.
func hex4(b []byte) rune {
	var r rune
	for _, c := range b[:4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		}
	}
	return r
}

// appendPyRune appends r as it appears inside a JSON string Python writes: the short escapes
// json.dumps and pydantic use, \u00XX for other control characters, and with ascii every
// character outside ' '..'~' as \uXXXX (a surrogate pair beyond the BMP).
func appendPyRune(dst []byte, r rune, ascii bool) []byte {
	switch {
	case r == '"' || r == '\\':
		return append(dst, '\\', byte(r))
	case r == '\n':
		return append(dst, '\\', 'n')
	case r == '\r':
		return append(dst, '\\', 'r')
	case r == '\t':
		return append(dst, '\\', 't')
	case r == '\b':
		return append(dst, '\\', 'b')
	case r == '\f':
		return append(dst, '\\', 'f')
	case r < 0x20:
		return appendEscape(dst, r)
	case r < 0x7f:
		return append(dst, byte(r))
	case !ascii:
		return utf8.AppendRune(dst, r)
	}
	return appendUnicodeEscape(dst, r)
}

func appendUnicodeEscape(dst []byte, r rune) []byte {
	if r >= 0x10000 {
		hi, lo := utf16.EncodeRune(r)
		return appendEscape(appendEscape(dst, hi), lo)
	}
	return appendEscape(dst, r)
}

// appendEscape appends \uXXXX (lower-case hex, as Python writes it) for a UTF-16 code unit.
func appendEscape(dst []byte, u rune) []byte {
	const hex = "0123456789abcdef"
	return append(dst, '\\', 'u', hex[u>>12&0xf], hex[u>>8&0xf], hex[u>>4&0xf], hex[u&0xf])
}

// isJSONObject reports whether the JSON text b starts with an object (after whitespace).
func isJSONObject(b []byte) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		}
		return c == '{'
	}
	return false
}

// validJSON checks that src is exactly one JSON value (surrounding whitespace allowed).
func validJSON(src []byte) error {
	r := reader{b: src}
	if r.skip(0) && r.peek() != 0 {
		r.fail("data after the JSON value")
	}
	return r.err
}

// compactJSON returns src without the whitespace outside strings, after checking that it is
// valid JSON. When there is no such whitespace it returns src itself (callers only read it).
func compactJSON(src []byte) ([]byte, error) {
	if err := validJSON(src); err != nil {
		return nil, err
	}
	return stripJSONSpace(src), nil
}

// stripJSONSpace returns valid JSON src without the whitespace outside strings: src itself
// when it has none, else a copy.
func stripJSONSpace(src []byte) []byte {
	inString := false
	for i := 0; i < len(src); i++ {
		switch c := src[i]; {
		case inString:
			switch c {
			case '\\':
				i++
			case '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			return appendCompact(make([]byte, 0, len(src)), src)
		}
	}
	return src
}

// appendCompact appends valid JSON src without the whitespace outside strings.
func appendCompact(dst, src []byte) []byte {
	inString := false
	start := 0
	for i := 0; i < len(src); i++ {
		switch c := src[i]; {
		case inString:
			switch c {
			case '\\':
				i++
			case '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			dst = append(dst, src[start:i]...)
			start = i + 1
		}
	}
	return append(dst, src[start:]...)
}
