package main

// End to end, the trace of one feedback event: `pulse publish` (joining a script's trace
// through TRACEPARENT) and `pulse run` both export to an OTLP/HTTP receiver in this test
// process, and the traceparent is read back from the broker itself.

import (
	"context"
	"fmt"
	"syscall"
	"testing"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/internal/otlptest"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/jetstream"
)

// The script's trace that `pulse publish` joins.
const (
	scriptTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	scriptSpanID  = "00f067aa0ba902b7"
)

// wireHeaders reads the fields or headers the broker stored beside the last message of a
// logical stream: the NATS headers on JetStream, the entry's fields after `data` on Redis
// (XRANGE), with the body.
func wireHeaders(t *testing.T, b loopBus, stream string) (body string, headers map[string]string) {
	t.Helper()
	ctx := context.Background()
	headers = map[string]string{}
	switch b.name {
	case "jetstream":
		nc, err := nats.Connect(b.cfg.NATSURL)
		require.NoError(t, err)
		defer nc.Close()
		js, err := natsjs.New(nc)
		require.NoError(t, err)
		st, err := js.Stream(ctx, jetstream.StreamName(transport.DefaultNamespace, stream))
		require.NoError(t, err)
		m, err := st.GetLastMsgForSubject(ctx, jetstream.Subject(transport.DefaultNamespace, stream))
		require.NoError(t, err)
		for k, vs := range m.Header {
			headers[k] = vs[0]
		}
		return string(m.Data), headers
	case "redis":
		opt, err := goredis.ParseURL(b.cfg.RedisURL)
		require.NoError(t, err)
		c := goredis.NewClient(opt)
		defer c.Close()
		// The raw reply, fields in the order Redis keeps them: data first, then the headers.
		entries, err := c.Do(ctx, "XREVRANGE", b.cfg.Namespace+":"+stream, "+", "-", "COUNT", "1").Slice()
		require.NoError(t, err)
		require.Len(t, entries, 1)
		fields := entries[0].([]any)[1].([]any)
		require.Equal(t, "data", fields[0], "data is the entry's first field, as the Python core writes it")
		for i := 2; i+1 < len(fields); i += 2 {
			headers[fields[i].(string)] = fields[i+1].(string)
		}
		return fields[1].(string), headers
	}
	t.Fatalf("unknown bus %s", b.name)
	return "", nil
}

