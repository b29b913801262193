// Package telemetry holds Pulse's metrics: an OpenTelemetry MeterProvider exported in the
// Prometheus text format on a private registry, and the instruments of docs/contract.md §8 under
// their exact Prometheus names. It also starts the service's trace export (StartTracing) from
// the standard OpenTelemetry environment (TracingFromEnv): OTLP over HTTP or gRPC, off unless
// an endpoint is set.
//
// It is a leaf package: it imports neither transport nor feedback. *Metrics implements
// transport.Observer (Published, Consumed, Redelivered, DeadLettered, Lag) and the feedback
// observer (FeedbackProcessed, RateScale, BackpressureState) with plain string arguments.
//
// Names are exported exactly as written here: the exporter runs with the
// UnderscoreEscapingWithoutSuffixes translation strategy (no `_total` or unit suffix is ever
// appended; counters carry `_total` in their own names), without the otel_scope_* labels and
// without target_info. Instruments have no OpenTelemetry unit, so nothing like `_milliseconds`
// can appear; the unit is in the name (`_ms`) because existing dashboards use those names.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
)

// MeterName is the instrumentation scope of Pulse's own instruments.
const MeterName = "github.com/pulse-bus/pulse"

// The Prometheus metric names (docs/contract.md §8).
const (
	NameConsume           = "pulse_consume_total"
	NameLag               = "pulse_lag_ms"
	NamePublish           = "pulse_publish_total"
	NamePublishLatency    = "pulse_publish_latency_ms"
	NameRedeliveries      = "pulse_redeliveries_total"
	NameDLQ               = "pulse_dlq_total"
	NameFeedbackProcessed = "feedback_events_processed_total"
	NameRateScale         = "pipeline_rate_scale_factor"
	NameBackpressureState = "pipeline_backpressure_state"
	// NameCoordinatorsEvicted counts Store coordinators the feedback handler forgot to stay
	// within MDP_FB_MAX_COORDINATORS.
	NameCoordinatorsEvicted = "feedback_coordinators_evicted_total"
	// NameDLQFailures counts dead letters that could not be written, by what became of the
	// original (action retried or settled).
	NameDLQFailures = "pulse_dlq_failures_total"
	// NameReady is 1 while the service is ready (what /readyz answers 200 for), else 0; see
	// ObserveReady.
	NameReady = "pulse_ready"
)

// The pulse_publish_total outcomes.
const (
	outcomeSuccess = "success"
	outcomeError   = "error"
)

// scrapeErrorLevel is the level scrape errors are logged at (WithLogger).
const scrapeErrorLevel = slog.LevelWarn

// DefaultLatencyBuckets are the pulse_publish_latency_ms bucket bounds, in milliseconds: from
// an in-process publish (well under a millisecond) to a broker that is struggling (seconds).
var DefaultLatencyBuckets = []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000}

// Backpressure states reported by BackpressureState (pipeline_backpressure_state).
const (
	BackpressureOK   = 0
	BackpressureSoft = 1
	BackpressureHard = 2
)

// Option configures New.
type Option func(*config) error

type config struct {
	buckets []float64
	runtime bool
	logger  *slog.Logger
}

// WithLatencyBuckets replaces DefaultLatencyBuckets for pulse_publish_latency_ms. The bounds
// must be finite, strictly increasing and non-empty; they are copied.
func WithLatencyBuckets(bounds ...float64) Option {
	return func(c *config) error {
		if len(bounds) == 0 {
			return errors.New("telemetry: latency buckets: none given (accepted: strictly increasing bounds in ms)")
		}
		for i := 1; i < len(bounds); i++ {
			if !(bounds[i] > bounds[i-1]) {
				return fmt.Errorf("telemetry: latency buckets %v: not strictly increasing at %v (accepted: strictly increasing bounds in ms)", bounds, bounds[i])
			}
		}
		c.buckets = slices.Clone(bounds)
		return nil
	}
}

// WithRuntimeMetrics also registers the Go runtime (go_*) and process (process_*) collectors
// on the private registry, so the /metrics endpoint shows them beside Pulse's own.
func WithRuntimeMetrics() Option {
	return func(c *config) error { c.runtime = true; return nil }
}

// WithLogger sets where scrape errors are logged; nil (the default) discards them.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error { c.logger = l; return nil }
}

