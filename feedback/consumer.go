package feedback

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/transport"
)

// Environment variables read by ConsumerConfigFromEnv.
const (
	// EnvFeedbackStream names the stream the consumer reads (docs/contract.md §1).
	EnvFeedbackStream = "PULSE_FEEDBACK_STREAM"
	// EnvSharedGroup, when true, makes every replica join PULSE_GROUP itself, so that the
	// replicas share (split) the feedback events instead of each seeing all of them.
	EnvSharedGroup = "PULSE_FEEDBACK_SHARED_GROUP"
)

// GroupSeparator joins PULSE_GROUP and PULSE_CONSUMER_NAME into a replica's own group name.
const GroupSeparator = "-"

// Bounds of the interval at which a running Consumer applies Policy.CoordinatorTTL, when
// ConsumerConfig.ExpiryInterval does not set it: a quarter of the TTL, within these bounds.
// A rate thus recovers at most MaxExpiryInterval after its coordinator's TTL passed.
const (
	MinExpiryInterval = 10 * time.Millisecond
	MaxExpiryInterval = time.Second
)

// expiryTimeout bounds one periodic Handler.Expire (its publish).
const expiryTimeout = 5 * time.Second

// ConsumerConfig configures a Consumer. The zero value reads StreamFeedback in a group of
// this replica's own.
type ConsumerConfig struct {
	// Stream is the logical stream to read (PULSE_FEEDBACK_STREAM); "" means StreamFeedback.
	// Beside the Python core, which namespaces the stream name itself, it is
	// "mdp.telemetry.feedback".
	Stream string
	// Group overrides the consumer group. "" derives it (see ReplicaGroup).
	Group string
	// Consumer is this member's name; "" means the bus's (PULSE_CONSUMER_NAME).
	Consumer string
	// SharedGroup (PULSE_FEEDBACK_SHARED_GROUP) opts in to one group for all replicas, the
	// bus's PULSE_GROUP: each event then reaches one replica only.
	SharedGroup bool
	// ExpiryInterval is how often, while the consumer runs, it calls Handler.Expire so that a
	// coordinator that stopped sending expires (Policy.CoordinatorTTL) without waiting for
	// another event; 0 means a quarter of the TTL, between MinExpiryInterval and
	// MaxExpiryInterval. Unused when the handler's TTL is 0.
	ExpiryInterval time.Duration
	// PresenceInterval is how often the running consumer renews its registration in the
	// bus's ReplicaBucket, by which two processes reading as the same member of the same
	// group (and so splitting the events) find out; 0 means DefaultPresenceInterval.
	PresenceInterval time.Duration
	// DisablePresence turns the registration off.
	DisablePresence bool
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
}

// ConsumerConfigFromEnv reads PULSE_FEEDBACK_STREAM and PULSE_FEEDBACK_SHARED_GROUP through
// lookup; PULSE_GROUP and PULSE_CONSUMER_NAME come with the bus configuration. Bad values are
// *envconf.Error.
func ConsumerConfigFromEnv(lookup func(string) (string, bool)) (ConsumerConfig, error) {
	var c ConsumerConfig
	r := envconf.Reader{Lookup: lookup}
	r.String(EnvFeedbackStream, &c.Stream)
	r.Bool(EnvSharedGroup, &c.SharedGroup)
	if r.Err != nil {
		return ConsumerConfig{}, r.Err
	}
	if c.Stream != "" && !transport.ValidStreamName(c.Stream) {
		return ConsumerConfig{}, &envconf.Error{Var: EnvFeedbackStream, Value: c.Stream,
			Accepted: "dot-separated tokens of letters, digits, '_' and '-', such as telemetry.feedback"}
	}
	return c, nil
}

// ReplicaGroup is the group a replica reads feedback in unless it opts in to sharing:
// "<group><GroupSeparator><consumer>", e.g. "pipeline-pipeline_w1". Every pipeline replica
// must apply every feedback event (its token bucket is its own), and members of one group
// split the messages between them; a group per replica makes each replica see everything.
// Replicas are told apart by PULSE_CONSUMER_NAME, so each replica needs its own (the pod
// name of a StatefulSet, say) and keeps it across restarts to resume where it stopped.
func ReplicaGroup(group, consumer string) string { return group + GroupSeparator + consumer }

