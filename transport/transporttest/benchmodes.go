package transporttest

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/pulse-bus/pulse/transport"
)

// BenchSampleRatio is the ratio of the benchmarks' tracing-on mode: 1 trace in 100.
const BenchSampleRatio = 0.01

// TracingModes are the benchmarks' tracing configurations: "off" (no TracerProvider, none
// set globally: the Bus starts no span) and "on-1in100" (an SDK TracerProvider sampling
// ParentBased(TraceIDRatioBased(1/100)), batching to an exporter that discards, as a
// service exporting to a collector would, without the network).
func TracingModes() []TracingMode {
	return []TracingMode{
		{Name: "off", Apply: func(*testing.B, *transport.Config) {}},
		{Name: "on-1in100", Apply: func(b *testing.B, cfg *transport.Config) {
			tp := sdktrace.NewTracerProvider(
				sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(BenchSampleRatio))),
				sdktrace.WithBatcher(tracetest.NewNoopExporter()),
			)
			b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			cfg.TracerProvider = tp
		}},
	}
}
