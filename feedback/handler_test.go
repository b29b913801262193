package feedback_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/transport"
)

var testNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

type handlerFixture struct {
	h   *feedback.Handler
	pub *fakePublisher
	obs *fakeObserver
}

func newHandler(t *testing.T, mutate func(*feedback.HandlerConfig)) handlerFixture {
	t.Helper()
	f := handlerFixture{pub: newFakePublisher(), obs: newFakeObserver()}
	cfg := feedback.HandlerConfig{
		Publisher: f.pub,
		Observer:  f.obs,
		Now:       func() time.Time { return testNow },
	}
	if mutate != nil {
		mutate(&cfg)
	}
	h, err := feedback.NewHandler(cfg)
	require.NoError(t, err)
	f.h = h
	return f
}

func event(coord string, level feedback.Level, ts float64) feedback.Event {
	return feedback.Event{CoordinatorID: coord, QueueSize: 10, Capacity: 100, Level: level, TS: envelope.Float(ts)}
}

// TestOneSoftEventOneAdjustment (ported from the original plan) proves one `soft` event
// yields exactly one RateAdjustment, scale 0.5, reason soft, on telemetry.rate_adjustment,
// keyed by the provider.
func TestOneSoftEventOneAdjustment(t *testing.T) {
	f := newHandler(t, nil)
	require.NoError(t, f.h.Apply(context.Background(), event("bars_1", feedback.LevelSoft, 100)))

	adj := f.pub.adjustments(t)
	require.Len(t, adj, 1)
	require.Equal(t, feedback.RateAdjustment{Provider: "ibkr", Scale: 0.5, Reason: feedback.LevelSoft,
		TS: envelope.Float(float64(testNow.UnixNano()) / 1e9)}, adj[0])
	require.Equal(t, "ibkr", f.pub.published()[0].KeyOf())
	require.Equal(t, 0.5, f.h.Rates().Scale("ibkr"))
	require.Equal(t, 30.0, f.h.Rates().Rate("ibkr"))
}

// TestLevelScales (ported from the original plan) proves ok/soft/hard scale the provider to
// 1.0/0.5/0.0, with the gauges and the processed counter recorded, and that hard slows the
// rate to the floor instead of stopping it.
func TestLevelScales(t *testing.T) {
	tests := []struct {
		level       feedback.Level
		scale       float64
		rate        float64
		state       int
		adjustments int // ok from the initial scale 1.0 is no change
	}{
		{feedback.LevelOK, 1.0, 60, 0, 0},
		{feedback.LevelSoft, 0.5, 30, 1, 1},
		{feedback.LevelHard, 0.0, 1, 2, 1},
	}
	for _, tt := range tests {
		t.Run(string(tt.level), func(t *testing.T) {
			f := newHandler(t, nil)
			require.NoError(t, f.h.Apply(context.Background(), event("c1", tt.level, 1)))
			require.Equal(t, tt.scale, f.h.Rates().Scale("ibkr"))
			require.Equal(t, tt.rate, f.h.Rates().Rate("ibkr"))
			require.Greater(t, f.h.Rates().Rate("ibkr"), 0.0, "never stopped")
			require.Len(t, f.pub.adjustments(t), tt.adjustments)
			scale, state := f.obs.gauges("ibkr")
			require.Equal(t, tt.scale, scale)
			require.Equal(t, tt.state, state)
			require.Equal(t, 1, f.obs.processed[[2]string{"ibkr", string(tt.level)}])
		})
	}
}

// TestSameEventTwiceOneAdjustment proves a second delivery of the same event (same
// coordinator and ts) changes nothing, is reported stale to the transport, and publishes
// nothing more.
func TestSameEventTwiceOneAdjustment(t *testing.T) {
	f := newHandler(t, nil)
	ev := event("c1", feedback.LevelSoft, 5)
	require.NoError(t, f.h.Apply(context.Background(), ev))
	err := f.h.Apply(context.Background(), ev)
	require.ErrorIs(t, err, transport.ErrStale)
	require.Len(t, f.pub.adjustments(t), 1)
	require.Equal(t, 1, f.obs.processedTotal())
}

