package feedback_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/inmem"
)

// outcomes records what the transport reports for the feedback stream.
type outcomes struct {
	mu       sync.Mutex
	consumed map[string]int // by outcome
	dlq      map[string]int // by reason
}

func newOutcomes() *outcomes { return &outcomes{consumed: map[string]int{}, dlq: map[string]int{}} }

func (o *outcomes) Published(string, string, error, time.Duration) {}
func (o *outcomes) Redelivered(string)                             {}
func (o *outcomes) Lag(string, time.Duration)                      {}
func (o *outcomes) Consumed(stream, _ string, outcome string) {
	if stream != feedback.StreamFeedback {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.consumed[outcome]++
}
func (o *outcomes) DeadLettered(stream, reason string) {
	if stream != feedback.StreamFeedback {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.dlq[reason]++
}

func (o *outcomes) snapshot() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[string]int{}
	for k, v := range o.consumed {
		out[k] = v
	}
	return out
}

// waitOutcomes waits until the feedback deliveries ended as want (outcome → count).
func (o *outcomes) wait(t *testing.T, want map[string]int) {
	t.Helper()
	require.Eventually(t, func() bool {
		got := o.snapshot()
		for k, v := range want {
			if got[k] != v {
				return false
			}
		}
		return true
	}, waitFor, time.Millisecond, "outcomes %v, want %v", o.snapshot(), want)
	require.Equal(t, want, o.snapshot())
}

// newBus opens a Bus over broker (the tests' own, not the process-wide one).
func newBus(t *testing.T, broker *inmem.Broker, obs transport.Observer, mutate func(*transport.Config)) *transport.Bus {
	t.Helper()
	cfg := transport.Config{
		Backend:         inmem.Name,
		Schemas:         feedback.Schemas(),
		Observer:        obs,
		AckWait:         5 * time.Second,
		RetryBackoffMin: 5 * time.Millisecond,
		RetryBackoffMax: 20 * time.Millisecond,
		DrainTimeout:    2 * time.Second,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	bus, err := transport.New(inmem.New(broker, inmem.Options{}), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, bus.Close()) })
	return bus
}

// pipeline is one pipeline replica: a consumer applying feedback with its own handler, whose
// adjustments go back onto the same bus (or through pub, when set).
type pipeline struct {
	bus *transport.Bus
	h   *feedback.Handler
	c   *feedback.Consumer
	obs *fakeObserver
}

func startPipeline(t *testing.T, bus *transport.Bus, pub feedback.Publisher, cfg feedback.ConsumerConfig) pipeline {
	t.Helper()
	if pub == nil {
		pub = bus
	}
	p := pipeline{bus: bus, obs: newFakeObserver()}
	var err error
	p.h, err = feedback.NewHandler(feedback.HandlerConfig{Publisher: pub, Observer: p.obs})
	require.NoError(t, err)
	p.c, err = feedback.NewConsumer(bus, p.h, cfg)
	require.NoError(t, err)
	require.NoError(t, p.c.Start(context.Background()))
	t.Cleanup(func() { require.NoError(t, p.c.Close()) })
	return p
}

// stored reads every message retained on stream.
func stored(t *testing.T, bus *transport.Bus, stream string) []driver.StoredMessage {
	t.Helper()
	var out []driver.StoredMessage
	admin := bus.Driver().(driver.StreamAdmin)
	require.NoError(t, admin.Range(context.Background(), stream, 0, func(m driver.StoredMessage) error {
		out = append(out, m)
		return nil
	}))
	return out
}

// adjustmentsOn decodes the RateAdjustments retained on telemetry.rate_adjustment.
func adjustmentsOn(t *testing.T, bus *transport.Bus) []feedback.RateAdjustment {
	t.Helper()
	var out []feedback.RateAdjustment
	for _, m := range stored(t, bus, feedback.StreamRateAdjustment) {
		env, err := bus.Codec().Decode(m.Body)
		require.NoError(t, err)
		a, err := feedback.ParseRateAdjustment(env)
		require.NoError(t, err)
		out = append(out, a)
	}
	return out
}

