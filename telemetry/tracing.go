package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/pulse-bus/pulse/envconf"
)

// The standard OpenTelemetry environment of trace export that TracingFromEnv reads (the
// OpenTelemetry SDK configuration specification). Variables not listed here that the OTLP
// exporters and the SDK read themselves from the process environment (OTEL_EXPORTER_OTLP_HEADERS,
// _CERTIFICATE, _COMPRESSION, OTEL_BSP_*) apply as the specification says.
const (
	EnvSDKDisabled        = "OTEL_SDK_DISABLED"
	EnvTracesExporter     = "OTEL_TRACES_EXPORTER"
	EnvEndpoint           = "OTEL_EXPORTER_OTLP_ENDPOINT"
	EnvTracesEndpoint     = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	EnvProtocol           = "OTEL_EXPORTER_OTLP_PROTOCOL"
	EnvTracesProtocol     = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	EnvTimeout            = "OTEL_EXPORTER_OTLP_TIMEOUT"
	EnvTracesTimeout      = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
	EnvServiceName        = "OTEL_SERVICE_NAME"
	EnvResourceAttributes = "OTEL_RESOURCE_ATTRIBUTES"
	EnvSampler            = "OTEL_TRACES_SAMPLER"
	EnvSamplerArg         = "OTEL_TRACES_SAMPLER_ARG"
)

// The W3C environment carriers (the OpenTelemetry "environment variables as context
// propagation carriers" specification) from which ContextFromEnv takes a parent.
const (
	EnvTraceParent = "TRACEPARENT"
	EnvTraceState  = "TRACESTATE"
	EnvBaggage     = "BAGGAGE"
)

// Values of the tracing settings.
const (
	ProtocolHTTP         = "http/protobuf"
	ProtocolGRPC         = "grpc"
	DefaultServiceName   = "pulse"
	DefaultSampler       = "parentbased_always_on"
	DefaultTracesURLPath = "/v1/traces"
)

var samplers = []string{"always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"}

// TracingConfig is trace export as the standard environment asks for it. Export is on when an
// OTLP endpoint is set, the SDK is not disabled and the traces exporter is not "none"; off
// otherwise, which is the default.
type TracingConfig struct {
	Disabled       bool   // OTEL_SDK_DISABLED
	Exporter       string // OTEL_TRACES_EXPORTER: "otlp" (the default) or "none"
	Endpoint       string // OTEL_EXPORTER_OTLP_ENDPOINT: a base URL (http/protobuf sends to /v1/traces below it)
	TracesEndpoint string // OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: the whole URL; wins over Endpoint
	Protocol       string // OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL: ProtocolHTTP (the default) or ProtocolGRPC
	// Timeout bounds one export (OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT, milliseconds); 0 means
	// the exporter's default, 10 s.
	Timeout     time.Duration
	ServiceName string // OTEL_SERVICE_NAME; DefaultServiceName when unset
	// Resource holds the OTEL_RESOURCE_ATTRIBUTES (key=value pairs, comma-separated, values
	// percent-encoded).
	Resource []attribute.KeyValue
	Sampler  string  // OTEL_TRACES_SAMPLER; DefaultSampler when unset
	Ratio    float64 // OTEL_TRACES_SAMPLER_ARG of the ratio samplers, in [0,1]; 1 when unset
}

// Enabled reports whether spans are exported.
func (c TracingConfig) Enabled() bool {
	return !c.Disabled && c.Exporter != "none" && (c.Endpoint != "" || c.TracesEndpoint != "")
}

