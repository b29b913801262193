// Package demo is `pulse demo`: the whole backpressure loop in one process. A simulated
// Store owns a bounded queue with watermarks (feedback.Watermarks) that a provider fills,
// paced by the pipeline's token bucket (feedback.RateCoordinator); the Store's writer drains
// it slower than the provider's base rate. Each change of level goes over a real bus as a
// FeedbackEvent, the pipeline's feedback consumer applies it to the token bucket, and the
// loop settles instead of overflowing.
//
// Time is simulated in ticks (with one-millisecond steps inside a tick), so a run is
// reproducible and a test can run twenty simulated seconds in well under one; in the
// terminal the ticks are paced by the wall clock.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/feedback"
)

// applyPoll is how often the end of a tick checks whether the pipeline applied its events.
const applyPoll = time.Millisecond

// Config is what a run needs: the Store's side of the bus and the pipeline's handler.
type Config struct {
	Params
	// Store publishes the Store's feedback events (the bus the Store process would hold).
	Store feedback.Publisher
	// Stream is the feedback stream; "" means feedback.StreamFeedback.
	Stream string
	// Pipeline is the pipeline's handler, fed by a feedback consumer on the same bus; its
	// rate coordinator paces the provider.
	Pipeline *feedback.Handler
	// Adjustments counts the RateAdjustments published so far (the length of the rate
	// adjustment stream); nil leaves Result.Adjustments 0.
	Adjustments func(ctx context.Context) (int, error)
	// Backend names the bus, for the output.
	Backend string
	// Out receives a line per tick and the summary; nil writes nothing.
	Out io.Writer
	// TracerProvider makes the Store side's spans (the watermark level changes); nil means
	// the global one.
	TracerProvider trace.TracerProvider
}

// Run runs the loop for Params.Duration of simulated time, or until ctx is done (then it
// returns what it has, with ctx's error). It blocks for the whole run.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Store == nil || cfg.Pipeline == nil {
		return nil, errors.New("demo: Run needs a Store publisher and a Pipeline handler")
	}
	policy := cfg.Pipeline.Policy()
	provider := policy.Provider
	rates := cfg.Pipeline.Rates()
	limits := rates.Snapshot()[provider]
	rateAt := func(l feedback.Level) float64 {
		return max(limits.MinRate, limits.BaseRate*policy.Scale(l))
	}
	p := cfg.Params.withDefaults(rateAt(feedback.LevelOK), rateAt(feedback.LevelSoft))
	if err := p.validate(); err != nil {
		return nil, err
	}
	if maxRate := 1 / step.Seconds(); limits.BaseRate > maxRate {
		return nil, fmt.Errorf("%w: provider base rate %v (accepted: at most %v per second)", ErrParams, limits.BaseRate, maxRate)
	}
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}

	start := time.Now()
	var simNow atomic.Int64 // the simulated wall clock, Unix nanoseconds
	simNow.Store(start.UnixNano())
	clock := func() time.Time { return time.Unix(0, simNow.Load()) }

	pub := &recordingPublisher{pub: cfg.Store}
	wm, err := feedback.NewWatermarks[int](feedback.WatermarkConfig{
		CoordinatorID: DefaultCoordinator,
		Capacity:      p.Capacity,
		Publisher:     pub,
		Stream:        cfg.Stream,
		Now:           clock,

		TracerProvider: cfg.TracerProvider,
	})
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	high, low := wm.Marks()
	res := &Result{
		Params: p, Backend: cfg.Backend, Provider: provider,
		BaseRate: rateAt(feedback.LevelOK), SoftRate: rateAt(feedback.LevelSoft), MinRate: rateAt(feedback.LevelHard),
		High: high, Low: low, FirstHard: -1, MaxDepthAfterHard: -1,
	}
	l := &loop{cfg: cfg, p: p, res: res, wm: wm, pub: pub, provider: provider, rates: rates}
	fmt.Fprintf(out, "pulse demo: Store queue of %d (high watermark %d, low %d) drained at %s/s from t=%s; provider %q paced at %s/s (soft %s/s, hard %s/s) by the pipeline over %s\n",
		p.Capacity, high, low, fmtRate(p.DrainRate), p.DrainDelay, provider,
		fmtRate(res.BaseRate), fmtRate(res.SoftRate), fmtRate(res.MinRate), cfg.Backend)

	limiter := rates.Limiter(provider)
	var runErr error
	ticks := int(p.Duration / p.Tick)
	for i := range ticks {
		t0 := time.Duration(i) * p.Tick
		t1 := t0 + p.Tick
		if p.Realtime {
			if err := sleepUntil(ctx, start.Add(t1)); err != nil {
				runErr = err
				break
			}
		} else if err := ctx.Err(); err != nil {
			runErr = err
			break
		}
		var s Sample
		for t := t0; t < t1; t += step {
			now := start.Add(t)
			simNow.Store(now.UnixNano())
			if limiter.AllowN(now, 1) {
				s.Produced++
				if err := wm.Offer(i); errors.Is(err, feedback.ErrQueueFull) {
					res.Rejected++
				}
			}
			if t >= p.DrainDelay {
				s.Drained += l.drain()
			}
			l.observeDepth(wm.Len())
		}
		simNow.Store(start.Add(t1).UnixNano())
		if !l.waitApplied(ctx) {
			res.LateTicks++
		}
		s.T = t1
		s.Depth = wm.Len()
		s.Rate = rates.Rate(provider)
		s.Level = l.appliedLevel()
		if s.Level == string(feedback.LevelHard) && res.FirstHard < 0 {
			res.FirstHard = t1
		}
		res.Samples = append(res.Samples, s)
		res.Duration = t1
		fmt.Fprintln(out, tickLine(s, p.Capacity, high, low))
	}
	if err := wm.Close(); err != nil && runErr == nil {
		runErr = fmt.Errorf("demo: %w", err)
	}
	res.Events = pub.count()
	if cfg.Adjustments != nil {
		l.waitFlushed(ctx)
		n, err := cfg.Adjustments(context.WithoutCancel(ctx))
		if err != nil && runErr == nil {
			runErr = fmt.Errorf("demo: counting rate adjustments: %w", err)
		}
		res.Adjustments = n
	}
	WriteSummary(out, res)
	return res, runErr
}

