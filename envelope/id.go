package envelope

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"sync"
	"time"
	"unsafe"

	"github.com/oklog/ulid/v2"
)

// idLen is the length of a ULID's text.
const idLen = ulid.EncodedSize

// ids generates ULIDs: the time in Unix milliseconds, then 80 bits that are random for the first
// id of a millisecond and grow by a random step in [1, 2^32) for each later id in it (as ulid's
// monotonic entropy does), so ids made in this process are unique and strictly increasing.
// It stands in for ulid.Make, which costs a heap allocation and a locked math/rand source.
var ids struct {
	mu sync.Mutex
	ms uint64 // of the last id
	hi uint16 // the last id's 80 random bits: hi<<64 | lo
	lo uint64
}

// newULID returns the next id. If the clock has not moved past the last id's millisecond
// (the same millisecond, or a step back) the id keeps that millisecond and increments; when
// the 80 bits would overflow it moves on to the next millisecond with fresh random bits.
func newULID() ulid.ULID {
	ms := ulid.Timestamp(time.Now())
	ids.mu.Lock()
	if ms <= ids.ms {
		ms = ids.ms
		lo, carry := bits.Add64(ids.lo, 1+rand.Uint64N(1<<32-1), 0)
		hi := ids.hi + uint16(carry)
		if carry == 1 && hi == 0 { // overflow
			ms++
			ids.hi, ids.lo = uint16(rand.Uint64()), rand.Uint64()
		} else {
			ids.hi, ids.lo = hi, lo
		}
	} else {
		ids.hi, ids.lo = uint16(rand.Uint64()), rand.Uint64()
	}
	ids.ms = ms
	hi, lo := ids.hi, ids.lo
	ids.mu.Unlock()
	var id ulid.ULID
	_ = id.SetTime(ms) // ms < 2^48 until the year 10889
	binary.BigEndian.PutUint16(id[6:], hi)
	binary.BigEndian.PutUint64(id[8:], lo)
	return id
}

// NewID returns a new producer id: a ULID, unique and sortable by creation time.
func NewID() string {
	buf := make([]byte, idLen)
	_ = newULID().MarshalTextTo(buf) // cannot fail: buf has the encoded size
	return unsafe.String(&buf[0], idLen)
}
