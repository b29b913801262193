// Package driver is what a Pulse backend implements: the interfaces and types the portable
// transport.Bus drives, and nothing a user of the bus needs to read. A backend package
// (transport/inmem, transport/redis, transport/jetstream are the examples) implements Driver
// and Subscription, optionally Pinger, StreamAdmin, IdempotencyProvider, KeyValueProvider and
// LocalAcker, registers itself with transport.Register from an init function, and runs the
// conformance suite of transport/transporttest.
//
// The policies of docs/design.md — decoding, retries, dead-lettering, idempotency, draining —
// live once in transport.Bus; a driver moves bytes, counts attempts the way its broker does,
// and reports errors, wrapping transport's sentinels (ErrClosed, ErrUnavailable, ErrTooLarge,
// ErrMessageNotFound, ErrKeyNotFound, ErrConflict) so that errors.Is works across backends.
package driver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Driver is what a backend implements. It moves bytes; the delivery policies live once in
// transport.Bus, so a driver stays thin and only reports errors. Stream names handed to a
// driver are logical (`telemetry.feedback`); the driver maps them, with the namespace of its
// transport.Config, to its keys or subjects (docs/contract.md names them).
//
// A Driver is safe for concurrent use. After Close every method returns an error wrapping
// transport.ErrClosed.
type Driver interface {
	// Publish stores msgs on stream, in order, and returns once the broker has every one of
	// them (PubAck, XADD reply), with the transport id each was stored under. On error none,
	// some or all may have been stored; publishing again is safe for messages with an ID.
	// Once Publish has returned without error the driver holds no reference to msgs or their
	// bodies (the Bus reuses that memory): a driver that keeps messages copies them.
	Publish(ctx context.Context, stream string, msgs []Message) ([]string, error)
	// Subscribe joins group on stream as member consumer, creating the group (from the start
	// of the retained stream) if it does not exist.
	Subscribe(ctx context.Context, stream string, opts SubscribeOptions) (Subscription, error)
	// Close releases the driver. It is idempotent.
	Close() error
}

// A Sender stores messages without reporting the transport id of each, which lets a broker
// confirm a whole batch at once (JetStream's fast-batch publishing). Send otherwise keeps
// Publish's contract: in order, returning once the broker has every message; on error none,
// some or all may be stored. The Bus publishes envelopes with Send when its driver implements
// it; PublishRaw, which returns the ids, dead letters and replays use Publish.
type Sender interface {
	Send(ctx context.Context, stream string, msgs []Message) error
}

// SubscribeOptions are the resolved settings of one subscription.
type SubscribeOptions struct {
	Group    string
	Consumer string
	// AckWait is how long a delivery may stay unsettled before it is redelivered.
	AckWait time.Duration
	// MaxDeliveries is the attempt limit (the Bus dead-letters on the last attempt; drivers
	// whose broker enforces a limit set it higher or not at all so the Bus gets that chance).
	MaxDeliveries int
	// BatchSize is the most deliveries one Receive returns.
	BatchSize int
}

// Subscription is one member of a group. Receive is called from one goroutine; Ack, Nak
// and Term may be called from any goroutine, concurrently with Receive.
type Subscription interface {
	// Receive blocks until at least one delivery is available and returns up to max of them,
	// or returns ctx.Err() promptly once ctx is done. Each delivery's Attempt is counted by
	// the broker (1 on first delivery).
	Receive(ctx context.Context, max int) ([]*Delivery, error)
	// Ack settles deliveries as done; the broker will not deliver them again.
	Ack(ctx context.Context, ds []*Delivery) error
	// Nak asks for redelivery after delay (not before; a bare immediate redelivery would
	// spend every attempt at once).
	Nak(ctx context.Context, d *Delivery, delay time.Duration) error
	// Term settles d for good without success: it was dead-lettered.
	Term(ctx context.Context, d *Delivery) error
	// Close leaves the group; unsettled deliveries are redelivered after AckWait. Idempotent.
	Close() error
}

// LocalAcker is implemented by a Subscription whose Ack never waits for the broker: it
// settles in memory, or queues the acks on its connection and returns. The Bus calls such an
// Ack inline after each batch; any other Ack goes to a background goroutine so that the next
// batch is handled during the round trip. (For an Ack with no round trip the hand-off buys
// nothing and costs a goroutine switch per batch, and JetStream hands the Bus batches of ~10.)
type LocalAcker interface {
	Subscription
	// AcksAreLocal reports whether Ack returns without waiting for the broker.
	AcksAreLocal() bool
}

// SequentialPositioner is implemented by a Subscription whose deliveries' Positions count
// the stream's messages one by one: within an Epoch, the broker gives each message stored
// the next Seq, and a stream that starts over (deleted and created again) gets a greater
// Epoch. JetStream and inmem do; Redis, whose Seq counts within a millisecond, does not.
// The Bus then keeps the record of handled messages without a producer id (v1) as a window
// of bits over Seq, not as hashed keys (see transport.MemoryIdempotency).
type SequentialPositioner interface {
	Subscription
	// PositionsAreSequential reports whether Positions are sequential as described above.
	PositionsAreSequential() bool
}