// TestOneTraceFromPublishToRateAdjustment proves, on JetStream and on Redis, that one trace
// holds the publish span of `pulse publish` (a child of the script's TRACEPARENT), the process
// span of `pulse run` (its child), the apply span with the rate change, and the
// RateAdjustment's publish span (a child of apply); that the traceparent is on the wire beside
// each message; and that a clean stop flushes the spans.
func TestOneTraceFromPublishToRateAdjustment(t *testing.T) {
	for _, b := range sharedBuses(t) {
		t.Run(b.name, func(t *testing.T) {
			rcv := otlptest.Start(t)
			otel := map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": rcv.Endpoint(),
				"OTEL_BSP_SCHEDULE_DELAY":     "100", // ms: spans leave the run promptly
			}
			runEnv := b.replicaEnv(t, otel)
			runEnv["OTEL_SERVICE_NAME"] = "pulse-run"
			s := startRun(t, runEnv)
			require.Contains(t, s.start["tracing"], "http/protobuf "+rcv.Endpoint()+"/v1/traces")
			s.ready(t)

			pubEnv := map[string]string{"OTEL_SERVICE_NAME": "pulse-publish", "TRACEPARENT": "00-" + scriptTraceID + "-" + scriptSpanID + "-01"}
			for k, v := range b.env {
				pubEnv[k] = v
			}
			for k, v := range otel {
				pubEnv[k] = v
			}
			code, _, errOut := pulse(t, pubEnv, "publish", "--coordinator", "c1", "--level", "hard")
			require.Equal(t, 0, code, errOut)
			s.waitRate(t, 1)

			client := b.client(t, "")
			system, feedbackDest := describe(client, feedback.StreamFeedback)
			_, rateDest := describe(client, feedback.StreamRateAdjustment)
			var publish, process, apply, rate otlptest.Span
			eventually(t, "the whole trace at the receiver", func() bool {
				var ok bool
				publish, ok = only(rcv.Trace(scriptTraceID), "publish "+feedbackDest)
				if !ok {
					return false
				}
				if process, ok = childOf(rcv, publish, "process "+feedbackDest); !ok {
					return false
				}
				if apply, ok = childOf(rcv, process, feedback.SpanApply); !ok {
					return false
				}
				rate, ok = childOf(rcv, apply, "publish "+rateDest)
				return ok
			})
			require.Equal(t, "pulse-publish", publish.Service)
			require.Equal(t, scriptSpanID, publish.ParentSpanID, "publish joins the script's trace")
			require.Equal(t, tracepb.Span_SPAN_KIND_PRODUCER, publish.Kind)
			require.Equal(t, system, publish.Attr("messaging.system"))
			require.Equal(t, feedbackDest, publish.Attr("messaging.destination.name"))
			require.Equal(t, "pulse-run", process.Service)
			require.Equal(t, tracepb.Span_SPAN_KIND_CONSUMER, process.Kind)
			require.Equal(t, s.start["group"], process.Attr("messaging.consumer.group.name"))
			require.Equal(t, publish.Attr("messaging.message.id"), process.Attr("messaging.message.id"))
			require.Equal(t, "ibkr", apply.Attr(string(feedback.AttrProvider)))
			require.Equal(t, 1.0, apply.Attributes[string(feedback.AttrOldScale)].GetDoubleValue())
			require.Equal(t, 0.0, apply.Attributes[string(feedback.AttrNewScale)].GetDoubleValue())
			require.Equal(t, "hard", apply.Attr(string(feedback.AttrRateReason)))
			require.Equal(t, tracepb.Span_SPAN_KIND_PRODUCER, rate.Kind)

			body, headers := wireHeaders(t, b, feedback.StreamFeedback)
			require.Equal(t, fmt.Sprintf("00-%s-%s-01", scriptTraceID, publish.SpanID), headers[transport.HeaderTraceParent],
				"the feedback event's traceparent on the wire: %v", headers)
			require.NotContains(t, body, "traceparent", "v1: the body is what the Python core writes")
			_, headers = wireHeaders(t, b, feedback.StreamRateAdjustment)
			require.Equal(t, fmt.Sprintf("00-%s-%s-01", scriptTraceID, rate.SpanID), headers[transport.HeaderTraceParent],
				"the RateAdjustment's traceparent on the wire: %v", headers)

			stoppedClean(t, s, syscall.SIGTERM)
			eventually(t, "the ack span, flushed by the clean stop", func() bool {
				_, ok := childOf(rcv, process, "ack "+feedbackDest)
				return ok
			})
		})
	}
}

// TestBadTracingSettingsExit2 proves a bad trace setting stops `pulse run` and `pulse
// publish` with exit status 2 naming the variable, like every other setting.
func TestBadTracingSettingsExit2(t *testing.T) {
	for _, tc := range []struct {
		cmd      []string
		env      map[string]string
		want     string
		accepted string
	}{
		{[]string{"run"}, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, `invalid OTEL_EXPORTER_OTLP_ENDPOINT="collector:4318"`, "http:// or https:// URL"},
		{[]string{"run"}, map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, `invalid OTEL_EXPORTER_OTLP_PROTOCOL="http/json"`, "http/protobuf, grpc"},
		{[]string{"config"}, map[string]string{"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, `invalid OTEL_TRACES_SAMPLER_ARG="2"`, "a number from 0 to 1"},
		{[]string{"publish", "--coordinator", "c1", "--level", "ok"}, map[string]string{"TRACEPARENT": "not-a-traceparent"}, `invalid TRACEPARENT="not-a-traceparent"`, "a W3C traceparent"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			code, _, errOut := pulse(t, tc.env, tc.cmd...)
			require.Equal(t, 2, code, errOut)
			require.Contains(t, errOut, tc.want)
			require.Contains(t, errOut, tc.accepted)
		})
	}
}

// describe is how the bus names stream on the broker (messaging.system, destination).
func describe(b *transport.Bus, stream string) (system, dest string) {
	d := b.Driver().(interface {
		MessagingSystem() string
		Destination(string) string
	})
	return d.MessagingSystem(), d.Destination(stream)
}

// only returns the one span called name among spans.
func only(spans []otlptest.Span, name string) (otlptest.Span, bool) {
	for _, s := range spans {
		if s.Name == name {
			return s, true
		}
	}
	return otlptest.Span{}, false
}

// childOf returns the received span called name whose parent is parent.
func childOf(rcv *otlptest.Receiver, parent otlptest.Span, name string) (otlptest.Span, bool) {
	for _, s := range rcv.Trace(parent.TraceID) {
		if s.Name == name && s.ParentSpanID == parent.SpanID {
			return s, true
		}
	}
	return otlptest.Span{}, false
}