func encodeEvent(t *testing.T, ev feedback.Event) *envelope.Envelope {
	t.Helper()
	env, err := ev.Envelope(nil)
	require.NoError(t, err)
	return env
}

// TestBusSameEnvelopeTwiceOneAdjustment (ported from the original plan) proves the same
// envelope delivered twice through a real Bus yields one RateAdjustment: on v2 the transport's
// de-duplication by producer id absorbs the second copy (counted `duplicate`); on v1, which
// has no producer id, the second copy is a second stored message and the handler's
// latest-wins absorbs it (counted `stale`).
func TestBusSameEnvelopeTwiceOneAdjustment(t *testing.T) {
	tests := []struct {
		track envelope.Track
		want  map[string]int
	}{
		{envelope.TrackV2, map[string]int{transport.OutcomeSuccess: 1, transport.OutcomeDuplicate: 1}},
		{envelope.TrackV1, map[string]int{transport.OutcomeSuccess: 1, transport.OutcomeStale: 1}},
	}
	for _, tt := range tests {
		t.Run(string(tt.track), func(t *testing.T) {
			obs := newOutcomes()
			bus := newBus(t, inmem.NewBroker(inmem.BrokerOptions{}), obs, func(c *transport.Config) { c.Track = tt.track })
			p := startPipeline(t, bus, nil, feedback.ConsumerConfig{})
			env := encodeEvent(t, event("bars_1", feedback.LevelSoft, 100))
			ctx := context.Background()
			require.NoError(t, bus.Publish(ctx, feedback.StreamFeedback, env))
			require.NoError(t, bus.Publish(ctx, feedback.StreamFeedback, env)) // the same *Envelope: same v2 id

			obs.wait(t, tt.want)
			adj := adjustmentsOn(t, bus)
			require.Len(t, adj, 1)
			require.Equal(t, envelope.Float(0.5), adj[0].Scale)
			require.Equal(t, feedback.LevelSoft, adj[0].Reason)
			require.Equal(t, 1, p.obs.processedTotal())
		})
	}
}

// TestBusDoubleWrappedPythonFixture proves the Python Store's double-wrapped message, as
// bytes on the bus, is unwrapped and applied end to end: the provider moves to 0.5 and one
// RateAdjustment, in Python's v1 form, goes out.
func TestBusDoubleWrappedPythonFixture(t *testing.T) {
	obs := newOutcomes()
	bus := newBus(t, inmem.NewBroker(inmem.BrokerOptions{}), obs, nil)
	p := startPipeline(t, bus, nil, feedback.ConsumerConfig{})
	_, err := bus.PublishRaw(context.Background(), feedback.StreamFeedback,
		transport.RawMessage{Body: readFixture(t, "v1-store-double-wrapped.json")})
	require.NoError(t, err)

	obs.wait(t, map[string]int{transport.OutcomeSuccess: 1})
	st := p.h.State()
	require.Equal(t, feedback.CoordinatorState{Provider: "ibkr", Level: feedback.LevelSoft, QueueSize: 85, Capacity: 100,
		EventTS: 1760812500.05, AppliedAt: st.Coordinators["bars_1"].AppliedAt, Position: "0-1"}, st.Coordinators["bars_1"])
	require.Equal(t, 0.5, p.h.Rates().Scale("ibkr"))
	require.Equal(t, 30.0, p.h.Rates().Rate("ibkr"))

	msgs := stored(t, bus, feedback.StreamRateAdjustment)
	require.Len(t, msgs, 1)
	env, err := bus.Codec().Decode(msgs[0].Body)
	require.NoError(t, err)
	require.Equal(t, envelope.TrackV1, env.Meta.Track)
	require.Equal(t, "ibkr", env.KeyOf())
	adj, err := feedback.ParseRateAdjustment(env)
	require.NoError(t, err)
	require.Equal(t, feedback.LevelSoft, adj.Reason)
	require.Equal(t, envelope.Float(0.5), adj.Scale)
}