// Metrics owns a MeterProvider, its Prometheus registry and the Pulse instruments. Every
// method is safe for concurrent use and never blocks on I/O; the observer methods are meant
// for the per-message hot path and do not allocate once a label combination has been seen.
// After Shutdown the observer methods still return at once but record nothing.
type Metrics struct {
	provider *sdkmetric.MeterProvider
	registry *prometheus.Registry
	handler  http.Handler

	consume      metric.Int64Counter
	lag          metric.Float64Gauge
	publish      metric.Int64Counter
	latency      metric.Float64Histogram
	redeliveries metric.Int64Counter
	dlq          metric.Int64Counter
	feedback     metric.Int64Counter
	evicted      metric.Int64Counter
	dlqFailures  metric.Int64Counter
	scale        metric.Float64Gauge
	backpressure metric.Int64Gauge

	attrs attrCache
	ready atomic.Pointer[func(context.Context) error] // ObserveReady's check, nil until set

	shutdownOnce sync.Once
	shutdownErr  error
}

// New builds the MeterProvider, the Prometheus exporter on a private registry and the
// instruments. Call Shutdown when done.
func New(opts ...Option) (*Metrics, error) {
	cfg := config{buckets: DefaultLatencyBuckets}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	reg := prometheus.NewRegistry()
	if cfg.runtime {
		if err := reg.Register(collectors.NewGoCollector()); err != nil {
			return nil, fmt.Errorf("telemetry: register go collector: %w", err)
		}
		if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
			return nil, fmt.Errorf("telemetry: register process collector: %w", err)
		}
	}
	exp, err := otelprom.New(
		otelprom.WithRegisterer(reg),
		otelprom.WithoutScopeInfo(),
		otelprom.WithoutTargetInfo(),
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithoutSuffixes),
	)
	if err != nil {
		return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	m := &Metrics{
		provider: sdkmetric.NewMeterProvider(
			sdkmetric.WithReader(exp),
			// No exemplars: the text format does not carry them, and offering each
			// measurement to a reservoir costs time on the hot path.
			sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter),
		),
		registry: reg,
	}
	handlerOpts := promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}
	if cfg.logger != nil {
		handlerOpts.ErrorLog = slog.NewLogLogger(cfg.logger.Handler(), scrapeErrorLevel)
	}
	m.handler = promhttp.HandlerFor(reg, handlerOpts)
	if err := m.instruments(cfg); err != nil {
		_ = m.provider.Shutdown(context.Background())
		return nil, err
	}
	return m, nil
}

func (m *Metrics) instruments(cfg config) error {
	meter := m.provider.Meter(MeterName)
	var errs []error
	counter := func(name, desc string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	m.consume = counter(NameConsume, "Deliveries consumed, by how they ended (success, error, duplicate, dead_letter, rejected, stale).")
	m.publish = counter(NamePublish, "Messages published, by outcome (success, error).")
	m.redeliveries = counter(NameRedeliveries, "Deliveries received on an attempt after the first.")
	m.dlq = counter(NameDLQ, "Messages written to the stream's dead-letter queue, by reason.")
	m.feedback = counter(NameFeedbackProcessed, "Feedback events applied, by provider and level.")
	m.dlqFailures = counter(NameDLQFailures, "Dead letters that could not be written, by what became of the original: retried, or settled where it is.")
	m.evicted = counter(NameCoordinatorsEvicted, "Store coordinators forgotten to stay within MDP_FB_MAX_COORDINATORS, by provider.")

	var err error
	m.lag, err = meter.Float64Gauge(NameLag, metric.WithDescription("Milliseconds the last message received on the stream waited since the broker stored it (by the broker's clock), clamped to [0, 7 days]."))
	errs = append(errs, err)
	m.latency, err = meter.Float64Histogram(NamePublishLatency,
		metric.WithDescription("Time in milliseconds for the broker to accept a successful publish."),
		metric.WithExplicitBucketBoundaries(cfg.buckets...))
	errs = append(errs, err)
	m.scale, err = meter.Float64Gauge(NameRateScale, metric.WithDescription("Current rate scale factor of the provider, in [0,1]."))
	errs = append(errs, err)
	m.backpressure, err = meter.Int64Gauge(NameBackpressureState, metric.WithDescription("Backpressure state of the provider: 0 ok, 1 soft, 2 hard."))
	errs = append(errs, err)
	_, err = meter.Int64ObservableGauge(NameReady,
		metric.WithDescription("1 while the service is ready (/readyz answers 200), else 0; checked at each scrape."),
		metric.WithInt64Callback(m.observeReady))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("telemetry: create instruments: %w", err)
	}
	return nil
}

// Handler serves the private registry in the Prometheus text format (for /metrics).
func (m *Metrics) Handler() http.Handler { return m.handler }

// Registry returns the private Prometheus registry, e.g. to register more collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// MeterProvider returns the OpenTelemetry MeterProvider, for other instruments that should
// appear on the same /metrics endpoint. Do not register a second MeterProvider's exporter on
// Registry: two providers on one registry fail at scrape time with duplicate series.
func (m *Metrics) MeterProvider() metric.MeterProvider { return m.provider }