// Message is one message as a driver stores it.
type Message struct {
	// Body is the envelope's wire bytes (for dead letters: the original bytes, unchanged).
	Body []byte
	// ID is the producer id (v2), used by the broker for de-duplication where it can
	// (JetStream Nats-Msg-Id); empty when there is none.
	ID string
	// Headers travel beside the body (Redis: extra entry fields after `data`; JetStream:
	// NATS message headers; inmem: a copy): the trace context (traceparent, tracestate,
	// baggage), dead-letter metadata, replay_of. Nil when there are none.
	Headers map[string]string
}

// Delivery is one delivery of a stored message to a group member. A driver must not change
// a delivery, or what it references, once handed out: a handler's context may read its headers
// after the handler returned.
type Delivery struct {
	Message
	// TransportID is the broker's id of the stored message (Redis entry id, JetStream stream
	// sequence, inmem offset), as a string.
	TransportID string
	// Attempt counts deliveries of this message to the group, from 1, as the broker counts.
	Attempt int
	// Position is the message's place in the broker's order of the stream (zero if the
	// driver cannot tell); a redelivery has the Position of the first delivery.
	Position Position
	// StoredAt is when the broker stored the message, by the broker's clock (zero if the
	// driver cannot tell).
	StoredAt time.Time
	// Handle is the driver's own state for settling this delivery.
	Handle any
	// HeaderFields, when Message.Headers is nil, holds the headers as name, value pairs (a
	// later pair of a name wins, as in a map). A driver that reads headers as a list may
	// set these instead of a map: the Redis driver gives a read's deliveries sub-slices of
	// one slice, where a map each was the largest cost of a traced message on the consume
	// path (transport/redis/tracing_bench_test.go). Read headers with Header, HasHeaders
	// and HeaderMap, which see either form.
	HeaderFields []string
}

// Header is the value of the delivery's header named name, "" if it has none.
func (d *Delivery) Header(name string) string {
	if d.Headers != nil {
		return d.Headers[name]
	}
	for i := len(d.HeaderFields) - 2; i >= 0; i -= 2 {
		if d.HeaderFields[i] == name {
			return d.HeaderFields[i+1]
		}
	}
	return ""
}

// HasHeaders reports whether the delivery has any header.
func (d *Delivery) HasHeaders() bool { return len(d.Headers) > 0 || len(d.HeaderFields) > 1 }

// HeaderMap is the delivery's headers as a map: Headers itself, or a new map of
// HeaderFields; nil when there are none.
func (d *Delivery) HeaderMap() map[string]string {
	if d.Headers != nil || len(d.HeaderFields) < 2 {
		return d.Headers
	}
	m := make(map[string]string, len(d.HeaderFields)/2)
	for i := 0; i+1 < len(d.HeaderFields); i += 2 {
		m[d.HeaderFields[i]] = d.HeaderFields[i+1]
	}
	return m
}

// Describer is implemented by drivers that name their broker for traces, in the terms of the
// OpenTelemetry messaging conventions; the Bus falls back to the backend's registered name and
// the logical stream name.
type Describer interface {
	// MessagingSystem is the value of the messaging.system span attribute: "nats", "redis".
	MessagingSystem() string
	// Destination is the broker's own name of a logical stream (a NATS subject, a Redis
	// key): the messaging.destination.name span attribute, and the end of span names.
	Destination(stream string) string
}

// Pinger is implemented by drivers that can tell whether the broker answers.
type Pinger interface {
	Ping(ctx context.Context) error
}

// StoredMessage is a retained message read by a StreamAdmin.
type StoredMessage struct {
	Message
	TransportID string
}

// StreamInfo describes a stream and, when a group was named, that group's state.
type StreamInfo struct {
	// Length is how many messages the stream retains.
	Length int64
	// Pending is how many deliveries to the group are unsettled (0 without a group).
	Pending int64
	// Unread is how many retained messages the group has not yet been given, where the
	// broker knows (-1 otherwise).
	Unread int64
}

// StreamAdmin is implemented by drivers that can inspect and edit streams (dead-letter
// tooling, tests).
type StreamAdmin interface {
	// Range calls fn for each retained message of stream in order, without consuming them,
	// until fn returns an error (returned as is) or the stream ends. limit ≤ 0 means all.
	Range(ctx context.Context, stream string, limit int, fn func(StoredMessage) error) error
	// Delete removes messages by transport id; missing ids are not an error.
	Delete(ctx context.Context, stream string, transportIDs ...string) error
	// Purge removes every message of stream and returns how many there were.
	Purge(ctx context.Context, stream string) (int64, error)
	// Info describes stream and, if group is not empty, the group.
	Info(ctx context.Context, stream, group string) (StreamInfo, error)
	// Get returns the retained message of stream stored under transportID, or an error
	// wrapping transport.ErrMessageNotFound.
	Get(ctx context.Context, stream, transportID string) (StoredMessage, error)
}

