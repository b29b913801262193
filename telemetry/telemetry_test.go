package telemetry_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulse-bus/pulse/telemetry"
	"github.com/pulse-bus/pulse/transport"
)

// Compile-time proof that *Metrics is what transport and feedback plug in.
var (
	_ transport.Observer = (*telemetry.Metrics)(nil)
	_ feedbackObserver   = (*telemetry.Metrics)(nil)
	_ interface {
		CoordinatorEvicted(provider string) // feedback.EvictionObserver
	} = (*telemetry.Metrics)(nil)
	_ transport.DeadLetterFailureObserver = (*telemetry.Metrics)(nil)
)

// feedbackObserver is the method set the feedback package calls (its own interface lives
// there; telemetry must not import feedback).
type feedbackObserver interface {
	FeedbackProcessed(provider, level string)
	RateScale(provider string, scale float64)
	BackpressureState(provider string, state int)
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newMetrics(t *testing.T, opts ...telemetry.Option) *telemetry.Metrics {
	t.Helper()
	m, err := telemetry.New(opts...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, m.Shutdown(context.Background())) })
	return m
}

// scrape GETs the handler through a real HTTP server and returns the body.
func scrape(t *testing.T, m *telemetry.Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Contains(t, resp.Header.Get("Content-Type"), "text/plain")
	return string(body)
}

func parse(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	require.NoError(t, err, "scrape is not valid Prometheus text:\n%s", text)
	return fams
}

// record exercises every observer method with the label values of the contract.
func record(m *telemetry.Metrics) {
	m.Consumed("telemetry.feedback", "v1", transport.OutcomeSuccess)
	m.Consumed("telemetry.feedback", "v1", transport.OutcomeSuccess)
	m.Consumed("telemetry.feedback", "v2", transport.OutcomeDuplicate)
	m.Consumed("telemetry.feedback", "unknown", transport.OutcomeRejected)
	m.Lag("telemetry.feedback", 1500*time.Microsecond)
	m.Lag("telemetry.feedback", 42*time.Millisecond) // last value wins
	m.Published("telemetry.rate_adjustment", "v2", nil, 3*time.Millisecond)
	m.Published("telemetry.rate_adjustment", "v2", nil, 300*time.Microsecond)
	m.Published("telemetry.rate_adjustment", "v2", errors.New("broker down"), 5*time.Second)
	m.Redelivered("telemetry.feedback")
	m.DeadLettered("telemetry.feedback", "max_deliveries")
	m.FeedbackProcessed("ibkr", "hard")
	m.RateScale("ibkr", 0.5)
	m.BackpressureState("ibkr", telemetry.BackpressureSoft)
	m.BackpressureState("ibkr", telemetry.BackpressureHard) // last value wins
	m.CoordinatorEvicted("ibkr")
	m.CoordinatorEvicted("ibkr")
	m.DeadLetterFailed("telemetry.feedback", false)
	m.DeadLetterFailed("telemetry.feedback", true)
	m.ObserveReady(func(context.Context) error { return nil })
}

type series struct {
	labels map[string]string
	value  float64
}

func seriesOf(f *dto.MetricFamily) []series {
	var out []series
	for _, m := range f.GetMetric() {
		s := series{labels: map[string]string{}}
		for _, l := range m.GetLabel() {
			s.labels[l.GetName()] = l.GetValue()
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			s.value = m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			s.value = m.GetGauge().GetValue()
		case dto.MetricType_HISTOGRAM:
			s.value = float64(m.GetHistogram().GetSampleCount())
		}
		out = append(out, s)
	}
	return out
}

