package envelope

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// strArena hands out strings copied into shared chunks, so that one decode's small strings
// (key, hash, id, headers) cost one allocation instead of one each. Bytes once handed out are
// never written again (a full chunk is replaced, not grown), so the strings stay immutable. A
// chunk is at most strChunk bytes unless one string is larger, so a retained field pins only
// its chunk, never the message it was read from.
type strArena struct{ buf []byte }

// strChunk is the size of an arena chunk: enough for a typical envelope's small strings.
const strChunk = 192

func (a *strArena) str(s []byte) string {
	if len(s) == 0 {
		return ""
	}
	if cap(a.buf)-len(a.buf) < len(s) {
		a.buf = make([]byte, 0, max(strChunk, len(s)))
	}
	start := len(a.buf)
	a.buf = append(a.buf, s...)
	return unsafe.String(&a.buf[start], len(s))
}

// The envelope reader. It is a small hand-written JSON parser rather than encoding/json for
// two reasons: speed (the bus decodes every message; this is several times faster and
// allocates only the strings it returns), and exactness: encoding/json matches field names
// case-insensitively, so {"META": …} or a second "Payload" would be read as meta or payload,
// where the Python core (and docs/contract.md §2: unknown fields are ignored) sees an unknown field.
// Here field names match exactly (after unescaping, as Python's json.loads does), a repeated
// field takes its last value (as a Python dict does), and the whole input must be one valid
// JSON value, with nothing after it but whitespace.

// maxDepth bounds the nesting of arrays and objects, as encoding/json does.
const maxDepth = 10000

// errSyntax is the detail of a malformed-JSON error.
type errSyntax struct {
	msg string
	off int
}

func (e *errSyntax) Error() string { return fmt.Sprintf("invalid JSON at offset %d: %s", e.off, e.msg) }

type reader struct {
	b       []byte
	i       int
	err     error  // the first syntax error
	problem string // the first field of the wrong type (in valid JSON)
	strs    strArena
	alias   bool // b never changes: str may alias it (Codec.DecodeImmutable)
}

// str is s as a string: aliasing the input where allowed and s lies in it (a string read
// without unescaping), else a copy in the arena.
func (r *reader) str(s []byte) string {
	if r.alias && len(s) > 0 {
		base, p := uintptr(unsafe.Pointer(unsafe.SliceData(r.b))), uintptr(unsafe.Pointer(unsafe.SliceData(s)))
		if p >= base && p+uintptr(len(s)) <= base+uintptr(len(r.b)) {
			// Made from r.b, not from s, so that s (maybe a caller's stack buffer) does not
			// escape.
			return unsafe.String(&r.b[p-base], len(s))
		}
	}
	return r.strs.str(s)
}

func (r *reader) fail(msg string) {
	if r.err == nil {
		r.err = &errSyntax{msg: msg, off: r.i}
	}
}

func (r *reader) ws() {
	b, i := r.b, r.i
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
			continue
		}
		break
	}
	r.i = i
}

// atEnd reports whether only whitespace is left.
func (r *reader) atEnd() bool {
	r.ws()
	return r.i >= len(r.b)
}

// peek returns the next non-whitespace byte, or 0 at the end.
func (r *reader) peek() byte {
	r.ws()
	if r.i >= len(r.b) {
		return 0
	}
	return r.b[r.i]
}

func (r *reader) expect(c byte) bool {
	if r.peek() != c {
		r.fail(fmt.Sprintf("expected %q", c))
		return false
	}
	r.i++
	return true
}

// field advances to the next member of the object whose '{' has been consumed, and returns
// its (unescaped) name with the reader at its value, which the caller must consume. It returns
// false at the closing '}' (consumed) or on a syntax error (r.err set). first must start true.
func (r *reader) field(first *bool, scratch []byte) ([]byte, bool) {
	c := r.peek()
	switch {
	case c == '}':
		r.i++
		return nil, false
	case !*first:
		if c != ',' {
			r.fail("expected ',' or '}'")
			return nil, false
		}
		r.i++
		c = r.peek()
	}
	*first = false
	if c != '"' {
		r.fail("expected a field name")
		return nil, false
	}
	name, ok := r.stringBytes(scratch)
	if !ok || !r.expect(':') {
		return nil, false
	}
	r.ws()
	return name, true
}

