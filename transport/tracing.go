package transport

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/internal/tracing"
	"github.com/pulse-bus/pulse/transport/driver"
)

// The trace context a message carries beside its body (docs/contract.md §2): W3C Trace
// Context and Baggage, written by the Bus on publish and read on delivery. They are NATS
// headers on JetStream and entry fields after `data` on Redis; on track v2 they are also in
// the envelope's meta.headers.
const (
	HeaderTraceParent = "traceparent"
	HeaderTraceState  = "tracestate"
	HeaderBaggage     = "baggage"
)

// TracerName is the instrumentation scope of the Bus's spans.
const TracerName = "github.com/pulse-bus/pulse/transport"

// Span attributes of Pulse's own, where the messaging conventions have none.
const (
	// AttrDeliveryCount is the broker's count of deliveries of the message to the group, from
	// 1 (Delivery.Attempt), on process spans.
	AttrDeliveryCount = attribute.Key("pulse.message.delivery_count")
	// AttrOutcome is how the Bus settled a delivery, as pulse_consume_total counts it
	// (success, error, duplicate, dead_letter, rejected, stale), on process spans.
	AttrOutcome = attribute.Key("pulse.consume.outcome")
	// AttrDeadLetterReason is why a delivery was dead-lettered, on its process span.
	AttrDeadLetterReason = attribute.Key("pulse.dead_letter.reason")
	// AttrTrack is the envelope's schema track, on process spans.
	AttrTrack = attribute.Key("pulse.envelope.track")
	// AttrLinkKind says what a span link points at: LinkFirstAttempt.
	AttrLinkKind = attribute.Key("pulse.link.kind")
)

// LinkFirstAttempt marks the link from a redelivery's process span to the process span of the
// message's first attempt in this process.
const LinkFirstAttempt = "first_attempt"

// Operation names of the Bus's spans (messaging.operation.name, and the start of the span name).
const (
	opPublish = "publish" // a send: PRODUCER for one message, CLIENT for a batch
	opCreate  = "create"  // one message of a batch: PRODUCER, its context is what the message carries
	opProcess = "process" // a delivery handled: CONSUMER
	opAck     = "ack"     // settlements: CLIENT
	opNak     = "nak"
	opTerm    = "term"
)

// busTracing is the Bus's tracing: the tracer (nil from Get while tracing is off), the
// propagator of the wire format, and how the driver names its broker.
type busTracing struct {
	tracer *tracing.Tracer
	prop   propagation.TextMapPropagator
	fields []string // prop.Fields(), read once
	w3c    bool     // prop is tracing.W3C: a traceparent alone decides whether a delivery is sampled
	system attribute.KeyValue
	dest   func(stream string) string
	names  sync.Map // stream → *spanNames
}

func newBusTracing(cfg Config, drv driver.Driver) *busTracing {
	t := &busTracing{
		tracer: tracing.New(cfg.TracerProvider, TracerName),
		prop:   tracing.Propagator(cfg.Propagator),
		system: semconv.MessagingSystemKey.String(cfg.Backend),
		dest:   func(s string) string { return s },
	}
	t.fields = t.prop.Fields()
	t.w3c = cfg.Propagator == nil
	if d, ok := drv.(driver.Describer); ok {
		t.system = semconv.MessagingSystemKey.String(d.MessagingSystem())
		t.dest = d.Destination
	}
	return t
}

// spanNames are one stream's span names and destination, built once.
type spanNames struct {
	dest                                     attribute.KeyValue
	publish, create, process, ack, nak, term string
}

func (t *busTracing) namesOf(stream string) *spanNames {
	if n, ok := t.names.Load(stream); ok {
		return n.(*spanNames)
	}
	d := t.dest(stream)
	n := &spanNames{
		dest:    semconv.MessagingDestinationName(d),
		publish: opPublish + " " + d, create: opCreate + " " + d, process: opProcess + " " + d,
		ack: opAck + " " + d, nak: opNak + " " + d, term: opTerm + " " + d,
	}
	actual, _ := t.names.LoadOrStore(stream, n)
	return actual.(*spanNames)
}

