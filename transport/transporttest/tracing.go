package transporttest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/internal/pyfixtures"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// tracer is a recording TracerProvider (every span sampled) of one test.
type tracer struct {
	tp  *sdktrace.TracerProvider
	rec *tracetest.SpanRecorder
}

func (e *env) newTracer() *tracer {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	e.t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return &tracer{tp: tp, rec: rec}
}

// traced sets the bus's TracerProvider to tr's.
func (tr *tracer) traced(c *transport.Config) { c.TracerProvider = tr.tp }

// caller starts the span a publishing program would publish in.
func (tr *tracer) caller(ctx context.Context) (context.Context, trace.Span) {
	return tr.tp.Tracer("transporttest").Start(ctx, "caller")
}

// named returns the ended spans called name, in the order they ended.
func (tr *tracer) named(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range tr.rec.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// waitNamed waits until n spans called name have ended and returns them.
func (e *env) waitNamed(tr *tracer, name string, n int) []sdktrace.ReadOnlySpan {
	e.t.Helper()
	e.eventually(func() bool { return len(tr.named(name)) >= n }, "%d span(s) %q ended; have %v", n, name, spanNames(tr))
	return tr.named(name)
}

func spanNames(tr *tracer) []string {
	var out []string
	for _, s := range tr.rec.Ended() {
		out = append(out, s.Name())
	}
	return out
}

// attr is span's attribute key, or the empty value.
func attr(s sdktrace.ReadOnlySpan, key attribute.Key) attribute.Value {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// destination is the broker's name of stream on the bus's driver, as span names end.
func destination(b *transport.Bus, stream string) (system, dest string) {
	if d, ok := b.Driver().(driver.Describer); ok {
		return d.MessagingSystem(), d.Destination(stream)
	}
	return b.Config().Backend, stream
}

// traceparent is the W3C traceparent of sc.
func traceparent(sc trace.SpanContext) string {
	return fmt.Sprintf("00-%s-%s-%s", sc.TraceID(), sc.SpanID(), sc.TraceFlags())
}

// tracedReceiver collects deliveries with the span context their handler ran in.
type tracedReceiver struct {
	receiver
	mu   sync.Mutex
	ctxs []trace.SpanContext
}

func (r *tracedReceiver) handler(ctx context.Context, d *transport.Delivery) error {
	r.mu.Lock()
	r.ctxs = append(r.ctxs, trace.SpanContextFromContext(ctx))
	r.mu.Unlock()
	return r.receiver.handler(ctx, d)
}

// storedHeaders reads the headers the broker stored beside the test stream's first n
// messages, straight from the driver (in a group of its own).
func (e *env) storedHeaders(n int) []map[string]string {
	e.t.Helper()
	sub := e.rawSub(e.openDriver(e.config()), e.name("raw"), "r", n)
	ds := e.receiveN(sub, n)
	out := make([]map[string]string, len(ds))
	for i, d := range ds {
		out[i] = maps.Clone(d.HeaderMap())
	}
	return out
}

// testTracePublishProcessAck proves the spans of one message on every backend and track: a
// PRODUCER span "publish <dest>" child of the caller's span, whose traceparent the broker
// stores beside the message (and, on v2, meta.headers holds); a CONSUMER span "process
// <dest>" child of it in the same trace, in which the handler runs; a CLIENT span
// "ack <dest>" child of that; with the messaging attributes of the OpenTelemetry conventions.
func testTracePublishProcessAck(e *env) {
	tr := e.newTracer()
	pub, con := e.bus(tr.traced), e.bus(tr.traced)
	system, dest := destination(pub, e.stream)
	ctx, caller := tr.caller(e.ctx())
	envs := envelopes(0, 1)
	require.NoError(e.t, pub.Publish(ctx, e.stream, envs...))
	caller.End()

	publish := e.waitNamed(tr, "publish "+dest, 1)[0]
	require.Equal(e.t, trace.SpanKindProducer, publish.SpanKind())
	require.Equal(e.t, caller.SpanContext().SpanID(), publish.Parent().SpanID(), "publish is a child of the caller's span")
	require.Equal(e.t, caller.SpanContext().TraceID(), publish.SpanContext().TraceID())
	require.Equal(e.t, system, attr(publish, "messaging.system").AsString())
	require.Equal(e.t, dest, attr(publish, "messaging.destination.name").AsString())
	require.Equal(e.t, "publish", attr(publish, "messaging.operation.name").AsString())
	require.Equal(e.t, "send", attr(publish, "messaging.operation.type").AsString())
	msgID := attr(publish, "messaging.message.id").AsString()
	require.NotEmpty(e.t, msgID)

	headers := e.storedHeaders(1)[0]
	require.Equal(e.t, traceparent(publish.SpanContext()), headers[transport.HeaderTraceParent], "the broker stores the traceparent beside the body: %v", headers)

	var r tracedReceiver
	e.subscribe(con, "g", "c", r.handler)
	e.eventually(func() bool { return r.len() == 1 }, "the message delivered")
	process := e.waitNamed(tr, "process "+dest, 1)[0]
	require.Equal(e.t, trace.SpanKindConsumer, process.SpanKind())
	require.Equal(e.t, publish.SpanContext().TraceID(), process.SpanContext().TraceID(), "one trace from publish to process")
	require.Equal(e.t, publish.SpanContext().SpanID(), process.Parent().SpanID(), "process is a child of publish")
	require.True(e.t, process.Parent().IsRemote())
	require.Equal(e.t, process.SpanContext().SpanID(), r.ctxs[0].SpanID(), "the handler runs in the process span")
	for k, want := range map[attribute.Key]string{
		"messaging.system": system, "messaging.destination.name": dest, "messaging.operation.name": "process",
		"messaging.operation.type": "process", "messaging.consumer.group.name": "g", "messaging.client.id": "c",
		"messaging.message.id": msgID, transport.AttrOutcome: "success", transport.AttrTrack: string(e.track),
	} {
		require.Equal(e.t, want, attr(process, k).AsString(), "process span attribute %s", k)
	}
	require.Equal(e.t, int64(1), attr(process, transport.AttrDeliveryCount).AsInt64())
	require.Equal(e.t, int64(len(r.all()[0].Raw)), attr(process, "messaging.message.body.size").AsInt64())

	ack := e.waitNamed(tr, "ack "+dest, 1)[0]
	require.Equal(e.t, trace.SpanKindClient, ack.SpanKind())
	require.Equal(e.t, process.SpanContext().SpanID(), ack.Parent().SpanID(), "the ack of a batch of one is a child of its process span")
	require.Equal(e.t, "settle", attr(ack, "messaging.operation.type").AsString())

	meta := r.all()[0].Env.Meta.Headers
	if e.track == envelope.TrackV2 {
		require.Equal(e.t, headers[transport.HeaderTraceParent], meta[transport.HeaderTraceParent], "v2: meta.headers carry the trace context too")
	} else {
		require.NotContains(e.t, meta, transport.HeaderTraceParent, "v1 writes what the Python core writes: no trace context in the body")
	}
}

// testTraceBatch proves the spans of a batch publish: a PRODUCER span "create <dest>" per
// message (each message carries its own), a CLIENT span "publish <dest>" linking them, and
// each delivery's process span a child of its message's create span.
func testTraceBatch(e *env) {
	tr := e.newTracer()
	pub, con := e.bus(tr.traced), e.bus(tr.traced)
	_, dest := destination(pub, e.stream)
	ctx, caller := tr.caller(e.ctx())
	const n = 3
	require.NoError(e.t, pub.Publish(ctx, e.stream, envelopes(0, n)...))
	caller.End()

	send := e.waitNamed(tr, "publish "+dest, 1)[0]
	require.Equal(e.t, trace.SpanKindClient, send.SpanKind())
	require.Equal(e.t, int64(n), attr(send, "messaging.batch.message_count").AsInt64())
	creates := e.waitNamed(tr, "create "+dest, n)
	require.Len(e.t, send.Links(), n)
	createByID := map[string]sdktrace.ReadOnlySpan{}
	for i, c := range creates {
		require.Equal(e.t, trace.SpanKindProducer, c.SpanKind())
		require.Equal(e.t, caller.SpanContext().SpanID(), c.Parent().SpanID())
		require.Equal(e.t, "create", attr(c, "messaging.operation.type").AsString())
		require.True(e.t, slices.ContainsFunc(send.Links(), func(l sdktrace.Link) bool { return l.SpanContext.Equal(c.SpanContext()) }), "the send links create span %d", i)
		createByID[attr(c, "messaging.message.id").AsString()] = c
	}
	require.Len(e.t, createByID, n, "one message id per create span")

	var r tracedReceiver
	e.subscribe(con, "g", "c", r.handler)
	e.eventually(func() bool { return r.len() == n }, "the batch delivered")
	for _, p := range e.waitNamed(tr, "process "+dest, n) {
		c, ok := createByID[attr(p, "messaging.message.id").AsString()]
		require.True(e.t, ok, "process span of an unknown message")
		require.Equal(e.t, c.SpanContext().SpanID(), p.Parent().SpanID(), "each process span is a child of its message's create span")
	}
}

// testTraceRedelivery proves that a failed attempt's process span is an error, its nak a
// child of it, and that the redelivery's process span (in the same trace, delivery count 2)
// links to the first attempt's.
func testTraceRedelivery(e *env) {
	tr := e.newTracer()
	pub, con := e.bus(tr.traced), e.bus(tr.traced)
	_, dest := destination(pub, e.stream)
	require.NoError(e.t, pub.Publish(e.ctx(), e.stream, envelopes(0, 1)...))
	errOnce := errors.New("transporttest: first attempt fails")
	c := newCollector()
	e.subscribe(con, "g", "c", c.handler("m", func(_ context.Context, _ *transport.Delivery, h handled) error {
		if h.Attempt == 1 {
			return errOnce
		}
		return nil
	}))
	procs := e.waitNamed(tr, "process "+dest, 2)
	first, second := procs[0], procs[1]
	require.Equal(e.t, int64(1), attr(first, transport.AttrDeliveryCount).AsInt64())
	require.Equal(e.t, codes.Error, first.Status().Code)
	require.Equal(e.t, "error", attr(first, transport.AttrOutcome).AsString())
	require.Equal(e.t, int64(2), attr(second, transport.AttrDeliveryCount).AsInt64())
	require.Equal(e.t, "success", attr(second, transport.AttrOutcome).AsString())
	require.Equal(e.t, first.Parent().SpanID(), second.Parent().SpanID(), "both attempts are children of the publish span")
	require.Equal(e.t, first.SpanContext().TraceID(), second.SpanContext().TraceID())
	require.Len(e.t, second.Links(), 1)
	require.True(e.t, second.Links()[0].SpanContext.Equal(first.SpanContext()), "the redelivery links to the first attempt")
	require.Contains(e.t, second.Links()[0].Attributes, transport.AttrLinkKind.String(transport.LinkFirstAttempt))
	nak := e.waitNamed(tr, "nak "+dest, 1)[0]
	require.Equal(e.t, first.SpanContext().SpanID(), nak.Parent().SpanID())
	require.Equal(e.t, trace.SpanKindClient, nak.SpanKind())
}

// testTraceDeadLetter proves that a dead letter keeps the context its delivery failed in: it
// carries the traceparent of its publish span "publish <dest>.dlq", a child of the failed
// process span, in the original's trace; the term is a child of the process span too.
func testTraceDeadLetter(e *env) {
	tr := e.newTracer()
	pub, con := e.bus(tr.traced), e.bus(tr.traced)
	_, dest := destination(pub, e.stream)
	_, dlqDest := destination(pub, e.stream+transport.DLQSuffix)
	require.NoError(e.t, pub.Publish(e.ctx(), e.stream, envelopes(0, 1)...))
	e.subscribe(con, "g", "c", func(context.Context, *transport.Delivery) error {
		return transport.Poison("bad_event", errors.New("transporttest: never valid"))
	})
	process := e.waitNamed(tr, "process "+dest, 1)[0]
	require.Equal(e.t, "bad_event", attr(process, transport.AttrDeadLetterReason).AsString())
	require.Equal(e.t, "rejected", attr(process, transport.AttrOutcome).AsString())
	dlqPublish := e.waitNamed(tr, "publish "+dlqDest, 1)[0]
	require.Equal(e.t, process.SpanContext().SpanID(), dlqPublish.Parent().SpanID())
	term := e.waitNamed(tr, "term "+dest, 1)[0]
	require.Equal(e.t, process.SpanContext().SpanID(), term.Parent().SpanID())

	dl := e.readDLQ(1)[0]
	require.Equal(e.t, traceparent(dlqPublish.SpanContext()), dl.Headers[transport.HeaderTraceParent], "the dead letter carries its context: %v", dl.Headers)
	require.Equal(e.t, process.SpanContext().TraceID(), dlqPublish.SpanContext().TraceID(), "in the original's trace")
}

// testTraceNoContext proves that a message without trace context (what every Python producer
// writes), published raw by a program that does not trace, is stored with no trace headers
// and bytes unchanged, and that its delivery's process span starts a new trace.
func testTraceNoContext(e *env) {
	tr := e.newTracer()
	untraced, con := e.bus(), e.bus(tr.traced)
	_, dest := destination(con, e.stream)
	body := pyfixtures.Message("v1-feedback-hard.json")
	_, err := untraced.PublishRaw(e.ctx(), e.stream, driver.Message{Body: body})
	require.NoError(e.t, err)
	require.Empty(e.t, e.storedHeaders(1)[0], "nothing beside the body")

	var r tracedReceiver
	e.subscribe(con, "g", "c", r.handler)
	e.eventually(func() bool { return r.len() == 1 }, "the Python message delivered")
	require.Equal(e.t, string(body), string(r.all()[0].Raw), "bytes unchanged")
	process := e.waitNamed(tr, "process "+dest, 1)[0]
	require.False(e.t, process.Parent().IsValid(), "no context: a new trace")
	require.Equal(e.t, "success", attr(process, transport.AttrOutcome).AsString())
}

// testTracePassThrough proves that with tracing off (no TracerProvider, none set globally)
// the Bus starts no span but passes the caller's trace context on: the broker stores it, the
// handler runs in it, and a dead letter of the message carries it still.
func testTracePassThrough(e *env) {
	pub, con := e.bus(), e.bus()
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	state, _ := trace.ParseTraceState("pulse=t1")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, TraceState: state, Remote: true})
	member, _ := baggage.NewMember("tenant", "acme")
	bag, _ := baggage.New(member)
	ctx := baggage.ContextWithBaggage(trace.ContextWithRemoteSpanContext(e.ctx(), sc), bag)
	require.NoError(e.t, pub.Publish(ctx, e.stream, envelopes(0, 1)...))

	want := map[string]string{
		transport.HeaderTraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		transport.HeaderTraceState:  "pulse=t1",
		transport.HeaderBaggage:     "tenant=acme",
	}
	stored := e.storedHeaders(1)[0]
	for k, v := range want {
		require.Equal(e.t, v, stored[k], "stored header %s: %v", k, stored)
	}
	var mu sync.Mutex
	var seen []trace.SpanContext
	var bags []string
	e.subscribe(con, "g", "c", func(ctx context.Context, _ *transport.Delivery) error {
		mu.Lock()
		seen = append(seen, trace.SpanContextFromContext(ctx))
		bags = append(bags, baggage.FromContext(ctx).String())
		mu.Unlock()
		return transport.Poison("bad_event", errors.New("transporttest: dead-letter it"))
	})
	dl := e.readDLQ(1)[0]
	mu.Lock()
	defer mu.Unlock()
	require.Len(e.t, seen, 1)
	require.Equal(e.t, tid, seen[0].TraceID(), "the handler runs in the message's context")
	require.Equal(e.t, sid, seen[0].SpanID())
	require.Equal(e.t, "tenant=acme", bags[0])
	for k, v := range want {
		require.Equal(e.t, v, dl.Headers[k], "the dead letter keeps header %s: %v", k, dl.Headers)
	}
	require.True(e.t, strings.HasPrefix(dl.Headers[transport.HeaderTraceParent], "00-4bf92f"))
}

