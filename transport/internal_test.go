package transport

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestBackoffGrowsAndCaps proves the retry delay: about RetryBackoffMin on the first failure,
// doubling per attempt, never above RetryBackoffMax before jitter, even for huge attempt
// counts; and spread (±50%) so that messages failed together are not retried together.
func TestBackoffGrowsAndCaps(t *testing.T) {
	b := &Bus{cfg: Config{RetryBackoffMin: 100 * time.Millisecond, RetryBackoffMax: time.Second}}
	for attempt, base := range map[int]time.Duration{
		0:       100 * time.Millisecond,
		1:       100 * time.Millisecond,
		2:       200 * time.Millisecond,
		3:       400 * time.Millisecond,
		4:       800 * time.Millisecond,
		5:       time.Second,
		6:       time.Second,
		1 << 30: time.Second,
	} {
		seen := map[time.Duration]bool{}
		for range 50 {
			d := b.backoff(attempt)
			require.GreaterOrEqual(t, d, base/2, "attempt %d", attempt)
			require.LessOrEqual(t, d, base*3/2+1, "attempt %d", attempt)
			seen[d] = true
		}
		require.Greater(t, len(seen), 1, "attempt %d: the delay is jittered", attempt)
	}
	zero := &Bus{cfg: Config{}}
	require.Zero(t, zero.backoff(5), "no backoff configured: retry at once")
}

// TestMemoryIdempotencyBounded proves the record keeps at least the last size keys and at
// most 2×size, forgetting whole older generations, and that recording a key again renews it.
func TestMemoryIdempotencyBounded(t *testing.T) {
	ctx := context.Background()
	m := NewMemoryIdempotency(2, time.Hour)
	for _, k := range []string{"a", "b", "c"} { // c starts a new generation: a and b are kept
		require.NoError(t, m.Done(ctx, k))
	}
	for key, want := range map[string]bool{"a": true, "b": true, "c": true, "x": false} {
		seen, err := m.Seen(ctx, key)
		require.NoError(t, err)
		require.Equal(t, want, seen, key)
	}
	require.NoError(t, m.Done(ctx, "a")) // renewed into the current generation {c, a}
	require.NoError(t, m.Done(ctx, "d")) // {c, a} becomes the previous one: b is forgotten
	for key, want := range map[string]bool{"a": true, "b": false, "c": true, "d": true} {
		seen, _ := m.Seen(ctx, key)
		require.Equal(t, want, seen, key)
	}
	for i := range 100 {
		require.NoError(t, m.Done(ctx, fmt.Sprint(i)))
		require.LessOrEqual(t, m.Len(), 4, "at most 2×size records")
		for back := range min(i+1, 2) { // the last size keys are always there
			seen, _ := m.Seen(ctx, fmt.Sprint(i-back))
			require.True(t, seen, "key %d after recording %d", i-back, i)
		}
	}
	for i, want := range map[int]bool{95: false, 50: false, 0: false, 99: true} {
		seen, _ := m.Seen(ctx, fmt.Sprint(i))
		require.Equal(t, want, seen, i)
	}
	one := NewMemoryIdempotency(0, time.Hour)
	for _, k := range []string{"x", "y", "z"} {
		require.NoError(t, one.Done(ctx, k))
	}
	require.Equal(t, 2, one.Len(), "size < 1 keeps one key per generation")
}

// TestMemoryIdempotencyTTL proves entries expire after the TTL by the record's clock, and
// that an expired entry is dropped when read.
func TestMemoryIdempotencyTTL(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_700_000_000, 0)
	m := NewMemoryIdempotency(10, time.Minute)
	start := now
	m.elapsed = func() time.Duration { return now.Sub(start) }
	require.NoError(t, m.Done(ctx, "k"))
	now = now.Add(time.Minute - time.Millisecond)
	seen, _ := m.Seen(ctx, "k")
	require.True(t, seen, "still within the TTL")
	now = now.Add(2 * time.Millisecond)
	seen, _ = m.Seen(ctx, "k")
	require.False(t, seen, "expired")
	require.Zero(t, m.Len(), "an expired key is dropped when read")
	require.NoError(t, m.Done(ctx, "k"))
	seen, _ = m.Seen(ctx, "k")
	require.True(t, seen, "recorded again, with a fresh TTL")
}

// TestLagByBrokerClockClamped proves pulse_lag_ms never trusts a producer's ts when the
// broker's storage time is known, and is clamped to [0, maxLag] either way: a ts in the year
// 3000 or of 1e300 once showed as 9.2e12 ms.
func TestLagByBrokerClockClamped(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	year3000 := float64(time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC).Unix())
	nowTS := float64(now.Unix())
	for _, tc := range []struct {
		name     string
		storedAt time.Time
		ts       float64
		want     time.Duration
	}{
		{"broker time, ts in the year 3000", now.Add(-40 * time.Millisecond), year3000, 40 * time.Millisecond},
		{"broker time, ts of 1e300", now.Add(-3 * time.Second), 1e300, 3 * time.Second},
		{"broker time, ts far in the past", now.Add(-time.Millisecond), 1, time.Millisecond},
		{"broker clock a little ahead", now.Add(5 * time.Millisecond), nowTS, 0},
		{"broker time very old", now.Add(-30 * 24 * time.Hour), nowTS, maxLag},
		{"no broker time: the ts stands in", time.Time{}, nowTS - 2, 2 * time.Second},
		{"no broker time, ts in the year 3000", time.Time{}, year3000, 0},
		{"no broker time, ts of 1e300", time.Time{}, 1e300, 0},
		{"no broker time, ts of 1", time.Time{}, 1, maxLag},
		{"no broker time, negative ts", time.Time{}, -5, 0},
	} {
		require.Equal(t, tc.want, lag(now, tc.storedAt, tc.ts), tc.name)
	}
}

// TestMemoryIdempotencyKeyInParts proves a key the Subscription records as prefix and id is
// the key a caller of Seen and Done names whole, and the other way round.
func TestMemoryIdempotencyKeyInParts(t *testing.T) {
	ctx := context.Background()
	m := NewMemoryIdempotency(10, time.Hour)
	m.done("telemetry.feedback/pipeline/", "42")
	seen, err := m.Seen(ctx, "telemetry.feedback/pipeline/42")
	require.NoError(t, err)
	require.True(t, seen)
	require.NoError(t, m.Done(ctx, "telemetry.feedback/pipeline/43"))
	require.True(t, m.seen("telemetry.feedback/pipeline/", "43"))
	require.False(t, m.seen("telemetry.feedback/pipeline/", "4"), "a prefix of a key is another key")
	require.False(t, m.seen("telemetry.feedback/other/", "42"))
}
