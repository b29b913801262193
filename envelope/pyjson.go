package envelope

import (
	"bytes"
	"encoding/json"
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
	var buf [32]byte
	e := strconv.AppendFloat(buf[:0], v, 'e', -1, 64)
	neg := e[0] == '-'
	if neg {
		e = e[1:]
	}
	mant, expText, _ := bytes.Cut(e, []byte{'e'})
	exp, _ := strconv.Atoi(string(expText))
	digits := make([]byte, 0, len(mant))
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

// appendPySpaced appends the JSON text src re-laid-out as Python's json.dumps writes it by
// default: ", " and ": " separators, and every non-ASCII character escaped as \uXXXX
// (ensure_ascii). Insignificant whitespace in src is dropped first, so the result does not
// depend on how src was laid out. src must be valid JSON.
func appendPySpaced(dst, src []byte) []byte {
	inString := false
	for i := 0; i < len(src); {
		c := src[i]
		if inString {
			switch {
			case c == '\\':
				dst = append(dst, c, src[i+1])
				i += 2
				continue
			case c == '"':
				inString = false
				dst = append(dst, c)
			case c < utf8.RuneSelf:
				dst = append(dst, c)
			default:
				r, size := utf8.DecodeRune(src[i:])
				dst = appendUnicodeEscape(dst, r)
				i += size
				continue
			}
			i++
			continue
		}
		switch c {
		case ' ', '\t', '\n', '\r':
		case '"':
			inString = true
			dst = append(dst, c)
		case ',':
			dst = append(dst, ", "...)
		case ':':
			dst = append(dst, ": "...)
		default:
			dst = append(dst, c)
		}
		i++
	}
	return dst
}

func appendUnicodeEscape(dst []byte, r rune) []byte {
	const hex = "0123456789abcdef"
	put := func(u rune) {
		dst = append(dst, '\\', 'u', hex[u>>12&0xf], hex[u>>8&0xf], hex[u>>4&0xf], hex[u&0xf])
	}
	if r >= 0x10000 {
		hi, lo := utf16.EncodeRune(r)
		put(hi)
		put(lo)
	} else {
		put(r)
	}
	return dst
}

// compactJSON returns src without insignificant whitespace.
func compactJSON(src []byte) ([]byte, error) {
	var b bytes.Buffer
	b.Grow(len(src))
	if err := json.Compact(&b, src); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
