package envelope

import (
	"encoding/binary"
	"math/bits"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
)

// The encoder's payload scanners. Each checks, in the same single pass that produces what the
// encoder needs, exactly what validJSON checks (one JSON value, nesting at most maxDepth deep,
// nothing after it but whitespace); on failure the caller asks validJSON why, so that error
// texts stay those of the reader.

// pyScanner validates JSON text and writes, in the same pass, the two forms a v1 payload takes:
// json.dumps' (", " and ": " separators, ASCII-only strings) to d and pydantic's compact dump
// (no spaces, UTF-8 strings) to c. Strings are re-escaped from their decoded value (escaped
// surrogate pairs joined, a lone surrogate kept as a \uXXXX escape, as Python keeps it;
// invalid UTF-8 as U+FFFD); number and literal text is copied.
type pyScanner struct {
	src  []byte
	i    int
	d, c []byte
}

// appendPyForms appends to dumps and compact the json.dumps and compact forms of the JSON text
// src. ok is false when src is not valid JSON (validJSON says why); the buffers then hold
// partial output.
func appendPyForms(dumps, compact, src []byte) (d, c []byte, ok bool) {
	s := pyScanner{src: src, d: dumps, c: compact}
	ok = s.value(0)
	if ok {
		s.ws()
		ok = s.i == len(src)
	}
	return s.d, s.c, ok
}

