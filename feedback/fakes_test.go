package feedback_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/feedback"
)

// errBroker is what fakePublisher returns while told to fail.
var errBroker = errors.New("broker away")

// fakePublisher records what is published and fails on demand.
type fakePublisher struct {
	mu       sync.Mutex
	failing  bool
	failNext int
	calls    int
	streams  []string
	envs     []*envelope.Envelope
	notify   chan struct{} // receives (non-blocking) after each successful publish
}

func newFakePublisher() *fakePublisher { return &fakePublisher{notify: make(chan struct{}, 1)} }

func (p *fakePublisher) Publish(ctx context.Context, stream string, envs ...*envelope.Envelope) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	if err := ctx.Err(); err != nil {
		return err
	}
	if p.failing || p.failNext > 0 {
		if p.failNext > 0 {
			p.failNext--
		}
		return errBroker
	}
	for _, e := range envs {
		p.streams = append(p.streams, stream)
		p.envs = append(p.envs, e)
	}
	select {
	case p.notify <- struct{}{}:
	default:
	}
	return nil
}

func (p *fakePublisher) setFailing(f bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failing = f
}

func (p *fakePublisher) published() []*envelope.Envelope {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*envelope.Envelope(nil), p.envs...)
}

// adjustments parses every published envelope as a RateAdjustment on its stream.
func (p *fakePublisher) adjustments(t testing.TB) []feedback.RateAdjustment {
	t.Helper()
	return parsePublished(t, p, feedback.StreamRateAdjustment, feedback.ParseRateAdjustment)
}

// events parses every published envelope as a FeedbackEvent.
func (p *fakePublisher) events(t testing.TB) []feedback.Event {
	t.Helper()
	return parsePublished(t, p, "", feedback.ParseEvent)
}

// parsePublished parses every envelope p holds with parse, each published on stream unless
// stream is empty.
func parsePublished[T any](t testing.TB, p *fakePublisher, stream string, parse func(*envelope.Envelope) (T, error)) []T {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]T, len(p.envs))
	for i, e := range p.envs {
		if stream != "" {
			require.Equal(t, stream, p.streams[i])
		}
		v, err := parse(e)
		require.NoError(t, err)
		out[i] = v
	}
	return out
}

// fakeObserver records the feedback metrics.
type fakeObserver struct {
	mu        sync.Mutex
	processed map[[2]string]int
	scale     map[string]float64
	state     map[string]int
}

func newFakeObserver() *fakeObserver {
	return &fakeObserver{processed: map[[2]string]int{}, scale: map[string]float64{}, state: map[string]int{}}
}

func (o *fakeObserver) FeedbackProcessed(provider, level string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.processed[[2]string{provider, level}]++
}

func (o *fakeObserver) RateScale(provider string, scale float64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.scale[provider] = scale
}

func (o *fakeObserver) BackpressureState(provider string, state int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.state[provider] = state
}

func (o *fakeObserver) processedTotal() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, c := range o.processed {
		n += c
	}
	return n
}

func (o *fakeObserver) gauges(provider string) (float64, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.scale[provider], o.state[provider]
}

// discardPublisher accepts and forgets (benchmarks).
type discardPublisher struct{}

func newFakeDiscard() discardPublisher { return discardPublisher{} }

func (discardPublisher) Publish(context.Context, string, ...*envelope.Envelope) error { return nil }

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{now: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
