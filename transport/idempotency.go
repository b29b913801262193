package transport

import (
	"context"
	"hash/maphash"
	"sync"
	"time"
)

// MemoryIdempotency is a bounded record of handled keys, private to one process. Each key is
// kept for ttl after it was recorded (to the millisecond), and the record always holds the
// size keys recorded last (with the size before them, at most 2×size in all): keys go into a
// current generation, and when it holds size keys it becomes the previous one, replacing the
// generation before. Expiry is checked on read, so it needs no goroutine.
//
// It sits on every message's path, so it is built for that. A key is kept as an 88-bit
// fingerprint (a 64-bit maphash sum as the map key, 24 bits of a second, independently seeded
// sum beside its expiry in the value), in maps of plain integers: the garbage collector never
// scans them, recording allocates only when a generation turns over, and nothing is ever
// deleted one key at a time (an LRU of strings cost ~0.5 µs per message and made every GC
// cycle mark 100k keys; a ring with a map delete per insert was no faster). Sixteen bytes a
// key rather than the 24 of a 128-bit fingerprint with its own expiry: the insert is a cache
// miss into a map of 100k keys, and the smaller map made Done ~1.2× faster
// (BenchmarkMemoryIdempotencyFromEmpty, 180–220 → 145–155 ns). A false "seen" needs two
// different keys to agree in all 88 bits: about 1 in 10²¹ per lookup on a full record.
//
// The Bus keeps a v1 delivery (no producer id) from a driver with sequential positions not as
// a key but in its group's positionWindow, which the record owns too.
type MemoryIdempotency struct {
	seeds [2]maphash.Seed
	ttl   uint64 // milliseconds
	size  int
	// elapsed is the record's clock: time since it was made, by the monotonic clock only, so
	// that expiry is immune to steps of the wall clock (and cheaper to read than time.Now).
	elapsed func() time.Duration

	mu        sync.Mutex
	cur, prev map[uint64]uint64 // first sum → check bits << expiryBits | expiry (ms)
	windows   map[string]*positionWindow
}

const (
	expiryBits = 40 // milliseconds since the record was made: 34 years
	expiryMask = 1<<expiryBits - 1
)

// NewMemoryIdempotency returns a record keeping the last size keys (at least one), each for
// ttl.
func NewMemoryIdempotency(size int, ttl time.Duration) *MemoryIdempotency {
	start := time.Now()
	return &MemoryIdempotency{
		seeds:   [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		ttl:     uint64(max(ttl.Milliseconds(), 0)),
		size:    max(size, 1),
		elapsed: func() time.Duration { return time.Since(start) },
	}
}

// fingerprint hashes prefix+id as one key without building the string: maphash sums a key
// written in pieces as it sums the whole (the Subscription's keys are "stream/group/" + id,
// and the concatenation was an allocation per message).
func (m *MemoryIdempotency) fingerprint(prefix, id string) (slot, check uint64) {
	var h maphash.Hash
	h.SetSeed(m.seeds[0])
	h.WriteString(prefix)
	h.WriteString(id)
	slot = h.Sum64()
	h.SetSeed(m.seeds[1])
	h.WriteString(prefix)
	h.WriteString(id)
	return slot, h.Sum64() >> expiryBits
}

// Seen implements IdempotencyStore. An expired key is forgotten when read.
func (m *MemoryIdempotency) Seen(_ context.Context, key string) (bool, error) {
	return m.seen("", key), nil
}

// Done implements IdempotencyStore. Recording a key again renews its TTL.
func (m *MemoryIdempotency) Done(_ context.Context, key string) error {
	m.done("", key)
	return nil
}

func (m *MemoryIdempotency) seen(prefix, id string) bool {
	slot, check := m.fingerprint(prefix, id)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, gen := range [...]map[uint64]uint64{m.cur, m.prev} {
		v, ok := gen[slot]
		if !ok || v>>expiryBits != check {
			continue
		}
		if m.nowMS() > v&expiryMask {
			delete(gen, slot)
			return false
		}
		return true
	}
	return false // the usual answer, given without reading the clock
}

func (m *MemoryIdempotency) done(prefix, id string) {
	slot, check := m.fingerprint(prefix, id)
	expires := min(m.nowMS()+m.ttl, expiryMask)
	m.mu.Lock()
	defer m.mu.Unlock()
	// A generation is made at its full size when its first key comes: growing one key by key
	// rehashed it eight times on the way to 100k keys, ~10% of the Bus's consume CPU then.
	switch {
	case m.cur == nil:
		m.cur = make(map[uint64]uint64, m.size)
	case len(m.cur) >= m.size:
		m.prev, m.cur = m.cur, make(map[uint64]uint64, m.size)
	}
	m.cur[slot] = check<<expiryBits | expires
}

func (m *MemoryIdempotency) nowMS() uint64 { return uint64(max(m.elapsed().Milliseconds(), 0)) }

// Len is the number of records held (at most 2×size), expired ones included until they are
// read or their generation is dropped; a key recorded in both generations counts twice.
func (m *MemoryIdempotency) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.cur) + len(m.prev)
}

