package feedback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
)

// Publisher publishes envelopes to a logical stream and returns once the broker has them.
// *transport.Bus satisfies it.
type Publisher interface {
	Publish(ctx context.Context, stream string, envs ...*envelope.Envelope) error
}

// Observer records the feedback metrics of CONTRACT.md §8. Implementations must be safe for
// concurrent use and must not block; telemetry.Metrics implements it.
type Observer interface {
	// FeedbackProcessed counts one applied (not stale) event: feedback_events_processed_total.
	FeedbackProcessed(provider, level string)
	// RateScale sets pipeline_rate_scale_factor.
	RateScale(provider string, scale float64)
	// BackpressureState sets pipeline_backpressure_state (0 ok, 1 soft, 2 hard).
	BackpressureState(provider string, state int)
}

// ErrPublish is wrapped by Apply's error when the RateAdjustment its event caused could not
// be published. The rate change itself has been applied.
var ErrPublish = errors.New("feedback: rate adjustment not published")

// DefaultMaxPending bounds the RateAdjustments kept for publishing while the bus is away.
const DefaultMaxPending = 256

// HandlerConfig configures a Handler. The zero value is usable: default policy, its own
// RateCoordinator, no publishing, no metrics, no logs.
type HandlerConfig struct {
	// Policy maps levels to scales; zero fields take their defaults.
	Policy Policy
	// Rates is the coordinator whose provider scale the handler sets; nil means a new one
	// with Policy.Limits(). A caller-supplied coordinator keeps its own limits.
	Rates *RateCoordinator
	// Publisher receives every applied RateAdjustment; nil means none are published.
	Publisher Publisher
	// Stream is where RateAdjustments go; "" means StreamRateAdjustment.
	Stream string
	// Observer records metrics; nil records none.
	Observer Observer
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock for applied-at times, coordinator expiry (Policy.CoordinatorTTL) and
	// RateAdjustment ts; nil means time.Now.
	Now func() time.Time
	// MaxPending bounds the unpublished RateAdjustments kept for retry (oldest dropped
	// first, with a warning); 0 means DefaultMaxPending.
	MaxPending int
}

// Handler applies FeedbackEvents to a provider's rate (DESIGN.md "Feedback semantics"):
//
//   - per coordinator, the event with the greatest ts wins; an older event, or a second one
//     with the same ts, changes nothing and is reported stale;
//   - every coordinator feeds Policy.Provider, and the most backed-up one decides: the
//     provider's scale is the minimum of its coordinators' scales;
//   - each real change of that scale is set on the RateCoordinator and published as a
//     RateAdjustment;
//   - with Policy.CoordinatorTTL > 0, a coordinator whose last event was applied longer ago
//     than the TTL (by the handler's clock, so the Store's clock does not matter) expires: it
//     stays in State, marked expired, but no longer counts toward the minimum. Expiry is
//     checked on every Apply and by Expire, which a running Consumer calls periodically; the
//     change it causes is set and published like any other, with the reason of the remaining
//     minimum (ok when none is left). The coordinator's next event (newer than its last)
//     brings it back.
//
// Publishing failures: the rate change always applies first. The adjustment is kept (up to
// MaxPending) and every later Apply publishes what is kept, in order. Apply returns an error
// wrapping ErrPublish only while the adjustment that its own event caused is unpublished, so
// the delivery is retried; the retry recognises the already-applied event (same coordinator
// and ts), does not apply it again, and succeeds once the adjustment is published. Should
// the retries run out, the transport dead-letters the event although its change applied,
// and the adjustment still goes out with the next publish that works.
//
// A Handler is safe for concurrent use; it starts no goroutines (a Handler used without a
// Consumer and with a TTL must call Expire itself for rates to recover without events).
type Handler struct {
	policy     Policy
	rates      *RateCoordinator
	pub        Publisher
	stream     string
	obs        Observer
	log        *slog.Logger
	now        func() time.Time
	maxPending int

	mu      sync.Mutex
	coords  map[string]*coordState
	pending []pendingAdjustment
	seq     uint64
	dropped uint64

	flushMu sync.Mutex // serialises publishing so adjustments go out in order
}

type coordState struct {
	provider  string
	level     Level
	queueSize int
	capacity  int
	eventTS   float64
	appliedAt time.Time
	expired   bool
}

type pendingAdjustment struct {
	seq         uint64
	env         *envelope.Envelope // kept, so that a retry re-sends the same v2 id
	coordinator string             // the event that caused it; "" for an expiry
	eventTS     float64
}

