package feedback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.opentelemetry.io/otel/trace"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/internal/tracing"
	"github.com/pulse-bus/pulse/transport"
)

// Watermark defaults, defined once.
const (
	// DefaultHighWatermark and DefaultLowWatermark are fractions of the capacity.
	DefaultHighWatermark = 0.8
	DefaultLowWatermark  = 0.5
	// DefaultBand is the hysteresis band, as a fraction of the distance between the marks:
	// the soft mark sits at the midpoint between the low and the high mark.
	DefaultBand = 0.5
	// NoBand disables the band (WatermarkConfig.Band): soft one message above the low mark,
	// and hard held until the depth is back at the low mark, as the Python Store's
	// BoundedQueue does. It flaps ok↔soft at the low mark.
	NoBand = -1.0
	// DefaultMaxPendingEvents bounds the feedback events waiting to be published.
	DefaultMaxPendingEvents = 64
	// DefaultPublishTimeout bounds one publish attempt.
	DefaultPublishTimeout = 5 * time.Second
	// DefaultRetryMin and DefaultRetryMax bound the backoff between failed publishes.
	DefaultRetryMin = 100 * time.Millisecond
	DefaultRetryMax = 5 * time.Second
	// DefaultCloseTimeout bounds how long Close keeps trying to publish pending events.
	DefaultCloseTimeout = 5 * time.Second
)

// Header names and reasons of the events Watermarks publishes, as the Python Store writes
// them.
const (
	HeaderReason      = "reason"
	HeaderUtilization = "utilization" // depth / capacity, formatted "%.6f" ("0.850000")

	ReasonHighWatermark  = "high_watermark"      // hard: the depth reached the high mark
	ReasonAboveLowMark   = "above_low_watermark" // soft: the depth is between the marks (rose to, or fell back to, the soft mark)
	ReasonQueueRecovered = "queue_recovered"     // ok: the depth is back at or under the low mark
)

// Errors of the watermark queue.
var (
	// ErrQueueFull is returned by Offer when the queue holds Capacity items.
	ErrQueueFull = errors.New("feedback: watermark queue full")
	// ErrQueueClosed is returned by Offer and Put after Close, and by Get once the queue is
	// closed and empty.
	ErrQueueClosed = errors.New("feedback: watermark queue closed")
)

// WatermarkConfig configures Watermarks.
type WatermarkConfig struct {
	// CoordinatorID names this queue in its events; required.
	CoordinatorID string
	// Capacity is the most items the queue holds; required, > 0.
	Capacity int
	// High and Low are the watermarks as fractions of Capacity, 0 < Low < High ≤ 1; 0 means
	// DefaultHighWatermark / DefaultLowWatermark. As in the Python Store the marks in items
	// are high = max(1, ⌊High × Capacity⌋) and low = ⌊Low × Capacity⌋ (lowered to high − 1 if
	// they meet).
	High, Low float64
	// Band is the hysteresis band that keeps a level from flapping when the depth moves by
	// one message, as a fraction of the distance between the marks, 0 ≤ Band < 1. It places
	// the soft mark at low + ⌊Band × (high − low)⌋ items: from ok the level turns soft only
	// once the depth has risen to the soft mark, and from hard only once it has fallen to it
	// (see Watermarks). 0 means DefaultBand (the midpoint); a negative value (NoBand) means
	// no band, the Python Store's behaviour.
	Band float64
	// Publisher receives the feedback events; nil means none are published (Level still
	// follows the depth).
	Publisher Publisher
	// Stream is where events go; "" means StreamFeedback.
	Stream string
	// Source is the events' source; "" means DefaultSource.
	Source string
	// MaxPendingEvents bounds the events waiting to be published; when it is exceeded the
	// oldest is dropped with a warning (consumers apply only the newest event per coordinator,
	// so the newest must survive). 0 means DefaultMaxPendingEvents.
	MaxPendingEvents int
	// PublishTimeout bounds one publish attempt; 0 means DefaultPublishTimeout.
	PublishTimeout time.Duration
	// RetryMin and RetryMax bound the backoff between failed publishes; 0 means the defaults.
	RetryMin, RetryMax time.Duration
	// CloseTimeout bounds how long Close keeps publishing pending events; 0 means
	// DefaultCloseTimeout.
	CloseTimeout time.Duration
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock for event ts; nil means time.Now.
	Now func() time.Time
	// TracerProvider makes a span SpanWatermark at each change of level (a child of the
	// context given to the Put or Get that caused it, if any), whose child is the publish of
	// the FeedbackEvent; nil means the global one, a no-op unless the program sets one.
	TracerProvider trace.TracerProvider
}

