package feedback_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/inmem"
)

const testTTL = 30 * time.Second

// newExpiringHandler is a handler with a coordinator TTL on a clock the test moves.
func newExpiringHandler(t *testing.T, ttl time.Duration) (handlerFixture, *fakeClock) {
	t.Helper()
	clock := newFakeClock(testNow)
	f := newHandler(t, func(c *feedback.HandlerConfig) {
		c.Policy.CoordinatorTTL = ttl
		c.Now = clock.Now
	})
	return f, clock
}

// adjustment is a RateAdjustment's scale and reason.
type adjustment struct {
	scale  envelope.Float
	reason feedback.Level
}

func adjustmentsOf(t *testing.T, pub *fakePublisher) []adjustment {
	t.Helper()
	var out []adjustment
	for _, a := range pub.adjustments(t) {
		out = append(out, adjustment{a.Scale, a.Reason})
	}
	return out
}

// TestExpiryRestoresRate proves that a coordinator that said hard and then went silent for
// longer than the TTL stops holding the provider at its floor when Expire runs: the rate is
// back at the base rate, exactly one RateAdjustment (scale 1, reason ok, at the handler's
// clock) is published, the gauges follow, and State shows the coordinator expired with its
// last level. At exactly the TTL it has not expired yet, and a second Expire changes nothing.
func TestExpiryRestoresRate(t *testing.T) {
	f, clock := newExpiringHandler(t, testTTL)
	ctx := context.Background()
	require.NoError(t, f.h.Apply(ctx, event("bars_1", feedback.LevelHard, 100)))
	require.Equal(t, 1.0, f.h.Rates().Rate("ibkr"))

	clock.Advance(testTTL)
	require.NoError(t, f.h.Expire(ctx))
	require.Equal(t, 1.0, f.h.Rates().Rate("ibkr"), "at exactly the TTL the event still counts")
	require.False(t, f.h.State().Coordinators["bars_1"].Expired)

	clock.Advance(time.Millisecond)
	require.NoError(t, f.h.Expire(ctx))
	require.Equal(t, 60.0, f.h.Rates().Rate("ibkr"))
	require.Equal(t, 1.0, f.h.Rates().Scale("ibkr"))
	adj := f.pub.adjustments(t)
	require.Len(t, adj, 2)
	require.Equal(t, feedback.RateAdjustment{Provider: "ibkr", Scale: 1, Reason: feedback.LevelOK,
		TS: envelope.Float(float64(clock.Now().UnixNano()) / 1e9)}, adj[1])
	scale, state := f.obs.gauges("ibkr")
	require.Equal(t, 1.0, scale)
	require.Equal(t, 0, state)

	st := f.h.State().Coordinators["bars_1"]
	require.True(t, st.Expired)
	require.Equal(t, feedback.LevelHard, st.Level, "the last event is kept")
	require.Equal(t, testNow, st.AppliedAt)

	clock.Advance(time.Hour)
	require.NoError(t, f.h.Expire(ctx))
	require.Len(t, f.pub.adjustments(t), 2, "an expiry is published once")
	require.Equal(t, 1, f.obs.processedTotal(), "expiry is not an event")
}

// TestExpiryLeavesRemainingMinimum proves that when one of several coordinators expires the
// provider follows the minimum of the others, and the adjustment's reason is that
// minimum's level; an expiry that does not move the minimum publishes nothing.
func TestExpiryLeavesRemainingMinimum(t *testing.T) {
	f, clock := newExpiringHandler(t, testTTL)
	ctx := context.Background()
	require.NoError(t, f.h.Apply(ctx, event("a", feedback.LevelHard, 1)))
	clock.Advance(10 * time.Second)
	require.NoError(t, f.h.Apply(ctx, event("b", feedback.LevelSoft, 1)))
	clock.Advance(10 * time.Second)
	require.NoError(t, f.h.Apply(ctx, event("c", feedback.LevelOK, 1)))

	clock.Advance(11 * time.Second) // a is 31 s old
	require.NoError(t, f.h.Expire(ctx))
	require.Equal(t, 0.5, f.h.Rates().Scale("ibkr"))
	clock.Advance(10 * time.Second) // b is 31 s old
	require.NoError(t, f.h.Expire(ctx))
	require.Equal(t, 1.0, f.h.Rates().Scale("ibkr"))
	clock.Advance(10 * time.Second) // c is 31 s old: ok already, nothing moves
	require.NoError(t, f.h.Expire(ctx))

	require.Equal(t, []adjustment{{0, feedback.LevelHard}, {0.5, feedback.LevelSoft}, {1, feedback.LevelOK}}, adjustmentsOf(t, f.pub))
	for _, id := range []string{"a", "b", "c"} {
		require.True(t, f.h.State().Coordinators[id].Expired, id)
	}
}

