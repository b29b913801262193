package feedback_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/transport"
)

// at is an Origin at stream offset seq.
func at(seq uint64) feedback.Origin { return feedback.Origin{Position: transport.Position{Seq: seq}} }

// nowTS is testNow in event seconds.
var nowTS = float64(testNow.UnixNano()) / 1e9

// TestEventOrder proves which event is newer (Handler, "Which event is newer"): the broker's
// order tells a newer publish from a redelivery whatever the Store's clock did, a copy of an
// applied event never applies again, and without a place in the broker's order only a later
// ts does.
func TestEventOrder(t *testing.T) {
	type step struct {
		level feedback.Level
		ts    float64
		o     feedback.Origin
		stale string // "" = applied; else a part of the stale error
	}
	for _, tc := range []struct {
		name  string
		steps []step
		want  float64 // the provider's scale at the end
	}{
		{"later publish, later ts", []step{{feedback.LevelHard, nowTS, at(1), ""}, {feedback.LevelOK, nowTS + 1, at(2), ""}}, 1},
		{"the Store's clock stepped back 10 minutes: the next event applies", []step{
			{feedback.LevelHard, nowTS, at(1), ""},
			{feedback.LevelOK, nowTS - 600, at(2), ""},
			{feedback.LevelSoft, nowTS - 599, at(3), ""},
		}, 0.5},
		{"a redelivery of the applied event", []step{{feedback.LevelHard, nowTS, at(5), ""}, {feedback.LevelHard, nowTS, at(5), "stored it before"}}, 0},
		{"a redelivered older event after a newer one", []step{
			{feedback.LevelOK, nowTS + 1, at(6), ""},
			{feedback.LevelHard, nowTS, at(5), "stored it before"},
		}, 1},
		{"an older message with a later ts (the later one came from a stepped-back clock)", []step{
			{feedback.LevelOK, nowTS - 600, at(6), ""},
			{feedback.LevelHard, nowTS, at(5), "stored it before"},
		}, 1},
		{"a captured event re-published", []step{
			{feedback.LevelHard, nowTS - 5, at(1), ""},
			{feedback.LevelOK, nowTS, at(2), ""},
			{feedback.LevelHard, nowTS - 5, at(3), "repeats an event already applied"},
		}, 1},
		{"a replayed dead letter is ordered by its ts", []step{
			{feedback.LevelOK, nowTS, at(2), ""},
			{feedback.LevelHard, nowTS - 5, feedback.Origin{Position: transport.Position{Seq: 9}, Replayed: true}, "place in the broker's order is unknown"},
			{feedback.LevelSoft, nowTS + 5, feedback.Origin{Position: transport.Position{Seq: 10}, Replayed: true}, ""},
		}, 0.5},
		{"no place in the broker's order: ts alone", []step{
			{feedback.LevelHard, nowTS, feedback.Origin{}, ""},
			{feedback.LevelOK, nowTS - 600, feedback.Origin{}, "place in the broker's order is unknown"},
			{feedback.LevelOK, nowTS, feedback.Origin{}, "repeats an event already applied"},
			{feedback.LevelOK, nowTS + 1, feedback.Origin{}, ""},
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newHandler(t, nil)
			for i, s := range tc.steps {
				err := f.h.ApplyFrom(context.Background(), event("c", s.level, s.ts), s.o)
				if s.stale == "" {
					require.NoError(t, err, "step %d", i)
					continue
				}
				require.ErrorIs(t, err, transport.ErrStale, "step %d", i)
				require.ErrorContains(t, err, s.stale, "step %d", i)
			}
			require.Equal(t, tc.want, f.h.Rates().Scale("ibkr"))
		})
	}
}