// attrs are the attributes every span of op on stream has.
func (t *busTracing) attrs(n *spanNames, op string, opType attribute.KeyValue, more ...attribute.KeyValue) []attribute.KeyValue {
	return append([]attribute.KeyValue{t.system, n.dest, semconv.MessagingOperationName(op), opType}, more...)
}

// hasContext reports whether ctx holds a trace context to pass on (a span context or
// baggage) when no span is made.
func hasContext(ctx context.Context) bool {
	return trace.SpanContextFromContext(ctx).IsValid() || baggage.FromContext(ctx).Len() > 0
}

// carries reports whether c holds any of the propagator's fields.
func (t *busTracing) carries(c propagation.TextMapCarrier) bool {
	for _, f := range t.fields {
		if c.Get(f) != "" {
			return true
		}
	}
	return false
}

// receivedHeaders are the headers a delivery's trace context is extracted from: a v2
// envelope's meta.headers, or else the delivery's own. Two pointers, so that a deferred
// context stays small.
type receivedHeaders struct {
	d    *driver.Delivery
	meta map[string]string
}

// carrier is h for extraction.
func (h receivedHeaders) carrier() propagation.TextMapCarrier {
	if h.meta != nil {
		return propagation.MapCarrier(h.meta)
	}
	return deliveryCarrier{h.d}
}

// deliveryCarrier is a read-only propagation.TextMapCarrier over a delivery's headers, in
// either form a driver gives them (driver.Delivery.HeaderFields). One pointer: it goes into
// the interface without an allocation.
type deliveryCarrier struct{ d *driver.Delivery }

func (c deliveryCarrier) Get(key string) string { return c.d.Header(key) }

// Set does nothing: extraction only reads.
func (deliveryCarrier) Set(string, string) {}

func (c deliveryCarrier) Keys() []string {
	if c.d.Headers != nil {
		return slices.Collect(maps.Keys(c.d.Headers))
	}
	keys := make([]string, 0, len(c.d.HeaderFields)/2)
	for i := 0; i+1 < len(c.d.HeaderFields); i += 2 {
		keys = append(keys, c.d.HeaderFields[i])
	}
	return keys
}

// headerCarrier is a propagation.TextMapCarrier over a message's headers that makes the map
// on the first Set, so that injecting nothing allocates nothing.
type headerCarrier struct{ h *map[string]string }

func (c headerCarrier) Get(key string) string { return (*c.h)[key] }

func (c headerCarrier) Set(key, value string) {
	if *c.h == nil {
		*c.h = make(map[string]string, 3)
	}
	(*c.h)[key] = value
}

func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(*c.h))
	for k := range *c.h {
		keys = append(keys, k)
	}
	return keys
}

// publishTrace is the spans of one publish: one PRODUCER span "publish <dest>" for a single
// message, whose context the message carries; for a batch, a PRODUCER span "create <dest>" per
// message, whose context that message carries, and a CLIENT span "publish <dest>" linking them
// (the OpenTelemetry messaging conventions for batch sends). Without spans (tracing off) each
// message carries the caller's context, if it has one.
type publishTrace struct {
	span    trace.Span   // nil while tracing is off
	creates []trace.Span // per message of a batch; nil for one message
}

