package feedback_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/inmem"
)

// stateStore is a StateStore over a KeyValue bucket of the tests' own broker.
func stateStore(t *testing.T) (feedback.StateStore, transport.KeyValue) {
	t.Helper()
	bus := newBus(t, inmem.NewBroker(inmem.BrokerOptions{}), nil, nil)
	kv, err := bus.KeyValue(context.Background(), feedback.StateBucket)
	require.NoError(t, err)
	return feedback.NewStateStore(kv, feedback.StreamFeedback), kv
}

func handlerOn(t *testing.T, store feedback.StateStore, mutate func(*feedback.HandlerConfig)) handlerFixture {
	t.Helper()
	return newHandler(t, func(c *feedback.HandlerConfig) {
		c.State = store
		if mutate != nil {
			mutate(c)
		}
	})
}

// TestRestoreResumesTheLoop proves the loop's state outlives the handler: a new handler on
// the same store (a restart, or a replica started later) is at the floor without any new
// event, every coordinator's level restored, and publishes nothing for it.
func TestRestoreResumesTheLoop(t *testing.T) {
	store, _ := stateStore(t)
	ctx := context.Background()
	first := handlerOn(t, store, nil)
	require.NoError(t, first.h.ApplyFrom(ctx, event("c1", feedback.LevelHard, nowTS), at(1)))
	require.NoError(t, first.h.ApplyFrom(ctx, event("c2", feedback.LevelSoft, nowTS), at(2)))
	require.Zero(t, first.h.State().UnsavedCoordinators)

	second := handlerOn(t, store, nil)
	require.Equal(t, 1.0, second.h.Rates().Scale("ibkr"), "before Restore")
	n, err := second.h.Restore(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	require.Equal(t, 0.0, second.h.Rates().Scale("ibkr"))
	require.Equal(t, 1.0, second.h.Rates().Rate("ibkr"))
	st := second.h.State()
	require.Equal(t, feedback.LevelHard, st.Coordinators["c1"].Level)
	require.Equal(t, "0-1", st.Coordinators["c1"].Position)
	require.Equal(t, feedback.LevelSoft, st.Coordinators["c2"].Level)
	scale, state := second.obs.gauges("ibkr")
	require.Equal(t, 0.0, scale)
	require.Equal(t, 2, state)
	require.Empty(t, second.pub.published(), "restoring publishes no RateAdjustment")

	n, err = second.h.Restore(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "nothing newer the second time")
	// The restored handler goes on where the first stopped.
	require.NoError(t, second.h.ApplyFrom(ctx, event("c1", feedback.LevelOK, nowTS+1), at(3)))
	require.Equal(t, 0.5, second.h.Rates().Scale("ibkr"))
}

// TestReplayAfterRestoreIsStale proves a captured event re-published after a restart changes
// nothing: the restored coordinator remembers the events it applied.
func TestReplayAfterRestoreIsStale(t *testing.T) {
	store, _ := stateStore(t)
	ctx := context.Background()
	first := handlerOn(t, store, nil)
	require.NoError(t, first.h.ApplyFrom(ctx, event("c1", feedback.LevelHard, nowTS-10), at(1)))
	require.NoError(t, first.h.ApplyFrom(ctx, event("c1", feedback.LevelOK, nowTS), at(2)))

	restarted := handlerOn(t, store, nil)
	_, err := restarted.h.Restore(ctx)
	require.NoError(t, err)
	err = restarted.h.ApplyFrom(ctx, event("c1", feedback.LevelHard, nowTS-10), at(3))
	require.ErrorIs(t, err, transport.ErrStale)
	require.ErrorContains(t, err, "repeats an event already applied")
	require.Equal(t, 1.0, restarted.h.Rates().Scale("ibkr"))
}

// TestSaveNeverRegresses proves replicas sharing the store: a lagging replica applying an
// older event after another replica saved a newer one leaves the newer one stored, and a
// third handler restores the newer one.
func TestSaveNeverRegresses(t *testing.T) {
	store, _ := stateStore(t)
	ctx := context.Background()
	ahead := handlerOn(t, store, nil)
	behind := handlerOn(t, store, nil)
	require.NoError(t, ahead.h.ApplyFrom(ctx, event("c1", feedback.LevelHard, nowTS), at(1)))
	require.NoError(t, ahead.h.ApplyFrom(ctx, event("c1", feedback.LevelOK, nowTS+1), at(2)))
	require.NoError(t, behind.h.ApplyFrom(ctx, event("c1", feedback.LevelHard, nowTS), at(1)))
	require.Zero(t, behind.h.State().UnsavedCoordinators)

	third := handlerOn(t, store, nil)
	_, err := third.h.Restore(ctx)
	require.NoError(t, err)
	require.Equal(t, feedback.LevelOK, third.h.State().Coordinators["c1"].Level)
	require.Equal(t, "0-2", third.h.State().Coordinators["c1"].Position)

	require.NoError(t, behind.h.ApplyFrom(ctx, event("c1", feedback.LevelOK, nowTS+1), at(2)), "the lagging replica catches up")
	var wg sync.WaitGroup
	for i := range 8 { // replicas racing on the same coordinator keep the newest
		wg.Go(func() {
			h := []handlerFixture{ahead, behind}[i%2]
			_ = h.h.ApplyFrom(ctx, event("c1", feedback.Levels[i%3], nowTS+2+float64(i)), at(uint64(3+i))) // stale or applied
		})
	}
	wg.Wait()
	fourth := handlerOn(t, store, nil)
	_, err = fourth.h.Restore(ctx)
	require.NoError(t, err)
	require.Equal(t, "0-10", fourth.h.State().Coordinators["c1"].Position)
}

// flakyStore fails its Saves while told to.
type flakyStore struct {
	feedback.StateStore
	mu      sync.Mutex
	failing bool
}

var errStoreAway = errors.New("store away")

func (s *flakyStore) Save(ctx context.Context, rec feedback.CoordinatorRecord, rev uint64) (uint64, error) {
	s.mu.Lock()
	failing := s.failing
	s.mu.Unlock()
	if failing {
		return 0, errStoreAway
	}
	return s.StateStore.Save(ctx, rec, rev)
}

func (s *flakyStore) setFailing(f bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failing = f
}

// TestSaveFailureRetried proves a failed save: the change applies at once, Apply returns
// ErrSave so the delivery is retried, the retry saves without applying again, and Expire
// saves what is left.
func TestSaveFailureRetried(t *testing.T) {
	inner, _ := stateStore(t)
	store := &flakyStore{StateStore: inner, failing: true}
	ctx := context.Background()
	f := handlerOn(t, store, nil)
	err := f.h.ApplyFrom(ctx, event("c1", feedback.LevelHard, nowTS), at(1))
	require.ErrorIs(t, err, feedback.ErrSave)
	require.ErrorIs(t, err, errStoreAway)
	require.Equal(t, 0.0, f.h.Rates().Scale("ibkr"), "applied anyway")
	require.Equal(t, 1, f.h.State().UnsavedCoordinators)
	require.Equal(t, 1, f.obs.processedTotal())

	store.setFailing(false)
	require.NoError(t, f.h.ApplyFrom(ctx, event("c1", feedback.LevelHard, nowTS), at(1)), "the redelivery saves")
	require.Equal(t, 1, f.obs.processedTotal(), "not applied twice")
	require.Zero(t, f.h.State().UnsavedCoordinators)

	store.setFailing(true)
	require.ErrorIs(t, f.h.ApplyFrom(ctx, event("c2", feedback.LevelSoft, nowTS), at(2)), feedback.ErrSave)
	require.ErrorIs(t, f.h.Expire(ctx), feedback.ErrSave)
	store.setFailing(false)
	require.NoError(t, f.h.Expire(ctx))
	require.Zero(t, f.h.State().UnsavedCoordinators)

	restored := handlerOn(t, inner, nil)
	n, err := restored.h.Restore(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, n)
}

// TestRestoreBoundedAndForgiving proves Restore keeps at most MaxCoordinators (the most
// pressing, the most recent first) and deletes the rest from the store, and skips records it
// cannot read.
func TestRestoreBoundedAndForgiving(t *testing.T) {
	store, kv := stateStore(t)
	ctx := context.Background()
	clock := newFakeClock(testNow)
	writer := handlerOn(t, store, func(c *feedback.HandlerConfig) { c.Now = clock.Now })
	for i, tc := range []struct {
		id    string
		level feedback.Level
	}{{"ok-old", feedback.LevelOK}, {"hard-old", feedback.LevelHard}, {"soft", feedback.LevelSoft}, {"ok-new", feedback.LevelOK}, {"hard-new", feedback.LevelHard}} {
		clock.Advance(time.Second)
		require.NoError(t, writer.h.ApplyFrom(ctx, event(tc.id, tc.level, nowTS+float64(i)), at(uint64(i+1))))
	}
	_, err := kv.Put(ctx, feedback.StreamFeedback+"/garbage", []byte("{not json"))
	require.NoError(t, err)
	_, err = kv.Put(ctx, "another.stream/c1", []byte(`{}`))
	require.NoError(t, err)

	small := handlerOn(t, store, func(c *feedback.HandlerConfig) { c.Policy.MaxCoordinators = 3 })
	n, err := small.h.Restore(ctx)
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.ElementsMatch(t, []string{"hard-new", "hard-old", "soft"}, keys(small.h.State().Coordinators))

	var left []string
	_, err = store.Load(ctx, func(rec feedback.CoordinatorRecord, _ uint64) error { left = append(left, rec.Coordinator); return nil })
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"hard-new", "hard-old", "soft"}, left, "the others are deleted")
	_, err = kv.Get(ctx, "another.stream/c1")
	require.NoError(t, err, "another stream's records are not touched")
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestEvictionDeletesRecords proves a forgotten coordinator's record leaves the store too,
// so the store stays within MaxCoordinators.
func TestEvictionDeletesRecords(t *testing.T) {
	store, _ := stateStore(t)
	ctx := context.Background()
	f := handlerOn(t, store, func(c *feedback.HandlerConfig) { c.Policy.MaxCoordinators = 2 })
	for i, id := range []string{"a", "b", "c", "d"} {
		require.NoError(t, f.h.ApplyFrom(ctx, event(id, feedback.LevelOK, nowTS), at(uint64(i+1))))
	}
	var left []string
	_, err := store.Load(ctx, func(rec feedback.CoordinatorRecord, _ uint64) error { left = append(left, rec.Coordinator); return nil })
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"c", "d"}, left)
}