// testTraceUnsampled proves that a message whose producer did not sample its trace
// (traceparent flags 00) gets no spans on delivery, even from a consumer that records, and
// that its handler runs in the producer's context, passed on unchanged.
func testTraceUnsampled(e *env) {
	rec := tracetest.NewSpanRecorder()
	unsampled := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())), sdktrace.WithSpanProcessor(rec))
	e.t.Cleanup(func() { _ = unsampled.Shutdown(context.Background()) })
	tr := e.newTracer()
	pub := e.bus(func(c *transport.Config) { c.TracerProvider = unsampled })
	con := e.bus(tr.traced)
	require.NoError(e.t, pub.Publish(e.ctx(), e.stream, envelopes(0, 1)...))
	stored := e.storedHeaders(1)[0][transport.HeaderTraceParent]
	require.True(e.t, strings.HasSuffix(stored, "-00"), "an unsampled traceparent: %q", stored)

	var r tracedReceiver
	e.subscribe(con, "g", "c", r.handler)
	e.eventually(func() bool { return r.len() == 1 }, "the message delivered")
	r.mu.Lock()
	got := r.ctxs[0]
	r.mu.Unlock()
	require.Equal(e.t, stored, traceparent(got), "the handler runs in the producer's context")
	_, dest := destination(con, e.stream)
	e.quietFor(e.ackWait(), func() bool { return len(tr.named("process "+dest)) > 0 }, "no process span for an unsampled message")
	require.Empty(e.t, rec.Ended(), "the producer recorded nothing")
}