// startPublish starts the spans of publishing n messages to stream and injects each message's
// context into *headers(i), creating the map if needed; headers returning nil leaves
// message i as it is.
func (t *busTracing) startPublish(ctx context.Context, stream string, pt *publishTrace, n int, headers func(i int) *map[string]string) {
	tr := t.tracer.Get()
	if tr == nil {
		if !hasContext(ctx) {
			return
		}
		for i := range n {
			if h := headers(i); h != nil {
				t.prop.Inject(ctx, headerCarrier{h})
			}
		}
		return
	}
	names := t.namesOf(stream)
	if n == 1 {
		sctx, span := tr.Start(ctx, names.publish, producerSpan...)
		if span.IsRecording() {
			span.SetAttributes(t.attrs(names, opPublish, semconv.MessagingOperationTypeSend)...)
		}
		pt.span = span
		if h := headers(0); h != nil {
			t.prop.Inject(sctx, headerCarrier{h})
		}
		return
	}
	var links []trace.Link
	for i := range n {
		cctx, cs := tr.Start(ctx, names.create, producerSpan...)
		if cs.IsRecording() {
			cs.SetAttributes(t.attrs(names, opCreate, semconv.MessagingOperationTypeCreate)...)
			links = append(links, trace.Link{SpanContext: cs.SpanContext()})
		}
		pt.creates = append(pt.creates, cs)
		if h := headers(i); h != nil {
			t.prop.Inject(cctx, headerCarrier{h})
		}
	}
	_, span := tr.Start(ctx, names.publish, clientSpan[0], trace.WithLinks(links...))
	if span.IsRecording() {
		span.SetAttributes(t.attrs(names, opPublish, semconv.MessagingOperationTypeSend, semconv.MessagingBatchMessageCount(n))...)
	}
	pt.span = span
}

// wantsIDs reports whether a recording span still lacks a message id that only the driver's
// answer can give (a v1 message has none of its own): the Bus then asks the driver for
// transport ids rather than taking a faster path that returns none.
func (pt *publishTrace) wantsIDs(msgs []RawMessage) bool {
	if pt.span == nil || !pt.span.IsRecording() && !slices.ContainsFunc(pt.creates, trace.Span.IsRecording) {
		return false
	}
	return slices.ContainsFunc(msgs, func(m RawMessage) bool { return m.ID == "" })
}

// end ends the spans once the driver answered: each message's id (the v2 producer id, else
// the transport id the driver returned) on its span, err as their status.
func (pt *publishTrace) end(msgs []RawMessage, ids []string, err error) {
	if pt.span == nil {
		return
	}
	idOf := func(i int) string {
		if msgs[i].ID != "" {
			return msgs[i].ID
		}
		if i < len(ids) {
			return ids[i]
		}
		return ""
	}
	finish := func(s trace.Span, i int) { // i < 0: the span of a whole batch
		if s.IsRecording() {
			if i >= 0 {
				if id := idOf(i); id != "" {
					s.SetAttributes(semconv.MessagingMessageID(id))
				}
			}
			if err != nil {
				s.SetStatus(codes.Error, err.Error())
				s.SetAttributes(semconv.ErrorTypeKey.String(errorType(err)))
			}
		}
		s.End()
	}
	for i, cs := range pt.creates {
		finish(cs, i)
	}
	if len(pt.creates) == 0 && len(msgs) == 1 {
		finish(pt.span, 0)
	} else {
		finish(pt.span, -1)
	}
	pt.span = nil
	clear(pt.creates)
	pt.creates = pt.creates[:0]
}

// errorType is the error.type of a failed publish or settlement: the transport sentinel it
// wraps, else "_OTHER" (the conventions' fallback).
func errorType(err error) string {
	for _, s := range []struct {
		err  error
		name string
	}{{ErrClosed, "closed"}, {ErrUnavailable, "unavailable"}, {ErrTooLarge, "too_large"}, {context.DeadlineExceeded, "timeout"}, {context.Canceled, "canceled"}} {
		if errors.Is(err, s.err) {
			return s.name
		}
	}
	return "_OTHER"
}

// withTraceHeaders returns meta headers with the trace context of h added, as a new map (the
// caller's is never written): what v2 envelopes carry in meta.headers.
func withTraceHeaders(meta, h map[string]string, fields []string) map[string]string {
	out := make(map[string]string, len(meta)+len(fields))
	maps.Copy(out, meta)
	for _, f := range fields {
		if v, ok := h[f]; ok {
			out[f] = v
		}
	}
	return out
}

