package transport

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/pulse-bus/pulse/internal/tracing"
	"github.com/pulse-bus/pulse/transport/driver"
)

// TestUnsampledW3CAgreesWithExtraction proves that the shortcut deciding whether a delivery's
// extraction may wait says "unsampled" only where the W3C extractor finds a valid span context
// whose sampled flag is 0 (a malformed traceparent is never taken for an unsampled one), and
// does say so for the traceparents an OpenTelemetry SDK writes (flags 00 and 02).
func TestUnsampledW3CAgreesWithExtraction(t *testing.T) {
	const (
		tid = "4bf92f3577b34da6a3ce929d0e0e4736"
		sid = "00f067aa0ba902b7"
	)
	shortcut := []string{"00-" + tid + "-" + sid + "-00", "00-" + tid + "-" + sid + "-02"}
	for _, tp := range shortcut {
		require.True(t, unsampledW3C(tp), "traceparent %q", tp)
	}
	cases := append(shortcut,
		"00-"+tid+"-"+sid+"-01",
		"00-"+tid+"-"+sid+"-03",
		"00-"+tid+"-"+sid+"-04",  // reserved flag bit
		"00-"+tid+"-"+sid+"-0g",  // not hex
		"00-"+tid+"-"+sid+"-00-", // accepted by the extractor, left to it
		"01-"+tid+"-"+sid+"-00",  // a later version: left to the extractor
		"ff-"+tid+"-"+sid+"-00",
		"00-"+strings.Repeat("0", 32)+"-"+sid+"-00", // zero trace id
		"00-"+tid+"-"+strings.Repeat("0", 16)+"-00", // zero span id
		"00-"+strings.ToUpper(tid)+"-"+sid+"-00",    // upper case is not W3C
		"00-"+tid+"-"+strings.ToUpper(sid)+"-00",
		"00-"+tid[:31]+"x-"+sid+"-00",
		"00_"+tid+"-"+sid+"-00",
		"00-"+tid+"_"+sid+"-00",
		"00-"+tid+"-"+sid+"_00",
		"00-"+tid+"-"+sid+"-0",
		"",
	)
	for _, tp := range cases {
		if unsampledW3C(tp) {
			sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(),
				propagation.MapCarrier{HeaderTraceParent: tp}))
			require.True(t, sc.IsValid() && !sc.IsSampled(), "traceparent %q", tp)
		}
	}
	for _, tp := range cases[len(shortcut):] {
		require.False(t, unsampledW3C(tp), "traceparent %q", tp)
	}
}

// TestDeferredContextExtractsOnFirstValue proves that a delivery's deferred context holds the
// message's trace context and baggage as eager extraction would, from headers in either form
// a driver gives them (a map, or name, value pairs), keeps the subscription context's
// cancellation, and can be read from several goroutines at once.
func TestDeferredContextExtractsOnFirstValue(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
	headers := map[string]string{HeaderTraceParent: tp, HeaderBaggage: "tenant=acme"}
	for _, tc := range []struct {
		name     string
		received receivedHeaders
	}{
		{"meta.headers", receivedHeaders{meta: headers}},
		{"a driver's map", receivedHeaders{d: &driver.Delivery{Message: driver.Message{Headers: headers}}}},
		// a later pair of a name wins, as in a map
		{"a driver's pairs", receivedHeaders{d: &driver.Delivery{HeaderFields: []string{HeaderTraceParent, "00-ffffffffffffffffffffffffffffffff-00f067aa0ba902b7-00", HeaderBaggage, "tenant=acme", HeaderTraceParent, tp}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			type key struct{}
			parent, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "parent's"))
			dc := &deferredContext{deferredBase: &deferredBase{Context: parent, prop: tracing.W3C}, headers: tc.received}
			want := tracing.W3C.Extract(parent, propagation.MapCarrier(headers))

			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					require.Equal(t, trace.SpanContextFromContext(want), trace.SpanContextFromContext(dc))
					require.Equal(t, "acme", baggage.FromContext(dc).Member("tenant").Value())
					require.Equal(t, "parent's", dc.Value(key{}))
				})
			}
			wg.Wait()

			child, stop := context.WithCancel(dc)
			defer stop()
			require.NoError(t, child.Err())
			cancel()
			<-child.Done() // the subscription's cancellation reaches contexts derived from the delivery's
			require.ErrorIs(t, dc.Err(), context.Canceled)
		})
	}
}