// TestBusUnsignedHardChangesNoRate proves that with PUBLISHER_TOKEN set on the consumer only,
// an unsigned (forged) `hard` event is dead-lettered as unauthenticated, with its original
// bytes, and changes no rate, while a signed one is applied.
func TestBusUnsignedHardChangesNoRate(t *testing.T) {
	broker := inmem.NewBroker(inmem.BrokerOptions{})
	obs := newOutcomes()
	consumerBus := newBus(t, broker, obs, func(c *transport.Config) { c.PublisherToken = "s3cret" })
	p := startPipeline(t, consumerBus, nil, feedback.ConsumerConfig{})
	ctx := context.Background()

	forger := newBus(t, broker, nil, nil)
	require.NoError(t, forger.Publish(ctx, feedback.StreamFeedback, encodeEvent(t, event("bars_1", feedback.LevelHard, 1))))
	obs.wait(t, map[string]int{transport.OutcomeRejected: 1})
	require.Equal(t, 1.0, p.h.Rates().Scale("ibkr"), "a forged hard event changes no rate")
	require.Empty(t, p.h.State().Coordinators)
	require.Empty(t, adjustmentsOn(t, consumerBus))

	dlq := stored(t, consumerBus, feedback.StreamFeedback+transport.DLQSuffix)
	require.Len(t, dlq, 1)
	require.Equal(t, "unauthenticated", dlq[0].Headers[transport.DLQReason])
	forged, err := (&envelope.Codec{}).Decode(dlq[0].Body)
	require.NoError(t, err, "the original bytes are kept")
	require.Equal(t, feedback.SchemaFeedbackEvent, forged.Meta.SchemaID)

	signer := newBus(t, broker, nil, func(c *transport.Config) { c.PublisherToken = "s3cret" })
	require.NoError(t, signer.Publish(ctx, feedback.StreamFeedback, encodeEvent(t, event("bars_1", feedback.LevelHard, 2))))
	obs.wait(t, map[string]int{transport.OutcomeRejected: 1, transport.OutcomeSuccess: 1})
	require.Equal(t, 0.0, p.h.Rates().Scale("ibkr"))
	require.Equal(t, 1.0, p.h.Rates().Rate("ibkr"), "hard slows to the floor")
}

// TestBusWrongSchemaIsPoison proves a message of another known schema on the feedback stream
// is dead-lettered at once with reason wrong_schema, and the consumer goes on.
func TestBusWrongSchemaIsPoison(t *testing.T) {
	obs := newOutcomes()
	bus := newBus(t, inmem.NewBroker(inmem.BrokerOptions{}), obs, nil)
	p := startPipeline(t, bus, nil, feedback.ConsumerConfig{})
	ctx := context.Background()
	adj, err := feedback.RateAdjustment{Provider: "ibkr", Scale: 0, Reason: feedback.LevelHard, TS: 1}.Envelope()
	require.NoError(t, err)
	require.NoError(t, bus.Publish(ctx, feedback.StreamFeedback, adj))
	require.NoError(t, bus.Publish(ctx, feedback.StreamFeedback, encodeEvent(t, event("c", feedback.LevelSoft, 1))))

	obs.wait(t, map[string]int{transport.OutcomeRejected: 1, transport.OutcomeSuccess: 1})
	dlq := stored(t, bus, feedback.StreamFeedback+transport.DLQSuffix)
	require.Len(t, dlq, 1)
	require.Equal(t, feedback.ReasonWrongSchema, dlq[0].Headers[transport.DLQReason])
	require.Equal(t, 0.5, p.h.Rates().Scale("ibkr"))
}

// flakyPublisher fails its first n publishes, then hands over to the bus.
type flakyPublisher struct {
	mu   sync.Mutex
	n    int
	next feedback.Publisher
}

func (f *flakyPublisher) Publish(ctx context.Context, stream string, envs ...*envelope.Envelope) error {
	f.mu.Lock()
	fail := f.n > 0
	f.n--
	f.mu.Unlock()
	if fail {
		return errBroker
	}
	return f.next.Publish(ctx, stream, envs...)
}