// TestExposition proves that a scrape shows exactly the metrics of docs/contract.md §8 — names,
// # TYPE, label names and values — and nothing the OTel exporter would add by default
// (otel_scope_* labels, target_info, unit suffixes, a doubled _total).
func TestExposition(t *testing.T) {
	m := newMetrics(t)
	record(m)
	text := scrape(t, m)
	fams := parse(t, text)

	want := map[string]struct {
		typ    dto.MetricType
		series []series
	}{
		telemetry.NameConsume: {dto.MetricType_COUNTER, []series{
			{map[string]string{"stream": "telemetry.feedback", "track": "v1", "outcome": "success"}, 2},
			{map[string]string{"stream": "telemetry.feedback", "track": "v2", "outcome": "duplicate"}, 1},
			{map[string]string{"stream": "telemetry.feedback", "track": "unknown", "outcome": "rejected"}, 1},
		}},
		telemetry.NameLag: {dto.MetricType_GAUGE, []series{
			{map[string]string{"stream": "telemetry.feedback"}, 42},
		}},
		telemetry.NamePublish: {dto.MetricType_COUNTER, []series{
			{map[string]string{"stream": "telemetry.rate_adjustment", "track": "v2", "outcome": "success"}, 2},
			{map[string]string{"stream": "telemetry.rate_adjustment", "track": "v2", "outcome": "error"}, 1},
		}},
		telemetry.NamePublishLatency: {dto.MetricType_HISTOGRAM, []series{
			{map[string]string{"stream": "telemetry.rate_adjustment", "track": "v2"}, 2}, // successes only
		}},
		telemetry.NameRedeliveries: {dto.MetricType_COUNTER, []series{
			{map[string]string{"stream": "telemetry.feedback"}, 1},
		}},
		telemetry.NameDLQ: {dto.MetricType_COUNTER, []series{
			{map[string]string{"stream": "telemetry.feedback", "reason": "max_deliveries"}, 1},
		}},
		telemetry.NameFeedbackProcessed: {dto.MetricType_COUNTER, []series{
			{map[string]string{"provider": "ibkr", "level": "hard"}, 1},
		}},
		telemetry.NameRateScale: {dto.MetricType_GAUGE, []series{
			{map[string]string{"provider": "ibkr"}, 0.5},
		}},
		telemetry.NameBackpressureState: {dto.MetricType_GAUGE, []series{
			{map[string]string{"provider": "ibkr"}, 2},
		}},
		telemetry.NameCoordinatorsEvicted: {dto.MetricType_COUNTER, []series{
			{map[string]string{"provider": "ibkr"}, 2},
		}},
		telemetry.NameDLQFailures: {dto.MetricType_COUNTER, []series{
			{map[string]string{"stream": "telemetry.feedback", "action": "retried"}, 1},
			{map[string]string{"stream": "telemetry.feedback", "action": "settled"}, 1},
		}},
		telemetry.NameReady: {dto.MetricType_GAUGE, []series{
			{map[string]string{}, 1},
		}},
	}

	var gotNames []string
	for name := range fams {
		gotNames = append(gotNames, name)
	}
	var wantNames []string
	for name := range want {
		wantNames = append(wantNames, name)
	}
	slices.Sort(gotNames)
	slices.Sort(wantNames)
	require.Equal(t, wantNames, gotNames, "exported metric families")

	for name, w := range want {
		f := fams[name]
		require.Equal(t, w.typ, f.GetType(), "type of %s", name)
		require.ElementsMatch(t, w.series, seriesOf(f), "series of %s", name)
		require.Contains(t, text, "# TYPE "+name+" "+strings.ToLower(w.typ.String())+"\n")
		require.NotEmpty(t, f.GetHelp(), "help of %s", name)
	}

	// Latency in milliseconds, bucketed with the default bounds.
	h := fams[telemetry.NamePublishLatency].GetMetric()[0].GetHistogram()
	require.InDelta(t, 3.3, h.GetSampleSum(), 1e-9)
	var bounds []float64
	for _, b := range h.GetBucket() {
		bounds = append(bounds, b.GetUpperBound())
	}
	require.Equal(t, append(slices.Clone(telemetry.DefaultLatencyBuckets), math.Inf(1)), bounds)

	require.NotContains(t, text, "otel_scope_")
	require.NotContains(t, text, "target_info")
	require.NotContains(t, text, "_milliseconds")
	require.NotContains(t, text, "_total_total")
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "# TYPE ") && strings.HasSuffix(line, " counter") {
			name := strings.Fields(line)[2]
			require.Equal(t, 1, strings.Count(name, "_total"), "counter %s", name)
			require.True(t, strings.HasSuffix(name, "_total"), "counter %s", name)
		}
	}
}

