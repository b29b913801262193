package transport

import (
	"errors"
	"fmt"

	"github.com/pulse-bus/pulse/envelope"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrClosed is returned by anything used after Close.
	ErrClosed = errors.New("transport: closed")
	// ErrUnknownBackend is returned by Open for a name no driver registered.
	ErrUnknownBackend = errors.New("transport: unknown backend")
	// ErrUnavailable wraps errors that mean the broker cannot be reached right now; the
	// operation may succeed when it is back.
	ErrUnavailable = errors.New("transport: broker unavailable")
	// ErrStale is returned (wrapped) by a Handler that received a message it deliberately did
	// not apply because newer state already won. The message is acked and counted `stale`.
	ErrStale = errors.New("transport: stale message")
	// ErrPoison is returned (wrapped) by a Handler for a message that can never succeed; it is
	// dead-lettered at once without retries. Codec errors already wrap it.
	ErrPoison = envelope.ErrPoison
	// ErrTooLarge is wrapped by a driver's Publish error when a message (with its headers)
	// is larger than the broker takes (JetStream's max payload, 1 MiB by default).
	ErrTooLarge = errors.New("transport: message too large for the broker")
	// ErrMessageNotFound is wrapped by StreamAdmin.Get for an id the stream does not retain.
	ErrMessageNotFound = errors.New("transport: message not found")

	// ErrKeyNotFound is returned by KeyValue.Get for a key that has no value.
	ErrKeyNotFound = errors.New("transport: key not found")
	// ErrConflict is returned by KeyValue.Create for a key that has a value, and by Update
	// and Delete when the key's revision is no longer the one given: someone else wrote it.
	ErrConflict = errors.New("transport: key changed concurrently")
	// ErrNotSupported is returned for an optional capability the backend does not have.
	ErrNotSupported = errors.New("transport: not supported by this backend")
)

// Poison marks err as permanent: the message is dead-lettered at once with reason.
func Poison(reason string, err error) error { return &poisonError{reason: reason, err: err} }

type poisonError struct {
	reason string
	err    error
}

func (e *poisonError) Error() string {
	return fmt.Sprintf("%s: %v", e.reason, e.err)
}
func (e *poisonError) Unwrap() error        { return e.err }
func (e *poisonError) Is(target error) bool { return target == ErrPoison }

// poisonReason is the dead-letter reason of a poison error.
func poisonReason(err error) string {
	var p *poisonError
	if errors.As(err, &p) {
		return p.reason
	}
	if r := envelope.Reason(err); r != "" {
		return r
	}
	return "poison"
}
