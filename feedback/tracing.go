package feedback

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/pulse-bus/pulse/envelope"
)

// TracerName is the instrumentation scope of the feedback loop's spans.
const TracerName = "github.com/pulse-bus/pulse/feedback"

// Span names of the feedback loop (docs/design.md "Tracing"). The bus's own spans (publish,
// process, ack) surround them: a Store's level change → its FeedbackEvent's publish → the
// pipeline's process → apply → the RateAdjustment's publish, all in one trace.
const (
	// SpanWatermark marks a Watermarks level change (INTERNAL): the parent of the publish of
	// the FeedbackEvent it causes.
	SpanWatermark = "feedback watermark"
	// SpanApply is the pipeline applying one FeedbackEvent (INTERNAL), inside the delivery's
	// process span: the parent of the publish of the RateAdjustment it causes.
	SpanApply = "feedback apply"
	// SpanExpire is a Handler.Expire that changed a rate (INTERNAL): the parent of the
	// RateAdjustment publish the expiry causes.
	SpanExpire = "feedback expire"
)

// Span attributes of the feedback loop.
const (
	AttrCoordinator = attribute.Key("pulse.feedback.coordinator_id")
	AttrLevel       = attribute.Key("pulse.feedback.level")
	AttrReason      = attribute.Key("pulse.feedback.reason") // a Watermarks event's reason header
	AttrQueueSize   = attribute.Key("pulse.feedback.queue_size")
	AttrCapacity    = attribute.Key("pulse.feedback.capacity")
	AttrSource      = attribute.Key("pulse.feedback.source")
	AttrEventTS     = attribute.Key("pulse.feedback.event_ts")
	// AttrApplied is false for an event that changed nothing (stale, poison, or already
	// applied and being saved or published again).
	AttrApplied = attribute.Key("pulse.feedback.applied")

	// The rate change an event or an expiry caused.
	AttrProvider   = attribute.Key("pulse.rate.provider")
	AttrOldScale   = attribute.Key("pulse.rate.old_scale")
	AttrNewScale   = attribute.Key("pulse.rate.new_scale")
	AttrRateReason = attribute.Key("pulse.rate.reason") // the level the new scale follows
	AttrChanged    = attribute.Key("pulse.rate.changed")
	AttrRate       = attribute.Key("pulse.rate.value") // messages per second after the change
	AttrExpired    = attribute.Key("pulse.feedback.expired_coordinators")
)

// internalSpan is the start option of the loop's spans, made once.
var internalSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindInternal)}

// causeOf is the span context work started in ctx is caused by: ctx's span (the apply or
// watermark span, or the context a message carried while tracing is off).
func causeOf(ctx context.Context) trace.SpanContext { return trace.SpanContextFromContext(ctx) }

// endSpan ends span (nil: not tracing) with err as its status.
func endSpan(span trace.Span, err error) {
	if span == nil {
		return
	}
	if err != nil && span.IsRecording() {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// recording reports whether span records attributes.
func recording(span trace.Span) bool { return span != nil && span.IsRecording() }

// rescaleAttrs are the attributes of the rate change rs.
func (h *Handler) rescaleAttrs(rs rescale) []attribute.KeyValue {
	return []attribute.KeyValue{
		AttrProvider.String(rs.provider), AttrOldScale.Float64(rs.old), AttrNewScale.Float64(rs.scale),
		AttrRateReason.String(string(rs.reason)), AttrChanged.Bool(rs.changed), AttrRate.Float64(h.rates.Rate(rs.provider)),
		AttrExpired.Int(len(rs.expired)),
	}
}

// publishByCause publishes envs to stream in order, each run of consecutive envelopes with the
// same cause in one batch, in ctx re-parented to that cause: an envelope kept for retry goes
// out in the trace of the event (or expiry) that caused it, not of the event whose handling
// happens to publish it. It returns how many envelopes (a prefix) were published.
func publishByCause(ctx context.Context, pub Publisher, stream string, envs []*envelope.Envelope, causes []trace.SpanContext) (int, error) {
	current := causeOf(ctx)
	done := 0
	for done < len(envs) {
		end := done + 1
		for end < len(envs) && causes[end].Equal(causes[done]) {
			end++
		}
		pctx := ctx
		if !causes[done].Equal(current) {
			pctx = trace.ContextWithSpanContext(ctx, causes[done])
		}
		if err := pub.Publish(pctx, stream, envs[done:end]...); err != nil {
			return done, err
		}
		done = end
	}
	return done, nil
}