// typeErr records the first field of the wrong type; it is reported if the JSON is valid.
func (r *reader) typeErr(what string) {
	if r.problem == "" {
		r.problem = what
	}
}

// stringBytes reads a string token and returns its unescaped UTF-8 bytes: a slice of the
// input when it holds no escapes and valid UTF-8, else built in buf. Invalid UTF-8 and lone
// surrogates become U+FFFD, as encoding/json does.
func (r *reader) stringBytes(buf []byte) ([]byte, bool) {
	start := r.i + 1 // after the opening quote
	r.i = plainEnd(r.b, start)
	for r.i < len(r.b) {
		c := r.b[r.i]
		switch {
		case c == '"':
			s := r.b[start:r.i]
			r.i++
			return s, true
		case c == '\\' || c >= utf8.RuneSelf:
			return r.slowString(append(buf, r.b[start:r.i]...))
		case c < 0x20:
			r.fail("control character in string")
			return nil, false
		}
		r.i++
	}
	r.fail("unterminated string")
	return nil, false
}

func (r *reader) slowString(out []byte) ([]byte, bool) {
	for r.i < len(r.b) {
		c := r.b[r.i]
		switch {
		case c == '"':
			r.i++
			return out, true
		case c < 0x20:
			r.fail("control character in string")
			return nil, false
		case c == '\\':
			if r.i+1 >= len(r.b) {
				r.fail("unterminated string")
				return nil, false
			}
			esc := r.b[r.i+1]
			switch esc {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				out = append(out, unescapeChar(esc))
				r.i += 2
			case 'u':
				u, ok := r.hexEscape(r.i)
				if !ok {
					return nil, false
				}
				r.i += 6
				if utf16.IsSurrogate(u) {
					if lo, ok := r.lowSurrogate(u); ok {
						u = utf16.DecodeRune(u, lo)
						r.i += 6
					} else {
						u = utf8.RuneError
					}
				}
				out = utf8.AppendRune(out, u)
			default:
				r.fail("invalid escape")
				return nil, false
			}
		case c < utf8.RuneSelf:
			out = append(out, c)
			r.i++
		default:
			ru, size := utf8.DecodeRune(r.b[r.i:])
			out = utf8.AppendRune(out, ru) // RuneError for invalid bytes
			r.i += size
		}
	}
	r.fail("unterminated string")
	return nil, false
}

// hexEscape parses the \uXXXX escape at offset at.
func (r *reader) hexEscape(at int) (rune, bool) {
	if at+6 > len(r.b) {
		r.fail("short \\u escape")
		return 0, false
	}
	for _, c := range r.b[at+2 : at+6] {
		if !isHex(c) {
			r.fail("invalid \\u escape")
			return 0, false
		}
	}
	return hex4(r.b[at+2:]), true
}