// positionWindow is the record of one group's handled messages that have no producer id
// (v1), on a driver whose Positions are sequential (driver.SequentialPositioner): one bit per
// stream sequence, in a ring of 64-bit words covering the 2×size sequences up to the greatest
// recorded, of the latest Epoch recorded. Recording the next message sets a bit in the word
// the previous one set: where a hashed key cost a cache miss into a map of 100k keys (the
// largest cost of the Bus's own on JetStream's consume path, ~15% of its CPU there), this is
// a few instructions on memory already in cache (BenchmarkHandledRecord).
//
// Each word keeps the expiry of the last bit set in it, so a position is kept at least ttl
// and at most as long as the last of its 64 neighbours. What the window cannot hold (an older
// Epoch, a sequence below the window) the caller records as a hashed key, as before: nothing
// handled goes unrecorded.
type positionWindow struct {
	m *MemoryIdempotency // its clock and ttl

	mu      sync.Mutex
	started bool
	epoch   uint64
	top     uint64 // the greatest word index (Seq/64) recorded
	ring    []positionWord
}

type positionWord struct {
	bits    uint64
	expires uint64 // milliseconds on the record's clock, of the last bit set
}

// positions returns the window of handled positions of the group whose keys start with
// prefix, made on first use; every Subscription of that group on this record shares it.
func (m *MemoryIdempotency) positions(prefix string) *positionWindow {
	m.mu.Lock()
	defer m.mu.Unlock()
	if w := m.windows[prefix]; w != nil {
		return w
	}
	if m.windows == nil {
		m.windows = make(map[string]*positionWindow)
	}
	w := &positionWindow{m: m, ring: make([]positionWord, (2*m.size+63)/64)}
	m.windows[prefix] = w
	return w
}

// covers reports whether word index i of epoch is inside the window. w.mu is held.
func (w *positionWindow) covers(epoch, i uint64) bool {
	return w.started && epoch == w.epoch && i <= w.top && w.top-i < uint64(len(w.ring))
}

// done records p as handled, and reports whether it could: false for a position the window
// does not hold (zero, of an older Epoch, or below the window), which the caller records
// otherwise.
func (w *positionWindow) done(p Position) bool {
	if p.IsZero() {
		return false
	}
	expires := min(w.m.nowMS()+w.m.ttl, expiryMask)
	i := p.Seq / 64
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case !w.started || p.Epoch > w.epoch: // the first record, or the stream started over
		clear(w.ring)
		w.started, w.epoch, w.top = true, p.Epoch, i
	case p.Epoch < w.epoch:
		return false
	case i > w.top: // slide forward, forgetting the words it passes
		if i-w.top >= uint64(len(w.ring)) {
			clear(w.ring)
		} else {
			for j := w.top + 1; j <= i; j++ {
				w.ring[j%uint64(len(w.ring))] = positionWord{}
			}
		}
		w.top = i
	case w.top-i >= uint64(len(w.ring)): // of the epoch, at or below the top, and below the window
		return false
	}
	word := &w.ring[i%uint64(len(w.ring))]
	word.bits |= 1 << (p.Seq % 64)
	word.expires = max(word.expires, expires)
	return true
}

// seen reports whether p was recorded in the window and has not expired.
func (w *positionWindow) seen(p Position) bool {
	if p.IsZero() {
		return false
	}
	i := p.Seq / 64
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.covers(p.Epoch, i) {
		return false
	}
	word := w.ring[i%uint64(len(w.ring))]
	return word.bits&(1<<(p.Seq%64)) != 0 && w.m.nowMS() <= word.expires
}
