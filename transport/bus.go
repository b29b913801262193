package transport

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.opentelemetry.io/otel/propagation"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport/driver"
)

// Bus is the portable API over one driver: it encodes and publishes envelopes, and runs
// subscriptions that decode, de-duplicate, hand deliveries to a Handler and settle them with
// the policies of docs/design.md. A Bus is safe for concurrent use.
type Bus struct {
	drv   driver.Driver
	cfg   Config
	codec *envelope.Codec
	idem  IdempotencyStore
	tr    *busTracing

	mu     sync.Mutex
	closed bool
	subs   map[*Subscription]struct{}
}

// New returns a Bus over an open driver, which it then owns (Close closes it). cfg is
// completed with defaults and validated.
func New(drv driver.Driver, cfg Config) (*Bus, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := &Bus{
		drv: drv,
		cfg: cfg,
		codec: &envelope.Codec{
			Track:   cfg.Track,
			Schemas: cfg.Schemas,
			Signer:  envelope.NewSigner(cfg.PublisherToken),
		},
		idem: cfg.Idempotency,
		tr:   newBusTracing(cfg, drv),
		subs: map[*Subscription]struct{}{},
	}
	if b.idem == nil && cfg.SharedIdempotency {
		if p, ok := drv.(driver.IdempotencyProvider); ok {
			store, err := p.IdempotencyStore(context.Background(), cfg.IdempotencyTTL)
			if err != nil {
				return nil, fmt.Errorf("transport: shared idempotency record: %w", err)
			}
			b.idem = store
		} else {
			cfg.Logger.Warn("backend has no shared idempotency record; using one per process", "backend", cfg.Backend)
		}
	}
	if b.idem == nil {
		b.idem = NewMemoryIdempotency(cfg.IdempotencySize, cfg.IdempotencyTTL)
	}
	return b, nil
}

// Config returns the bus configuration, defaults filled in.
func (b *Bus) Config() Config { return b.cfg }

// Codec returns the codec the bus encodes and decodes with.
func (b *Bus) Codec() *envelope.Codec { return b.codec }

// Driver returns the underlying driver, for optional interfaces such as StreamAdmin.
func (b *Bus) Driver() driver.Driver { return b.drv }

func (b *Bus) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// Publish encodes envs in the configured track and publishes them to stream in one batch,
// returning once the broker has all of them. Encode fills in missing ids and timestamps on
// the envelopes themselves, so retrying Publish with the same envelopes re-sends the same ids
// (v2), which the broker or the consumers de-duplicate.
func (b *Bus) Publish(ctx context.Context, stream string, envs ...*envelope.Envelope) error {
	if b.isClosed() {
		return ErrClosed
	}
	if !ValidStreamName(stream) {
		return fmt.Errorf("transport: invalid stream name %q (accepted: dot-separated tokens of letters, digits, '_' and '-')", stream)
	}
	if len(envs) == 0 {
		return nil
	}
	batch, err := b.encode(ctx, stream, envs)
	if err != nil {
		return err
	}
	return b.publishEncoded(ctx, stream, batch)
}

func (b *Bus) observePublish(stream string, n int, err error, latency time.Duration) {
	for range n {
		b.cfg.Observer.Published(stream, string(b.cfg.Track), err, latency)
	}
}

// PublishRaw publishes bytes as they are (already-encoded envelopes, dead-letter replays, a
// Python producer's message in tests) and returns their transport ids. A message whose
// Headers carry no trace context gets ctx's (through the publish span, while tracing) in a
// copy of its headers; one that carries its own keeps it. Neither msgs nor their headers are
// written.
func (b *Bus) PublishRaw(ctx context.Context, stream string, msgs ...RawMessage) ([]string, error) {
	if b.isClosed() {
		return nil, ErrClosed
	}
	if !ValidStreamName(stream) {
		return nil, fmt.Errorf("transport: invalid stream name %q (accepted: dot-separated tokens of letters, digits, '_' and '-')", stream)
	}
	var pt publishTrace
	if b.tr.tracer.Get() != nil || hasContext(ctx) {
		msgs = slices.Clone(msgs)
		own := make([]map[string]string, len(msgs)) // the caller's headers of messages to inject into
		b.tr.startPublish(ctx, stream, &pt, len(msgs), func(i int) *map[string]string {
			if b.tr.carries(propagation.MapCarrier(msgs[i].Headers)) {
				return nil
			}
			own[i], msgs[i].Headers = msgs[i].Headers, nil
			return &msgs[i].Headers
		})
		for i, h := range own {
			if h == nil {
				continue
			}
			if msgs[i].Headers == nil {
				msgs[i].Headers = h
				continue
			}
			for k, v := range h {
				if _, ok := msgs[i].Headers[k]; !ok {
					msgs[i].Headers[k] = v
				}
			}
		}
	}
	ids, err := b.drv.Publish(ctx, stream, msgs)
	pt.end(msgs, ids, err)
	if err != nil {
		return ids, fmt.Errorf("transport: publish %d raw message(s) to %s: %w", len(msgs), stream, err)
	}
	return ids, nil
}

// Ping reports whether the broker answers (nil when the driver cannot tell).
func (b *Bus) Ping(ctx context.Context) error {
	if b.isClosed() {
		return ErrClosed
	}
	if p, ok := b.drv.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

// Close stops every subscription (draining in-flight work, bounded by DrainTimeout), then
// closes the driver. It is idempotent; the first call's error is returned.
func (b *Bus) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := slices.Collect(maps.Keys(b.subs))
	b.mu.Unlock()
	var errs []error
	for _, s := range subs {
		errs = append(errs, s.Close())
	}
	errs = append(errs, b.drv.Close())
	return errors.Join(errs...)
}

func (b *Bus) forget(s *Subscription) {
	b.mu.Lock()
	delete(b.subs, s)
	b.mu.Unlock()
}

// backoff is the delay before retrying a message that failed on attempt: RetryBackoffMin
// × 2^(attempt−1), capped at RetryBackoffMax, then spread by ±50% (cenkalti/backoff's
// default jitter) so that messages which failed together are not all redelivered together.
// The attempt is the broker's count, so the schedule is a function of it, not a loop's state.
func (b *Bus) backoff(attempt int) time.Duration {
	base := b.cfg.RetryBackoffMin
	for i := 1; i < attempt && base < b.cfg.RetryBackoffMax; i++ {
		base *= 2
	}
	jitter := backoff.ExponentialBackOff{
		InitialInterval:     min(base, b.cfg.RetryBackoffMax),
		RandomizationFactor: backoff.DefaultRandomizationFactor,
		Multiplier:          2,
		MaxInterval:         b.cfg.RetryBackoffMax,
	}
	return jitter.NextBackOff()
}
