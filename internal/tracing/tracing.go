// Package tracing is what transport and feedback share to make OpenTelemetry spans at no cost
// while tracing is off: a Tracer that says, before any span is started, whether spans would
// be recorded at all, and the W3C propagator the bus carries on the wire.
//
// Starting a span on a no-op tracer still allocates (the span value, the context that holds
// it), which on the bus's hot path is most of what a message costs. So callers ask Get first
// and, when it returns nil, carry only the trace context that came with the message (W3C
// pass-through) and start nothing.
package tracing

import (
	"fmt"
	"reflect"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// unsetGlobal is the global TracerProvider of a program that has not set one: OpenTelemetry's
// delegating default, a no-op until otel.SetTracerProvider. Nil when a provider was set before
// this package's init (then the global is never unset).
var unsetGlobal = func() trace.TracerProvider {
	tp := otel.GetTracerProvider()
	if fmt.Sprintf("%T", tp) != "*global.tracerProvider" {
		return nil
	}
	return tp
}()

// Tracer starts the spans of one instrumentation scope through a TracerProvider given up
// front, or through the global one as it is at each call. It is safe for concurrent use.
type Tracer struct {
	name  string
	opts  []trace.TracerOption
	fixed trace.Tracer // from the provider given to New; nil: the global's
	off   bool         // the provider given is a no-op

	global atomic.Pointer[globalTracer] // the tracer of the global provider last seen
}

type globalTracer struct {
	tp     trace.TracerProvider
	tracer trace.Tracer
}

// New returns a Tracer of scope name from tp; nil tp means the global TracerProvider, looked
// up at every Get, so that a program may set it after creating the Tracer.
func New(tp trace.TracerProvider, name string, opts ...trace.TracerOption) *Tracer {
	t := &Tracer{name: name, opts: opts}
	switch tp.(type) {
	case nil:
	case noop.TracerProvider, *noop.TracerProvider:
		t.off = true
	default:
		t.fixed = tp.Tracer(name, opts...)
	}
	return t
}

// Get returns the tracer to start spans with, or nil when every span would be a no-op: the
// provider given to New is a noop.TracerProvider, or none was given and the program has not
// set a global one. It does not allocate.
func (t *Tracer) Get() trace.Tracer {
	switch {
	case t.off:
		return nil
	case t.fixed != nil:
		return t.fixed
	}
	tp := otel.GetTracerProvider()
	if unsetGlobal != nil && tp == unsetGlobal { // compared only as the same dynamic type: never panics
		return nil
	}
	if g := t.global.Load(); g != nil && sameProvider(g.tp, tp) {
		return g.tracer
	}
	g := &globalTracer{tp: tp, tracer: tp.Tracer(t.name, t.opts...)}
	t.global.Store(g)
	return g.tracer
}

// sameProvider compares two providers without panicking on a type that cannot be compared
// (such a provider is looked up again at every call).
func sameProvider(a, b trace.TracerProvider) bool {
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	return ta == tb && ta.Comparable() && a == b
}

// W3C is the propagator of the bus's wire format (docs/contract.md §2): W3C Trace Context
// (traceparent, tracestate) and W3C Baggage (baggage).
var W3C propagation.TextMapPropagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// Propagator returns p, or W3C when p is nil.
func Propagator(p propagation.TextMapPropagator) propagation.TextMapPropagator {
	if p == nil {
		return W3C
	}
	return p
}