// TestExpiryOnNextEvent proves the TTL is also applied when any event arrives: a hard
// coordinator silent past the TTL stops counting as soon as another coordinator's event is
// applied, in the one adjustment that event causes.
func TestExpiryOnNextEvent(t *testing.T) {
	f, clock := newExpiringHandler(t, testTTL)
	ctx := context.Background()
	require.NoError(t, f.h.Apply(ctx, event("a", feedback.LevelHard, 1)))
	clock.Advance(time.Minute)
	require.NoError(t, f.h.Apply(ctx, event("b", feedback.LevelSoft, 1)))
	require.Equal(t, 0.5, f.h.Rates().Scale("ibkr"))
	require.Equal(t, []adjustment{{0, feedback.LevelHard}, {0.5, feedback.LevelSoft}}, adjustmentsOf(t, f.pub))
	require.True(t, f.h.State().Coordinators["a"].Expired)
	require.False(t, f.h.State().Coordinators["b"].Expired)
}

// TestExpiredCoordinatorComesBack proves a fresh event from an expired coordinator counts
// again at once (the rate goes back down, one adjustment, no longer expired), while a late
// redelivery of its old event stays stale and does not revive it.
func TestExpiredCoordinatorComesBack(t *testing.T) {
	f, clock := newExpiringHandler(t, testTTL)
	ctx := context.Background()
	old := event("bars_1", feedback.LevelHard, 100)
	require.NoError(t, f.h.Apply(ctx, old))
	clock.Advance(time.Minute)
	require.NoError(t, f.h.Expire(ctx))
	require.Equal(t, 1.0, f.h.Rates().Scale("ibkr"))

	require.ErrorIs(t, f.h.Apply(ctx, old), transport.ErrStale, "the old event is still not newer")
	require.True(t, f.h.State().Coordinators["bars_1"].Expired)
	require.Equal(t, 1.0, f.h.Rates().Scale("ibkr"))

	require.NoError(t, f.h.Apply(ctx, event("bars_1", feedback.LevelHard, 200)))
	require.Equal(t, 0.0, f.h.Rates().Scale("ibkr"))
	st := f.h.State().Coordinators["bars_1"]
	require.False(t, st.Expired)
	require.Equal(t, clock.Now(), st.AppliedAt)
	require.Equal(t, []adjustment{{0, feedback.LevelHard}, {1, feedback.LevelOK}, {0, feedback.LevelHard}}, adjustmentsOf(t, f.pub))

	clock.Advance(testTTL) // the TTL runs from the fresh event
	require.NoError(t, f.h.Expire(ctx))
	require.Equal(t, 0.0, f.h.Rates().Scale("ibkr"))
}

// TestTTLZeroNeverExpires proves the default (no TTL): however long a coordinator stays
// silent, neither Expire nor other coordinators' events lift its minimum, and nothing is
// published for it.
func TestTTLZeroNeverExpires(t *testing.T) {
	f, clock := newExpiringHandler(t, 0)
	ctx := context.Background()
	require.NoError(t, f.h.Apply(ctx, event("a", feedback.LevelHard, 1)))
	clock.Advance(1000 * time.Hour)
	require.NoError(t, f.h.Expire(ctx))
	require.NoError(t, f.h.Apply(ctx, event("b", feedback.LevelOK, 1)))
	require.NoError(t, f.h.Expire(ctx))
	require.Equal(t, 0.0, f.h.Rates().Scale("ibkr"))
	require.False(t, f.h.State().Coordinators["a"].Expired)
	require.Equal(t, []adjustment{{0, feedback.LevelHard}}, adjustmentsOf(t, f.pub))
}

