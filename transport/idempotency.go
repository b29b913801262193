package transport

import (
	"context"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// IdempotencyStore records which messages a group has handled. Keys are recorded with Done
// only after the handler succeeded, so a failed attempt is retried rather than skipped.
// Implementations are safe for concurrent use.
type IdempotencyStore interface {
	// Seen reports whether key was recorded as done (and has not expired).
	Seen(ctx context.Context, key string) (bool, error)
	// Done records key as done.
	Done(ctx context.Context, key string) error
}

// MemoryIdempotency is a bounded LRU whose entries expire after a TTL, private to one
// process. Expiry is checked on read, so it needs no background goroutine (the expirable LRU
// of golang-lru starts one that never stops).
type MemoryIdempotency struct {
	lru *lru.Cache[string, time.Time] // key → expiry
	ttl time.Duration
	now func() time.Time
}

// NewMemoryIdempotency returns a record of at most size keys, each kept for ttl.
func NewMemoryIdempotency(size int, ttl time.Duration) *MemoryIdempotency {
	c, _ := lru.New[string, time.Time](max(size, 1)) // errors only for size ≤ 0
	return &MemoryIdempotency{lru: c, ttl: ttl, now: time.Now}
}

// Seen implements IdempotencyStore.
func (m *MemoryIdempotency) Seen(_ context.Context, key string) (bool, error) {
	exp, ok := m.lru.Get(key)
	if !ok {
		return false, nil
	}
	if m.now().After(exp) {
		m.lru.Remove(key)
		return false, nil
	}
	return true, nil
}

// Done implements IdempotencyStore.
func (m *MemoryIdempotency) Done(_ context.Context, key string) error {
	m.lru.Add(key, m.now().Add(m.ttl))
	return nil
}

// Len is the number of keys held, expired ones included until they are read or evicted.
func (m *MemoryIdempotency) Len() int { return m.lru.Len() }
