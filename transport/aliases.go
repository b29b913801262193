package transport

import "github.com/pulse-bus/pulse/transport/driver"

// Types the bus's users and its drivers share; they are defined in transport/driver.
type (
	// RawMessage is a message as stored: its bytes and the headers beside them
	// (PublishRaw; dead letters).
	RawMessage = driver.Message
	// Position is a message's place in its stream as the broker ordered it (Delivery.Position).
	Position = driver.Position
	// KeyValue is a bucket of small records kept by the broker (Bus.KeyValue).
	KeyValue = driver.KeyValue
	// KVEntry is one record of a KeyValue.
	KVEntry = driver.KVEntry
	// IdempotencyStore records which messages a group has handled (Config.Idempotency).
	IdempotencyStore = driver.IdempotencyStore
)

// ParsePosition reads the form Position.String writes; "" is the zero Position.
func ParsePosition(s string) (Position, error) { return driver.ParsePosition(s) }
