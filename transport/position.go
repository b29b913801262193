package transport

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"
)

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
		return Position{}, fmt.Errorf("transport: position %q (accepted: <epoch>-<seq>, two unsigned integers)", s)
	}
	return Position{Epoch: epoch, Seq: seq}, nil
}