// Watermarks is the Store's bounded queue with backpressure feedback (docs/design.md "The loop's
// semantics"): edge-triggered, one event per change of level and none while the level holds,
// with hysteresis so that no level flaps when the depth moves by one message.
//
// With high and low the marks in items (Marks) and the soft mark s = low + ⌊Band × (high −
// low)⌋ (SoftMark; the midpoint 65 of a queue of 100 by default), each change of the depth d
// moves the level so:
//
//	from \ depth   d ≥ high                low < d < high                          d ≤ low
//	ok             hard (high_watermark)   soft (above_low_watermark) once d ≥ s   ·
//	soft           hard (high_watermark)   ·                                       ok (queue_recovered)
//	hard           ·                       soft (above_low_watermark) once d ≤ s   ok (queue_recovered)
//
// (· : the level holds, nothing is signalled.)
//
// So hard is signalled only at or above the high mark, soft only strictly between the marks
// and ok only at or under the low mark, and the band between s and each mark must be crossed
// before a level is left the other way: a queue hovering at the low mark after ok, or at the
// high mark after hard, or anywhere between the marks at soft, signals nothing. A queue
// rising from empty to full signals soft at s, then hard at high; falling back, soft at s,
// then ok at low. With Band NoBand (s = low) this is the Python Store's BoundedQueue: soft one
// message above the low mark (flapping ok↔soft on a queue that hovers there), and hard held
// until the queue recovers at the low mark. Between marks fewer than four messages apart
// one of the bands is a single message.
//
// Every event carries the headers reason and utilization, is keyed by the coordinator id,
// and has a ts strictly greater than the previous event's (so that latest-wins consumers
// never take a later event for a duplicate).
//
// Publishing never blocks the queue: events go to a bounded outbox that a goroutine owned by
// the queue publishes, in order, retrying failures with backoff (logged, and visible in
// PublishErr and Dropped). Close stops it. All methods are safe for concurrent use.
type Watermarks[T any] struct {
	cfg             WatermarkConfig
	high, low, soft int
	log             *slog.Logger
	tracer          *tracing.Tracer

	mu       sync.Mutex
	buf      []T // ring of Capacity items
	head, n  int
	closed   bool
	level    Level
	lastTS   float64
	notEmpty chan struct{} // closed on the next push; nil while nobody waits
	notFull  chan struct{} // closed on the next pop; nil while nobody waits

	outbox  []outboxEvent
	seq     uint64
	dropped uint64
	pubErr  error

	wake      chan struct{} // cap 1: the outbox has something
	closing   chan struct{} // closed by Close: publish what is left, then stop
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

type outboxEvent struct {
	seq   uint64
	env   *envelope.Envelope
	cause trace.SpanContext // the level change's span (or the caller's context), parent of the publish
}

// NewWatermarks returns an empty queue at level ok and starts its publishing goroutine;
// Close stops it. An invalid configuration is an error naming the field.
func NewWatermarks[T any](cfg WatermarkConfig) (*Watermarks[T], error) {
	if cfg.CoordinatorID == "" {
		return nil, errors.New("feedback: watermarks: empty CoordinatorID (accepted: a non-empty string)")
	}
	if cfg.Capacity <= 0 {
		return nil, fmt.Errorf("feedback: watermarks: Capacity %d (accepted: an integer > 0)", cfg.Capacity)
	}
	if cfg.High == 0 {
		cfg.High = DefaultHighWatermark
	}
	if cfg.Low == 0 {
		cfg.Low = DefaultLowWatermark
	}
	if !(cfg.Low > 0 && cfg.Low < cfg.High && cfg.High <= 1) {
		return nil, fmt.Errorf("feedback: watermarks: High %v, Low %v (accepted: 0 < Low < High ≤ 1)", cfg.High, cfg.Low)
	}
	switch {
	case cfg.Band == 0:
		cfg.Band = DefaultBand
	case cfg.Band < 0:
		cfg.Band = 0 // NoBand
	case !(cfg.Band < 1): // also NaN
		return nil, fmt.Errorf("feedback: watermarks: Band %v (accepted: 0 < Band < 1, a fraction of the distance between the marks; 0 for the default %v; negative for none)", cfg.Band, DefaultBand)
	}
	if cfg.Stream == "" {
		cfg.Stream = StreamFeedback
	}
	if !transport.ValidStreamName(cfg.Stream) {
		return nil, fmt.Errorf("feedback: watermarks: invalid stream %q (accepted: dot-separated tokens of letters, digits, '_' and '-')", cfg.Stream)
	}
	if cfg.Source == "" {
		cfg.Source = DefaultSource
	}
	if cfg.MaxPendingEvents <= 0 {
		cfg.MaxPendingEvents = DefaultMaxPendingEvents
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = DefaultPublishTimeout
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = DefaultRetryMin
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(DefaultRetryMax, cfg.RetryMin)
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = DefaultCloseTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	high := max(1, int(cfg.High*float64(cfg.Capacity)))
	low := min(int(cfg.Low*float64(cfg.Capacity)), high-1)
	soft := low + int(cfg.Band*float64(high-low)) // < high, as Band < 1
	w := &Watermarks[T]{
		cfg:     cfg,
		high:    high,
		low:     low,
		soft:    soft,
		log:     log.With("coordinator", cfg.CoordinatorID, "stream", cfg.Stream),
		tracer:  tracing.New(cfg.TracerProvider, TracerName),
		buf:     make([]T, cfg.Capacity),
		level:   LevelOK,
		wake:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	go w.run()
	return w, nil
}

// Cap is the capacity.
func (w *Watermarks[T]) Cap() int { return w.cfg.Capacity }

// Marks returns the high and low watermarks in items.
func (w *Watermarks[T]) Marks() (high, low int) { return w.high, w.low }

// SoftMark returns the depth, in items, at which the level turns soft: rising from ok, or
// falling from hard (see Watermarks). It equals the low mark with NoBand.
func (w *Watermarks[T]) SoftMark() int { return w.soft }

// Len is the current depth.
func (w *Watermarks[T]) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// Level is the level last signalled.
func (w *Watermarks[T]) Level() Level {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.level
}

// Offer adds item if there is room, without blocking: ErrQueueFull when full,
// ErrQueueClosed after Close.
func (w *Watermarks[T]) Offer(item T) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.closed:
		return ErrQueueClosed
	case w.n == len(w.buf):
		return ErrQueueFull
	}
	w.pushLocked(context.Background(), item)
	return nil
}

// Put adds item, blocking while the queue is full. It returns ctx.Err() once ctx is done,
// or ErrQueueClosed if the queue is (or gets) closed first.
func (w *Watermarks[T]) Put(ctx context.Context, item T) error {
	for {
		w.mu.Lock()
		if w.closed {
			w.mu.Unlock()
			return ErrQueueClosed
		}
		if w.n < len(w.buf) {
			w.pushLocked(ctx, item)
			w.mu.Unlock()
			return nil
		}
		ch := waitChan(&w.notFull)
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Take removes and returns the oldest item without blocking; ok is false when the queue is
// empty. Items left at Close can still be taken.
func (w *Watermarks[T]) Take() (item T, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n == 0 {
		return item, false
	}
	return w.popLocked(context.Background()), true
}

// Get removes and returns the oldest item, blocking while the queue is empty. It returns
// ctx.Err() once ctx is done, or ErrQueueClosed once the queue is closed and empty.
func (w *Watermarks[T]) Get(ctx context.Context) (T, error) {
	for {
		w.mu.Lock()
		if w.n > 0 {
			item := w.popLocked(ctx)
			w.mu.Unlock()
			return item, nil
		}
		if w.closed {
			w.mu.Unlock()
			var zero T
			return zero, ErrQueueClosed
		}
		ch := waitChan(&w.notEmpty)
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			var zero T
			return zero, ctx.Err()
		}
	}
}

// pushLocked and popLocked change the depth in ctx, the caller's (a level change is traced
// as its child).
func (w *Watermarks[T]) pushLocked(ctx context.Context, item T) {
	w.buf[(w.head+w.n)%len(w.buf)] = item
	w.n++
	signal(&w.notEmpty)
	w.checkLocked(ctx)
}

func (w *Watermarks[T]) popLocked(ctx context.Context) T {
	var zero T
	item := w.buf[w.head]
	w.buf[w.head] = zero // let the item be collected
	w.head = (w.head + 1) % len(w.buf)
	w.n--
	signal(&w.notFull)
	w.checkLocked(ctx)
	return item
}

// waitChan returns the broadcast channel *p, creating it; signal closes it.
func waitChan(p *chan struct{}) <-chan struct{} {
	if *p == nil {
		*p = make(chan struct{})
	}
	return *p
}

func signal(p *chan struct{}) {
	if *p != nil {
		close(*p)
		*p = nil
	}
}

// checkLocked signals a change of level after the depth changed: the state machine of the
// Watermarks doc comment.
func (w *Watermarks[T]) checkLocked(ctx context.Context) {
	switch {
	case w.n >= w.high:
		if w.level != LevelHard {
			w.signalLocked(ctx, LevelHard, ReasonHighWatermark)
		}
	case w.n <= w.low:
		if w.level != LevelOK {
			w.signalLocked(ctx, LevelOK, ReasonQueueRecovered)
		}
	case w.level == LevelOK && w.n >= w.soft, // rose through the band above the low mark
		w.level == LevelHard && w.n <= w.soft: // fell through the band below the high mark
		w.signalLocked(ctx, LevelSoft, ReasonAboveLowMark)
	}
}

// traceLevelChange marks a change of level with a span SpanWatermark, a child of ctx's, and
// returns what its event's publish is a child of: that span, or ctx's own context while
// tracing is off.
func (w *Watermarks[T]) traceLevelChange(ctx context.Context, ev Event, reason string) trace.SpanContext {
	tr := w.tracer.Get()
	if tr == nil {
		return causeOf(ctx)
	}
	_, span := tr.Start(ctx, SpanWatermark, internalSpan...)
	if span.IsRecording() {
		span.SetAttributes(AttrCoordinator.String(ev.CoordinatorID), AttrLevel.String(string(ev.Level)), AttrReason.String(reason),
			AttrQueueSize.Int(ev.QueueSize), AttrCapacity.Int(ev.Capacity), AttrSource.String(ev.Source), AttrEventTS.Float64(float64(ev.TS)))
	}
	span.End()
	return span.SpanContext()
}

func (w *Watermarks[T]) signalLocked(ctx context.Context, level Level, reason string) {
	w.level = level
	if w.cfg.Publisher == nil {
		return
	}
	ts := float64(w.cfg.Now().UnixNano()) / 1e9
	if ts <= w.lastTS {
		ts = math.Nextafter(w.lastTS, math.Inf(1))
	}
	w.lastTS = ts
	ev := Event{
		CoordinatorID: w.cfg.CoordinatorID,
		QueueSize:     w.n,
		Capacity:      w.cfg.Capacity,
		Level:         level,
		Source:        w.cfg.Source,
		TS:            envelope.Float(ts),
	}
	env, err := ev.Envelope(map[string]string{
		HeaderReason:      reason,
		HeaderUtilization: fmt.Sprintf("%.6f", float64(w.n)/float64(w.cfg.Capacity)),
	})
	if err != nil { // cannot happen: every field is valid by construction
		w.log.Error("building a feedback event failed", "level", level, "err", err)
		return
	}
	w.seq++
	if len(w.outbox) >= w.cfg.MaxPendingEvents {
		w.dropped++
		w.log.Warn("too many unpublished feedback events; dropping the oldest",
			"max_pending", w.cfg.MaxPendingEvents, "dropped_total", w.dropped)
		w.outbox = append(w.outbox[:0], w.outbox[1:]...)
	}
	w.outbox = append(w.outbox, outboxEvent{seq: w.seq, env: env, cause: w.traceLevelChange(ctx, ev, reason)})
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Pending counts the events not yet published.
func (w *Watermarks[T]) Pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.outbox)
}

// Dropped counts the events dropped unpublished because MaxPendingEvents was exceeded.
func (w *Watermarks[T]) Dropped() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dropped
}

