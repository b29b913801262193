package envelope

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"sync"
	"unicode/utf8"
)

// SignatureHeader is the meta.headers entry that carries a publisher signature.
const SignatureHeader = "signature"

// signatureDomain is the first line of the signed text; it versions the canonical form.
const signatureDomain = "pulse-hmac-sha256-v1"

// Signer signs and verifies envelopes with a shared PUBLISHER_TOKEN (docs/contract.md §4).
//
// The signature is the lower-case hex HMAC-SHA256, keyed with the token's UTF-8 bytes, of the
// canonical text: these six lines joined by "\n" (no trailing newline)
//
//	pulse-hmac-sha256-v1
//	<meta.schema_id>
//	<meta.track>
//	<id on v2; empty on v1, which carries no id>
//	<key, or empty when null>
//	<the payload's JSON text exactly as it appears in the message, with the whitespace
//	 outside strings removed>
//
// The first five lines are the values as a reader decodes them from the message, in UTF-8.
// The payload line is the wire text, not a re-serialisation: escapes, non-ASCII characters
// and number text stay exactly as sent (a v1 message carries non-ASCII as \uXXXX escapes, a
// v2 message as raw UTF-8). For a payload Python's json module wrote, it equals
// json.dumps(payload, separators=(",", ":"), ensure_ascii=<v1: True, v2: False>) of the
// parsed payload; other producers should strip whitespace from the raw text instead.
// envelope/testdata/signature_vectors.py computes the test vectors of sign_test.go this way.
//
// It is carried in meta.headers["signature"]. Any other header, and ts, are not covered: a
// replayed event is harmless because feedback applies only the newest event per coordinator.
type Signer struct {
	key  []byte
	macs sync.Pool // of keyed HMAC states (hash.Hash), reset before each use
}

// NewSigner returns a Signer for token, or nil (signing off) when token is "" or "unset".
func NewSigner(token string) *Signer {
	if token == "" || token == "unset" {
		return nil
	}
	return &Signer{key: []byte(token)}
}

// mac computes the signature of e. The id line is e.ID on v2 and empty on v1, whose wire
// form has no id: a v1 producer that set e.ID must not sign what it does not send.
func (s *Signer) mac(e *Envelope, payloadCompact []byte) []byte {
	id := e.ID
	if e.Meta.Track == TrackV1 {
		id = ""
	}
	var buf [256]byte
	canonical := append(buf[:0], signatureDomain...)
	for _, part := range [...]string{e.Meta.SchemaID, string(e.Meta.Track), id, e.KeyOf()} {
		canonical = append(canonical, '\n')
		canonical = append(canonical, wireString(part)...)
	}
	canonical = append(canonical, '\n')

	m, _ := s.macs.Get().(hash.Hash)
	if m == nil {
		m = hmac.New(sha256.New, s.key)
	}
	m.Reset()
	m.Write(canonical)
	m.Write(payloadCompact)
	sum := m.Sum(nil)
	s.macs.Put(m)
	return sum
}

// sign returns the signature of e whose payload goes on the wire as payload.
func (s *Signer) sign(e *Envelope, payload []byte) (string, error) {
	compact, err := compactJSON(payload)
	if err != nil {
		return "", fmt.Errorf("envelope: sign: %w", err)
	}
	return hex.EncodeToString(s.mac(e, compact)), nil
}

func (s *Signer) verify(e *Envelope) error {
	sig := e.Meta.Headers[SignatureHeader]
	if sig == "" {
		return fmt.Errorf("%w: no %q header", ErrUnauthenticated, SignatureHeader)
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return fmt.Errorf("%w: signature is not hex", ErrUnauthenticated)
	}
	compact, err := compactJSON(e.Payload)
	if err != nil {
		return fmt.Errorf("%w: payload is not valid JSON: %w", ErrUnauthenticated, err)
	}
	if !hmac.Equal(got, s.mac(e, compact)) {
		return fmt.Errorf("%w: signature does not match", ErrUnauthenticated)
	}
	return nil
}

// Equal reports whether two signers use the same token (for tests and config printing).
func (s *Signer) Equal(o *Signer) bool {
	if s == nil || o == nil {
		return s == o
	}
	return bytes.Equal(s.key, o.key)
}

// wireString is s as it reads back from the wire: each byte of invalid UTF-8 replaced by
// U+FFFD, as the encoder writes it. Signing the caller's raw bytes instead would make a
// signature that no reader can check.
func wireString(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return string([]rune(s))
}