// TestStaleEventIgnored proves per-coordinator latest-wins by event ts: an older event that
// arrives late changes neither the scale nor the coordinator's state, is not counted as
// processed, and is reported stale.
func TestStaleEventIgnored(t *testing.T) {
	f := newHandler(t, nil)
	ctx := context.Background()
	require.NoError(t, f.h.Apply(ctx, event("c1", feedback.LevelHard, 10)))
	require.NoError(t, f.h.Apply(ctx, event("c1", feedback.LevelOK, 20)))

	err := f.h.Apply(ctx, event("c1", feedback.LevelHard, 15)) // late redelivery of an older state
	require.ErrorIs(t, err, transport.ErrStale)
	require.ErrorContains(t, err, "not newer")
	require.Equal(t, 1.0, f.h.Rates().Scale("ibkr"))
	require.Equal(t, 2, f.obs.processedTotal())
	st := f.h.State().Coordinators["c1"]
	require.Equal(t, feedback.LevelOK, st.Level)
	require.Equal(t, 20.0, st.EventTS)

	adj := f.pub.adjustments(t)
	require.Len(t, adj, 2)
	require.Equal(t, []envelope.Float{0, 1}, []envelope.Float{adj[0].Scale, adj[1].Scale})
}

// TestMinimumScaleDecides proves several coordinators feeding one provider are combined by
// the minimum scale: the most backed-up Store decides, and one Store recovering does not lift
// the rate while another is still hard. Only real changes are published.
func TestMinimumScaleDecides(t *testing.T) {
	f := newHandler(t, nil)
	ctx := context.Background()
	steps := []struct {
		ev     feedback.Event
		scale  float64
		state  int
		reason feedback.Level // of a published adjustment, "" = none published
	}{
		{event("a", feedback.LevelSoft, 1), 0.5, 1, feedback.LevelSoft},
		{event("b", feedback.LevelHard, 1), 0.0, 2, feedback.LevelHard},
		{event("a", feedback.LevelOK, 2), 0.0, 2, ""}, // b still hard
		{event("b", feedback.LevelSoft, 2), 0.5, 1, feedback.LevelSoft},
		{event("a", feedback.LevelSoft, 3), 0.5, 1, ""}, // both soft: no change
		{event("b", feedback.LevelOK, 3), 0.5, 1, ""},   // a still soft
		{event("a", feedback.LevelOK, 4), 1.0, 0, feedback.LevelOK},
	}
	published := 0
	for i, s := range steps {
		require.NoError(t, f.h.Apply(ctx, s.ev), "step %d", i)
		require.Equal(t, s.scale, f.h.Rates().Scale("ibkr"), "step %d", i)
		scale, state := f.obs.gauges("ibkr")
		require.Equal(t, s.scale, scale, "step %d", i)
		require.Equal(t, s.state, state, "step %d", i)
		adj := f.pub.adjustments(t)
		if s.reason != "" {
			published++
			require.Len(t, adj, published, "step %d", i)
			require.Equal(t, s.reason, adj[published-1].Reason, "step %d", i)
			require.Equal(t, envelope.Float(s.scale), adj[published-1].Scale, "step %d", i)
		}
		require.Len(t, adj, published, "step %d: only real changes are published", i)
	}
}

// TestHardSlowsToFloor proves `hard` sets the limiter to the configured floor, not to zero.
func TestHardSlowsToFloor(t *testing.T) {
	f := newHandler(t, func(c *feedback.HandlerConfig) {
		c.Policy = feedback.Policy{BaseRate: 200, MinRate: 5}
	})
	require.NoError(t, f.h.Apply(context.Background(), event("c", feedback.LevelHard, 1)))
	require.Equal(t, 0.0, f.h.Rates().Scale("ibkr"))
	require.Equal(t, 5.0, float64(f.h.Rates().Limiter("ibkr").Limit()))
	require.True(t, f.h.Rates().Allow("ibkr"), "a token is still granted at the floor")
}

