package envelope

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"
)

// Codec encodes envelopes in one track and decodes both. The zero value writes v1, accepts
// every schema_id and neither signs nor verifies. A Codec is safe for concurrent use; its fields
// must not change after first use.
type Codec struct {
	// Track is what Encode writes; "" means DefaultTrack.
	Track Track
	// Schemas validates payloads on Decode (and Encode). Nil accepts any schema_id.
	Schemas *Schemas
	// Signer, when non-nil, signs on Encode and requires a valid signature on Decode.
	Signer *Signer
	// Now is the clock for envelope timestamps; nil means time.Now.
	Now func() time.Time
}

func (c *Codec) track() Track {
	if c.Track == "" {
		return DefaultTrack
	}
	return c.Track
}

func (c *Codec) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Encode returns the wire bytes of e in the codec's track. It fills in what the caller left
// unset — on v2 a new ID, a zero TS with the current time — and writes those back into e, so
// that publishing the same *Envelope again (a retry) sends the same id. Meta.Track and
// Meta.Hash are set from the codec; the signature header, if any, is added to a copy of
// Meta.Headers. e.Payload must be valid JSON.
func (c *Codec) Encode(e *Envelope) ([]byte, error) { return c.AppendEncode(nil, e) }

// AppendEncodeBatch encodes envs one after another after dst, as AppendEncode does, and
// appends to ends where each one's bytes end in the returned slice. Envelopes without a TS
// all get the same one, from a single reading of the clock (on this kind of machine a
// reading costs about as much as hashing the payload). On error it returns dst and ends
// unchanged, and an error naming the envelope's index.
func (c *Codec) AppendEncodeBatch(dst []byte, ends []int, envs []*Envelope) ([]byte, []int, error) {
	var ts float64
	for _, e := range envs {
		if e.TS == 0 {
			ts = float64(c.now().UnixNano()) / 1e9
			break
		}
	}
	out, n := dst, len(ends)
	var batch batchState
	for i, e := range envs {
		if e.TS == 0 {
			e.TS = ts
		}
		batch.left = len(envs) - i
		var err error
		if out, err = c.appendEncode(out, e, &batch); err != nil {
			return dst, ends[:n], fmt.Errorf("%w (message %d of %d)", err, i, len(envs))
		}
		ends = append(ends, len(out))
	}
	return out, ends, nil
}

// AppendEncode is Encode writing the wire bytes after dst: it returns the extended slice, or
// dst unchanged and the error. Encoding a batch into one buffer this way costs one allocation
// per batch instead of one per message (the Bus reuses such buffers).
func (c *Codec) AppendEncode(dst []byte, e *Envelope) ([]byte, error) {
	return c.appendEncode(dst, e, nil)
}

// batchState is what the envelopes of one AppendEncodeBatch share: the last TS formatted (a
// batch mostly has one), and blocks for their hash (and new v2 id) strings instead of an
// allocation for each.
type batchState struct {
	ts   float64
	text []byte // nil until a TS is formatted
	buf  [32]byte

	strs []byte // the unused rest of the current block; bytes handed out are never written again
	left int    // envelopes still to encode, counting the current one: sizes the next block
}

// bytes returns n fresh bytes for a string of the envelope being encoded: from the batch's
// block, or a new allocation without a batch.
func (b *batchState) bytes(n int) []byte {
	if b == nil {
		return make([]byte, n)
	}
	if len(b.strs) < n {
		b.strs = make([]byte, n*max(b.left, 1))
	}
	out := b.strs[:n:n]
	b.strs = b.strs[n:]
	return out
}

// appendTS appends ts as Python's repr writes it, formatting it once per batch when there is
// one.
func appendTS(b []byte, ts float64, batch *batchState) ([]byte, error) {
	if batch == nil {
		return appendPyFloat(b, ts)
	}
	if batch.text == nil || batch.ts != ts {
		text, err := appendPyFloat(batch.buf[:0], ts)
		if err != nil {
			return b, err
		}
		batch.ts, batch.text = ts, text
	}
	return append(b, batch.text...), nil
}

