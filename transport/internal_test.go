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

// TestPositionWindow proves the window of handled positions: it holds the 2×size sequences
// up to the greatest recorded, of the latest epoch; it refuses (for the caller to record as a
// key) what it cannot hold, and forgets a position only once the window has slid past it or
// its word's TTL has passed.
func TestPositionWindow(t *testing.T) {
	now := time.Duration(0)
	m := NewMemoryIdempotency(64, time.Minute) // a window of 128 sequences: two words
	m.elapsed = func() time.Duration { return now }
	w := m.positions("s/g/")
	require.Same(t, w, m.positions("s/g/"), "one window per group")
	require.NotSame(t, w, m.positions("s/other/"))
	at := func(epoch, seq uint64) Position { return Position{Epoch: epoch, Seq: seq} }

	require.False(t, w.done(Position{}), "the zero position is not held")
	require.False(t, w.seen(at(7, 1)), "nothing recorded yet")
	for seq := uint64(1); seq <= 100; seq++ {
		require.True(t, w.done(at(7, seq)))
	}
	for _, tc := range []struct {
		seq  uint64
		want bool
	}{{1, true}, {63, true}, {64, true}, {100, true}, {101, false}, {0, false}, {1 << 40, false}} {
		require.Equal(t, tc.want, w.seen(at(7, tc.seq)), "seq %d", tc.seq)
	}
	require.False(t, w.seen(at(6, 5)), "another epoch")
	require.False(t, w.done(at(6, 5)), "an older epoch is refused")

	require.True(t, w.done(at(7, 130)), "slides forward to the word of 130")
	require.False(t, w.seen(at(7, 5)), "the word of 0..63 is forgotten")
	require.True(t, w.seen(at(7, 64)), "the word of 64..127 is kept")
	require.False(t, w.done(at(7, 20)), "below the window: refused")
	require.True(t, w.done(at(7, 120)), "inside the window, out of order")
	require.True(t, w.seen(at(7, 120)))

	now = time.Minute - time.Millisecond
	require.True(t, w.done(at(7, 131)), "renews the word of 128..191")
	now = time.Minute + time.Millisecond
	require.False(t, w.seen(at(7, 120)), "its word's TTL passed")
	require.True(t, w.seen(at(7, 130)), "renewed with its word")
	require.True(t, w.seen(at(7, 131)))

	require.True(t, w.done(at(7, 130+64*10)), "a jump of more than the window clears it")
	require.False(t, w.seen(at(7, 130)))
	require.True(t, w.done(at(8, 3)), "a newer epoch starts over")
	require.True(t, w.seen(at(8, 3)))
	require.False(t, w.seen(at(7, 130+64*10)))
}