// Consumer runs a Handler on the feedback stream of a Bus: it decodes each delivery's
// FeedbackEvent (a payload of another schema is poison, dead-lettered at once) and applies
// it. Stale events are acked and counted `stale` by the Bus; a failed RateAdjustment publish
// makes the delivery retry (see Handler). With a coordinator TTL in the handler's policy, a
// goroutine owned by the consumer calls Handler.Expire every ExpiryInterval while it runs, so
// that the rate recovers from a coordinator that stopped sending without any new event; it
// stops with the consumer. Its methods are safe for concurrent use.
type Consumer struct {
	bus      *transport.Bus
	h        *Handler
	stream   string
	group    string
	consumer string
	expiry   time.Duration // 0: no expiry loop
	presence time.Duration // 0: no registration
	log      *slog.Logger
	reg      *presence // set by Start when the bus keeps a ReplicaBucket

	mu      sync.Mutex
	sub     *transport.Subscription
	cancel  context.CancelFunc // stops the expiry loop
	done    chan struct{}      // closed once the subscription and the expiry loop ended
	started bool
	closed  bool
}

// ErrNotStarted is returned by Ready before Start.
var ErrNotStarted = errors.New("feedback: consumer not started")

// NewConsumer returns a consumer of bus's feedback stream applying events with h. It does not
// subscribe until Start. Invalid names are reported here.
func NewConsumer(bus *transport.Bus, h *Handler, cfg ConsumerConfig) (*Consumer, error) {
	if bus == nil || h == nil {
		return nil, errors.New("feedback: NewConsumer needs a bus and a handler")
	}
	bc := bus.Config()
	c := &Consumer{bus: bus, h: h, stream: cfg.Stream, group: cfg.Group, consumer: cfg.Consumer, log: cfg.Logger}
	if c.stream == "" {
		c.stream = StreamFeedback
	}
	if !transport.ValidStreamName(c.stream) {
		return nil, fmt.Errorf("feedback: invalid feedback stream %q (accepted: dot-separated tokens of letters, digits, '_' and '-')", c.stream)
	}
	if c.consumer == "" {
		c.consumer = bc.Consumer
	}
	if c.group == "" {
		if cfg.SharedGroup {
			c.group = bc.Group
		} else {
			c.group = ReplicaGroup(bc.Group, c.consumer)
		}
	}
	if cfg.PresenceInterval < 0 {
		return nil, fmt.Errorf("feedback: presence interval %v (accepted: a duration > 0, or 0 for the default)", cfg.PresenceInterval)
	}
	if !cfg.DisablePresence {
		c.presence = cmp.Or(cfg.PresenceInterval, DefaultPresenceInterval)
	}
	if cfg.ExpiryInterval < 0 {
		return nil, fmt.Errorf("feedback: expiry interval %v (accepted: a duration > 0, or 0 for the default)", cfg.ExpiryInterval)
	}
	if ttl := h.policy.CoordinatorTTL; ttl > 0 {
		c.expiry = cfg.ExpiryInterval
		if c.expiry == 0 {
			c.expiry = min(max(ttl/4, MinExpiryInterval), MaxExpiryInterval)
		}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.log = c.log.With("stream", c.stream, "group", c.group, "consumer", c.consumer)
	return c, nil
}

// ExpiryInterval is how often the running consumer calls Handler.Expire; 0 when the
// handler's policy has no coordinator TTL.
func (c *Consumer) ExpiryInterval() time.Duration { return c.expiry }

// Stream is the stream read.
func (c *Consumer) Stream() string { return c.stream }

// Group is the consumer group joined.
func (c *Consumer) Group() string { return c.group }

// Handler is the handler the consumer applies events with.
func (c *Consumer) Handler() *Handler { return c.h }

// Start restores the handler's state from its StateStore (unless Handler.Restore already
// did), subscribes and, when the handler's policy has a coordinator TTL, starts the periodic
// expiry check. The consumer then runs until ctx is cancelled or Close is called (either
// drains in-flight work and stops the check). Start is idempotent: a second call while
// running does nothing. After Close it returns transport.ErrClosed.
func (c *Consumer) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return transport.ErrClosed
	case c.started:
		return nil
	}
	if c.h.store != nil && !c.h.Restored() {
		if _, err := c.h.Restore(ctx); err != nil {
			return fmt.Errorf("feedback: start consumer: %w", err)
		}
	}
	if c.presence > 0 && c.reg == nil {
		c.register(ctx)
	}
	sub, err := c.bus.Subscribe(ctx, c.stream, c.h.HandleDelivery, transport.SubscribeOptions{Group: c.group, Consumer: c.consumer})
	if err != nil {
		return fmt.Errorf("feedback: start consumer: %w", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	c.sub, c.cancel, c.done, c.started = sub, cancel, make(chan struct{}), true
	go c.run(runCtx, sub)
	c.log.Info("feedback consumer started", "fan_out", c.group != c.bus.Config().Group,
		"coordinator_ttl", c.h.policy.CoordinatorTTL, "expiry_interval", c.expiry)
	return nil
}

// register joins the bus's ReplicaBucket under "<stream>/<group>/<consumer>"; a bus
// without KeyValue, or a broker that does not answer now, leaves the consumer unregistered
// (logged: it runs all the same).
func (c *Consumer) register(ctx context.Context) {
	kv, err := c.bus.KeyValue(ctx, ReplicaBucket)
	if err != nil {
		c.log.Info("replica registration unavailable; a second process reading as this replica would go unnoticed", "err", err)
		return
	}
	reg := newPresence(kv, c.stream+"/"+c.group+"/"+c.consumer, c.presence, c.log)
	if err := reg.join(ctx); err != nil {
		c.log.Warn("could not register this replica; retrying while running", "err", err)
	}
	c.reg = reg
}

// Collision is nil, or an error wrapping ErrReplicaCollision while another live process
// reads as this consumer (the same member of the same group): the two split the events
// between them. It never blocks.
func (c *Consumer) Collision() error {
	c.mu.Lock()
	reg := c.reg
	c.mu.Unlock()
	if reg == nil {
		return nil
	}
	return reg.collision()
}

// run lives as long as the subscription: it calls Handler.Expire every expiry interval (if
// any) until Close cancels ctx or the subscription ends, and closes done once both ended.
func (c *Consumer) run(ctx context.Context, sub *transport.Subscription) {
	defer close(c.done)
	var tick, beat <-chan time.Time
	if c.expiry > 0 {
		t := time.NewTicker(c.expiry)
		defer t.Stop()
		tick = t.C
	}
	if c.reg != nil {
		t := time.NewTicker(c.presence)
		defer t.Stop()
		beat = t.C
		defer func() {
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), expiryTimeout)
			defer cancel()
			c.reg.leave(lctx)
		}()
	}
	for {
		select {
		case <-sub.Done():
			return
		case <-ctx.Done():
			<-sub.Done() // Close closes it; a cancelled Start context stops it
			return
		case now := <-beat:
			bctx, cancel := context.WithTimeout(ctx, expiryTimeout)
			c.reg.beat(bctx, now)
			cancel()
		case <-tick:
			ectx, cancel := context.WithTimeout(ctx, expiryTimeout)
			err := c.h.Expire(ectx)
			cancel()
			if err != nil && ctx.Err() == nil {
				c.log.Warn("applying the coordinator TTL: rate adjustment not published yet; kept for retry", "err", err)
			}
		}
	}
}

