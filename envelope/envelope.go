// Package envelope defines the message that travels on every Pulse backend, and the codec
// that writes and reads it in the two schema tracks of docs/contract.md §2:
//
//   - v1, byte-compatible with the Python market-data-core: no producer id, Python's
//     json.dumps separators, and a hash that is informational only (never verified);
//   - v2: a producer-assigned id (ULID), compact JSON, headers preserved end to end, and a
//     SHA-256 hash of the payload bytes as sent that the reader verifies.
//
// Every decode error the codec returns wraps ErrPoison: such a message can never succeed and
// belongs in the dead-letter queue at once.
package envelope

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Track is a schema track: the wire dialect a producer writes.
type Track string

// The schema tracks.
const (
	TrackV1 Track = "v1"
	TrackV2 Track = "v2"
)

// DefaultTrack is what producers write when SCHEMA_TRACK is unset.
const DefaultTrack = TrackV1

// ParseTrack validates a track name.
func ParseTrack(s string) (Track, error) {
	switch Track(s) {
	case TrackV1, TrackV2:
		return Track(s), nil
	}
	return "", fmt.Errorf("envelope: unknown schema track %q (accepted: v1, v2)", s)
}

// WrappedSchemaID is the schema of an envelope whose payload is a whole inner envelope, as the
// Python Store writes today. Readers unwrap it and treat the inner envelope as the message.
const WrappedSchemaID = "events.envelope.EventEnvelope"

// Envelope is one message. Payload holds the payload's JSON exactly as it was (or will be) on the
// wire; the codec never re-encodes it on the way through.
type Envelope struct {
	// ID is the producer-assigned id (v2). Empty on v1, where the transport id stands in.
	ID string
	// TS is the envelope time, seconds since the epoch.
	TS float64
	// Key is the partition/ordering key; nil encodes as JSON null.
	Key *string
	// Meta describes the payload.
	Meta Meta
	// Payload is the payload's JSON text.
	Payload json.RawMessage
}

// Meta is the envelope's metadata.
type Meta struct {
	SchemaID string
	Track    Track
	// Headers are string pairs carried with the message. On v1 they are written but the Python
	// core does not preserve them; on v2 they survive end to end.
	Headers map[string]string
	// Hash is the hex SHA-256 of the payload as sent (v2: verified on read; v1: informational).
	Hash string
}

// KeyOf returns the envelope key, or "" when it is null.
func (e *Envelope) KeyOf() string {
	if e.Key == nil {
		return ""
	}
	return *e.Key
}

// Header returns a header's value, or "".
func (e *Envelope) Header(name string) string { return e.Meta.Headers[name] }

// Errors returned by Decode and Verify. Each wraps ErrPoison.
var (
	// ErrPoison marks a message that can never be processed: dead-letter it at once.
	ErrPoison = errors.New("poison message")

	ErrMalformed       = poison("malformed envelope")
	ErrUnknownTrack    = poison("unknown schema track")
	ErrUnknownSchema   = poison("unknown schema_id")
	ErrInvalidPayload  = poison("invalid payload")
	ErrHashMismatch    = poison("payload hash mismatch")
	ErrUnauthenticated = poison("unauthenticated")
)

type poisonError struct{ msg string }

func (e *poisonError) Error() string        { return e.msg }
func (e *poisonError) Is(target error) bool { return target == ErrPoison }

func poison(msg string) error { return &poisonError{msg: msg} }

// Reason is the short dead-letter reason for an error: the name of the first known codec
// sentinel it wraps ("malformed", "unknown_track", "unknown_schema", "invalid_payload",
// "hash_mismatch", "unauthenticated"), or "" if it wraps none.
func Reason(err error) string {
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return ""
}

// TrackOf returns the schema track that the message a Decode error is about declared, when
// Decode got far enough to read a valid one (a payload that fails validation, a missing or
// wrong signature, a v2 hash mismatch); "" when it did not (invalid JSON, an unknown track).
func TrackOf(err error) Track {
	var te *trackedError
	if errors.As(err, &te) {
		return te.track
	}
	return ""
}

// trackedError is a decode error of a message whose track is known.
type trackedError struct {
	track Track
	err   error
}

func (e *trackedError) Error() string { return e.err.Error() }
func (e *trackedError) Unwrap() error { return e.err }

func withTrack(t Track, err error) error {
	if t != TrackV1 && t != TrackV2 {
		return err
	}
	return &trackedError{track: t, err: err}
}

var reasons = []struct {
	err  error
	name string
}{
	{ErrMalformed, "malformed"},
	{ErrUnknownTrack, "unknown_track"},
	{ErrUnknownSchema, "unknown_schema"},
	{ErrInvalidPayload, "invalid_payload"},
	{ErrHashMismatch, "hash_mismatch"},
	{ErrUnauthenticated, "unauthenticated"},
}