type loop struct {
	cfg       Config
	p         Params
	res       *Result
	wm        *feedback.Watermarks[int]
	pub       *recordingPublisher
	provider  string
	rates     *feedback.RateCoordinator
	acc       float64 // the writer's drain credit, in messages
	hardSeen  bool    // the pipeline applied hard
	recovered bool    // the queue came back under the high watermark after the first hard
}

// drain lets the Store's writer take what one step's worth of drain rate allows.
func (l *loop) drain() int {
	l.acc += l.p.DrainRate * step.Seconds()
	n := 0
	for l.acc >= 1 {
		if _, ok := l.wm.Take(); !ok {
			l.acc = min(l.acc, 1) // an idle writer banks no more than one message
			break
		}
		l.acc--
		n++
	}
	return n
}

// observeDepth accounts one step at depth.
func (l *loop) observeDepth(depth int) {
	r := l.res
	r.MaxDepth = max(r.MaxDepth, depth)
	if depth >= r.High {
		r.AboveHigh += step
	}
	if r.FirstHard >= 0 || l.hardSeen {
		l.hardSeen = true
		if depth < r.High {
			l.recovered = true
		}
		if l.recovered {
			r.MaxDepthAfterHard = max(r.MaxDepthAfterHard, depth)
		}
	}
}

// appliedLevel is the level the pipeline last applied for the demo's coordinator.
func (l *loop) appliedLevel() string {
	if c, ok := l.cfg.Pipeline.State().Coordinators[DefaultCoordinator]; ok {
		return string(c.Level)
	}
	return string(feedback.LevelOK)
}

// applied reports whether every event the Store signalled has been published and applied.
func (l *loop) applied() bool {
	if l.wm.Pending() > 0 {
		return false
	}
	last := l.pub.lastTS()
	if last == 0 {
		return true
	}
	c, ok := l.cfg.Pipeline.State().Coordinators[DefaultCoordinator]
	return ok && c.EventTS >= last
}