// TestBusAdjustmentPublishRetried proves that when the RateAdjustment cannot be published the
// delivery is retried by the transport (counted `error`, then `success`), the event is applied
// once, and the adjustment goes out once.
func TestBusAdjustmentPublishRetried(t *testing.T) {
	obs := newOutcomes()
	bus := newBus(t, inmem.NewBroker(inmem.BrokerOptions{}), obs, nil)
	p := startPipeline(t, bus, &flakyPublisher{n: 2, next: bus}, feedback.ConsumerConfig{})
	require.NoError(t, bus.Publish(context.Background(), feedback.StreamFeedback, encodeEvent(t, event("c", feedback.LevelHard, 1))))

	obs.wait(t, map[string]int{transport.OutcomeError: 2, transport.OutcomeSuccess: 1})
	require.Equal(t, 1, p.obs.processedTotal(), "applied once")
	require.Len(t, adjustmentsOn(t, bus), 1)
	require.Equal(t, 0.0, p.h.Rates().Scale("ibkr"))
}

// TestConsumerFanOut proves the default gives each replica a group of its own
// ("<PULSE_GROUP>-<PULSE_CONSUMER_NAME>"), so every replica applies every event; and that
// the explicit opt-in to a shared group splits the events between replicas instead.
func TestConsumerFanOut(t *testing.T) {
	const events = 6
	tests := []struct {
		name   string
		shared bool
		groups [2]string
	}{
		{"group per replica", false, [2]string{"pipeline-w1", "pipeline-w2"}},
		{"shared group", true, [2]string{"pipeline", "pipeline"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			broker := inmem.NewBroker(inmem.BrokerOptions{})
			var replicas [2]pipeline
			for i := range replicas {
				bus := newBus(t, broker, nil, func(c *transport.Config) { c.Consumer = fmt.Sprintf("w%d", i+1) })
				replicas[i] = startPipeline(t, bus, nil, feedback.ConsumerConfig{SharedGroup: tt.shared})
				require.Equal(t, tt.groups[i], replicas[i].c.Group())
			}
			producer := newBus(t, broker, nil, nil)
			for i := range events {
				require.NoError(t, producer.Publish(context.Background(), feedback.StreamFeedback,
					encodeEvent(t, event(fmt.Sprintf("c%d", i), feedback.LevelSoft, 1))))
			}
			total := func() int { return replicas[0].obs.processedTotal() + replicas[1].obs.processedTotal() }
			if !tt.shared {
				require.Eventually(t, func() bool { return total() == 2*events }, waitFor, time.Millisecond)
				for _, r := range replicas {
					require.Len(t, r.h.State().Coordinators, events, "every replica applies every event")
					require.Equal(t, 0.5, r.h.Rates().Scale("ibkr"))
				}
				return
			}
			require.Eventually(t, func() bool { return total() == events }, waitFor, time.Millisecond)
			a, b := replicas[0].h.State().Coordinators, replicas[1].h.State().Coordinators
			require.Equal(t, events, len(a)+len(b))
			for id := range a {
				require.NotContains(t, b, id, "a shared group gives each event to one replica")
			}
		})
	}
}