// URL is where spans go: TracesEndpoint, else, for http/protobuf, Endpoint with /v1/traces
// appended to its path, and for gRPC Endpoint itself.
func (c TracingConfig) URL() string {
	if c.TracesEndpoint != "" {
		return c.TracesEndpoint
	}
	if c.Endpoint == "" || c.Protocol == ProtocolGRPC {
		return c.Endpoint
	}
	u, err := url.Parse(c.Endpoint)
	if err != nil { // validated by TracingFromEnv
		return c.Endpoint
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + DefaultTracesURLPath
	return u.String()
}

// TracingFromEnv reads the trace export settings through lookup (os.LookupEnv in
// production). A value that is not accepted is an *envconf.Error naming the variable.
func TracingFromEnv(lookup func(string) (string, bool)) (TracingConfig, error) {
	c := TracingConfig{Exporter: "otlp", Protocol: ProtocolHTTP, ServiceName: DefaultServiceName, Sampler: DefaultSampler, Ratio: 1}
	r := envconf.Reader{Lookup: lookup}
	r.Bool(EnvSDKDisabled, &c.Disabled)
	r.OneOf(EnvTracesExporter, &c.Exporter, "otlp", "none")
	r.String(EnvEndpoint, &c.Endpoint)
	r.String(EnvTracesEndpoint, &c.TracesEndpoint)
	protocol := EnvProtocol
	if v, ok := lookup(EnvTracesProtocol); ok && strings.TrimSpace(v) != "" {
		protocol = EnvTracesProtocol
	}
	r.OneOf(protocol, &c.Protocol, ProtocolHTTP, ProtocolGRPC)
	timeout := EnvTimeout
	if v, ok := lookup(EnvTracesTimeout); ok && strings.TrimSpace(v) != "" {
		timeout = EnvTracesTimeout
	}
	ms := 0
	r.PositiveInt(timeout, &ms)
	c.Timeout = time.Duration(ms) * time.Millisecond
	r.String(EnvServiceName, &c.ServiceName)
	r.OneOf(EnvSampler, &c.Sampler, samplers...)
	if strings.HasSuffix(c.Sampler, "traceidratio") {
		r.Float(EnvSamplerArg, &c.Ratio, 0, 1)
	}
	if r.Err != nil {
		return TracingConfig{}, r.Err
	}
	for _, e := range []struct{ name, value string }{{EnvEndpoint, c.Endpoint}, {EnvTracesEndpoint, c.TracesEndpoint}} {
		if e.value == "" {
			continue
		}
		if u, err := url.Parse(e.value); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return TracingConfig{}, &envconf.Error{Var: e.name, Value: e.value, Accepted: "an absolute http:// or https:// URL, such as http://localhost:4318 (http/protobuf) or http://localhost:4317 (grpc)"}
		}
	}
	if v, ok := lookup(EnvResourceAttributes); ok && strings.TrimSpace(v) != "" {
		attrs, err := parseResourceAttributes(v)
		if err != nil {
			return TracingConfig{}, &envconf.Error{Var: EnvResourceAttributes, Value: v, Accepted: "comma-separated key=value pairs, values percent-encoded (" + err.Error() + ")"}
		}
		c.Resource = attrs
	}
	return c, nil
}

// parseResourceAttributes reads OTEL_RESOURCE_ATTRIBUTES as the SDK specification writes it.
func parseResourceAttributes(s string) ([]attribute.KeyValue, error) {
	var out []attribute.KeyValue
	for _, pair := range strings.Split(s, ",") {
		if strings.TrimSpace(pair) == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", pair)
		}
		val, err := url.PathUnescape(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("the value of %s: %w", k, err)
		}
		out = append(out, attribute.String(k, val))
	}
	return out, nil
}

// sampler is the OTEL_TRACES_SAMPLER of c.
func (c TracingConfig) sampler() sdktrace.Sampler {
	switch c.Sampler {
	case "always_on":
		return sdktrace.AlwaysSample()
	case "always_off":
		return sdktrace.NeverSample()
	case "traceidratio":
		return sdktrace.TraceIDRatioBased(c.Ratio)
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample())
	case "parentbased_traceidratio":
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(c.Ratio))
	}
	return sdktrace.ParentBased(sdktrace.AlwaysSample())
}

// Tracing is the service's trace export: an OpenTelemetry SDK TracerProvider that batches
// spans to an OTLP endpoint, or nothing at all when export is off.
type Tracing struct {
	tp *sdktrace.TracerProvider // nil when off
}