// TestPublishFailureAppliesAndRetries proves the rate change applies even when the
// RateAdjustment cannot be published; Apply then returns ErrPublish so the delivery is
// retried; the retry (same event) does not apply again, and succeeds once the adjustment is
// out — published exactly once.
func TestPublishFailureAppliesAndRetries(t *testing.T) {
	f := newHandler(t, nil)
	ctx := context.Background()
	ev := event("c1", feedback.LevelHard, 7)

	f.pub.setFailing(true)
	err := f.h.Apply(ctx, ev)
	require.ErrorIs(t, err, feedback.ErrPublish)
	require.ErrorIs(t, err, errBroker)
	require.False(t, errors.Is(err, transport.ErrStale))
	require.Equal(t, 0.0, f.h.Rates().Scale("ibkr"), "the rate change applied")
	require.Equal(t, 1, f.h.State().PendingAdjustments)

	err = f.h.Apply(ctx, ev) // redelivery while still failing
	require.ErrorIs(t, err, feedback.ErrPublish)
	require.Equal(t, 1, f.obs.processedTotal(), "not applied twice")

	f.pub.setFailing(false)
	require.NoError(t, f.h.Apply(ctx, ev), "the redelivery succeeds once the adjustment is published")
	require.Len(t, f.pub.adjustments(t), 1)
	require.Equal(t, 0, f.h.State().PendingAdjustments)
	require.Equal(t, 1, f.obs.processedTotal())

	require.ErrorIs(t, f.h.Apply(ctx, ev), transport.ErrStale, "after that it is an ordinary duplicate")
}

// TestPublishBacklogGoesOutInOrder proves adjustments kept after failures are published, in
// order, by the next Apply that can publish, even one from another coordinator, and that
// Flush publishes them too.
func TestPublishBacklogGoesOutInOrder(t *testing.T) {
	f := newHandler(t, nil)
	ctx := context.Background()
	f.pub.setFailing(true)
	require.ErrorIs(t, f.h.Apply(ctx, event("a", feedback.LevelSoft, 1)), feedback.ErrPublish)
	require.ErrorIs(t, f.h.Apply(ctx, event("a", feedback.LevelHard, 2)), feedback.ErrPublish)
	require.ErrorIs(t, f.h.Flush(ctx), feedback.ErrPublish)
	f.pub.setFailing(false)
	require.NoError(t, f.h.Apply(ctx, event("b", feedback.LevelOK, 1))) // no change itself
	adj := f.pub.adjustments(t)
	require.Len(t, adj, 2)
	require.Equal(t, []feedback.Level{feedback.LevelSoft, feedback.LevelHard}, []feedback.Level{adj[0].Reason, adj[1].Reason})

	f.pub.setFailing(true)
	require.ErrorIs(t, f.h.Apply(ctx, event("a", feedback.LevelOK, 3)), feedback.ErrPublish)
	f.pub.setFailing(false)
	require.NoError(t, f.h.Flush(ctx))
	require.Len(t, f.pub.adjustments(t), 3)
	require.NoError(t, f.h.Flush(ctx), "nothing left")
}

// TestPendingAdjustmentsBounded proves the backlog kept while publishing fails is bounded:
// the oldest are dropped, counted in State, and the newest survive.
func TestPendingAdjustmentsBounded(t *testing.T) {
	f := newHandler(t, func(c *feedback.HandlerConfig) { c.MaxPending = 2 })
	ctx := context.Background()
	f.pub.setFailing(true)
	levels := []feedback.Level{feedback.LevelSoft, feedback.LevelHard, feedback.LevelOK, feedback.LevelHard}
	for i, l := range levels {
		require.Error(t, f.h.Apply(ctx, event("a", l, float64(i+1))))
	}
	st := f.h.State()
	require.Equal(t, 2, st.PendingAdjustments)
	require.Equal(t, uint64(2), st.DroppedAdjustments)
	f.pub.setFailing(false)
	require.NoError(t, f.h.Flush(ctx))
	adj := f.pub.adjustments(t)
	require.Len(t, adj, 2)
	require.Equal(t, []feedback.Level{feedback.LevelOK, feedback.LevelHard}, []feedback.Level{adj[0].Reason, adj[1].Reason})
}

// TestInvalidEventIsPoison proves an invalid event is refused as poison and changes nothing.
func TestInvalidEventIsPoison(t *testing.T) {
	f := newHandler(t, nil)
	err := f.h.Apply(context.Background(), feedback.Event{CoordinatorID: "c", Capacity: 0, Level: feedback.LevelHard, TS: 1})
	require.ErrorIs(t, err, transport.ErrPoison)
	require.Equal(t, 1.0, f.h.Rates().Scale("ibkr"))
	require.Empty(t, f.pub.published())
}