// waitApplied waits up to ApplyWait for applied; it reports whether it got there.
func (l *loop) waitApplied(ctx context.Context) bool {
	return waitFor(ctx, l.p.ApplyWait, l.applied)
}

// waitFlushed waits (up to ApplyWait) for the pipeline to publish its rate adjustments.
func (l *loop) waitFlushed(ctx context.Context) {
	waitFor(ctx, l.p.ApplyWait, func() bool {
		return l.applied() && l.cfg.Pipeline.State().PendingAdjustments == 0
	})
}

// waitFor polls cond until it holds (true), d passes or ctx is done (false).
func waitFor(ctx context.Context, d time.Duration, cond func() bool) bool {
	if cond() {
		return true
	}
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	poll := time.NewTicker(applyPoll)
	defer poll.Stop()
	for {
		select {
		case <-poll.C:
			if cond() {
				return true
			}
		case <-deadline.C:
			return cond()
		case <-ctx.Done():
			return false
		}
	}
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// recordingPublisher publishes for the Store and remembers how many events went out and
// the newest one's ts.
type recordingPublisher struct {
	pub feedback.Publisher

	mu     sync.Mutex
	events int
	last   float64
}

func (r *recordingPublisher) Publish(ctx context.Context, stream string, envs ...*envelope.Envelope) error {
	if err := r.pub.Publish(ctx, stream, envs...); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events += len(envs)
	for _, e := range envs {
		if ev, err := feedback.ParseEvent(e); err == nil {
			r.last = max(r.last, float64(ev.TS))
		}
	}
	return nil
}

func (r *recordingPublisher) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.events
}

func (r *recordingPublisher) lastTS() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// barWidth is the width of the queue gauge in a tick line.
const barWidth = 40

// tickLine is one compact line: time, depth with a gauge marking the watermarks, the level
// the pipeline applied and the provider's rate.
func tickLine(s Sample, capacity, high, low int) string {
	var b strings.Builder
	fill := s.Depth * barWidth / capacity
	hi, lo := high*barWidth/capacity, low*barWidth/capacity
	for i := range barWidth {
		switch {
		case i < fill:
			b.WriteRune('█')
		case i == hi:
			b.WriteRune('H')
		case i == lo:
			b.WriteRune('L')
		default:
			b.WriteRune('·')
		}
	}
	return fmt.Sprintf("%6.1fs  depth %3d %s  %-4s  rate %6s/s", s.T.Seconds(), s.Depth, b.String(), s.Level, fmtRate(s.Rate))
}

// WriteSummary writes the run's summary.
func WriteSummary(w io.Writer, r *Result) {
	fmt.Fprintf(w, "\nsummary after %s (%s):\n", r.Duration, r.Backend)
	fmt.Fprintf(w, "  max queue depth         %d of %d (high watermark %d, low %d)\n", r.MaxDepth, r.Params.Capacity, r.High, r.Low)
	fmt.Fprintf(w, "  time at/above high      %s\n", r.AboveHigh)
	if r.FirstHard >= 0 {
		fmt.Fprintf(w, "  first hard applied at   %s\n", r.FirstHard)
	} else {
		fmt.Fprintf(w, "  first hard applied at   never\n")
	}
	if r.MaxDepthAfterHard >= 0 {
		fmt.Fprintf(w, "  max depth after that    %d (held below the high watermark: %t)\n", r.MaxDepthAfterHard, r.MaxDepthAfterHard < r.High)
	}
	fmt.Fprintf(w, "  feedback events         %d\n", r.Events)
	fmt.Fprintf(w, "  rate adjustments        %d\n", r.Adjustments)
	fmt.Fprintf(w, "  messages refused (full) %d\n", r.Rejected)
	if r.LateTicks > 0 {
		fmt.Fprintf(w, "  ticks that ended before the pipeline applied their feedback: %d\n", r.LateTicks)
	}
	verdict := "the loop settled: the queue held below its high watermark after the first hard"
	if !r.Settled() {
		verdict = "the loop did NOT settle as expected"
	}
	fmt.Fprintf(w, "  %s\n", verdict)
}

func fmtRate(v float64) string { return fmtTick(v) }