// lowSurrogate reports the low half following the high surrogate hi at r.i, if there is one.
func (r *reader) lowSurrogate(hi rune) (rune, bool) {
	if hi >= 0xdc00 || r.i+6 > len(r.b) || r.b[r.i] != '\\' || r.b[r.i+1] != 'u' {
		return 0, false
	}
	for _, c := range r.b[r.i+2 : r.i+6] {
		if !isHex(c) {
			return 0, false // reported when that escape is read
		}
	}
	lo := hex4(r.b[r.i+2:])
	return lo, lo >= 0xdc00 && lo <= 0xdfff
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func (r *reader) literal(word string) bool {
	if !hasLiteral(r.b, r.i, word) {
		r.fail("invalid literal")
		return false
	}
	r.i += len(word)
	return true
}

// number reads a number token, checking JSON's grammar, and returns its text.
func (r *reader) number() ([]byte, bool) {
	start := r.i
	end, ok := scanNumber(r.b, r.i)
	r.i = end
	if !ok {
		r.fail("invalid number")
		return nil, false
	}
	return r.b[start:end], true
}

// skip reads and checks any value, with the package's one grammar (grammar.go).
func (r *reader) skip(depth int) bool {
	w := walker{src: r.b, i: r.i}
	ok := w.value(depth)
	r.i = w.i
	if !ok && r.err == nil {
		r.err = w.error()
	}
	return ok
}

// decodeWire parses one envelope (no unwrapping, no schema or signature checks).
func decodeWire(b []byte, alias bool) (*Envelope, error) {
	r := reader{b: b, alias: alias}
	// The envelope and its key string in one allocation.
	ek := &struct {
		e   Envelope
		key string
	}{}
	e := &ek.e
	var (
		haveTS, haveMeta bool
		payload          []byte
		id               string
		scratch          [32]byte
	)
	switch r.peek() {
	case '{':
		r.i++
	case 0:
		return nil, fmt.Errorf("%w: empty message", ErrMalformed)
	default:
		// Tell "valid JSON but not an object" from garbage.
		if r.skip(0) && r.atEnd() {
			return nil, fmt.Errorf("%w: envelope must be a JSON object", ErrMalformed)
		}
		return nil, fmt.Errorf("%w: %v", ErrMalformed, r.errOr("data after the JSON value"))
	}
	ok := true
	for first := true; ok; {
		name, more := r.field(&first, scratch[:0])
		if !more {
			ok = r.err == nil
			break
		}
		switch string(name) {
		case "id":
			var s []byte
			if s, _, ok = r.strBytes(); ok {
				id = r.str(s)
			}
		case "ts":
			switch c := r.peek(); {
			case c == 'n':
				haveTS = false
				ok = r.literal("null")
			case c == '-' || c >= '0' && c <= '9':
				var tok []byte
				if tok, ok = r.number(); ok {
					v, err := strconv.ParseFloat(string(tok), 64)
					if err != nil {
						r.typeErr("ts " + string(tok) + " is out of range")
					}
					e.TS, haveTS = v, true
				}
			default:
				r.typeErr("ts must be a number")
				ok = r.skip(1)
			}
		case "key":
			var s []byte
			var null bool
			if s, null, ok = r.strBytes(); ok {
				if null {
					e.Key = nil
				} else {
					ek.key = r.str(s)
					e.Key = &ek.key
				}
			}
		case "meta":
			switch r.peek() {
			case 'n':
				haveMeta = false
				ok = r.literal("null")
			case '{':
				haveMeta = true
				e.Meta = Meta{}
				ok = r.meta(&e.Meta)
			default:
				r.typeErr("meta must be an object")
				ok = r.skip(1)
			}
		case "payload":
			start := r.i
			if ok = r.skip(1); ok {
				payload = b[start:r.i]
			}
		default:
			ok = r.skip(1)
		}
	}
	if ok && !r.atEnd() {
		r.fail("data after the envelope")
		ok = false
	}
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: %v", ErrMalformed, r.errOr("invalid JSON"))
	case r.problem != "":
		return nil, fmt.Errorf("%w: %s", ErrMalformed, r.problem)
	case !haveMeta:
		return nil, fmt.Errorf("%w: missing meta", ErrMalformed)
	case !haveTS:
		return nil, fmt.Errorf("%w: missing ts", ErrMalformed)
	case e.Meta.SchemaID == "":
		return nil, fmt.Errorf("%w: missing meta.schema_id", ErrMalformed)
	case len(payload) == 0 || payload[0] != '{':
		return nil, fmt.Errorf("%w: payload must be a JSON object", ErrMalformed)
	}
	e.Payload = payload
	switch e.Meta.Track {
	case TrackV1:
		// The Python core's hash never matches its own payload text; v1 readers ignore it.
		// v1 has no producer id (the Python inner envelope writes "id": ""): the transport id
		// stands in, so an id field here is not trusted for de-duplication.
	case TrackV2:
		if id == "" {
			return nil, withTrack(TrackV2, fmt.Errorf("%w: v2 envelope without id", ErrMalformed))
		}
		e.ID = id
		if !hashMatches(e.Meta.Hash, payload) {
			return nil, withTrack(TrackV2, fmt.Errorf("%w: meta.hash %q, payload hashes to %q", ErrHashMismatch, e.Meta.Hash, hashHex(payload)))
		}
	default:
		return nil, fmt.Errorf("%w %q (accepted: v1, v2)", ErrUnknownTrack, e.Meta.Track)
	}
	return e, nil
}