// TestConsumerLifecycle proves Start and Close are idempotent, Ready tells /readyz why it is
// not ready, and a closed consumer cannot start again.
func TestConsumerLifecycle(t *testing.T) {
	bus := newBus(t, inmem.NewBroker(inmem.BrokerOptions{}), nil, nil)
	h, err := feedback.NewHandler(feedback.HandlerConfig{})
	require.NoError(t, err)
	c, err := feedback.NewConsumer(bus, h, feedback.ConsumerConfig{Stream: "mdp.telemetry.feedback"})
	require.NoError(t, err)
	require.Equal(t, "mdp.telemetry.feedback", c.Stream())
	require.Equal(t, "pipeline-pipeline_w1", c.Group(), "the defaults: PULSE_GROUP-PULSE_CONSUMER_NAME")
	require.ErrorIs(t, c.Ready(), feedback.ErrNotStarted)
	require.Nil(t, c.Done())
	require.NoError(t, c.Err())

	ctx := context.Background()
	require.NoError(t, c.Start(ctx))
	require.NoError(t, c.Start(ctx), "idempotent")
	require.NoError(t, c.Ready())
	require.NoError(t, c.Err())
	done := c.Done()

	require.NoError(t, c.Close())
	require.NoError(t, c.Close(), "idempotent")
	select {
	case <-done:
	case <-time.After(waitFor):
		t.Fatal("consumer did not stop")
	}
	require.ErrorIs(t, c.Ready(), transport.ErrClosed)
	require.ErrorIs(t, c.Start(ctx), transport.ErrClosed)
}

// TestConsumerStopsWithContext proves cancelling Start's context stops the consumer and
// Ready reports it.
func TestConsumerStopsWithContext(t *testing.T) {
	bus := newBus(t, inmem.NewBroker(inmem.BrokerOptions{}), nil, nil)
	h, err := feedback.NewHandler(feedback.HandlerConfig{})
	require.NoError(t, err)
	c, err := feedback.NewConsumer(bus, h, feedback.ConsumerConfig{})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	require.NoError(t, c.Start(ctx))
	cancel()
	select {
	case <-c.Done():
	case <-time.After(waitFor):
		t.Fatal("consumer ignored its context")
	}
	require.ErrorContains(t, c.Ready(), "stopped")
	require.NoError(t, c.Close())
}

// TestNewConsumerErrors proves bad wiring is reported at construction.
func TestNewConsumerErrors(t *testing.T) {
	bus := newBus(t, inmem.NewBroker(inmem.BrokerOptions{}), nil, nil)
	h, err := feedback.NewHandler(feedback.HandlerConfig{})
	require.NoError(t, err)
	_, err = feedback.NewConsumer(nil, h, feedback.ConsumerConfig{})
	require.Error(t, err)
	_, err = feedback.NewConsumer(bus, h, feedback.ConsumerConfig{Stream: "bad stream"})
	require.ErrorContains(t, err, "invalid feedback stream")
	c, err := feedback.NewConsumer(bus, h, feedback.ConsumerConfig{Group: "bad.group"})
	require.NoError(t, err)
	require.ErrorContains(t, c.Start(context.Background()), "invalid group")
}

// TestConsumerConfigFromEnv proves PULSE_FEEDBACK_STREAM and PULSE_FEEDBACK_SHARED_GROUP are
// read and bad values named.
func TestConsumerConfigFromEnv(t *testing.T) {
	c, err := feedback.ConsumerConfigFromEnv(envconf.Map(nil))
	require.NoError(t, err)
	require.Equal(t, feedback.ConsumerConfig{}, c)

	c, err = feedback.ConsumerConfigFromEnv(envconf.Map(map[string]string{
		"PULSE_FEEDBACK_STREAM": "mdp.telemetry.feedback", "PULSE_FEEDBACK_SHARED_GROUP": "true"}))
	require.NoError(t, err)
	require.Equal(t, feedback.ConsumerConfig{Stream: "mdp.telemetry.feedback", SharedGroup: true}, c)

	for name, env := range map[string]map[string]string{
		"PULSE_FEEDBACK_STREAM":       {"PULSE_FEEDBACK_STREAM": "mdp:telemetry.feedback"},
		"PULSE_FEEDBACK_SHARED_GROUP": {"PULSE_FEEDBACK_SHARED_GROUP": "sometimes"},
	} {
		_, err := feedback.ConsumerConfigFromEnv(envconf.Map(env))
		var ce *envconf.Error
		require.True(t, errors.As(err, &ce), "%s: %v", name, err)
		require.Equal(t, name, ce.Var)
	}
}