func (c *Codec) appendEncode(dst []byte, e *Envelope, batch *batchState) ([]byte, error) {
	if e.Meta.SchemaID == "" {
		return dst, errors.New("envelope: encode: empty schema_id")
	}
	if len(e.Payload) == 0 {
		return dst, errors.New("envelope: encode: empty payload")
	}
	if err := c.Schemas.Validate(e.Meta.SchemaID, e.Payload); err != nil {
		return dst, fmt.Errorf("envelope: encode: %w", err)
	}
	track := c.track()
	if e.TS == 0 {
		e.TS = float64(c.now().UnixNano()) / 1e9
	}
	if !isJSONObject(e.Payload) {
		return dst, errors.New("envelope: encode: payload must be a JSON object")
	}
	var payload []byte
	var err error
	switch track {
	case TrackV1:
		// The Python core sends the payload as json.dumps writes it and hashes pydantic's
		// compact dump of it: both are functions of the payload's value (strings re-escaped
		// the Python way), so a payload re-encoded from v1 wire text keeps its bytes and hash.
		// One pass validates and writes both, into pooled scratch buffers.
		bufs := getPyBufs()
		defer putPyBufs(bufs)
		bufs.dumps, bufs.compact, err = appendPyForms(bufs.dumps[:0], bufs.compact[:0], e.Payload)
		if err != nil {
			return dst, fmt.Errorf("envelope: encode: payload is not valid JSON: %w", err)
		}
		payload = bufs.dumps
		e.Meta.Hash = hashHexTo(batch.bytes(hexHashLen), bufs.compact)
	case TrackV2:
		if payload, err = compactJSON(e.Payload); err != nil {
			return dst, fmt.Errorf("envelope: encode: payload is not valid JSON: %w", err)
		}
		if e.ID == "" {
			// The new id and the hash share one allocation (or the batch's block).
			buf := batch.bytes(idLen + hexHashLen)
			_ = newULID().MarshalTextTo(buf[:idLen]) // cannot fail: the size is right
			e.ID = unsafe.String(&buf[0], idLen)
			e.Meta.Hash = hashHexTo(buf[idLen:], payload)
		} else {
			e.Meta.Hash = hashHexTo(batch.bytes(hexHashLen), payload)
		}
	default:
		return dst, fmt.Errorf("envelope: encode: unknown track %q (accepted: v1, v2)", track)
	}
	e.Meta.Track = track
	if c.Signer != nil {
		headers := make(map[string]string, len(e.Meta.Headers)+1)
		for k, v := range e.Meta.Headers {
			headers[k] = v
		}
		if headers[SignatureHeader], err = c.Signer.sign(e, payload); err != nil {
			return dst, err
		}
		e.Meta.Headers = headers
	}
	// The headers sorted by name, read from the map once.
	var headerBuf [8]header
	headers := headerBuf[:0]
	for k, v := range e.Meta.Headers {
		headers = append(headers, header{k, v})
	}
	slices.SortFunc(headers, func(a, b header) int { return strings.Compare(a.k, b.k) })
	out, err := appendEnvelope(slices.Grow(dst, encodedSizeHint(e, payload, headers)), e, headers, payload, track == TrackV1, batch)
	if err != nil {
		return dst, err
	}
	return out, nil
}

// header is one header pair.
type header struct{ k, v string }

// encodedSizeHint is the encoded size of e when its strings need no escapes.
func encodedSizeHint(e *Envelope, payload []byte, headers []header) int {
	const fixed = 128 // field names, separators, quotes, ts
	n := fixed + len(payload) + len(e.ID) + len(e.KeyOf()) + len(e.Meta.SchemaID) + len(e.Meta.Hash)
	for _, h := range headers {
		n += len(h.k) + len(h.v) + 8
	}
	return n
}

// appendEnvelope writes the envelope with headers, e's headers sorted by name; py selects
// Python's spacing and ASCII-only strings.
func appendEnvelope(b []byte, e *Envelope, headers []header, payload []byte, py bool, batch *batchState) ([]byte, error) {
	sep, colon := ",", ":"
	if py {
		sep, colon = ", ", ": "
	}
	field := func(name string, first bool) {
		if !first {
			b = append(b, sep...)
		}
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, '"')
		b = append(b, colon...)
	}
	var err error
	b = append(b, '{')
	first := true
	if !py {
		field("id", true)
		b = appendString(b, e.ID, false)
		first = false
	}
	field("ts", first)
	if b, err = appendTS(b, e.TS, batch); err != nil {
		return nil, err
	}
	field("key", false)
	if e.Key == nil {
		b = append(b, "null"...)
	} else {
		b = appendString(b, *e.Key, py)
	}
	field("meta", false)
	b = append(b, '{')
	field("schema_id", true)
	b = appendString(b, e.Meta.SchemaID, py)
	field("track", false)
	b = appendString(b, string(e.Meta.Track), py)
	field("headers", false)
	b = append(b, '{')
	for i, h := range headers {
		if i > 0 {
			b = append(b, sep...)
		}
		b = appendString(b, h.k, py)
		b = append(b, colon...)
		b = appendString(b, h.v, py)
	}
	b = append(b, '}')
	field("hash", false)
	b = append(b, '"') // lower-case hex, set by the codec: nothing to escape
	b = append(b, e.Meta.Hash...)
	b = append(b, '"')
	b = append(b, '}')
	field("payload", false)
	b = append(b, payload...)
	b = append(b, '}')
	return b, nil
}