// TestStepBackOlderThanEveryRememberedEvent proves the one limit of the step-back rule: once
// a coordinator has RecentEvents remembered, an event stamped before all of them cannot be
// told from a replay of one already forgotten, and is stale; one stamped within them
// applies.
func TestStepBackOlderThanEveryRememberedEvent(t *testing.T) {
	f := newHandler(t, nil)
	ctx := context.Background()
	seq := uint64(0)
	for i := range feedback.RecentEvents {
		seq++
		require.NoError(t, f.h.ApplyFrom(ctx, event("c", feedback.Levels[i%3], nowTS-1000+float64(i)), at(seq)))
	}
	seq++
	err := f.h.ApplyFrom(ctx, event("c", feedback.LevelHard, nowTS-5000), at(seq))
	require.ErrorIs(t, err, transport.ErrStale)
	require.ErrorContains(t, err, "cannot be told from a replay")
	seq++
	require.NoError(t, f.h.ApplyFrom(ctx, event("c", feedback.LevelHard, nowTS-999.5), at(seq)), "within the remembered events")
	require.Equal(t, 0.0, f.h.Rates().Scale("ibkr"))
}

// TestFutureEventIsPoison proves an event stamped further ahead than MaxClockSkew is poison
// with its own reason, changes nothing, and does not keep the next real event out.
func TestFutureEventIsPoison(t *testing.T) {
	f := newHandler(t, nil)
	ctx := context.Background()
	year3000 := float64(time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC).Unix())
	for _, ts := range []float64{year3000, nowTS + feedback.DefaultMaxClockSkew.Seconds() + 1} {
		err := f.h.ApplyFrom(ctx, event("c", feedback.LevelHard, ts), at(1))
		require.ErrorIs(t, err, transport.ErrPoison)
		require.Equal(t, feedback.ReasonClockSkew, reasonOf(err))
		require.ErrorContains(t, err, "MDP_FB_MAX_CLOCK_SKEW=5m0s")
	}
	require.Empty(t, f.h.State().Coordinators)
	require.Equal(t, 1.0, f.h.Rates().Scale("ibkr"))
	require.NoError(t, f.h.ApplyFrom(ctx, event("c", feedback.LevelHard, nowTS+feedback.DefaultMaxClockSkew.Seconds()-1), at(2)), "within the skew")
	require.NoError(t, f.h.ApplyFrom(ctx, event("c", feedback.LevelSoft, nowTS), at(3)), "the next real event, stamped earlier")
	require.Equal(t, 0.5, f.h.Rates().Scale("ibkr"))

	g := newHandler(t, func(c *feedback.HandlerConfig) { c.Policy.MaxClockSkew = time.Second })
	require.ErrorIs(t, g.h.Apply(ctx, event("c", feedback.LevelHard, nowTS+2)), transport.ErrPoison)
}

// reasonOf is the dead-letter reason the transport would give err.
func reasonOf(err error) string {
	msg := err.Error()
	reason, _, _ := strings.Cut(msg, ":")
	return reason
}

// TestLongStringsArePoison proves the length limit of the payload's strings.
func TestLongStringsArePoison(t *testing.T) {
	f := newHandler(t, nil)
	ev := event(strings.Repeat("c", feedback.MaxStringLen+1), feedback.LevelHard, nowTS)
	err := f.h.Apply(context.Background(), ev)
	require.ErrorIs(t, err, transport.ErrPoison)
	require.ErrorContains(t, err, "coordinator_id of 257 bytes (accepted: a non-empty string of at most 256 bytes)")
	ev = event("c", feedback.LevelHard, nowTS)
	ev.Source = strings.Repeat("s", 10_000)
	require.ErrorContains(t, f.h.Apply(context.Background(), ev), "source of 10000 bytes")
	require.NoError(t, f.h.Apply(context.Background(), event(strings.Repeat("c", feedback.MaxStringLen), feedback.LevelHard, nowTS)))
	_, err = feedback.ParseEventPayload([]byte(`{"coordinator_id":"` + strings.Repeat("x", 300) + `","queue_size":1,"capacity":2,"level":"ok","ts":1}`))
	require.ErrorContains(t, err, "at most 256 bytes")
}