// TestConsumerRestoresBeforeSubscribing proves a consumer whose handler keeps its state in
// the bus starts where the loop is: a second pipeline (a restart, or a replica started
// later) is at the floor before any new event, and the events it then reads from the start
// of the stream are stale.
func TestConsumerRestoresBeforeSubscribing(t *testing.T) {
	broker := inmem.NewBroker(inmem.BrokerOptions{})
	obs := newOutcomes()
	bus := newBus(t, broker, obs, nil)
	start := func(consumer string) (*feedback.Handler, *feedback.Consumer) {
		store, err := feedback.OpenStateStore(context.Background(), bus, feedback.StreamFeedback)
		require.NoError(t, err)
		h, err := feedback.NewHandler(feedback.HandlerConfig{Publisher: bus, State: store})
		require.NoError(t, err)
		c, err := feedback.NewConsumer(bus, h, feedback.ConsumerConfig{Consumer: consumer})
		require.NoError(t, err)
		require.NoError(t, c.Start(context.Background()))
		t.Cleanup(func() { require.NoError(t, c.Close()) })
		return h, c
	}
	h1, c1 := start("w1")
	ev, err := feedback.Event{CoordinatorID: "c1", QueueSize: 90, Capacity: 100, Level: feedback.LevelHard,
		TS: envelope.Float(float64(time.Now().UnixNano()) / 1e9)}.Envelope(nil)
	require.NoError(t, err)
	require.NoError(t, bus.Publish(context.Background(), feedback.StreamFeedback, ev))
	require.Eventually(t, func() bool { return h1.Rates().Rate("ibkr") == 1 }, waitFor, time.Millisecond)
	require.NoError(t, c1.Close())

	h2, _ := start("w2") // another replica: its own group reads the stream from the start
	require.True(t, h2.Restored())
	require.Equal(t, 1.0, h2.Rates().Rate("ibkr"), "at the floor before reading anything")
	obs.wait(t, map[string]int{transport.OutcomeSuccess: 1, transport.OutcomeStale: 1})
	require.Equal(t, 1.0, h2.Rates().Rate("ibkr"))
}

// TestReplicaCollisionReported proves two live consumers reading as the same member of the
// same group — which split the events — each report it, two consumers of their own do not,
// and the report clears once the twin is gone. A restart of one replica (its old record left
// behind, nobody writing it any more) is no collision.
func TestReplicaCollisionReported(t *testing.T) {
	bus := newBus(t, inmem.NewBroker(inmem.BrokerOptions{}), nil, nil)
	const beat = 20 * time.Millisecond
	start := func(consumer string) *feedback.Consumer {
		h, err := feedback.NewHandler(feedback.HandlerConfig{})
		require.NoError(t, err)
		c, err := feedback.NewConsumer(bus, h, feedback.ConsumerConfig{Consumer: consumer, PresenceInterval: beat})
		require.NoError(t, err)
		require.NoError(t, c.Start(context.Background()))
		t.Cleanup(func() { require.NoError(t, c.Close()) })
		return c
	}
	a, b := start("twin"), start("twin")
	other := start("own")
	for _, c := range []*feedback.Consumer{a, b} {
		require.Eventually(t, func() bool { return errors.Is(c.Collision(), feedback.ErrReplicaCollision) }, waitFor, beat)
	}
	require.ErrorContains(t, a.Collision(), "telemetry.feedback/pipeline-twin/twin is also used by instance")
	require.NoError(t, other.Collision())

	require.NoError(t, b.Close())
	require.Eventually(t, func() bool { return a.Collision() == nil }, waitFor, beat, "the report clears once the twin stopped")

	// A restart: the record the closed consumer left is gone (Close removes it), and even one
	// left by a killed process is simply taken over.
	kv, err := bus.KeyValue(context.Background(), feedback.ReplicaBucket)
	require.NoError(t, err)
	_, err = kv.Put(context.Background(), "telemetry.feedback/pipeline-killed/killed", []byte(`{"instance":"dead","host":"h","pid":1}`))
	require.NoError(t, err)
	restarted := start("killed")
	require.Never(t, func() bool { return restarted.Collision() != nil }, 10*beat, beat)
}