// injectMeta copies the trace context of each message's headers into its v2 envelope's
// meta.headers, before encoding.
func (t *busTracing) injectMeta(envs []*envelope.Envelope, msgs []RawMessage) {
	for i, e := range envs {
		if h := msgs[i].Headers; h != nil {
			e.Meta.Headers = withTraceHeaders(e.Meta.Headers, h, t.fields)
		}
	}
}

// Span start options made once: passing a prepared slice keeps Start from allocating one.
var (
	producerSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer)}
	consumerSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer)}
	clientSpan   = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient)}
)

// processTrace is one delivery's trace: the context its handler runs in (the message's own
// trace context, extracted, and the process span) and the span, nil while tracing is off.
type processTrace struct {
	ctx   context.Context
	span  trace.Span
	tr    trace.Tracer
	names *spanNames
}

// startProcess extracts the trace context d carries (its headers; failing that, a v2
// envelope's meta.headers) and, while tracing, starts the CONSUMER span "process <dest>" as
// its child: a message without context starts a new trace. A redelivery links to the process
// span of the earliest attempt this subscription handled (LinkFirstAttempt). A message whose
// context is not sampled (W3C sampled flag 0) gets no span: see Config.TracerProvider. Where
// no span is started the extraction is deferred into dc (the delivery's slot in its batch; nil
// extracts now): see deferredContext. tr is the Bus's tracer for the batch (nil: tracing is
// off).
func (s *Subscription) startProcess(d *driver.Delivery, env *envelope.Envelope, dc *deferredContext, tr trace.Tracer) processTrace {
	t := s.bus.tr
	ctx := s.handleCtx
	var carrier receivedHeaders
	found := false
	var tp string // the W3C traceparent, looked up once
	if t.w3c {
		tp = d.Header(HeaderTraceParent)
	}
	switch {
	case tp != "", t.carries(deliveryCarrier{d}):
		carrier, found = receivedHeaders{d: d}, true
	case env != nil && t.carries(propagation.MapCarrier(env.Meta.Headers)):
		carrier, found, tp = receivedHeaders{meta: env.Meta.Headers}, true, env.Meta.Headers[HeaderTraceParent]
	}
	if found && dc != nil && (tr == nil || t.w3c && unsampledW3C(tp)) {
		// No span will be started: the producer's context is only passed on to the handler.
		dc.deferredBase, dc.headers = s.deferred, carrier // dc is zero: see deferredContext
		return processTrace{ctx: dc}
	}
	if found {
		ctx = t.prop.Extract(ctx, carrier.carrier())
	}
	if tr == nil {
		return processTrace{ctx: ctx}
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() && !sc.IsSampled() {
		// The producer's trace is not sampled: a parent-based sampler (the default) would
		// record none of this delivery's spans, and starting them anyway costs the SDK's
		// allocations on every such message (99 in 100 at a 1/100 ratio). The delivery runs
		// in the producer's context, which is passed on unchanged.
		return processTrace{ctx: ctx}
	}
	names := t.namesOf(s.stream)
	opts := consumerSpan
	if d.Attempt > 1 {
		if first, ok := s.firstAttempts.get(d.TransportID); ok {
			opts = []trace.SpanStartOption{consumerSpan[0], trace.WithLinks(trace.Link{
				SpanContext: first, Attributes: []attribute.KeyValue{AttrLinkKind.String(LinkFirstAttempt)},
			})}
		}
	}
	pctx, span := tr.Start(ctx, names.process, opts...)
	if span.IsRecording() {
		span.SetAttributes(t.attrs(names, opProcess, semconv.MessagingOperationTypeProcess,
			semconv.MessagingConsumerGroupName(s.opts.Group), semconv.MessagingClientID(s.opts.Consumer),
			semconv.MessagingMessageBodySize(len(d.Body)), AttrDeliveryCount.Int(d.Attempt))...)
	}
	return processTrace{ctx: pctx, span: span, tr: tr, names: names}
}

// deferredContext is the context a delivery without spans is handled in: the subscription's
// context, into which the trace context of the message's headers is extracted on the first
// Value call (from the handler, or from anything deriving a context from it), not before. A
// handler that never reads it (one writing to a database, say) then never pays for the
// extraction, two allocations and about 150 ns on every message (99 in 100 at a 1/100 ratio
// carry an unsampled context): BenchmarkTracing in transport/redis/tracing_bench_test.go
// measures consume+ack with and without it. The contexts of a batch share one allocation,
// and are kept small, a quarter of a cache line each: making one is writing three words into
// memory newly allocated for the batch, which costs a cache miss per line touched (as a
// 96-byte context written whole it measured ~140 ns a message on inmem:
// transport/tracing_bench_test.go).
type deferredContext struct {
	*deferredBase // Deadline, Done and Err as the subscription's handle context has them
	headers       receivedHeaders
	extracted     atomic.Pointer[extractedContext] // nil until the first Value
}

// deferredBase is what the deferred contexts of one subscription share.
type deferredBase struct {
	context.Context // the subscription's handle context
	prop            propagation.TextMapPropagator
}

// extractedContext is a deferred context's extraction, once made.
type extractedContext struct{ context.Context }

// Value is the extracted context's value for key. Goroutines reading it at once may each
// extract; they get the same result, and the first stored is kept.
func (c *deferredContext) Value(key any) any {
	x := c.extracted.Load()
	if x == nil {
		x = &extractedContext{c.prop.Extract(c.Context, c.headers.carrier())}
		if !c.extracted.CompareAndSwap(nil, x) {
			x = c.extracted.Load()
		}
	}
	return x.Value(key)
}

// unsampledW3C reports whether tp is a traceparent that W3C Trace Context extraction
// (propagation.TraceContext, version 00) accepts and whose sampled flag is 0: the deliveries
// whose spans a parent-based sampler would not record, so that extraction can be deferred.
// Anything else (sampled, malformed, another version) reports false and is extracted at once.
func unsampledW3C(tp string) bool {
	// version "00", trace id (32 hex), span id (16 hex), flags (2 hex), dash-separated
	if len(tp) != 55 || tp[:3] != "00-" || tp[35] != '-' || tp[52] != '-' {
		return false
	}
	if _, err := trace.TraceIDFromHex(tp[3:35]); err != nil {
		return false
	}
	if _, err := trace.SpanIDFromHex(tp[36:52]); err != nil {
		return false
	}
	flags := tp[53:55]
	return flags == "00" || flags == "02" // not sampled; "02" is the random flag alone
}

// recording reports whether the process span records: only then are attributes worth making.
func (pt *processTrace) recording() bool { return pt.span != nil && pt.span.IsRecording() }

// identify records the message id and track on the process span, once decoded.
func (pt *processTrace) identify(id, track string) {
	if pt.recording() {
		pt.span.SetAttributes(semconv.MessagingMessageID(id), AttrTrack.String(track))
	}
}

// settled records how the delivery was settled; a failure (not stale, not a duplicate) sets
// the span's status to Error with cause.
func (pt *processTrace) settled(o Outcome, reason string, cause error) {
	if !pt.recording() {
		return
	}
	pt.span.SetAttributes(AttrOutcome.String(string(o)))
	if reason != "" {
		pt.span.SetAttributes(AttrDeadLetterReason.String(reason), semconv.ErrorTypeKey.String(reason))
	}
	if cause != nil && o != OutcomeSuccess && o != OutcomeStale && o != OutcomeDuplicate {
		pt.span.SetStatus(codes.Error, cause.Error())
		if reason == "" {
			pt.span.SetAttributes(semconv.ErrorTypeKey.String("_OTHER"))
		}
	}
}

// end ends the process span.
func (pt *processTrace) end() {
	if pt.span != nil {
		pt.span.End()
	}
}

// link is the process span as a link for the batch's ack span, or false when it does not
// record.
func (pt *processTrace) link() (trace.Link, bool) {
	if !pt.recording() {
		return trace.Link{}, false
	}
	return trace.Link{SpanContext: pt.span.SpanContext()}, true
}

// nameOf is the span name of settlement op (opNak, opTerm) on the delivery's stream; "" while
// tracing is off.
func (pt *processTrace) nameOf(op string) string {
	switch {
	case pt.names == nil:
		return ""
	case op == opNak:
		return pt.names.nak
	}
	return pt.names.term
}

// startSettle starts the CLIENT span of settling one delivery (nak, term) as a child of its
// process span; nil while tracing is off.
func (pt *processTrace) startSettle(t *busTracing, op, name string, group string) trace.Span {
	if pt.tr == nil {
		return nil
	}
	_, span := pt.tr.Start(pt.ctx, name, clientSpan...)
	if span.IsRecording() {
		span.SetAttributes(t.attrs(pt.names, op, semconv.MessagingOperationTypeSettle, semconv.MessagingConsumerGroupName(group))...)
	}
	return span
}

// endSettle ends a settlement span with err as its status.
func endSettle(span trace.Span, err error) {
	if span == nil {
		return
	}
	if err != nil && span.IsRecording() {
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(semconv.ErrorTypeKey.String(errorType(err)))
	}
	span.End()
}

// ackSpan starts the CLIENT span "ack <dest>" of acking a batch whose recorded process spans
// are links: a child of the first (so that it is sampled with it), linking the others. Nil
// when no process span of the batch records.
func (s *Subscription) ackSpan(links []trace.Link, n int) trace.Span {
	if len(links) == 0 {
		return nil
	}
	tr := s.bus.tr.tracer.Get()
	if tr == nil {
		return nil
	}
	names := s.bus.tr.namesOf(s.stream)
	ctx := trace.ContextWithSpanContext(context.Background(), links[0].SpanContext)
	_, span := tr.Start(ctx, names.ack, clientSpan[0], trace.WithLinks(links[1:]...))
	if span.IsRecording() {
		span.SetAttributes(s.bus.tr.attrs(names, opAck, semconv.MessagingOperationTypeSettle,
			semconv.MessagingConsumerGroupName(s.opts.Group), semconv.MessagingBatchMessageCount(n))...)
	}
	return span
}

// maxFirstAttempts bounds the first attempts a subscription remembers for links.
const maxFirstAttempts = 4096

// firstAttempts remembers, for deliveries that failed and will be delivered again, the span
// context of the process span of the earliest attempt this subscription handled, so that the
// redelivery's process span links to it. It holds only span contexts of recording spans, at
// most maxFirstAttempts of them (the oldest forgotten first). Safe for concurrent use.
type firstAttempts struct {
	mu    sync.Mutex
	byID  map[string]trace.SpanContext
	order []string // ring of the keys, oldest at next once full
	next  int
}

func (f *firstAttempts) remember(transportID string, sc trace.SpanContext) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.byID[transportID]; ok {
		return
	}
	if f.byID == nil {
		f.byID = map[string]trace.SpanContext{}
	}
	if len(f.order) < maxFirstAttempts {
		f.order = append(f.order, transportID)
	} else {
		delete(f.byID, f.order[f.next])
		f.order[f.next] = transportID
		f.next = (f.next + 1) % maxFirstAttempts
	}
	f.byID[transportID] = sc
}

func (f *firstAttempts) get(transportID string) (trace.SpanContext, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sc, ok := f.byID[transportID]
	return sc, ok
}

// retrying remembers pt's span as the first attempt of d, which failed and will come back.
func (s *Subscription) retrying(pt *processTrace, d *driver.Delivery) {
	if pt.recording() {
		s.firstAttempts.remember(d.TransportID, pt.span.SpanContext())
	}
}

// TraceContext returns ctx with the trace context that headers (a stored message's, such as
// a dead letter's) carry, read with the Bus's propagator; ctx as it is when they carry none.
// Publishing in it continues the message's trace: `pulse dlq replay` does so.
func (b *Bus) TraceContext(ctx context.Context, headers map[string]string) context.Context {
	if !b.tr.carries(propagation.MapCarrier(headers)) {
		return ctx
	}
	return b.tr.prop.Extract(ctx, propagation.MapCarrier(headers))
}