// TestPromtool proves that `promtool check metrics` accepts a scrape except for the
// abbreviated unit in the two `_ms` names the contract keeps for existing dashboards. It is
// skipped only when promtool is not installed (Debian: apt-get install prometheus).
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian: apt-get install prometheus); skipping the lint")
	}
	m := newMetrics(t)
	record(m)
	text := scrape(t, m)

	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	_ = cmd.Run() // exits non-zero when it has complaints; the complaints are what we check

	var complaints []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			complaints = append(complaints, line)
		}
	}
	require.Len(t, complaints, 2, "promtool output:\n%s", out.String())
	for _, c := range complaints {
		require.Regexp(t, `^(pulse_lag_ms|pulse_publish_latency_ms) .*abbreviated unit`, c)
	}
}

// TestLatencyBuckets proves WithLatencyBuckets reaches the exposition and that bad bounds are
// refused with an error naming what is accepted.
func TestLatencyBuckets(t *testing.T) {
	for _, tc := range []struct {
		name   string
		bounds []float64
		err    string
	}{
		{"custom", []float64{1, 10, 100}, ""},
		{"empty", nil, "none given"},
		{"decreasing", []float64{1, 0.5}, "not strictly increasing"},
		{"repeated", []float64{1, 1}, "not strictly increasing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err != "" {
				_, err := telemetry.New(telemetry.WithLatencyBuckets(tc.bounds...))
				require.ErrorContains(t, err, tc.err)
				require.ErrorContains(t, err, "accepted:")
				return
			}
			m := newMetrics(t, telemetry.WithLatencyBuckets(tc.bounds...))
			m.Published("s", "v1", nil, 5*time.Millisecond)
			f := parse(t, scrape(t, m))[telemetry.NamePublishLatency]
			var bounds []float64
			for _, b := range f.GetMetric()[0].GetHistogram().GetBucket() {
				bounds = append(bounds, b.GetUpperBound())
			}
			require.Equal(t, append(slices.Clone(tc.bounds), math.Inf(1)), bounds)
		})
	}
}

// TestRuntimeMetrics proves WithRuntimeMetrics adds the Go and process collectors to the
// same registry, and that without it only Pulse's metrics are exported.
func TestRuntimeMetrics(t *testing.T) {
	with := parse(t, scrape(t, newMetrics(t, telemetry.WithRuntimeMetrics())))
	require.Contains(t, with, "go_goroutines")
	without := parse(t, scrape(t, newMetrics(t)))
	require.NotContains(t, without, "go_goroutines")
}

// TestConcurrentRecording proves the observer methods are safe for concurrent use (under
// -race) and lose no increments while label sets are created concurrently.
func TestConcurrentRecording(t *testing.T) {
	m := newMetrics(t)
	const goroutines, per = 8, 500
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			track := []string{"v1", "v2"}[g%2]
			for range per {
				m.Consumed("telemetry.feedback", track, transport.OutcomeSuccess)
				m.Published("telemetry.feedback", track, nil, time.Millisecond)
				m.Lag("telemetry.feedback", time.Millisecond)
			}
		}()
	}
	wg.Wait()
	fams := parse(t, scrape(t, m))
	var total float64
	for _, s := range seriesOf(fams[telemetry.NameConsume]) {
		total += s.value
	}
	require.Equal(t, float64(goroutines*per), total)
}