// TestCoordinatorLimitEvicts proves the cap on tracked coordinators and its eviction rule:
// expired first, then ok, then soft, then hard, the longest silent first; forgetting an ok
// coordinator leaves the rate alone; evictions are counted.
func TestCoordinatorLimitEvicts(t *testing.T) {
	clock := newFakeClock(testNow)
	f := newHandler(t, func(c *feedback.HandlerConfig) {
		c.Now = clock.Now
		c.Policy.MaxCoordinators = 3
		c.Policy.CoordinatorTTL = time.Hour
	})
	ctx := context.Background()
	apply := func(id string, l feedback.Level) {
		t.Helper()
		clock.Advance(time.Second)
		require.NoError(t, f.h.Apply(ctx, event(id, l, float64(clock.Now().Unix()))))
	}
	tracked := func() []string {
		var ids []string
		for id := range f.h.State().Coordinators {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		return ids
	}
	apply("hard1", feedback.LevelHard)
	apply("ok1", feedback.LevelOK)
	apply("ok2", feedback.LevelOK)
	apply("soft1", feedback.LevelSoft) // ok1 goes: the longest-silent ok one
	require.Equal(t, []string{"hard1", "ok2", "soft1"}, tracked())
	require.Equal(t, 0.0, f.h.Rates().Scale("ibkr"))
	apply("soft2", feedback.LevelSoft) // ok2
	apply("soft3", feedback.LevelSoft) // soft1
	require.Equal(t, []string{"hard1", "soft2", "soft3"}, tracked())
	apply("hard2", feedback.LevelHard) // soft2
	apply("hard3", feedback.LevelHard) // soft3: only hard ones left
	apply("hard4", feedback.LevelHard) // hard1, the longest silent
	require.Equal(t, []string{"hard2", "hard3", "hard4"}, tracked())
	require.Equal(t, 0.0, f.h.Rates().Scale("ibkr"))

	clock.Advance(2 * time.Hour) // all three expire
	require.NoError(t, f.h.Expire(ctx))
	require.Equal(t, 1.0, f.h.Rates().Scale("ibkr"))
	apply("soft9", feedback.LevelSoft) // an expired one goes, not soft9's room
	st := f.h.State()
	require.Equal(t, 3, st.CoordinatorsTracked)
	require.Equal(t, uint64(7), st.CoordinatorsEvicted)
	require.Contains(t, st.Coordinators, "soft9")
	require.Equal(t, 0.5, f.h.Rates().Scale("ibkr"))
}

// TestStateNBounded proves the bounded snapshot: the most pressing coordinators first, and
// the count of all of them.
func TestStateNBounded(t *testing.T) {
	f := newHandler(t, nil)
	ctx := context.Background()
	for i := range 50 {
		require.NoError(t, f.h.Apply(ctx, event(fmt.Sprintf("ok%02d", i), feedback.LevelOK, nowTS)))
	}
	require.NoError(t, f.h.Apply(ctx, event("the-hard-one", feedback.LevelHard, nowTS)))
	st := f.h.StateN(5)
	require.Len(t, st.Coordinators, 5)
	require.Equal(t, 51, st.CoordinatorsTracked)
	require.Contains(t, st.Coordinators, "the-hard-one")
	require.Contains(t, st.Coordinators, "ok49", "then the most recently applied")
}

// TestScaleFollowsMinimumUnderChurn proves, against a plain recomputation over every
// coordinator, that the per-level lists keep the provider's minimum right through applies,
// level changes, expiries and returns.
func TestScaleFollowsMinimumUnderChurn(t *testing.T) {
	clock := newFakeClock(testNow)
	f := newHandler(t, func(c *feedback.HandlerConfig) {
		c.Now = clock.Now
		c.Policy.CoordinatorTTL = 30 * time.Second
		c.Policy.Scales = map[feedback.Level]float64{feedback.LevelOK: 0.9, feedback.LevelSoft: 0.4, feedback.LevelHard: 0.1}
	})
	ctx := context.Background()
	rng := uint64(42)
	next := func(n int) int { rng = rng*6364136223846793005 + 1442695040888963407; return int(rng>>33) % n }
	for step := range 2000 {
		clock.Advance(time.Duration(next(3000)) * time.Millisecond)
		id := fmt.Sprintf("c%d", next(20))
		require.NoError(t, f.h.Apply(ctx, event(id, feedback.Levels[next(3)], float64(clock.Now().UnixNano())/1e9)), "step %d", step)
		want := 1.0
		for _, c := range f.h.State().Coordinators {
			if !c.Expired {
				want = min(want, f.h.Policy().Scale(c.Level))
			}
		}
		require.Equal(t, want, f.h.Rates().Scale("ibkr"), "step %d", step)
	}
}
