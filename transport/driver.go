package transport

import (
	"context"
	"time"
)

// Driver is what a backend implements. It moves bytes; the policies of DESIGN.md (decoding,
// retries, dead-lettering, idempotency, draining) live once in Bus and Subscription, so a driver
// stays thin and only reports errors. Stream names handed to a driver are logical
// (`telemetry.feedback`); the driver maps them, with Config.Namespace, to its keys or subjects.
//
// A Driver is safe for concurrent use. After Close every method returns ErrClosed.
type Driver interface {
	// Publish stores msgs on stream, in order, and returns once the broker has every one of
	// them (PubAck, XADD reply), with the transport id each was stored under. On error none,
	// some or all may have been stored; publishing again is safe for messages with an ID.
	// Once Publish has returned without error the driver holds no reference to msgs or their
	// bodies (the Bus reuses that memory): a driver that keeps messages copies them.
	Publish(ctx context.Context, stream string, msgs []RawMessage) ([]string, error)
	// Subscribe joins group on stream as member consumer, creating the group (from the start
	// of the retained stream) if it does not exist.
	Subscribe(ctx context.Context, stream string, opts DriverSubscribeOptions) (DriverSubscription, error)
	// Close releases the driver. It is idempotent.
	Close() error
}

// DriverSubscribeOptions are the resolved settings of one subscription.
type DriverSubscribeOptions struct {
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

// DriverSubscription is one member of a group. Receive is called from one goroutine; Ack, Nak
// and Term may be called from any goroutine, concurrently with Receive.
type DriverSubscription interface {
	// Receive blocks until at least one delivery is available and returns up to max of them,
	// or returns ctx.Err() promptly once ctx is done. Each delivery's Attempt is counted by
	// the broker (1 on first delivery).
	Receive(ctx context.Context, max int) ([]*RawDelivery, error)
	// Ack settles deliveries as done; the broker will not deliver them again.
	Ack(ctx context.Context, ds []*RawDelivery) error
	// Nak asks for redelivery after delay (not before; a bare immediate redelivery would
	// spend every attempt at once).
	Nak(ctx context.Context, d *RawDelivery, delay time.Duration) error
	// Term settles d for good without success: it was dead-lettered.
	Term(ctx context.Context, d *RawDelivery) error
	// Close leaves the group; unsettled deliveries are redelivered after AckWait. Idempotent.
	Close() error
}

// LocalAcker is implemented by a DriverSubscription whose Ack never waits for the broker: it
// settles in memory, or queues the acks on its connection and returns. The Bus calls such an
// Ack inline after each batch; any other Ack goes to a background goroutine so that the next
// batch is handled during the round trip. (For an Ack with no round trip the hand-off buys
// nothing and costs a goroutine switch per batch, and JetStream hands the Bus batches of ~10.)
type LocalAcker interface {
	DriverSubscription
	// AcksAreLocal reports whether Ack returns without waiting for the broker.
	AcksAreLocal() bool
}

// RawMessage is one message as a driver stores it.
type RawMessage struct {
	// Body is the envelope's wire bytes (for dead letters: the original bytes, unchanged).
	Body []byte
	// ID is the producer id (v2), used by the broker for de-duplication where it can
	// (JetStream Nats-Msg-Id); empty when there is none.
	ID string
	// Headers travel beside the body: dead-letter metadata (Redis: extra entry fields;
	// JetStream: message headers). Nil for ordinary messages.
	Headers map[string]string
}

// RawDelivery is one delivery of a stored message to a group member.
type RawDelivery struct {
	RawMessage
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
}

// Pinger is implemented by drivers that can tell whether the broker answers.
type Pinger interface {
	Ping(ctx context.Context) error
}

// StoredMessage is a retained message read by a StreamAdmin.
type StoredMessage struct {
	RawMessage
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
	// wrapping ErrMessageNotFound.
	Get(ctx context.Context, stream, transportID string) (StoredMessage, error)
}

// IdempotencyProvider is implemented by drivers that can keep a record shared by every
// replica and surviving restarts (Redis SET NX PX, a JetStream key-value bucket).
type IdempotencyProvider interface {
	IdempotencyStore(ctx context.Context, ttl time.Duration) (IdempotencyStore, error)
}
