package telemetry_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/internal/otlptest"
	"github.com/pulse-bus/pulse/telemetry"
)

func TestTracingFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		enabled bool
		url     string
		check   func(t *testing.T, c telemetry.TracingConfig)
	}{
		{name: "unset: off", env: nil, enabled: false},
		{name: "endpoint: http/protobuf below /v1/traces", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
			enabled: true, url: "http://collector:4318/v1/traces"},
		{name: "endpoint with a path", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example/otlp/"},
			enabled: true, url: "https://c.example/otlp/v1/traces"},
		{name: "traces endpoint wins, as is", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:9999/x"},
			enabled: true, url: "http://b:9999/x"},
		{name: "grpc: the endpoint itself", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
			enabled: true, url: "http://c:4317"},
		{name: "traces protocol wins", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
			enabled: true, url: "http://c:4317"},
		{name: "SDK disabled", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, enabled: false},
		{name: "exporter none", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, enabled: false},
		{name: "sampler, service, resource, timeout", env: map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01",
			"OTEL_SERVICE_NAME": "pulse-eu", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=md%20core", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
		}, enabled: true, url: "http://c:4318/v1/traces", check: func(t *testing.T, c telemetry.TracingConfig) {
			require.Equal(t, "parentbased_traceidratio", c.Sampler)
			require.Equal(t, 0.01, c.Ratio)
			require.Equal(t, "pulse-eu", c.ServiceName)
			require.Equal(t, []attribute.KeyValue{attribute.String("deployment.environment", "prod"), attribute.String("team", "md core")}, c.Resource)
			require.Equal(t, 2500*time.Millisecond, c.Timeout)
		}},
		{name: "a sampler arg of another sampler is not read", env: map[string]string{"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "x"}, enabled: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := telemetry.TracingFromEnv(envconf.Map(tc.env))
			require.NoError(t, err)
			require.Equal(t, tc.enabled, c.Enabled())
			if tc.url != "" {
				require.Equal(t, tc.url, c.URL())
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

// TestTracingFromEnvRejects proves each bad value is an *envconf.Error naming the variable and
// what is accepted (the pulse command exits 2 with it).
func TestTracingFromEnvRejects(t *testing.T) {
	for _, tc := range []struct{ name, value, accepted string }{
		{"OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "http:// or https:// URL"},
		{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://c/x", "http:// or https:// URL"},
		{"OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "http/protobuf, grpc"},
		{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift", "http/protobuf, grpc"},
		{"OTEL_EXPORTER_OTLP_TIMEOUT", "10s", "an integer ≥ 1"},
		{"OTEL_TRACES_SAMPLER", "jaeger_remote", "always_on, always_off, traceidratio, parentbased_always_on"},
		{"OTEL_TRACES_EXPORTER", "zipkin", "otlp, none"},
		{"OTEL_SDK_DISABLED", "maybe", "true or false"},
		{"OTEL_RESOURCE_ATTRIBUTES", "team", "key=value"},
	} {
		t.Run(tc.name+"="+tc.value, func(t *testing.T) {
			_, err := telemetry.TracingFromEnv(envconf.Map(map[string]string{tc.name: tc.value}))
			var ee *envconf.Error
			require.ErrorAs(t, err, &ee)
			require.Equal(t, tc.name, ee.Var)
			require.Equal(t, tc.value, ee.Value)
			require.Contains(t, ee.Accepted, tc.accepted)
		})
	}
	_, err := telemetry.TracingFromEnv(envconf.Map(map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}))
	var ee *envconf.Error
	require.ErrorAs(t, err, &ee)
	require.Equal(t, "OTEL_TRACES_SAMPLER_ARG", ee.Var)
	require.Contains(t, ee.Accepted, "a number from 0 to 1")
}

// TestTracingOffIsNoop proves that with export off the TracerProvider is a no-op (the bus
// then makes no span) and Shutdown does nothing.
func TestTracingOffIsNoop(t *testing.T) {
	tr, err := telemetry.StartTracing(context.Background(), telemetry.TracingConfig{}, "v0", nil)
	require.NoError(t, err)
	require.IsType(t, noop.TracerProvider{}, tr.TracerProvider())
	require.NoError(t, tr.Shutdown(context.Background()))
}

// TestTracingExportsOnShutdown proves spans reach an OTLP/HTTP receiver, with the service
// name and version, once Shutdown flushes them.
func TestTracingExportsOnShutdown(t *testing.T) {
	rcv := otlptest.Start(t)
	cfg, err := telemetry.TracingFromEnv(envconf.Map(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rcv.Endpoint(), "OTEL_SERVICE_NAME": "pulse-test"}))
	require.NoError(t, err)
	tr, err := telemetry.StartTracing(context.Background(), cfg, "v1.2.3", nil)
	require.NoError(t, err)
	_, span := tr.TracerProvider().Tracer("test").Start(context.Background(), "unit of work", trace.WithSpanKind(trace.SpanKindProducer))
	span.End()
	require.NoError(t, tr.Shutdown(context.Background()))
	got := rcv.Named("unit of work")
	require.Len(t, got, 1)
	require.Equal(t, "pulse-test", got[0].Service)
	require.Equal(t, span.SpanContext().TraceID().String(), got[0].TraceID)
}

// TestContextFromEnv proves TRACEPARENT (with TRACESTATE and BAGGAGE) becomes the parent, and
// that a bad one is an *envconf.Error.
func TestContextFromEnv(t *testing.T) {
	ctx, err := telemetry.ContextFromEnv(context.Background(), envconf.Map(nil))
	require.NoError(t, err)
	require.False(t, trace.SpanContextFromContext(ctx).IsValid())

	ctx, err = telemetry.ContextFromEnv(context.Background(), envconf.Map(map[string]string{
		"TRACEPARENT": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "TRACESTATE": "k=v",
	}))
	require.NoError(t, err)
	sc := trace.SpanContextFromContext(ctx)
	require.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", sc.TraceID().String())
	require.Equal(t, "00f067aa0ba902b7", sc.SpanID().String())
	require.True(t, sc.IsRemote())
	require.Equal(t, "k=v", sc.TraceState().String())

	_, err = telemetry.ContextFromEnv(context.Background(), envconf.Map(map[string]string{"TRACEPARENT": "00-nothex-01"}))
	var ee *envconf.Error
	require.True(t, errors.As(err, &ee))
	require.Equal(t, "TRACEPARENT", ee.Var)
}