// Shutdown stops the MeterProvider; measurements made afterwards are dropped. It honours ctx,
// and only the first call does any work: later calls return the first call's result.
func (m *Metrics) Shutdown(ctx context.Context) error {
	m.shutdownOnce.Do(func() {
		if err := m.provider.Shutdown(ctx); err != nil {
			m.shutdownErr = fmt.Errorf("telemetry: shutdown: %w", err)
		}
	})
	return m.shutdownErr
}

// ObserveReady makes pulse_ready report check at every scrape: 1 when it returns nil, 0 when
// it returns an error. Before the first call pulse_ready is not exported; a later call
// replaces check, and a nil check stops exporting it. check runs on the scraping goroutine, possibly on several at once, and the
// scrape waits for it: it must be safe for concurrent use and bound its own time (the context
// it is given has no deadline).
func (m *Metrics) ObserveReady(check func(ctx context.Context) error) {
	if check == nil {
		m.ready.Store(nil)
		return
	}
	m.ready.Store(&check)
}

func (m *Metrics) observeReady(ctx context.Context, o metric.Int64Observer) error {
	check := m.ready.Load()
	if check == nil {
		return nil
	}
	var v int64
	if (*check)(ctx) == nil {
		v = 1
	}
	o.Observe(v)
	return nil
}

// Published counts one published message in pulse_publish_total (outcome success when err is
// nil, else error) and, on success, records latency in pulse_publish_latency_ms.
func (m *Metrics) Published(stream, track string, err error, latency time.Duration) {
	ctx := context.Background()
	if err != nil {
		m.publish.Add(ctx, 1, m.attrs.get(kindPublish, stream, track, outcomeError).add...)
		return
	}
	m.publish.Add(ctx, 1, m.attrs.get(kindPublish, stream, track, outcomeSuccess).add...)
	m.latency.Record(ctx, durationMS(latency), m.attrs.get(kindStreamTrack, stream, track, "").record...)
}

// Consumed counts one settled delivery in pulse_consume_total.
func (m *Metrics) Consumed(stream, track, outcome string) {
	m.consume.Add(context.Background(), 1, m.attrs.get(kindConsume, stream, track, outcome).add...)
}

// Redelivered counts a delivery on an attempt after the first in pulse_redeliveries_total.
func (m *Metrics) Redelivered(stream string) {
	m.redeliveries.Add(context.Background(), 1, m.attrs.get(kindStream, stream, "", "").add...)
}

// DeadLettered counts a message written to the stream's DLQ in pulse_dlq_total.
func (m *Metrics) DeadLettered(stream, reason string) {
	m.dlq.Add(context.Background(), 1, m.attrs.get(kindDLQ, stream, reason, "").add...)
}

// Lag sets pulse_lag_ms of the stream to lag, in milliseconds.
func (m *Metrics) Lag(stream string, lag time.Duration) {
	m.lag.Record(context.Background(), durationMS(lag), m.attrs.get(kindStream, stream, "", "").record...)
}

// DeadLetterFailed counts a dead letter that could not be written in pulse_dlq_failures_total:
// action "settled" when the original was settled without one, else "retried".
func (m *Metrics) DeadLetterFailed(stream string, settled bool) {
	action := "retried"
	if settled {
		action = "settled"
	}
	m.dlqFailures.Add(context.Background(), 1, m.attrs.get(kindDLQFailure, stream, action, "").add...)
}

// FeedbackProcessed counts one applied feedback event in feedback_events_processed_total.
func (m *Metrics) FeedbackProcessed(provider, level string) {
	m.feedback.Add(context.Background(), 1, m.attrs.get(kindFeedback, provider, level, "").add...)
}

// CoordinatorEvicted counts one forgotten coordinator in feedback_coordinators_evicted_total.
func (m *Metrics) CoordinatorEvicted(provider string) {
	m.evicted.Add(context.Background(), 1, m.attrs.get(kindProvider, provider, "", "").add...)
}

// RateScale sets pipeline_rate_scale_factor of the provider.
func (m *Metrics) RateScale(provider string, scale float64) {
	m.scale.Record(context.Background(), scale, m.attrs.get(kindProvider, provider, "", "").record...)
}

// BackpressureState sets pipeline_backpressure_state of the provider (BackpressureOK,
// BackpressureSoft or BackpressureHard).
func (m *Metrics) BackpressureState(provider string, state int) {
	m.backpressure.Record(context.Background(), int64(state), m.attrs.get(kindProvider, provider, "", "").record...)
}

func durationMS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
