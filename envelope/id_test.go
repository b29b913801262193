package envelope

import (
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/stretchr/testify/require"
)

// TestNewIDIncreasing proves that ids from concurrent producers are valid ULIDs carrying the
// current time, all distinct, and strictly increasing in the order each producer made them.
func TestNewIDIncreasing(t *testing.T) {
	const producers, each = 4, 2000
	before := ulid.Timestamp(time.Now())
	out := make([][]string, producers)
	var wg sync.WaitGroup
	for p := range out {
		wg.Go(func() {
			for range each {
				out[p] = append(out[p], NewID())
			}
		})
	}
	wg.Wait()
	after := ulid.Timestamp(time.Now())
	seen := make(map[string]bool, producers*each)
	for _, list := range out {
		for i, id := range list {
			parsed, err := ulid.ParseStrict(id)
			require.NoError(t, err, id)
			require.Equal(t, id, parsed.String())
			require.GreaterOrEqual(t, parsed.Time(), before)
			require.LessOrEqual(t, parsed.Time(), after+1) // +1: an overflow moves on a millisecond
			require.False(t, seen[id], "duplicate id %s", id)
			seen[id] = true
			if i > 0 {
				require.Less(t, list[i-1], id)
			}
		}
	}
}

// TestNewULIDOverflowAndClockStep proves the generator's edge cases: when the 80 random bits
// would overflow the id moves to the next millisecond, and when the clock is behind the last
// id the next id still sorts after it.
func TestNewULIDOverflowAndClockStep(t *testing.T) {
	ids.mu.Lock()
	saveMS, saveHi, saveLo := ids.ms, ids.hi, ids.lo
	future := ulid.Timestamp(time.Now()) + 60_000 // a minute ahead: the clock is "behind"
	ids.ms, ids.hi, ids.lo = future, 0xffff, ^uint64(0)-1
	ids.mu.Unlock()
	t.Cleanup(func() {
		ids.mu.Lock()
		ids.ms, ids.hi, ids.lo = saveMS, saveHi, saveLo // the future ids were only this test's
		ids.mu.Unlock()
	})
	last := ulid.ULID{}
	require.NoError(t, last.SetTime(future))
	for i := 6; i < 16; i++ {
		last[i] = 0xff
	}
	last[15] = 0xfe
	id := newULID()
	require.Equal(t, future+1, id.Time(), "overflow moves to the next millisecond")
	require.Positive(t, id.Compare(last))
	next := newULID()
	require.Equal(t, future+1, next.Time(), "a clock behind the last id keeps its millisecond")
	require.Positive(t, next.Compare(id))
}
