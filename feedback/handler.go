package feedback

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/internal/tracing"
	"github.com/pulse-bus/pulse/transport"
)

// Publisher publishes envelopes to a logical stream and returns once the broker has them.
// *transport.Bus satisfies it.
type Publisher interface {
	Publish(ctx context.Context, stream string, envs ...*envelope.Envelope) error
}

// Observer records the feedback metrics of docs/contract.md. Implementations must be safe for
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

// ErrSave is wrapped by Apply's error when the state its event changed could not be saved
// to the StateStore. The rate change itself has been applied.
var ErrSave = errors.New("feedback: loop state not saved")

// EvictionObserver is implemented by an Observer that counts forgotten coordinators
// (feedback_coordinators_evicted_total); telemetry.Metrics does.
type EvictionObserver interface {
	CoordinatorEvicted(provider string)
}

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
	// State keeps the loop's state where restarts and replicas find it (see Handler); nil
	// keeps it in this process only.
	State StateStore
	// TracerProvider makes the handler's spans (SpanApply, SpanExpire, with the rate change
	// as attributes); nil means the global one, a no-op unless the program sets one. The
	// RateAdjustments an event causes are published in its span, and so in the trace of the
	// delivery it came in.
	TracerProvider trace.TracerProvider
}

// Handler applies FeedbackEvents to a provider's rate (the loop of docs/design.md):
//
//   - per coordinator, the newest event wins and an event that is not newer changes nothing
//     and is reported stale (see "Which event is newer" below);
//   - every coordinator feeds Policy.Provider, and the most backed-up one decides: the
//     provider's scale is the minimum of its coordinators' scales;
//   - each real change of that scale is set on the RateCoordinator and published as a
//     RateAdjustment;
//   - an event whose ts is more than Policy.MaxClockSkew ahead of the handler's clock is
//     poison (ReasonClockSkew): dead-lettered, it changes nothing;
//   - with Policy.CoordinatorTTL > 0, a coordinator whose last event was applied longer ago
//     than the TTL (by the handler's clock, so the Store's clock does not matter) expires: it
//     stays in State, marked expired, but no longer counts toward the minimum. Expiry is
//     checked on every Apply and by Expire, which a running Consumer calls periodically; the
//     change it causes is set and published like any other, with the reason of the remaining
//     minimum (ok when none is left). The coordinator's next event (newer than its last)
//     brings it back.
//
// # Which event is newer
//
// A producer's clock alone cannot order events: one event stamped in the year 3000 would
// make every later one look older, and a Store whose clock steps back (an NTP step, a VM
// restored) would be ignored for as long as the step. So an event delivered with its place
// in the broker's order (Origin.Position, as ApplyFrom and HandleDelivery get it) is newer
// than the coordinator's applied event when:
//
//   - the broker stored it later (an equal or earlier Position is a redelivery, or an older
//     message: stale), and
//   - its ts is not one of the coordinator's last RecentEvents applied events (a copy of an
//     event already applied — a replay of captured bytes — is stale), and
//   - its ts is greater, or, when it is not, the Store's clock stepped back: the event is
//     applied unless it is stamped before every one of the RecentEvents remembered (too old
//     to be told from a replay of an event since forgotten: stale).
//
// A message re-published from a dead-letter stream (Origin.Replayed) has lost its place in
// the broker's order, and an event applied with Apply has none: such an event is newer only
// when its ts is greater (and it is not a remembered one).
//
// # Bounds
//
// At most Policy.MaxCoordinators coordinators are tracked. A new one beyond that makes the
// handler forget the longest-silent expired coordinator, else the longest-silent ok one,
// else soft, else hard: forgetting never lifts a rate while a coordinator that holds it lower
// can be kept. Forgotten coordinators are counted (State.CoordinatorsEvicted). Every event
// costs the same whatever the number of coordinators: the minimum, expiry and eviction use
// one list per level, not a walk over all of them.
//
// # State that outlives the process
//
// With a StateStore (HandlerConfig.State), every applied event's coordinator state is saved
// before Apply returns, and Restore reads it back: a restarted handler, or a replica started
// later, resumes at the provider's current rate without waiting for any Store to send again
// (Stores send only when their level changes). Saving never puts an older event over a newer
// one another replica saved. When saving fails, the change applies anyway and Apply returns
// an error wrapping ErrSave, so the delivery is retried; the retry (same coordinator and ts)
// saves without applying again.
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
	store      StateStore
	tracer     *tracing.Tracer

	mu      sync.Mutex
	coords  coordSet
	pending []pendingAdjustment
	seq     uint64
	dropped uint64
	evicted uint64
	gen     uint64              // counts changes, for coordState.dirty
	dirty   map[string]struct{} // coordinators with a change not yet saved
	forget  []forgotten         // forgotten coordinators whose record is still to be deleted

	flushMu  sync.Mutex  // serialises publishing so adjustments go out in order
	saveMu   sync.Mutex  // serialises saving so a coordinator's records go out in order
	restored atomic.Bool // Restore succeeded once
}