func (r *reader) errOr(msg string) error {
	if r.err != nil {
		return r.err
	}
	return errors.New(msg)
}

// strBytes reads a string or null value (null reads as empty, with null true). Another type
// is recorded with typeErr and skipped. The bytes may alias the input: copy them.
func (r *reader) strBytes() (s []byte, null, ok bool) {
	switch r.peek() {
	case '"':
		s, ok = r.stringBytes(nil)
		return s, false, ok
	case 'n':
		return nil, true, r.literal("null")
	}
	r.typeErr(fmt.Sprintf("a string was expected at offset %d", r.i))
	return nil, false, r.skip(1)
}

// meta reads the meta object, whose '{' is next, into m.
func (r *reader) meta(m *Meta) bool {
	r.i++
	var scratch [32]byte
	for first := true; ; {
		name, more := r.field(&first, scratch[:0])
		if !more {
			return r.err == nil
		}
		ok := true
		switch string(name) {
		case "schema_id":
			var s []byte
			if s, _, ok = r.strBytes(); ok {
				m.SchemaID = r.internSchema(s)
			}
		case "track":
			var s []byte
			if s, _, ok = r.strBytes(); ok {
				m.Track = internTrack(s)
			}
		case "hash":
			var s []byte
			if s, _, ok = r.strBytes(); ok {
				m.Hash = r.str(s)
			}
		case "headers":
			switch r.peek() {
			case 'n':
				m.Headers = nil
				ok = r.literal("null")
			case '{':
				ok = r.headers(m)
			default:
				r.typeErr("meta.headers must be an object")
				ok = r.skip(2)
			}
		default:
			ok = r.skip(2)
		}
		if !ok {
			return false
		}
	}
}

// headers reads the headers object, whose '{' is next; values must be strings (null reads as
// ""). An empty object gives a nil map.
func (r *reader) headers(m *Meta) bool {
	r.i++
	m.Headers = nil
	var scratch [32]byte
	for first := true; ; {
		k, more := r.field(&first, scratch[:0])
		if !more {
			return r.err == nil
		}
		key := r.str(k)
		v, _, ok := r.strBytes()
		if !ok {
			return false
		}
		if m.Headers == nil {
			m.Headers = make(map[string]string, 4)
		}
		m.Headers[key] = r.str(v)
	}
}

func internTrack(s []byte) Track {
	switch string(s) {
	case "v1":
		return TrackV1
	case "v2":
		return TrackV2
	}
	return Track(s)
}

// knownSchemas are schema_ids read without allocating, even by Decode.
var knownSchemas = []string{"telemetry.FeedbackEvent", "telemetry.RateAdjustment", WrappedSchemaID}

// internSchema is s as a schema_id: a known one's constant, else as r.str gives it (aliasing
// an immutable input: an application's own schema_id cost an allocation per message before).
func (r *reader) internSchema(s []byte) string {
	for _, k := range knownSchemas {
		if string(s) == k {
			return k
		}
	}
	return r.str(s)
}

// hashMatches reports whether want is the lower-case hex SHA-256 of payload.
func hashMatches(want string, payload []byte) bool {
	sum := sha256.Sum256(payload)
	var buf [2 * sha256.Size]byte
	hexSum(buf[:], &sum)
	return string(buf[:]) == want
}