// appendString appends s as a JSON string. asciiOnly writes it exactly as Python's json.dumps
// does (ensure_ascii: \b \f \n \r \t, every other character outside ' '..'~' as \uXXXX);
// otherwise non-ASCII characters are written as UTF-8. Invalid UTF-8 becomes U+FFFD, as
// encoding/json does.
func appendString(b []byte, s string, asciiOnly bool) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if plainByte[c] {
			j := i + 1
			for j < len(s) && plainByte[s[j]] {
				j++
			}
			b = append(b, s[i:j]...)
			i = j
			continue
		}
		if c < utf8.RuneSelf {
			b = appendPyRune(b, rune(c), asciiOnly)
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		b = appendPyRune(b, r, asciiOnly)
		i += size
	}
	return append(b, '"')
}

// hexHashLen is the length of a hex SHA-256.
const hexHashLen = 2 * sha256.Size

// hashHex returns the lower-case hex SHA-256 of b.
func hashHex(b []byte) string { return hashHexTo(make([]byte, hexHashLen), b) }

// hashHexTo writes the lower-case hex SHA-256 of b into dst, which must be hexHashLen bytes
// that are never written again, and returns them as a string.
func hashHexTo(dst, b []byte) string {
	sum := sha256.Sum256(b)
	hexSum(dst, &sum)
	return unsafe.String(&dst[0], hexHashLen)
}

// hexSum writes sum in lower-case hex to dst (at least 2×sha256.Size bytes), four bytes at a
// time: each nibble is spread to a byte of its own and turned into its digit with word
// arithmetic (encoding/hex's two table lookups per byte were a tenth of a v1 encode).
func hexSum(dst []byte, sum *[sha256.Size]byte) {
	_ = dst[2*sha256.Size-1]
	for i := 0; i < sha256.Size; i += 4 {
		x := uint64(binary.BigEndian.Uint32(sum[i:]))
		x = (x | x<<16) & 0x0000ffff0000ffff
		x = (x | x<<8) & 0x00ff00ff00ff00ff
		x = (x | x<<4) & 0x0f0f0f0f0f0f0f0f                          // nibble k in byte k, the first one highest
		letter := (x + 0x0606060606060606) >> 4 & 0x0101010101010101 // 1 where the nibble is ≥ 10
		binary.BigEndian.PutUint64(dst[2*i:], x+0x3030303030303030+letter*('a'-'0'-10))
	}
}

// Decode parses wire bytes of either track. A double-wrapped envelope (schema_id
// WrappedSchemaID) is unwrapped and the inner envelope returned. Every error wraps ErrPoison
// and one of ErrMalformed, ErrUnknownTrack, ErrUnknownSchema, ErrInvalidPayload,
// ErrHashMismatch or ErrUnauthenticated. The returned Payload aliases b. A v1 envelope's ID is
// always empty (v1 has no producer id; an "id" field in it is ignored).
func (c *Codec) Decode(b []byte) (*Envelope, error) { return c.decode(b, false) }

// DecodeImmutable is Decode for bytes that never change once passed, such as a broker's
// delivery: the envelope's strings (id, key, meta fields, headers) alias b wherever b holds
// them unescaped, as Payload does, instead of being copied. That saves an allocation per
// message: in a CPU profile of the JetStream consume path the copies were the Bus's third
// largest allocation (transport/decode.go decodes deliveries with it). Changing b afterwards
// would change the strings, and a string kept keeps all of b.
func (c *Codec) DecodeImmutable(b []byte) (*Envelope, error) { return c.decode(b, true) }

func (c *Codec) decode(b []byte, alias bool) (*Envelope, error) {
	e, err := decodeWire(b, alias)
	if err != nil {
		return nil, err
	}
	if e.Meta.SchemaID == WrappedSchemaID {
		inner, err := decodeWire(e.Payload, alias)
		if err != nil {
			if TrackOf(err) == "" {
				err = withTrack(e.Meta.Track, err)
			}
			return nil, fmt.Errorf("inner envelope: %w", err)
		}
		if inner.Meta.SchemaID == WrappedSchemaID {
			return nil, withTrack(inner.Meta.Track, fmt.Errorf("%w: envelope wrapped more than twice", ErrMalformed))
		}
		e = inner
	}
	if err := c.Schemas.Validate(e.Meta.SchemaID, e.Payload); err != nil {
		return nil, withTrack(e.Meta.Track, err)
	}
	if c.Signer != nil {
		if err := c.Signer.verify(e); err != nil {
			return nil, withTrack(e.Meta.Track, err)
		}
	}
	return e, nil
}