type forgotten struct {
	id  string
	rev uint64
}

// maxForget bounds the forgotten coordinators whose records wait to be deleted; beyond it
// the oldest are left in the store, and Restore forgets them again.
const maxForget = 1024

// Origin is where an event stood in the broker's order; see Handler.
type Origin struct {
	// Position is the delivery's transport.Position; zero when unknown.
	Position transport.Position
	// Replayed is true for a message re-published from a dead-letter stream.
	Replayed bool
}

type pendingAdjustment struct {
	seq         uint64
	env         *envelope.Envelope // kept, so that a retry re-sends the same v2 id
	coordinator string             // the event that caused it; "" for an expiry
	eventTS     float64
	cause       trace.SpanContext // the span it was caused in, which its publish is a child of
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
		store:      cfg.State,
		tracer:     tracing.New(cfg.TracerProvider, TracerName),
		coords:     newCoordSet(),
		dirty:      map[string]struct{}{},
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

// Apply applies one event whose place in the broker's order is unknown (see Handler: it is
// newer only when its ts is). It returns nil when the event was applied (whether or not the
// scale changed); an error wrapping transport.ErrStale when it was not newer than the
// coordinator's applied event; a poison error (transport.Poison) for an invalid event or one
// stamped too far ahead; an error wrapping ErrSave or ErrPublish when the state it changed
// could not be saved or its RateAdjustment published (see Handler). It blocks only while
// saving and publishing, bounded by ctx.
func (h *Handler) Apply(ctx context.Context, ev Event) error { return h.ApplyFrom(ctx, ev, Origin{}) }

// HandleDelivery decodes the FeedbackEvent a delivery carries and applies it at the
// delivery's place in the broker's order: it is the transport.Handler of a feedback
// subscription (a payload of another schema is poison).
func (h *Handler) HandleDelivery(ctx context.Context, d *transport.Delivery) error {
	ev, err := DecodeEvent(d)
	if err != nil {
		return err
	}
	return h.ApplyFrom(ctx, ev, Origin{Position: d.Position, Replayed: d.Replayed})
}

// ApplyFrom applies one event from origin, with Apply's results. While tracing it does so in
// a span SpanApply, a child of ctx's (the delivery's process span), with the event and the
// rate change it caused as attributes; the RateAdjustment is published as its child.
func (h *Handler) ApplyFrom(ctx context.Context, ev Event, o Origin) (err error) {
	ctx, span := h.startApply(ctx, ev)
	defer func() { endApply(span, err) }()
	return h.applyFrom(ctx, span, ev, o)
}

// startApply starts the span of applying ev; nil while tracing is off.
func (h *Handler) startApply(ctx context.Context, ev Event) (context.Context, trace.Span) {
	tr := h.tracer.Get()
	if tr == nil {
		return ctx, nil
	}
	ctx, span := tr.Start(ctx, SpanApply, internalSpan...)
	if span.IsRecording() {
		span.SetAttributes(AttrCoordinator.String(ev.CoordinatorID), AttrLevel.String(string(ev.Level)),
			AttrQueueSize.Int(ev.QueueSize), AttrCapacity.Int(ev.Capacity), AttrSource.String(ev.Source),
			AttrEventTS.Float64(float64(ev.TS)), AttrApplied.Bool(false))
	}
	return ctx, span
}

// endApply ends the apply span: an event that is stale is no error (it changed nothing, as
// designed); any other error is.
func endApply(span trace.Span, err error) {
	if errors.Is(err, transport.ErrStale) {
		err = nil
	}
	endSpan(span, err)
}

func (h *Handler) applyFrom(ctx context.Context, span trace.Span, ev Event, o Origin) error {
	if err := ev.Validate(); err != nil {
		return transport.Poison(ReasonInvalidPayload, err)
	}
	ts := float64(ev.TS)
	now := h.now()
	if ahead := ts - float64(unixSeconds(now)); ahead > h.policy.MaxClockSkew.Seconds() {
		return transport.Poison(ReasonClockSkew, fmt.Errorf(
			"feedback: event of coordinator %q at ts %v is %.0fs ahead of this consumer's clock (accepted: at most %s=%s ahead)",
			ev.CoordinatorID, ts, ahead, EnvMaxClockSkew, h.policy.MaxClockSkew))
	}
	provider := h.policy.Provider

	h.mu.Lock()
	if h.causedPendingLocked(ev.CoordinatorID, ts) || h.unsavedLocked(ev.CoordinatorID, ts) {
		// A redelivery of an applied event whose state or adjustment is not out yet.
		h.mu.Unlock()
		return h.settle(ctx, ev.CoordinatorID, ts)
	}
	prev := h.coords.get(ev.CoordinatorID)
	stepBack, prevTS := false, 0.0
	if prev != nil {
		newer, why := prev.supersededBy(ts, o)
		if !newer {
			appliedTS := prev.eventTS
			h.mu.Unlock()
			err := fmt.Errorf("feedback: event of coordinator %q at ts %v is not newer than the applied one at ts %v: %s: %w",
				ev.CoordinatorID, ts, appliedTS, why, transport.ErrStale)
			if why == whyReplay || why == whyTooOld {
				h.log.Warn("feedback event not applied", "coordinator", ev.CoordinatorID, "level", ev.Level, "event_ts", ts, "applied_ts", appliedTS, "why", why)
			}
			if h.hasPending() {
				_ = h.flush(ctx, "", 0) // push the backlog; failures are logged there
			}
			return err
		}
		stepBack, prevTS = ts <= prev.eventTS, prev.eventTS
	}
	back := prev != nil && prev.expired
	c := prev
	if c == nil {
		h.makeRoomLocked()
		c = &coordState{id: ev.CoordinatorID}
	}
	c.level, c.queueSize, c.capacity, c.source = ev.Level, ev.QueueSize, ev.Capacity, ev.Source
	c.eventTS, c.appliedAt, c.position, c.expired = ts, now, o.Position, false
	c.remember(ts)
	if prev == nil {
		h.coords.add(c)
	} else {
		h.coords.touched(c)
	}
	h.markDirtyLocked(c)
	rs, err := h.rescaleLocked(provider, now, ev.CoordinatorID, ts, true, causeOf(ctx))
	if err != nil {
		h.mu.Unlock()
		return err
	}
	h.obs.FeedbackProcessed(provider, string(ev.Level))
	h.mu.Unlock()
	if recording(span) {
		span.SetAttributes(append(h.rescaleAttrs(rs), AttrApplied.Bool(true))...)
	}

	if back {
		h.log.Info("expired coordinator is back", "coordinator", ev.CoordinatorID, "level", ev.Level, "event_ts", ts)
	}
	if stepBack {
		h.log.Info("feedback event applied although stamped before the applied one: the Store's clock stepped back",
			"coordinator", ev.CoordinatorID, "level", ev.Level, "event_ts", ts, "previous_ts", prevTS)
	}
	h.logRescale(rs, ev, true)
	if !rs.changed {
		h.log.Debug("feedback applied; scale unchanged",
			"provider", provider, "scale", rs.scale, "coordinator", ev.CoordinatorID, "level", ev.Level)
	}
	return h.settle(ctx, ev.CoordinatorID, ts)
}

// Why an event is not newer (see coordState.supersededBy).
const (
	whyEarlier = "the broker stored it before the applied one (a redelivery, or an older message)"
	whyReplay  = "it repeats an event already applied (a replay)"
	whyTooOld  = "it is stamped before every one of the coordinator's remembered events, so it cannot be told from a replay"
	whyOlderTS = "it is stamped no later, and its place in the broker's order is unknown"
)

// supersededBy reports whether an event stamped ts from o is newer than c's applied event,
// and why not (see Handler).
func (c *coordState) supersededBy(ts float64, o Origin) (bool, string) {
	byBroker := !o.Position.IsZero() && !c.position.IsZero() && !o.Replayed
	switch {
	case byBroker && o.Position.Compare(c.position) <= 0:
		return false, whyEarlier
	case c.applied(ts):
		return false, whyReplay
	case ts > c.eventTS:
		return true, ""
	case !byBroker:
		return false, whyOlderTS
	case len(c.recent) == RecentEvents && ts < c.oldestRecent():
		return false, whyTooOld
	}
	return true, "" // stored later, stamped earlier: the Store's clock stepped back
}

// settle saves what the event of (coordinator, ts) changed and publishes the pending
// adjustments; its error wraps ErrSave or ErrPublish while the event's own change is not out.
func (h *Handler) settle(ctx context.Context, coordinator string, ts float64) error {
	if h.store != nil {
		if err := h.save(ctx, coordinator); err != nil {
			h.log.Warn("saving the loop state failed; the rate change is applied and the save retried", "coordinator", coordinator, "err", err)
			return fmt.Errorf("%w (coordinator %q): %w", ErrSave, coordinator, err)
		}
	}
	if !h.hasPending() {
		return nil
	}
	return h.flush(ctx, coordinator, ts)
}

// unsavedLocked reports whether coordinator's applied event is the one stamped ts and its
// state is not saved yet.
func (h *Handler) unsavedLocked(coordinator string, ts float64) bool {
	c := h.coords.get(coordinator)
	return c != nil && c.dirty != 0 && c.eventTS == ts
}

func (h *Handler) markDirtyLocked(c *coordState) {
	if h.store == nil {
		return
	}
	h.gen++
	c.dirty = h.gen
	h.dirty[c.id] = struct{}{}
}

// makeRoomLocked forgets coordinators (see Handler, Bounds) until a new one fits.
func (h *Handler) makeRoomLocked() {
	for h.coords.len() >= h.policy.MaxCoordinators {
		v := h.coords.victim()
		h.coords.drop(v)
		delete(h.dirty, v.id)
		h.evicted++
		if h.store != nil && v.rev != 0 {
			if len(h.forget) == maxForget {
				h.forget = h.forget[1:]
			}
			h.forget = append(h.forget, forgotten{id: v.id, rev: v.rev})
		}
		if eo, ok := h.obs.(EvictionObserver); ok {
			eo.CoordinatorEvicted(h.policy.Provider)
		}
		if isPowerOf10(h.evicted) {
			h.log.Warn("too many coordinators; forgetting the longest-silent one of the least pressing level",
				"max_coordinators", h.policy.MaxCoordinators, "forgotten", v.id, "level", v.level, "expired", v.expired, "evicted_total", h.evicted)
		}
	}
}

func isPowerOf10(n uint64) bool {
	for n >= 10 && n%10 == 0 {
		n /= 10
	}
	return n == 1
}

// save writes coordinator's unsaved state to the store, and deletes the records of
// forgotten coordinators.
func (h *Handler) save(ctx context.Context, coordinator string) error {
	h.saveMu.Lock()
	defer h.saveMu.Unlock()
	h.mu.Lock()
	forget := h.forget
	h.forget = nil
	c := h.coords.get(coordinator)
	var rec CoordinatorRecord
	var rev, gen uint64
	if c != nil && c.dirty != 0 {
		rec, rev, gen = c.record(), c.rev, c.dirty
	}
	h.mu.Unlock()

	for i, f := range forget {
		if err := h.store.Delete(ctx, f.id, f.rev); err != nil {
			h.mu.Lock()
			h.forget = append(forget[i:], h.forget...)
			if len(h.forget) > maxForget {
				h.forget = h.forget[len(h.forget)-maxForget:]
			}
			h.mu.Unlock()
			h.log.Warn("could not delete a forgotten coordinator's state; retrying later", "coordinator", f.id, "err", err)
			break
		}
	}
	if gen == 0 {
		return nil
	}
	n, err := h.store.Save(ctx, rec, rev)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.coords.get(coordinator) == c {
		c.rev = n
		if c.dirty == gen {
			c.dirty = 0
			delete(h.dirty, coordinator)
		}
	}
	return nil
}

// saveAll saves every coordinator with unsaved state; its error wraps ErrSave.
func (h *Handler) saveAll(ctx context.Context) error {
	if h.store == nil {
		return nil
	}
	h.mu.Lock()
	ids := make([]string, 0, len(h.dirty)+1)
	for id := range h.dirty {
		ids = append(ids, id)
	}
	if len(ids) == 0 && len(h.forget) > 0 {
		ids = append(ids, "") // deletions only
	}
	h.mu.Unlock()
	for _, id := range ids {
		if err := h.save(ctx, id); err != nil {
			return fmt.Errorf("%w: %w", ErrSave, err)
		}
	}
	return nil
}

// record is c's stored form.
func (c *coordState) record() CoordinatorRecord {
	r := CoordinatorRecord{
		Coordinator: c.id, Level: c.level, QueueSize: c.queueSize, Capacity: c.capacity, Source: c.source,
		EventTS: c.eventTS, AppliedAt: c.appliedAt, Recent: encodeRecent(c.recent),
	}
	if !c.position.IsZero() {
		r.Position = c.position.String()
	}
	return r
}

// fromRecord is the coordinator a stored record describes.
func fromRecord(r CoordinatorRecord, rev uint64) *coordState {
	pos, _ := transport.ParsePosition(r.Position) // validated by Load
	return &coordState{
		id: r.Coordinator, level: r.Level, queueSize: r.QueueSize, capacity: r.Capacity, source: r.Source,
		eventTS: r.EventTS, appliedAt: r.AppliedAt, position: pos, recent: decodeRecent(r.Recent), rev: rev,
	}
}

// Restore reads the loop's state back from the StateStore: every stored coordinator whose
// record is newer than what the handler holds of it (all of them, before the first event)
// is adopted, expiry is applied at the handler's clock and the provider's scale set from the
// result — without publishing a RateAdjustment, as nothing new happened. When the store holds
// more than Policy.MaxCoordinators, the most pressing are kept (hard, soft, ok; the most
// recently applied first) and the others forgotten. It returns how many coordinators were
// adopted; without a StateStore it does nothing. It blocks while reading, bounded by ctx.
func (h *Handler) Restore(ctx context.Context) (int, error) {
	if h.store == nil {
		return 0, nil
	}
	type loaded struct {
		rec CoordinatorRecord
		rev uint64
	}
	var recs []loaded
	skipped, err := h.store.Load(ctx, func(rec CoordinatorRecord, rev uint64) error {
		recs = append(recs, loaded{rec, rev})
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("feedback: restore the loop state: %w", err)
	}
	slices.SortFunc(recs, func(a, b loaded) int {
		if c := cmp.Compare(classOf(b.rec.Level), classOf(a.rec.Level)); c != 0 {
			return c
		}
		return b.rec.AppliedAt.Compare(a.rec.AppliedAt)
	})
	h.mu.Lock()
	adopted := 0
	for i, l := range recs {
		if i >= h.policy.MaxCoordinators {
			if len(h.forget) < maxForget {
				h.forget = append(h.forget, forgotten{id: l.rec.Coordinator, rev: l.rev})
			}
			continue
		}
		cur := h.coords.get(l.rec.Coordinator)
		if cur != nil && !l.rec.NewerThan(cur.record()) {
			continue
		}
		if cur != nil {
			h.coords.drop(cur)
			delete(h.dirty, cur.id)
		}
		h.coords.restore(fromRecord(l.rec, l.rev))
		adopted++
	}
	rs, err := h.rescaleLocked(h.policy.Provider, h.now(), "", 0, false, trace.SpanContext{})
	forgetting := len(h.forget)
	h.mu.Unlock()
	if err != nil {
		return adopted, err
	}
	h.restored.Store(true)
	h.log.Info("loop state restored", "coordinators", adopted, "unreadable_records", skipped, "forgetting", forgetting,
		"provider", rs.provider, "scale", rs.scale, "rate", h.rates.Rate(rs.provider), "reason", rs.reason)
	if forgetting > 0 {
		if err := h.saveAll(ctx); err != nil {
			h.log.Warn("could not delete the state of coordinators beyond the limit; retrying later", "err", err)
		}
	}
	return adopted, nil
}

// Restored reports whether Restore has succeeded (always false without a StateStore).
func (h *Handler) Restored() bool { return h.restored.Load() }

// Expire applies Policy.CoordinatorTTL at the handler's clock: every coordinator whose last
// event was applied longer ago than the TTL stops counting toward its provider's minimum.
// If that changes the provider's scale, the new scale is set and a RateAdjustment (reason:
// the level of the remaining minimum, ok if none remains) is published. Expire also saves
// the state and publishes the adjustments kept from failed saves and publishes, so that they
// go out without waiting for an event. It returns an error wrapping ErrSave or ErrPublish
// when that failed (the change is applied and kept for the next try). With a TTL of 0 nothing
// expires. It blocks only while saving and publishing, bounded by ctx. A Consumer calls it
// periodically.
//
// An expiry that changes the rate is traced in a span SpanExpire, a child of ctx's, with the
// rate change as attributes; its RateAdjustment is published as its child.
func (h *Handler) Expire(ctx context.Context) (err error) {
	h.mu.Lock()
	var rs rescale
	seq := h.seq
	if h.policy.CoordinatorTTL > 0 {
		if rs, err = h.rescaleLocked(h.policy.Provider, h.now(), "", 0, true, causeOf(ctx)); err != nil {
			h.mu.Unlock()
			return err
		}
	}
	mustFlush := len(h.pending) > 0
	h.mu.Unlock()

	if rs.changed {
		var span trace.Span
		ctx, span = h.startExpire(ctx, rs, seq)
		defer func() { endSpan(span, err) }()
	}
	h.logRescale(rs, Event{}, false)
	if err := h.saveAll(ctx); err != nil {
		return err
	}
	if !mustFlush {
		return nil
	}
	return h.Flush(ctx)
}

// startExpire starts the span of an expiry that changed the rate (rs) and makes it the cause
// of the adjustments enqueued after seq; nil while tracing is off.
func (h *Handler) startExpire(ctx context.Context, rs rescale, seq uint64) (context.Context, trace.Span) {
	tr := h.tracer.Get()
	if tr == nil {
		return ctx, nil
	}
	ctx, span := tr.Start(ctx, SpanExpire, internalSpan...)
	if span.IsRecording() {
		span.SetAttributes(h.rescaleAttrs(rs)...)
	}
	h.mu.Lock()
	for i := range h.pending {
		if h.pending[i].seq > seq {
			h.pending[i].cause = span.SpanContext()
		}
	}
	h.mu.Unlock()
	return ctx, span
}

// rescaleLocked expires coordinators older than the TTL at now, recomputes provider's
// scale, and sets it; a change is enqueued for publishing (when publish is set), attributed
// to the event (coordinator, ts) ("" for an expiry) and to the span it was caused in. It
// updates the provider's gauges.
func (h *Handler) rescaleLocked(provider string, now time.Time, coordinator string, ts float64, publish bool, cause trace.SpanContext) (rescale, error) {
	rs := rescale{provider: provider, expired: h.expireLocked(now)}
	rs.scale, rs.reason = h.coords.minimum(h.policy)
	rs.old = h.rates.Scale(provider)
	rs.changed = rs.scale != rs.old
	if rs.changed {
		if err := h.rates.SetScale(provider, rs.scale); err != nil {
			return rs, err // cannot happen: the policy's scales are validated
		}
		if h.pub != nil && publish {
			adj := RateAdjustment{Provider: provider, Scale: envelope.Float(rs.scale), Reason: rs.reason, TS: unixSeconds(now)}
			env, err := adj.Envelope()
			if err != nil {
				return rs, err // cannot happen: every field is valid
			}
			h.enqueueLocked(pendingAdjustment{env: env, coordinator: coordinator, eventTS: ts, cause: cause})
		}
	}
	if rs.changed || len(rs.expired) > 0 || coordinator != "" || !publish {
		h.obs.RateScale(provider, rs.scale)
		h.obs.BackpressureState(provider, rs.reason.State())
	}
	return rs, nil
}

// expireLocked marks the coordinators whose last event was applied more than the TTL before
// now as expired, and returns their ids, oldest first.
func (h *Handler) expireLocked(now time.Time) []string {
	if h.policy.CoordinatorTTL <= 0 {
		return nil
	}
	return h.coords.expire(now, h.policy.CoordinatorTTL)
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

// publishPending publishes the pending adjustments, in order — in one batch, or one per run
// of adjustments with the same cause, each in its cause's trace (publishByCause) — and
// forgets each once the publisher has it.
func (h *Handler) publishPending(ctx context.Context) error {
	h.flushMu.Lock()
	defer h.flushMu.Unlock()
	h.mu.Lock()
	if len(h.pending) == 0 {
		h.mu.Unlock()
		return nil
	}
	envs := make([]*envelope.Envelope, len(h.pending))
	causes := make([]trace.SpanContext, len(h.pending))
	seqs := make([]uint64, len(h.pending))
	for i, p := range h.pending {
		envs[i], causes[i], seqs[i] = p.env, p.cause, p.seq
	}
	h.mu.Unlock()

	n, err := publishByCause(ctx, h.pub, h.stream, envs, causes)
	if n > 0 {
		h.mu.Lock()
		// Forget what was published; entries dropped meanwhile are gone already.
		last, i := seqs[n-1], 0
		for i < len(h.pending) && h.pending[i].seq <= last {
			i++
		}
		h.pending = append(h.pending[:0], h.pending[i:]...)
		h.mu.Unlock()
	}
	return err
}

// Flush publishes the adjustments kept after failed publishes, in order. Its error wraps
// ErrPublish. It blocks while publishing, bounded by ctx.
func (h *Handler) Flush(ctx context.Context) error {
	if err := h.publishPending(ctx); err != nil {
		return fmt.Errorf("%w to %s: %w", ErrPublish, h.stream, err)
	}
	return nil
}

// State is the handler's view for /state (docs/contract.md).
type State struct {
	// Providers maps each provider to its pacing.
	Providers map[string]ProviderState `json:"providers"`
	// Coordinators maps coordinator ids to their last applied event: all of them from
	// State, the most pressing ones from StateN.
	Coordinators map[string]CoordinatorState `json:"coordinators"`
	// CoordinatorsTracked counts the tracked coordinators (at most Policy.MaxCoordinators),
	// shown in Coordinators or not.
	CoordinatorsTracked int `json:"coordinators_tracked"`
	// CoordinatorsEvicted counts coordinators forgotten to keep within
	// Policy.MaxCoordinators.
	CoordinatorsEvicted uint64 `json:"coordinators_evicted"`
	// UnsavedCoordinators counts coordinators whose state the StateStore does not have yet.
	UnsavedCoordinators int `json:"unsaved_coordinators"`
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
	// Position is the applied event's place in the broker's order (transport.Position),
	// "" when unknown.
	Position string `json:"position,omitempty"`
	// Expired is true once the coordinator has gone longer than Policy.CoordinatorTTL
	// without an event: it no longer counts toward the provider's rate.
	Expired bool `json:"expired"`
}

// State returns a snapshot with every tracked coordinator; its maps are the caller's.
func (h *Handler) State() State { return h.StateN(h.policy.MaxCoordinators) }

// StateN returns a snapshot with at most max coordinators, the most pressing first: hard,
// soft, ok, then expired, the most recently applied first within each. Its maps are the
// caller's.
func (h *Handler) StateN(max int) State {
	h.mu.Lock()
	coords := make(map[string]CoordinatorState, min(max, h.coords.len()))
	h.coords.pressing(max, func(c *coordState) {
		cs := CoordinatorState{
			Provider:  h.policy.Provider,
			Level:     c.level,
			QueueSize: c.queueSize,
			Capacity:  c.capacity,
			EventTS:   c.eventTS,
			AppliedAt: c.appliedAt,
			Expired:   c.expired,
		}
		if !c.position.IsZero() {
			cs.Position = c.position.String()
		}
		coords[c.id] = cs
	})
	st := State{
		Coordinators:        coords,
		CoordinatorsTracked: h.coords.len(),
		CoordinatorsEvicted: h.evicted,
		UnsavedCoordinators: len(h.dirty),
		PendingAdjustments:  len(h.pending),
		DroppedAdjustments:  h.dropped,
	}
	h.mu.Unlock()
	st.Providers = h.rates.Snapshot()
	return st
}

func unixSeconds(t time.Time) envelope.Float { return envelope.Float(float64(t.UnixNano()) / 1e9) }

type nopObserver struct{}

func (nopObserver) FeedbackProcessed(string, string) {}
func (nopObserver) RateScale(string, float64)        {}
func (nopObserver) BackpressureState(string, int)    {}