func (s *pyScanner) ws() {
	for s.i < len(s.src) {
		switch s.src[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// punct consumes the byte at s.i, which is p, writing p and, in the dumps form, a space.
func (s *pyScanner) punct(p byte, spaced bool) {
	s.i++
	if spaced {
		s.d = append(s.d, p, ' ')
	} else {
		s.d = append(s.d, p)
	}
	s.c = append(s.c, p)
}

// empty consumes closer if the object or array just opened ends at once.
func (s *pyScanner) empty(closer byte) bool {
	s.ws()
	if s.i < len(s.src) && s.src[s.i] == closer {
		s.punct(closer, false)
		return true
	}
	return false
}

// next consumes what follows a member or an element: ',' (more to come) or closer (the end).
// ok is false for anything else.
func (s *pyScanner) next(closer byte) (more, ok bool) {
	s.ws()
	if s.i < len(s.src) {
		switch s.src[s.i] {
		case ',':
			s.punct(',', true)
			return true, true
		case closer:
			s.punct(closer, false)
			return false, true
		}
	}
	return false, false
}

func (s *pyScanner) value(depth int) bool {
	if depth > maxDepth {
		return false
	}
	s.ws()
	if s.i >= len(s.src) {
		return false
	}
	switch s.src[s.i] {
	case '{':
		s.punct('{', false)
		if s.empty('}') {
			return true
		}
		for {
			s.ws()
			if s.i >= len(s.src) || s.src[s.i] != '"' || !s.str() {
				return false
			}
			s.ws()
			if s.i >= len(s.src) || s.src[s.i] != ':' {
				return false
			}
			s.punct(':', true)
			if !s.value(depth + 1) {
				return false
			}
			if more, ok := s.next('}'); !more {
				return ok
			}
		}
	case '[':
		s.punct('[', false)
		if s.empty(']') {
			return true
		}
		for {
			if !s.value(depth + 1) {
				return false
			}
			if more, ok := s.next(']'); !more {
				return ok
			}
		}
	case '"':
		return s.str()
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	}
	end, ok := scanNumber(s.src, s.i)
	if ok {
		s.d = append(s.d, s.src[s.i:end]...)
		s.c = append(s.c, s.src[s.i:end]...)
		s.i = end
	}
	return ok
}

func (s *pyScanner) literal(word string) bool {
	if len(s.src)-s.i < len(word) || string(s.src[s.i:s.i+len(word)]) != word {
		return false
	}
	s.d = append(s.d, word...)
	s.c = append(s.c, word...)
	s.i += len(word)
	return true
}

// str re-escapes the string token at s.i into both forms.
func (s *pyScanner) str() bool {
	src := s.src
	i := s.i + 1
	s.d = append(s.d, '"')
	s.c = append(s.c, '"')
	start := i
	for i < len(src) {
		c := src[i]
		if plainByte[c] {
			i = plainEnd(src, i+1)
			continue
		}
		s.d = append(s.d, src[start:i]...)
		s.c = append(s.c, src[start:i]...)
		switch {
		case c == '"':
			s.d = append(s.d, '"')
			s.c = append(s.c, '"')
			s.i = i + 1
			return true
		case c < 0x20:
			return false
		case c == '\\':
			if i+1 >= len(src) {
				return false
			}
			switch esc := src[i+1]; esc {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				r := rune(unescapeChar(esc))
				s.d = appendPyRune(s.d, r, true)
				s.c = appendPyRune(s.c, r, false)
				i += 2
			case 'u':
				if i+6 > len(src) || !isHex4(src[i+2:i+6]) {
					return false
				}
				u := hex4(src[i+2:])
				i += 6
				if utf16.IsSurrogate(u) {
					if u < 0xdc00 && i+6 <= len(src) && src[i] == '\\' && src[i+1] == 'u' {
						if !isHex4(src[i+2 : i+6]) {
							return false // the next escape is invalid
						}
						if lo := hex4(src[i+2:]); lo >= 0xdc00 && lo <= 0xdfff {
							r := utf16.DecodeRune(u, lo)
							s.d = appendUnicodeEscape(s.d, r)
							s.c = utf8.AppendRune(s.c, r)
							i += 6
							break
						}
					}
					// A lone surrogate stays an escape, as Python keeps it.
					s.d = appendEscape(s.d, u)
					s.c = appendEscape(s.c, u)
					break
				}
				s.d = appendPyRune(s.d, u, true)
				s.c = appendPyRune(s.c, u, false)
			default:
				return false
			}
		case c < utf8.RuneSelf: // DEL
			s.d = appendEscape(s.d, rune(c))
			s.c = append(s.c, c)
			i++
		default:
			r, size := utf8.DecodeRune(src[i:])
			s.d = appendUnicodeEscape(s.d, r)
			if r != utf8.RuneError || size == 3 {
				s.c = append(s.c, src[i:i+size]...)
			} else {
				s.c = utf8.AppendRune(s.c, r) // invalid UTF-8 becomes U+FFFD
			}
			i += size
		}
		start = i
	}
	return false
}

// plainByte marks the bytes a JSON string holds as they are in every form: ' '..'~' but the
// quote and the backslash.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < 0x7f; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// plainEnd returns the index of the first byte at or after i that is not a plainByte. Strings
// are mostly plain, so it tests eight bytes at a time: a word holds only plain bytes unless
// one of its bytes is below ' ', above '~', a quote or a backslash (the usual has-zero-byte
// tests; where a test misfires, it is only on a byte after one that truly matches, and the
// lowest match is the one used).
func plainEnd(b []byte, i int) int {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	for ; i+8 <= len(b); i += 8 {
		v := binary.LittleEndian.Uint64(b[i:])
		q := v ^ ('"' * ones)
		bs := v ^ ('\\' * ones)
		special := (v-0x20*ones) & ^v | // a byte below ' ' (or the top bit set: see below)
			(v + 0x01*ones) | v | // a byte above '~'
			(q-ones) & ^q | // a quote
			(bs-ones) & ^bs // a backslash
		if special &= highs; special != 0 {
			return i + bits.TrailingZeros64(special)/8
		}
	}
	for i < len(b) && plainByte[b[i]] {
		i++
	}
	return i
}

func isHex4(b []byte) bool {
	return isHex(b[0]) && isHex(b[1]) && isHex(b[2]) && isHex(b[3])
}

// scanNumber returns the end of the JSON number at src[i:], checking its grammar as
// reader.number does.
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
		i++
		for i < len(src) && src[i] >= '0' && src[i] <= '9' {
			i++
		}
	default:
		return i, false
	}
	if i < len(src) && src[i] == '.' {
		i++
		d := i
		for i < len(src) && src[i] >= '0' && src[i] <= '9' {
			i++
		}
		if i == d {
			return i, false
		}
	}
	if i < len(src) && (src[i] == 'e' || src[i] == 'E') {
		i++
		if i < len(src) && (src[i] == '+' || src[i] == '-') {
			i++
		}
		d := i
		for i < len(src) && src[i] >= '0' && src[i] <= '9' {
			i++
		}
		if i == d {
			return i, false
		}
	}
	return i, true
}

// validator checks JSON text without building anything, noting whether it holds whitespace
// outside strings (which a compact form drops).
type validator struct {
	b     []byte
	i     int
	space bool
}

// scanCompact reports whether src is valid JSON and whether it has whitespace outside its
// strings.
func scanCompact(src []byte) (ok, space bool) {
	v := validator{b: src}
	ok = v.value(0)
	if ok {
		v.ws()
		ok = v.i == len(src)
	}
	return ok, v.space
}

func (v *validator) ws() {
	for v.i < len(v.b) {
		switch v.b[v.i] {
		case ' ', '\t', '\n', '\r':
			v.i++
			v.space = true
		default:
			return
		}
	}
}

// empty consumes closer if the object or array just opened ends at once.
func (v *validator) empty(closer byte) bool {
	v.ws()
	if v.i < len(v.b) && v.b[v.i] == closer {
		v.i++
		return true
	}
	return false
}

// next consumes what follows a member or an element: ',' (more to come) or closer (the end).
// ok is false for anything else.
func (v *validator) next(closer byte) (more, ok bool) {
	v.ws()
	if v.i < len(v.b) && (v.b[v.i] == ',' || v.b[v.i] == closer) {
		v.i++
		return v.b[v.i-1] == ',', true
	}
	return false, false
}

// value validates the value at v.i (after whitespace) at the given nesting depth.
func (v *validator) value(depth int) bool {
	if depth > maxDepth {
		return false
	}
	v.ws()
	if v.i >= len(v.b) {
		return false
	}
	switch v.b[v.i] {
	case '{':
		v.i++
		if v.empty('}') {
			return true
		}
		for {
			v.ws()
			if v.i >= len(v.b) || v.b[v.i] != '"' || !v.str() {
				return false
			}
			v.ws()
			if v.i >= len(v.b) || v.b[v.i] != ':' {
				return false
			}
			v.i++
			if !v.value(depth + 1) {
				return false
			}
			if more, ok := v.next('}'); !more {
				return ok
			}
		}
	case '[':
		v.i++
		if v.empty(']') {
			return true
		}
		for {
			if !v.value(depth + 1) {
				return false
			}
			if more, ok := v.next(']'); !more {
				return ok
			}
		}
	case '"':
		return v.str()
	case 't':
		return v.literal("true")
	case 'f':
		return v.literal("false")
	case 'n':
		return v.literal("null")
	}
	end, ok := scanNumber(v.b, v.i)
	v.i = end
	return ok
}

func (v *validator) literal(word string) bool {
	if len(v.b)-v.i < len(word) || string(v.b[v.i:v.i+len(word)]) != word {
		return false
	}
	v.i += len(word)
	return true
}

func (v *validator) str() bool {
	b := v.b
	for i := v.i + 1; i < len(b); {
		switch c := b[i]; {
		case c == '"':
			v.i = i + 1
			return true
		case c == '\\':
			if i+1 >= len(b) {
				return false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex4(b[i+2:i+6]) {
					return false
				}
				i += 6
			default:
				return false
			}
		case c < 0x20:
			return false
		default:
			i = plainEnd(b, i+1)
		}
	}
	return false
}

// pyBufs are the scratch buffers of a v1 encode.
type pyBufs struct{ dumps, compact []byte }

// maxPooledBuf bounds the scratch buffers kept for reuse, so one huge payload does not pin
// its buffers for ever.
const maxPooledBuf = 64 << 10

var pyBufPool = sync.Pool{New: func() any { return new(pyBufs) }}

func getPyBufs() *pyBufs { return pyBufPool.Get().(*pyBufs) }

func putPyBufs(b *pyBufs) {
	if cap(b.dumps) > maxPooledBuf || cap(b.compact) > maxPooledBuf {
		return
	}
	pyBufPool.Put(b)
}
