package feedback_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/inmem"
)

// recorder is a TracerProvider that samples and keeps every span.
func recorder(t *testing.T) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, rec
}

// waitSpan waits until a span called name has ended and returns the first one.
func waitSpan(t *testing.T, rec *tracetest.SpanRecorder, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	var found sdktrace.ReadOnlySpan
	require.Eventually(t, func() bool {
		for _, s := range rec.Ended() {
			if s.Name() == name {
				found = s
				return true
			}
		}
		return false
	}, 10*time.Second, 5*time.Millisecond, "span %q", name)
	return found
}

func attrOf(s sdktrace.ReadOnlySpan, key attribute.Key) attribute.Value {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// childOf waits for a span called name whose parent is parent, and returns it.
func childOf(t *testing.T, rec *tracetest.SpanRecorder, parent sdktrace.ReadOnlySpan, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	var found sdktrace.ReadOnlySpan
	require.Eventually(t, func() bool {
		for _, s := range rec.Ended() {
			if s.Name() == name && s.Parent().SpanID() == parent.SpanContext().SpanID() {
				found = s
				return true
			}
		}
		return false
	}, 10*time.Second, 5*time.Millisecond, "span %q, child of %q", name, parent.Name())
	return found
}

// requireChild requires child to be a span of parent's trace whose parent is parent.
func requireChild(t *testing.T, parent, child sdktrace.ReadOnlySpan) {
	t.Helper()
	require.Equal(t, parent.SpanContext().TraceID(), child.SpanContext().TraceID(), "%s in the trace of %s", child.Name(), parent.Name())
	require.Equal(t, parent.SpanContext().SpanID(), child.Parent().SpanID(), "%s is a child of %s", child.Name(), parent.Name())
}

// TestLoopIsOneTrace proves the feedback path is one trace: the Store's level change
// (Watermarks) → the FeedbackEvent's publish → the pipeline's process → apply, with the rate
// change as attributes → the RateAdjustment's publish.
func TestLoopIsOneTrace(t *testing.T) {
	tp, rec := recorder(t)
	bus := newBus(t, inmem.NewBroker(inmem.BrokerOptions{}), nil, func(c *transport.Config) { c.TracerProvider = tp })
	h, err := feedback.NewHandler(feedback.HandlerConfig{Publisher: bus, TracerProvider: tp})
	require.NoError(t, err)
	c, err := feedback.NewConsumer(bus, h, feedback.ConsumerConfig{})
	require.NoError(t, err)
	require.NoError(t, c.Start(context.Background()))
	t.Cleanup(func() { require.NoError(t, c.Close()) })

	wm, err := feedback.NewWatermarks[int](feedback.WatermarkConfig{CoordinatorID: "bars_1", Capacity: 10, Publisher: bus, TracerProvider: tp})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, wm.Close()) })
	for i := range 8 { // through the soft mark (6) to the high mark (8): soft, then hard
		require.NoError(t, wm.Put(context.Background(), i))
	}
	require.Eventually(t, func() bool { return h.Rates().Scale("ibkr") == 0 }, 10*time.Second, 5*time.Millisecond)

	var watermark sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == feedback.SpanWatermark && attrOf(s, feedback.AttrLevel).AsString() == "hard" {
			watermark = s
		}
	}
	require.NotNil(t, watermark, "a watermark span of the hard level change")
	require.False(t, watermark.Parent().IsValid(), "the level change starts the trace")
	require.Equal(t, feedback.ReasonHighWatermark, attrOf(watermark, feedback.AttrReason).AsString())
	require.Equal(t, int64(8), attrOf(watermark, feedback.AttrQueueSize).AsInt64())
	publish := childOf(t, rec, watermark, "publish "+feedback.StreamFeedback)
	process := childOf(t, rec, publish, "process "+feedback.StreamFeedback)
	apply := childOf(t, rec, process, feedback.SpanApply)
	rateSpan := childOf(t, rec, apply, "publish "+feedback.StreamRateAdjustment)
	requireChild(t, watermark, publish)
	requireChild(t, publish, process)
	requireChild(t, process, apply)
	requireChild(t, apply, rateSpan)
	require.Equal(t, trace.SpanKindProducer, rateSpan.SpanKind())
	require.Equal(t, trace.SpanKindInternal, apply.SpanKind())
	for k, want := range map[attribute.Key]attribute.Value{
		feedback.AttrProvider:    attribute.StringValue("ibkr"),
		feedback.AttrOldScale:    attribute.Float64Value(0.5), // the soft event's
		feedback.AttrNewScale:    attribute.Float64Value(0),
		feedback.AttrRateReason:  attribute.StringValue("hard"),
		feedback.AttrChanged:     attribute.BoolValue(true),
		feedback.AttrApplied:     attribute.BoolValue(true),
		feedback.AttrCoordinator: attribute.StringValue("bars_1"),
		feedback.AttrLevel:       attribute.StringValue("hard"),
	} {
		require.Equal(t, want, attrOf(apply, k), "apply attribute %s", k)
	}
}