// rescale is what one change of the provider's coordinators did to its scale.
type rescale struct {
	provider   string
	old, scale float64
	reason     Level
	changed    bool
	expired    []string // coordinators that expired with it
}

// NewHandler returns a Handler; an invalid policy is a *envconf.Error.
func NewHandler(cfg HandlerConfig) (*Handler, error) {
	if err := cfg.Policy.Validate(); err != nil {
		return nil, err
	}
	policy := cfg.Policy.WithDefaults()
	rates := cfg.Rates
	if rates == nil {
		var err error
		if rates, err = NewRateCoordinator(policy.Limits()); err != nil {
			return nil, err
		}
	}
	h := &Handler{
		policy:     policy,
		rates:      rates,
		pub:        cfg.Publisher,
		stream:     cfg.Stream,
		obs:        cfg.Observer,
		log:        cfg.Logger,
		now:        cfg.Now,
		maxPending: cfg.MaxPending,
		coords:     map[string]*coordState{},
	}
	if h.stream == "" {
		h.stream = StreamRateAdjustment
	}
	if !transport.ValidStreamName(h.stream) {
		return nil, fmt.Errorf("feedback: invalid rate adjustment stream %q (accepted: dot-separated tokens of letters, digits, '_' and '-')", h.stream)
	}
	if h.obs == nil {
		h.obs = nopObserver{}
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.maxPending <= 0 {
		h.maxPending = DefaultMaxPending
	}
	h.rates.get(policy.Provider) // the provider shows in State from the start
	return h, nil
}

// Policy is the handler's policy, defaults filled in.
func (h *Handler) Policy() Policy { return h.policy }

// Rates is the coordinator the handler scales; pace the provider's calls with it.
func (h *Handler) Rates() *RateCoordinator { return h.rates }

// Apply applies one event. It returns nil when the event was applied (whether or not the
// scale changed); an error wrapping transport.ErrStale when it was not newer than the
// coordinator's applied event; a poison error (transport.Poison) for an invalid event; an
// error wrapping ErrPublish when the event's RateAdjustment could not be published (see
// Handler). It blocks only while publishing, bounded by ctx.
func (h *Handler) Apply(ctx context.Context, ev Event) error {
	if err := ev.Validate(); err != nil {
		return transport.Poison(ReasonInvalidPayload, err)
	}
	ts := float64(ev.TS)
	provider := h.policy.Provider

	h.mu.Lock()
	if h.causedPendingLocked(ev.CoordinatorID, ts) {
		// A redelivery of an applied event whose adjustment is still unpublished.
		h.mu.Unlock()
		return h.flush(ctx, ev.CoordinatorID, ts)
	}
	prev := h.coords[ev.CoordinatorID]
	if prev != nil && ts <= prev.eventTS {
		h.mu.Unlock()
		err := fmt.Errorf("feedback: event of coordinator %q at ts %v is not newer than the applied one at ts %v: %w",
			ev.CoordinatorID, ts, prev.eventTS, transport.ErrStale)
		if h.hasPending() {
			_ = h.flush(ctx, "", 0) // push the backlog; failures are logged there
		}
		return err
	}
	now := h.now()
	back := prev != nil && prev.expired
	h.coords[ev.CoordinatorID] = &coordState{
		provider:  provider,
		level:     ev.Level,
		queueSize: ev.QueueSize,
		capacity:  ev.Capacity,
		eventTS:   ts,
		appliedAt: now,
	}
	rs, err := h.rescaleLocked(provider, now, ev.CoordinatorID, ts)
	if err != nil {
		h.mu.Unlock()
		return err
	}
	h.obs.FeedbackProcessed(provider, string(ev.Level))
	mustFlush := len(h.pending) > 0
	h.mu.Unlock()

	if back {
		h.log.Info("expired coordinator is back", "coordinator", ev.CoordinatorID, "level", ev.Level, "event_ts", ts)
	}
	h.logRescale(rs, ev, true)
	if !rs.changed {
		h.log.Debug("feedback applied; scale unchanged",
			"provider", provider, "scale", rs.scale, "coordinator", ev.CoordinatorID, "level", ev.Level)
	}
	if !mustFlush {
		return nil
	}
	return h.flush(ctx, ev.CoordinatorID, ts)
}

// Expire applies Policy.CoordinatorTTL at the handler's clock: every coordinator whose last
// event was applied longer ago than the TTL stops counting toward its provider's minimum.
// If that changes the provider's scale, the new scale is set and a RateAdjustment (reason:
// the level of the remaining minimum, ok if none remains) is published. Expire also
// publishes the adjustments kept from failed publishes, so that they go out without waiting
// for an event. It returns an error wrapping ErrPublish when publishing failed (the change
// is applied and the adjustment kept for the next publish). With a TTL of 0 nothing expires.
// It blocks only while publishing, bounded by ctx. A Consumer calls it periodically.
func (h *Handler) Expire(ctx context.Context) error {
	h.mu.Lock()
	var rs rescale
	if h.policy.CoordinatorTTL > 0 {
		var err error
		if rs, err = h.rescaleLocked(h.policy.Provider, h.now(), "", 0); err != nil {
			h.mu.Unlock()
			return err
		}
	}
	mustFlush := len(h.pending) > 0
	h.mu.Unlock()

	h.logRescale(rs, Event{}, false)
	if !mustFlush {
		return nil
	}
	return h.Flush(ctx)
}

// rescaleLocked expires coordinators older than the TTL at now, recomputes provider's
// scale, and sets and enqueues a change, attributed to the event (coordinator, ts) ("" for
// an expiry). It updates the provider's gauges.
func (h *Handler) rescaleLocked(provider string, now time.Time, coordinator string, ts float64) (rescale, error) {
	rs := rescale{provider: provider, expired: h.expireLocked(now)}
	rs.scale, rs.reason = h.decideLocked(provider)
	rs.old = h.rates.Scale(provider)
	rs.changed = rs.scale != rs.old
	if rs.changed {
		if err := h.rates.SetScale(provider, rs.scale); err != nil {
			return rs, err // cannot happen: the policy's scales are validated
		}
		if h.pub != nil {
			adj := RateAdjustment{Provider: provider, Scale: envelope.Float(rs.scale), Reason: rs.reason, TS: unixSeconds(now)}
			env, err := adj.Envelope()
			if err != nil {
				return rs, err // cannot happen: every field is valid
			}
			h.enqueueLocked(pendingAdjustment{env: env, coordinator: coordinator, eventTS: ts})
		}
	}
	if rs.changed || len(rs.expired) > 0 || coordinator != "" {
		h.obs.RateScale(provider, rs.scale)
		h.obs.BackpressureState(provider, rs.reason.State())
	}
	return rs, nil
}

// expireLocked marks the coordinators whose last event was applied more than the TTL before
// now as expired, and returns their ids.
func (h *Handler) expireLocked(now time.Time) []string {
	ttl := h.policy.CoordinatorTTL
	if ttl <= 0 {
		return nil
	}
	var ids []string
	for id, c := range h.coords {
		if !c.expired && now.Sub(c.appliedAt) > ttl {
			c.expired = true
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// logRescale logs the expiries and the change of rs, caused by ev (fromEvent) or by the
// TTL alone.
func (h *Handler) logRescale(rs rescale, ev Event, fromEvent bool) {
	for _, id := range rs.expired {
		h.log.Warn("coordinator expired: no feedback event applied within the TTL; it no longer counts toward the provider's rate",
			"coordinator", id, "provider", rs.provider, "ttl", h.policy.CoordinatorTTL)
	}
	switch {
	case !rs.changed:
	case fromEvent:
		h.log.Info("provider rate adjusted",
			"provider", rs.provider, "scale", rs.scale, "previous_scale", rs.old, "rate", h.rates.Rate(rs.provider),
			"reason", rs.reason, "coordinator", ev.CoordinatorID, "level", ev.Level, "event_ts", float64(ev.TS))
	default:
		h.log.Info("provider rate adjusted after coordinators expired",
			"provider", rs.provider, "scale", rs.scale, "previous_scale", rs.old, "rate", h.rates.Rate(rs.provider),
			"reason", rs.reason)
	}
}

// decideLocked returns provider's scale, the minimum over its unexpired coordinators (1 if
// none), and the level that decided it (the most pressing one among equal scales; ok if
// none).
func (h *Handler) decideLocked(provider string) (float64, Level) {
	scale, reason, found := 1.0, LevelOK, false
	for _, c := range h.coords {
		if c.provider != provider || c.expired {
			continue
		}
		s := h.policy.Scale(c.level)
		if !found || s < scale || s == scale && c.level.State() > reason.State() {
			scale, reason, found = s, c.level, true
		}
	}
	return scale, reason
}

func (h *Handler) enqueueLocked(p pendingAdjustment) {
	h.seq++
	p.seq = h.seq
	if len(h.pending) >= h.maxPending {
		h.dropped++
		h.log.Warn("too many unpublished rate adjustments; dropping the oldest",
			"max_pending", h.maxPending, "dropped_total", h.dropped)
		h.pending = append(h.pending[:0], h.pending[1:]...)
	}
	h.pending = append(h.pending, p)
}

func (h *Handler) causedPendingLocked(coordinator string, ts float64) bool {
	for _, p := range h.pending {
		if p.coordinator == coordinator && p.eventTS == ts {
			return true
		}
	}
	return false
}

func (h *Handler) hasPending() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.pending) > 0
}

// flush publishes every pending adjustment. It returns an error only when publishing failed
// and an adjustment caused by the event (coordinator, ts) is still pending; other failures
// are logged.
func (h *Handler) flush(ctx context.Context, coordinator string, ts float64) error {
	err := h.publishPending(ctx)
	if err == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.log.Warn("publishing rate adjustments failed; the rate change is applied and the adjustment kept for retry",
		"stream", h.stream, "pending", len(h.pending), "err", err)
	if coordinator != "" && h.causedPendingLocked(coordinator, ts) {
		return fmt.Errorf("%w to %s (kept for retry, %d pending): %w", ErrPublish, h.stream, len(h.pending), err)
	}
	return nil
}

// publishPending publishes the pending adjustments, in order, in one batch and forgets them
// once the publisher has them.
func (h *Handler) publishPending(ctx context.Context) error {
	h.flushMu.Lock()
	defer h.flushMu.Unlock()
	h.mu.Lock()
	if len(h.pending) == 0 {
		h.mu.Unlock()
		return nil
	}
	envs := make([]*envelope.Envelope, len(h.pending))
	for i, p := range h.pending {
		envs[i] = p.env
	}
	last := h.pending[len(h.pending)-1].seq
	h.mu.Unlock()

	if err := h.pub.Publish(ctx, h.stream, envs...); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	// Forget what was published; entries dropped meanwhile are gone already.
	i := 0
	for i < len(h.pending) && h.pending[i].seq <= last {
		i++
	}
	h.pending = append(h.pending[:0], h.pending[i:]...)
	return nil
}

// Flush publishes the adjustments kept after failed publishes, in order. Its error wraps
// ErrPublish. It blocks while publishing, bounded by ctx.
func (h *Handler) Flush(ctx context.Context) error {
	if err := h.publishPending(ctx); err != nil {
		return fmt.Errorf("%w to %s: %w", ErrPublish, h.stream, err)
	}
	return nil
}

// State is the handler's view for /state (CONTRACT.md §7).
type State struct {
	// Providers maps each provider to its pacing.
	Providers map[string]ProviderState `json:"providers"`
	// Coordinators maps each coordinator id to its last applied event.
	Coordinators map[string]CoordinatorState `json:"coordinators"`
	// PendingAdjustments counts applied RateAdjustments not yet published.
	PendingAdjustments int `json:"pending_adjustments"`
	// DroppedAdjustments counts RateAdjustments dropped unpublished (MaxPending exceeded).
	DroppedAdjustments uint64 `json:"dropped_adjustments"`
}

// CoordinatorState is one coordinator's last applied event, and whether it expired.
type CoordinatorState struct {
	Provider  string    `json:"provider"`
	Level     Level     `json:"level"`
	QueueSize int       `json:"queue_size"`
	Capacity  int       `json:"capacity"`
	EventTS   float64   `json:"event_ts"`
	AppliedAt time.Time `json:"applied_at"`
	// Expired is true once the coordinator has gone longer than Policy.CoordinatorTTL
	// without an event: it no longer counts toward the provider's rate.
	Expired bool `json:"expired"`
}

// State returns a snapshot; its maps are the caller's.
func (h *Handler) State() State {
	h.mu.Lock()
	coords := make(map[string]CoordinatorState, len(h.coords))
	for id, c := range h.coords {
		coords[id] = CoordinatorState{
			Provider:  c.provider,
			Level:     c.level,
			QueueSize: c.queueSize,
			Capacity:  c.capacity,
			EventTS:   c.eventTS,
			AppliedAt: c.appliedAt,
			Expired:   c.expired,
		}
	}
	st := State{Coordinators: coords, PendingAdjustments: len(h.pending), DroppedAdjustments: h.dropped}
	h.mu.Unlock()
	st.Providers = h.rates.Snapshot()
	return st
}

func unixSeconds(t time.Time) envelope.Float { return envelope.Float(float64(t.UnixNano()) / 1e9) }

type nopObserver struct{}

func (nopObserver) FeedbackProcessed(string, string) {}
func (nopObserver) RateScale(string, float64)        {}
func (nopObserver) BackpressureState(string, int)    {}