// TestReady proves pulse_ready reports the check ObserveReady was given at each scrape — 1 for
// nil, 0 for an error — and is absent before it is set and after it is set to nil.
func TestReady(t *testing.T) {
	notReady := errors.New("starting")
	for _, tc := range []struct {
		name   string
		checks []func(context.Context) error // given to ObserveReady in turn; the last one counts
		want   []series                      // nil: pulse_ready is not exported
	}{
		{"never set", nil, nil},
		{"ready", []func(context.Context) error{func(context.Context) error { return nil }}, []series{{map[string]string{}, 1}}},
		{"not ready", []func(context.Context) error{func(context.Context) error { return notReady }}, []series{{map[string]string{}, 0}}},
		{"replaced", []func(context.Context) error{func(context.Context) error { return nil }, func(context.Context) error { return notReady }}, []series{{map[string]string{}, 0}}},
		{"unset again", []func(context.Context) error{func(context.Context) error { return nil }, nil}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMetrics(t)
			for _, c := range tc.checks {
				m.ObserveReady(c)
			}
			fams := parse(t, scrape(t, m))
			if tc.want == nil {
				require.NotContains(t, fams, telemetry.NameReady)
				return
			}
			require.Equal(t, dto.MetricType_GAUGE, fams[telemetry.NameReady].GetType())
			require.Equal(t, tc.want, seriesOf(fams[telemetry.NameReady]))
		})
	}

	// Checked at each scrape, not once.
	m := newMetrics(t)
	var ready atomic.Bool
	m.ObserveReady(func(context.Context) error {
		if ready.Load() {
			return nil
		}
		return notReady
	})
	require.Equal(t, 0.0, seriesOf(parse(t, scrape(t, m))[telemetry.NameReady])[0].value)
	ready.Store(true)
	require.Equal(t, 1.0, seriesOf(parse(t, scrape(t, m))[telemetry.NameReady])[0].value)
}

// TestShutdown proves Shutdown is idempotent and that recording afterwards is harmless.
func TestShutdown(t *testing.T) {
	m, err := telemetry.New()
	require.NoError(t, err)
	require.NoError(t, m.Shutdown(context.Background()))
	require.NoError(t, m.Shutdown(context.Background()))
	record(m) // must neither panic nor block
	require.NotNil(t, m.MeterProvider())
}

// TestMeterProviderShared proves that an instrument made from MeterProvider() appears on the
// same handler, under its own name.
func TestMeterProviderShared(t *testing.T) {
	m := newMetrics(t)
	c, err := m.MeterProvider().Meter("test").Int64Counter("pulse_extra_total")
	require.NoError(t, err)
	c.Add(context.Background(), 3)
	fams := parse(t, scrape(t, m))
	require.Equal(t, 3.0, fams["pulse_extra_total"].GetMetric()[0].GetCounter().GetValue())
}

func BenchmarkConsumed(b *testing.B) {
	m, err := telemetry.New()
	require.NoError(b, err)
	b.Cleanup(func() { _ = m.Shutdown(context.Background()) })
	b.ReportAllocs()
	for b.Loop() {
		m.Consumed("telemetry.feedback", "v1", transport.OutcomeSuccess)
	}
}

func BenchmarkPublished(b *testing.B) {
	m, err := telemetry.New()
	require.NoError(b, err)
	b.Cleanup(func() { _ = m.Shutdown(context.Background()) })
	b.ReportAllocs()
	for b.Loop() {
		m.Published("telemetry.feedback", "v2", nil, 250*time.Microsecond)
	}
}

func BenchmarkConsumedParallel(b *testing.B) {
	m, err := telemetry.New()
	require.NoError(b, err)
	b.Cleanup(func() { _ = m.Shutdown(context.Background()) })
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Consumed("telemetry.feedback", "v1", transport.OutcomeSuccess)
			m.Lag("telemetry.feedback", time.Millisecond)
		}
	})
}