// TestPythonMessageAppliesInANewTrace proves a Python-format message, which carries no trace
// context, still applies with tracing on, in a trace of its own that holds the
// RateAdjustment's publish, and that its bytes read back unchanged.
func TestPythonMessageAppliesInANewTrace(t *testing.T) {
	tp, rec := recorder(t)
	obs := newOutcomes()
	broker := inmem.NewBroker(inmem.BrokerOptions{})
	bus := newBus(t, broker, obs, func(c *transport.Config) { c.TracerProvider = tp })
	python := newBus(t, broker, nil, nil) // a producer that does not trace, like the Python core
	h, err := feedback.NewHandler(feedback.HandlerConfig{Publisher: bus, TracerProvider: tp})
	require.NoError(t, err)
	c, err := feedback.NewConsumer(bus, h, feedback.ConsumerConfig{})
	require.NoError(t, err)
	require.NoError(t, c.Start(context.Background()))
	t.Cleanup(func() { require.NoError(t, c.Close()) })

	body := readFixture(t, "v1-feedback-hard.json")
	_, err = python.PublishRaw(context.Background(), feedback.StreamFeedback, transport.RawMessage{Body: body})
	require.NoError(t, err)
	obs.wait(t, map[string]int{transport.OutcomeSuccess: 1})
	require.Equal(t, 0.0, h.Rates().Scale("ibkr"), "the Python hard applies")

	msgs := stored(t, bus, feedback.StreamFeedback)
	require.Len(t, msgs, 1)
	require.Equal(t, string(body), string(msgs[0].Body), "its bytes unchanged")
	require.Empty(t, msgs[0].Headers, "nothing beside them: the publish had no context")

	process := waitSpan(t, rec, "process "+feedback.StreamFeedback)
	require.False(t, process.Parent().IsValid(), "no context: a new trace")
	apply := waitSpan(t, rec, feedback.SpanApply)
	requireChild(t, process, apply)
	requireChild(t, apply, waitSpan(t, rec, "publish "+feedback.StreamRateAdjustment))
}

// stubPublisher fails while fail is set and records the span context of each publish.
type stubPublisher struct {
	fail   bool
	parent []trace.SpanContext
	envs   int
}

func (p *stubPublisher) Publish(ctx context.Context, _ string, envs ...*envelope.Envelope) error {
	if p.fail {
		return errors.New("stub: bus away")
	}
	p.parent = append(p.parent, trace.SpanContextFromContext(ctx))
	p.envs += len(envs)
	return nil
}

// TestKeptAdjustmentPublishedInItsCausesTrace proves a RateAdjustment kept after a failed
// publish goes out, with the next event's, in the trace of the event that caused it: one
// publish per cause, each a child of its own apply span.
func TestKeptAdjustmentPublishedInItsCausesTrace(t *testing.T) {
	tp, rec := recorder(t)
	pub := &stubPublisher{fail: true}
	h, err := feedback.NewHandler(feedback.HandlerConfig{Publisher: pub, TracerProvider: tp})
	require.NoError(t, err)
	tr := tp.Tracer("test")
	ctx1, first := tr.Start(context.Background(), "first delivery")
	require.ErrorIs(t, h.Apply(ctx1, event("c1", feedback.LevelHard, 100)), feedback.ErrPublish)
	first.End()
	pub.fail = false
	ctx2, second := tr.Start(context.Background(), "second delivery")
	require.NoError(t, h.Apply(ctx2, event("c1", feedback.LevelOK, 101)))
	second.End()

	require.Equal(t, 2, pub.envs)
	require.Len(t, pub.parent, 2, "one publish per cause")
	var applies []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == feedback.SpanApply {
			applies = append(applies, s)
		}
	}
	require.Len(t, applies, 2)
	require.Equal(t, applies[0].SpanContext(), pub.parent[0], "the kept adjustment in the first event's trace")
	require.Equal(t, first.SpanContext().TraceID(), pub.parent[0].TraceID())
	require.Equal(t, applies[1].SpanContext(), pub.parent[1])
	require.Equal(t, second.SpanContext().TraceID(), pub.parent[1].TraceID())
}
