package transport

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestBackoffGrowsAndCaps proves the retry delay: RetryBackoffMin on the first failure,
// doubling per attempt, never above RetryBackoffMax, even for huge attempt counts.
func TestBackoffGrowsAndCaps(t *testing.T) {
	b := &Bus{cfg: Config{RetryBackoffMin: 100 * time.Millisecond, RetryBackoffMax: time.Second}}
	for attempt, want := range map[int]time.Duration{
		0:       100 * time.Millisecond,
		1:       100 * time.Millisecond,
		2:       200 * time.Millisecond,
		3:       400 * time.Millisecond,
		4:       800 * time.Millisecond,
		5:       time.Second,
		6:       time.Second,
		1 << 30: time.Second,
	} {
		require.Equal(t, want, b.backoff(attempt), "attempt %d", attempt)
	}
	zero := &Bus{cfg: Config{}}
	require.Zero(t, zero.backoff(5), "no backoff configured: retry at once")
}

// TestMemoryIdempotencyBounded proves the record is a true LRU: at most size keys, the least
// recently used (read or written) evicted first.
func TestMemoryIdempotencyBounded(t *testing.T) {
	ctx := context.Background()
	m := NewMemoryIdempotency(2, time.Hour)
	require.NoError(t, m.Done(ctx, "a"))
	require.NoError(t, m.Done(ctx, "b"))
	seen, _ := m.Seen(ctx, "a") // a is now the most recently used
	require.True(t, seen)
	require.NoError(t, m.Done(ctx, "c")) // evicts b
	require.Equal(t, 2, m.Len())
	for key, want := range map[string]bool{"a": true, "b": false, "c": true} {
		seen, err := m.Seen(ctx, key)
		require.NoError(t, err)
		require.Equal(t, want, seen, key)
	}
	for i := range 100 {
		require.NoError(t, m.Done(ctx, fmt.Sprint(i)))
	}
	require.Equal(t, 2, m.Len())
	one := NewMemoryIdempotency(0, time.Hour)
	require.NoError(t, one.Done(ctx, "x"))
	require.NoError(t, one.Done(ctx, "y"))
	require.Equal(t, 1, one.Len(), "size < 1 holds one key")
}

// TestMemoryIdempotencyTTL proves entries expire after the TTL by the record's clock, and
// that an expired entry is dropped when read.
func TestMemoryIdempotencyTTL(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_700_000_000, 0)
	m := NewMemoryIdempotency(10, time.Minute)
	m.now = func() time.Time { return now }
	require.NoError(t, m.Done(ctx, "k"))
	now = now.Add(time.Minute - time.Nanosecond)
	seen, _ := m.Seen(ctx, "k")
	require.True(t, seen, "still within the TTL")
	now = now.Add(2 * time.Nanosecond)
	seen, _ = m.Seen(ctx, "k")
	require.False(t, seen, "expired")
	require.Zero(t, m.Len(), "an expired key is dropped when read")
	require.NoError(t, m.Done(ctx, "k"))
	seen, _ = m.Seen(ctx, "k")
	require.True(t, seen, "recorded again, with a fresh TTL")
}