// TestExpiryPublishFailure proves an expiry applies even when its adjustment cannot be
// published: Expire says so with ErrPublish, keeps the adjustment, and a later Expire
// publishes it without any event.
func TestExpiryPublishFailure(t *testing.T) {
	f, clock := newExpiringHandler(t, testTTL)
	ctx := context.Background()
	require.NoError(t, f.h.Apply(ctx, event("a", feedback.LevelHard, 1)))
	clock.Advance(time.Minute)
	f.pub.setFailing(true)
	err := f.h.Expire(ctx)
	require.ErrorIs(t, err, feedback.ErrPublish)
	require.ErrorIs(t, err, errBroker)
	require.Equal(t, 1.0, f.h.Rates().Scale("ibkr"), "the rate recovered anyway")
	require.Equal(t, 1, f.h.State().PendingAdjustments)

	f.pub.setFailing(false)
	require.NoError(t, f.h.Expire(ctx))
	require.Zero(t, f.h.State().PendingAdjustments)
	require.Equal(t, []adjustment{{0, feedback.LevelHard}, {1, feedback.LevelOK}}, adjustmentsOf(t, f.pub))
}

// TestConsumerExpiresWithoutEvents proves the consumer owns the periodic check: over a real
// bus, after a hard event and no other, moving the handler's clock past the TTL is enough
// for the rate to recover and for one RateAdjustment (reason ok) to reach the bus; and the
// check stops with the consumer (goleak).
func TestConsumerExpiresWithoutEvents(t *testing.T) {
	bus := newBus(t, inmem.NewBroker(inmem.BrokerOptions{}), nil, nil)
	clock := newFakeClock(testNow)
	h, err := feedback.NewHandler(feedback.HandlerConfig{
		Policy:    feedback.Policy{CoordinatorTTL: testTTL},
		Publisher: bus,
		Now:       clock.Now,
	})
	require.NoError(t, err)
	c, err := feedback.NewConsumer(bus, h, feedback.ConsumerConfig{ExpiryInterval: time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, c.Start(context.Background()))
	t.Cleanup(func() { require.NoError(t, c.Close()) })

	require.NoError(t, bus.Publish(context.Background(), feedback.StreamFeedback, encodeEvent(t, event("bars_1", feedback.LevelHard, 1))))
	require.Eventually(t, func() bool { return h.Rates().Scale("ibkr") == 0 }, waitFor, time.Millisecond)
	// The rate changes before its RateAdjustment is published: wait for that too.
	require.Eventually(t, func() bool { return len(adjustmentsOn(t, bus)) == 1 }, waitFor, time.Millisecond)

	clock.Advance(testTTL + time.Second)
	require.Eventually(t, func() bool { return h.Rates().Scale("ibkr") == 1 }, waitFor, time.Millisecond)
	require.Eventually(t, func() bool { return len(adjustmentsOn(t, bus)) == 2 }, waitFor, time.Millisecond)
	adj := adjustmentsOn(t, bus)
	require.Equal(t, feedback.LevelOK, adj[1].Reason)
	require.Equal(t, envelope.Float(1), adj[1].Scale)
	require.True(t, h.State().Coordinators["bars_1"].Expired)

	require.NoError(t, c.Close())
	select {
	case <-c.Done():
	case <-time.After(waitFor):
		t.Fatal("the consumer did not stop")
	}
}

// TestConsumerExpiryInterval proves the check's interval: a quarter of the TTL within
// [MinExpiryInterval, MaxExpiryInterval], or as configured, none without a TTL, and a
// negative one refused.
func TestConsumerExpiryInterval(t *testing.T) {
	bus := newBus(t, inmem.NewBroker(inmem.BrokerOptions{}), nil, nil)
	tests := []struct {
		ttl, configured, want time.Duration
	}{
		{0, 0, 0},
		{0, time.Second, 0},
		{30 * time.Second, 0, feedback.MaxExpiryInterval},
		{2 * time.Second, 0, 500 * time.Millisecond},
		{20 * time.Millisecond, 0, feedback.MinExpiryInterval},
		{30 * time.Second, 5 * time.Second, 5 * time.Second},
	}
	for _, tt := range tests {
		h, err := feedback.NewHandler(feedback.HandlerConfig{Policy: feedback.Policy{CoordinatorTTL: tt.ttl}})
		require.NoError(t, err)
		c, err := feedback.NewConsumer(bus, h, feedback.ConsumerConfig{ExpiryInterval: tt.configured})
		require.NoError(t, err)
		require.Equal(t, tt.want, c.ExpiryInterval(), "ttl %v, configured %v", tt.ttl, tt.configured)
	}
	h, err := feedback.NewHandler(feedback.HandlerConfig{})
	require.NoError(t, err)
	_, err = feedback.NewConsumer(bus, h, feedback.ConsumerConfig{ExpiryInterval: -time.Second})
	require.ErrorContains(t, err, "expiry interval -1s")
}