// IdempotencyStore records which messages a group has handled. Keys are recorded with Done
// only after the handler succeeded, so a failed attempt is retried rather than skipped.
// Implementations are safe for concurrent use.
type IdempotencyStore interface {
	// Seen reports whether key was recorded as done (and has not expired).
	Seen(ctx context.Context, key string) (bool, error)
	// Done records key as done.
	Done(ctx context.Context, key string) error
}

// IdempotencyProvider is implemented by drivers that can keep a record shared by every
// replica and surviving restarts (Redis SET NX PX, a JetStream key-value bucket).
type IdempotencyProvider interface {
	IdempotencyStore(ctx context.Context, ttl time.Duration) (IdempotencyStore, error)
}

// KeyValue is a small map of records kept by the broker, shared by every process on the bus
// and outliving each of them (inmem: by every Bus of the process). It holds the state that
// must survive a restart and be seen by replicas — the feedback loop's state, replica
// registrations — not messages.
//
// Every write gives the key a new revision, greater than any the bucket gave before. Create,
// Update and Delete with a revision are compare-and-set: they fail with transport.ErrConflict, writing
// nothing, when the key is not as the caller last saw it. Keys are any non-empty string of
// at most MaxKeyLen bytes; values are opaque bytes (a driver may bound their size).
// Implementations are safe for concurrent use; their errors wrap transport.ErrUnavailable when the
// broker cannot be reached.
type KeyValue interface {
	// Get returns key's entry, or transport.ErrKeyNotFound.
	Get(ctx context.Context, key string) (KVEntry, error)
	// Put stores value under key, whatever was there, and returns the new revision.
	Put(ctx context.Context, key string, value []byte) (uint64, error)
	// Create stores value under key if key has no value (transport.ErrConflict otherwise).
	Create(ctx context.Context, key string, value []byte) (uint64, error)
	// Update stores value under key if key's revision is still revision (transport.ErrConflict
	// otherwise, also when the key has no value).
	Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error)
	// Delete removes key's value: always when revision is 0, else only if the key's revision
	// is still revision (transport.ErrConflict otherwise). Deleting a key that has no value is no error.
	Delete(ctx context.Context, key string, revision uint64) error
	// Range calls fn with every entry of the bucket, in no particular order, until fn returns
	// an error (returned as is). Entries written while it runs may or may not be seen.
	Range(ctx context.Context, fn func(KVEntry) error) error
}

// KVEntry is one record of a KeyValue.
type KVEntry struct {
	Key      string
	Value    []byte
	Revision uint64
}

// MaxKeyLen bounds a KeyValue key, in bytes.
const MaxKeyLen = 1024

// KeyValueProvider is implemented by drivers that can keep KeyValue buckets.
type KeyValueProvider interface {
	// KeyValue returns the bucket named name (ValidBucketName), creating it if needed.
	KeyValue(ctx context.Context, name string) (KeyValue, error)
}

// CheckKey returns an error naming what is wrong with a KeyValue key, or nil.
func CheckKey(key string) error {
	switch {
	case key == "":
		return errors.New("driver: empty key (accepted: 1 to 1024 bytes)")
	case len(key) > MaxKeyLen:
		return fmt.Errorf("driver: key of %d bytes (accepted: 1 to %d bytes)", len(key), MaxKeyLen)
	}
	return nil
}

// Position is a message's place in its stream as the broker ordered it: of two messages of
// one stream, the one the broker stored later has the greater Position, whatever clocks the
// producers had. A redelivery keeps the Position of the message it delivers again. The zero
// Position means the driver cannot tell.
//
// Positions compare Epoch first, then Seq. What the two numbers are is the driver's to say:
//
//   - JetStream: Epoch is the stream's creation time (unix nanoseconds), so that a stream
//     deleted and created again (whose sequence starts over at 1) orders after the old one;
//     Seq is the stream sequence.
//   - Redis Streams: the entry id <ms>-<seq> itself (Redis keeps ids increasing even when its
//     clock steps back).
//   - inmem: Epoch 0 and the stream offset.
type Position struct {
	Epoch uint64
	Seq   uint64
}

// IsZero reports whether p is the zero Position (unknown).
func (p Position) IsZero() bool { return p == Position{} }

// Compare returns -1, 0 or +1 as p is before, the same as or after q.
func (p Position) Compare(q Position) int {
	if c := cmp.Compare(p.Epoch, q.Epoch); c != 0 {
		return c
	}
	return cmp.Compare(p.Seq, q.Seq)
}

// String formats p as "<epoch>-<seq>" (ParsePosition reads it back).
func (p Position) String() string {
	return strconv.FormatUint(p.Epoch, 10) + "-" + strconv.FormatUint(p.Seq, 10)
}

// ParsePosition reads the form String writes; "" is the zero Position.
func ParsePosition(s string) (Position, error) {
	if s == "" {
		return Position{}, nil
	}
	e, q, ok := strings.Cut(s, "-")
	epoch, err1 := strconv.ParseUint(e, 10, 64)
	seq, err2 := strconv.ParseUint(q, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return Position{}, fmt.Errorf("driver: position %q (accepted: <epoch>-<seq>, two unsigned integers)", s)
	}
	return Position{Epoch: epoch, Seq: seq}, nil
}