// StartTracing starts exporting as cfg says, with the resource's service.name and
// service.version (version) set; export errors are logged to log as warnings (nil discards
// them). When cfg is not Enabled it returns a Tracing whose TracerProvider is a no-op. No
// connection is made before the first export.
func StartTracing(ctx context.Context, cfg TracingConfig, version string, log *slog.Logger) (*Tracing, error) {
	if !cfg.Enabled() {
		return &Tracing{}, nil
	}
	var exp sdktrace.SpanExporter
	var err error
	switch cfg.Protocol {
	case ProtocolGRPC:
		opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpointURL(cfg.URL())}
		if cfg.Timeout > 0 {
			opts = append(opts, otlptracegrpc.WithTimeout(cfg.Timeout))
		}
		exp, err = otlptracegrpc.New(ctx, opts...)
	default:
		opts := []otlptracehttp.Option{otlptracehttp.WithEndpointURL(cfg.URL())}
		if cfg.Timeout > 0 {
			opts = append(opts, otlptracehttp.WithTimeout(cfg.Timeout))
		}
		exp, err = otlptracehttp.New(ctx, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTLP %s trace exporter to %s: %w", cfg.Protocol, cfg.URL(), err)
	}
	attrs := append(cfg.Resource, semconv.ServiceName(cfg.ServiceName), semconv.ServiceVersion(version))
	res, err := resource.New(ctx, resource.WithTelemetrySDK(), resource.WithAttributes(attrs...))
	if err != nil {
		return nil, fmt.Errorf("telemetry: trace resource: %w", err)
	}
	if log != nil {
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			log.Warn("OpenTelemetry: exporting spans failed", "err", err)
		}))
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res), sdktrace.WithSampler(cfg.sampler()))
	return &Tracing{tp: tp}, nil
}

// TracerProvider is what the bus and the feedback loop make their spans with: the SDK's, or
// a no-op one while export is off (which costs them nothing).
func (t *Tracing) TracerProvider() trace.TracerProvider {
	if t == nil || t.tp == nil {
		return noop.NewTracerProvider()
	}
	return t.tp
}

// Shutdown exports the spans still buffered and stops exporting; it returns once they are
// sent or ctx is done. It is idempotent and a no-op while export is off.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil || t.tp == nil {
		return nil
	}
	if err := t.tp.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("telemetry: flushing spans: %w", err)
	}
	return nil
}

// ContextFromEnv returns ctx with the parent that TRACEPARENT (with TRACESTATE and BAGGAGE)
// names, read through lookup: how a script joins the command to its own trace. Unset, ctx
// is returned as is; a TRACEPARENT that is not a valid W3C traceparent is an *envconf.Error.
func ContextFromEnv(ctx context.Context, lookup func(string) (string, bool)) (context.Context, error) {
	tp, ok := lookup(EnvTraceParent)
	if !ok || strings.TrimSpace(tp) == "" {
		return ctx, nil
	}
	carrier := propagation.MapCarrier{"traceparent": strings.TrimSpace(tp)}
	if v, ok := lookup(EnvTraceState); ok {
		carrier["tracestate"] = v
	}
	if v, ok := lookup(EnvBaggage); ok {
		carrier["baggage"] = v
	}
	prop := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	out := prop.Extract(ctx, carrier)
	if !trace.SpanContextFromContext(out).IsValid() {
		return ctx, &envconf.Error{Var: EnvTraceParent, Value: tp,
			Accepted: "a W3C traceparent, 00-<32 hex digits, not all 0>-<16 hex digits, not all 0>-<2 hex digits>, such as 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	}
	return out, nil
}

// TracingSummary describes where spans go, for start-up logs: "off" or protocol and URL
// (credentials masked by the caller if it prints the URL elsewhere).
func (c TracingConfig) TracingSummary() string {
	if !c.Enabled() {
		return "off"
	}
	s := c.Protocol + " " + redactUserinfo(c.URL()) + " sampler " + c.Sampler
	if strings.HasSuffix(c.Sampler, "traceidratio") {
		s += " " + strconv.FormatFloat(c.Ratio, 'g', -1, 64)
	}
	return s
}

// redactUserinfo masks a URL's password.
func redactUserinfo(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	return u.Redacted()
}