// PublishErr is the error of the last publish attempt, nil once one succeeded.
func (w *Watermarks[T]) PublishErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pubErr
}

// run publishes the outbox in order until Close; failures are retried with backoff.
func (w *Watermarks[T]) run() {
	defer close(w.done)
	retry := backoff.NewExponentialBackOff() // ×1.5 per failure, ±50% jitter
	retry.InitialInterval, retry.MaxInterval = w.cfg.RetryMin, w.cfg.RetryMax
	for {
		w.mu.Lock()
		envs := make([]*envelope.Envelope, len(w.outbox))
		causes := make([]trace.SpanContext, len(w.outbox))
		seqs := make([]uint64, len(w.outbox))
		for i, e := range w.outbox {
			envs[i], causes[i], seqs[i] = e.env, e.cause, e.seq
		}
		w.mu.Unlock()
		if len(envs) == 0 {
			select {
			case <-w.wake:
				continue
			case <-w.closing:
				return
			case <-w.ctx.Done():
				return
			}
		}
		ctx, cancel := context.WithTimeout(w.ctx, w.cfg.PublishTimeout)
		n, err := publishByCause(ctx, w.cfg.Publisher, w.cfg.Stream, envs, causes)
		cancel()
		w.mu.Lock()
		w.pubErr = err
		if n > 0 { // forget what was published
			last, i := seqs[n-1], 0
			for i < len(w.outbox) && w.outbox[i].seq <= last {
				i++
			}
			w.outbox = append(w.outbox[:0], w.outbox[i:]...)
		}
		pending := len(w.outbox)
		w.mu.Unlock()
		if err == nil {
			retry.Reset()
			continue
		}
		if w.ctx.Err() != nil {
			return
		}
		wait := retry.NextBackOff()
		w.log.Warn("publishing feedback events failed; retrying", "pending", pending, "retry_in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-w.ctx.Done():
			t.Stop()
			return
		}
	}
}

// Close closes the queue: Offer and Put fail with ErrQueueClosed (blocked Puts and Gets
// wake), Take and Get still return the items left. It then keeps publishing the pending
// events for up to CloseTimeout and stops the publishing goroutine; the error reports events
// left unpublished. Close is idempotent; later calls return the first call's error.
func (w *Watermarks[T]) Close() error {
	w.closeOnce.Do(func() {
		w.mu.Lock()
		w.closed = true
		signal(&w.notEmpty)
		signal(&w.notFull)
		w.mu.Unlock()
		close(w.closing)
		t := time.NewTimer(w.cfg.CloseTimeout)
		select {
		case <-w.done:
		case <-t.C:
		}
		t.Stop()
		w.cancel()
		<-w.done
		w.mu.Lock()
		defer w.mu.Unlock()
		if n := len(w.outbox); n > 0 {
			cause := w.pubErr
			if cause == nil {
				cause = fmt.Errorf("close timeout %s passed", w.cfg.CloseTimeout)
			}
			w.closeErr = fmt.Errorf("feedback: watermarks: %d feedback event(s) unpublished at close: %w", n, cause)
		}
	})
	return w.closeErr
}
