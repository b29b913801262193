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
	if a := math.Abs(v); a >= 1e-4 && a < 1e16 {
		// Python writes these in positional form with the same shortest round-trip digits
		// strconv's 'f' gives, plus ".0" when the value is integral (TestPyFloatFastPath).
		start := len(dst)
		dst = strconv.AppendFloat(dst, v, 'f', -1, 64)
		if bytes.IndexByte(dst[start:], '.') < 0 {
			dst = append(dst, ".0"...)
		}
		return dst, nil
	}
	return appendPyFloatGeneral(dst, v), nil
}

// appendPyFloatGeneral appends Python's repr of v, which is finite and non-zero, from its
// shortest digits and exponent; appendPyFloat uses it outside the positional fast path.
func appendPyFloatGeneral(dst []byte, v float64) []byte {
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
	return dst
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