// Close stops consuming, letting in-flight events finish (bounded by the bus's drain
// timeout), stops the expiry loop (cancelling an expiry publish in flight: its adjustment
// stays pending for Handler.Flush) and waits for both. It is idempotent and safe to call
// concurrently; it does not close the bus.
func (c *Consumer) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	sub, cancel, done := c.sub, c.cancel, c.done
	c.mu.Unlock()
	if sub == nil {
		return nil
	}
	cancel()
	err := sub.Close()
	<-done
	if errors.Is(err, transport.ErrClosed) {
		err = nil
	}
	return err
}

// Ready reports whether the consumer is subscribed and fetching works: nil, or the reason it
// is not (for /readyz). It never blocks.
func (c *Consumer) Ready() error {
	c.mu.Lock()
	sub, started, closed := c.sub, c.started, c.closed
	c.mu.Unlock()
	switch {
	case closed:
		return fmt.Errorf("feedback: consumer closed: %w", transport.ErrClosed)
	case !started:
		return ErrNotStarted
	}
	select {
	case <-sub.Done():
		return fmt.Errorf("feedback: consumer of %s stopped", c.stream)
	default:
	}
	if err := sub.Err(); err != nil {
		return fmt.Errorf("feedback: fetching %s fails: %w", c.stream, err)
	}
	return nil
}

// DeadLetterFailures reports how many dead letters the consumer's subscription could not
// write, and the last such failure (see transport.Subscription.DeadLetterFailures).
func (c *Consumer) DeadLetterFailures() (uint64, error) {
	c.mu.Lock()
	sub := c.sub
	c.mu.Unlock()
	if sub == nil {
		return 0, nil
	}
	return sub.DeadLetterFailures()
}

// Err is the last error fetching from the broker, nil while fetching works or before Start.
func (c *Consumer) Err() error {
	c.mu.Lock()
	sub := c.sub
	c.mu.Unlock()
	if sub == nil {
		return nil
	}
	return sub.Err()
}

// Done is closed once the consumer has stopped (after Close, or ctx of Start cancelled, or
// the subscription failed), its expiry loop included; before Start it returns nil (blocks
// forever in a select).
func (c *Consumer) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sub == nil {
		return nil
	}
	return c.done
}