// TestHandlerState proves the /state snapshot: per provider base rate, scale and rate; per
// coordinator level, event ts, when applied and whether expired; it marshals to the
// documented JSON names.
func TestHandlerState(t *testing.T) {
	f := newHandler(t, nil)
	st := f.h.State()
	require.Equal(t, feedback.ProviderState{BaseRate: 60, MinRate: 1, Burst: 1, Scale: 1, Rate: 60}, st.Providers["ibkr"], "known before any event")
	require.Empty(t, st.Coordinators)

	require.NoError(t, f.h.Apply(context.Background(), event("bars_1", feedback.LevelSoft, 1760812345.5)))
	st = f.h.State()
	require.Equal(t, feedback.ProviderState{BaseRate: 60, MinRate: 1, Burst: 1, Scale: 0.5, Rate: 30}, st.Providers["ibkr"])
	require.Equal(t, feedback.CoordinatorState{Provider: "ibkr", Level: feedback.LevelSoft, QueueSize: 10, Capacity: 100,
		EventTS: 1760812345.5, AppliedAt: testNow, Expired: false}, st.Coordinators["bars_1"])

	b, err := json.Marshal(st)
	require.NoError(t, err)
	require.JSONEq(t, `{"providers":{"ibkr":{"base_rate":60,"min_rate":1,"burst":1,"scale":0.5,"rate":30}},
		"coordinators":{"bars_1":{"provider":"ibkr","level":"soft","queue_size":10,"capacity":100,
		"event_ts":1760812345.5,"applied_at":"2026-01-02T03:04:05Z","expired":false}},
		"coordinators_tracked":1,"coordinators_evicted":0,"unsaved_coordinators":0,
		"pending_adjustments":0,"dropped_adjustments":0}`, string(b))
}

// TestHandlerWithoutPublisherOrObserver proves the zero configuration works: rates move,
// nothing is published, no metrics are needed.
func TestHandlerWithoutPublisherOrObserver(t *testing.T) {
	h, err := feedback.NewHandler(feedback.HandlerConfig{})
	require.NoError(t, err)
	require.NoError(t, h.Apply(context.Background(), event("c", feedback.LevelHard, 1)))
	require.Equal(t, 1.0, h.Rates().Rate("ibkr"))
	require.NoError(t, h.Flush(context.Background()))

	_, err = feedback.NewHandler(feedback.HandlerConfig{Policy: feedback.Policy{MinRate: 100}})
	require.ErrorContains(t, err, "MDP_FB_MIN_RATE")
	_, err = feedback.NewHandler(feedback.HandlerConfig{Stream: "bad stream"})
	require.ErrorContains(t, err, "invalid rate adjustment stream")
}

// TestHandlerConcurrent proves concurrent events from many coordinators are race-free and
// end in the minimum of their final levels, with the last published adjustment matching it.
func TestHandlerConcurrent(t *testing.T) {
	f := newHandler(t, nil)
	ctx := context.Background()
	levels := []feedback.Level{feedback.LevelOK, feedback.LevelSoft, feedback.LevelHard}
	var wg sync.WaitGroup
	for c := range 6 {
		wg.Go(func() {
			for i := range 50 {
				// coordinator c ends on levels[c%3] at ts 50 (i = 49)
				l := levels[(c+i+2)%3]
				if err := f.h.Apply(ctx, event(fmt.Sprintf("c%d", c), l, float64(i+1))); err != nil {
					t.Errorf("apply: %v", err)
				}
			}
		})
	}
	wg.Wait()
	for c := range 6 {
		require.Equal(t, levels[c%3], f.h.State().Coordinators[fmt.Sprintf("c%d", c)].Level)
	}
	require.Equal(t, 0.0, f.h.Rates().Scale("ibkr"))
	adj := f.pub.adjustments(t)
	require.NotEmpty(t, adj)
	require.Equal(t, envelope.Float(0), adj[len(adj)-1].Scale, "adjustments are published in the order applied")
	require.Equal(t, 300, f.obs.processedTotal())
}
