package transport

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport/driver"
)

// DefaultMaxInFlight is how many batches an AsyncPublisher keeps awaiting the broker.
const DefaultMaxInFlight = 16

// AsyncPublisher publishes batches to one stream with up to MaxInFlight of them awaiting the
// broker at once, so that encoding and sending the next batch overlap with the broker storing
// the previous ones — what nats.go's PublishAsync window does for single messages. Use it for
// throughput; use Bus.Publish when each call must return with its messages stored.
//
// Publish encodes the batch in the caller's goroutine (an encoding error is returned at once)
// and hands it to a goroutine owned by the publisher, blocking while MaxInFlight batches are
// unconfirmed. Flush waits until every batch handed over so far is stored or has failed.
// Batches in flight together may be stored out of order relative to each other (messages of
// one batch keep their order where the driver guarantees it); feedback events are ordered by
// their ts, not by arrival, so this is safe for them.
//
// Failed batches are reported by Flush (and Close) as a *PublishError holding the envelopes
// that were not confirmed: publishing them again is safe — v2 envelopes keep their ids, so the
// broker or the consumers de-duplicate. An AsyncPublisher is safe for concurrent use.
type AsyncPublisher struct {
	bus    *Bus
	stream string
	slots  chan struct{} // one token per batch in flight
	wg     sync.WaitGroup

	mu     sync.Mutex
	failed []*envelope.Envelope
	errs   []error
	closed bool
}

// PublishError reports the batches an AsyncPublisher could not confirm.
type PublishError struct {
	// Envelopes were not confirmed by the broker; some may have been stored.
	Envelopes []*envelope.Envelope
	// Err joins the batches' errors.
	Err error
}

func (e *PublishError) Error() string {
	return fmt.Sprintf("transport: %d message(s) not confirmed: %v", len(e.Envelopes), e.Err)
}

func (e *PublishError) Unwrap() error { return e.Err }

// NewAsyncPublisher returns a publisher to stream keeping up to maxInFlight batches awaiting
// the broker (DefaultMaxInFlight when ≤ 0).
func (b *Bus) NewAsyncPublisher(stream string, maxInFlight int) (*AsyncPublisher, error) {
	if !ValidStreamName(stream) {
		return nil, fmt.Errorf("transport: invalid stream name %q (accepted: dot-separated tokens of letters, digits, '_' and '-')", stream)
	}
	if maxInFlight <= 0 {
		maxInFlight = DefaultMaxInFlight
	}
	return &AsyncPublisher{bus: b, stream: stream, slots: make(chan struct{}, maxInFlight)}, nil
}

// Publish encodes envs and starts publishing them as one batch. It returns once the batch is
// in flight (nil), or with an encoding error, ctx.Err() while waiting for a free slot, or
// ErrClosed. Whether the broker stored the batch is reported by Flush.
func (p *AsyncPublisher) Publish(ctx context.Context, envs ...*envelope.Envelope) error {
	if len(envs) == 0 {
		return nil
	}
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed || p.bus.isClosed() {
		return ErrClosed
	}
	batch, err := p.bus.encode(ctx, p.stream, envs)
	if err != nil {
		return err
	}
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		batch.trace.end(batch.msgs, nil, ctx.Err())
		batch.release()
		return ctx.Err()
	}
	p.wg.Add(1)
	// The batch's context ends with neither the caller's ctx (Publish has returned) nor a
	// deadline of its own: drivers bound their own retries, and Close waits for it.
	bctx := context.WithoutCancel(ctx)
	go func() {
		defer p.wg.Done()
		defer func() { <-p.slots }()
		if err := p.bus.publishEncoded(bctx, p.stream, batch); err != nil {
			p.mu.Lock()
			p.failed = append(p.failed, envs...)
			p.errs = append(p.errs, err)
			p.mu.Unlock()
		}
	}()
	return nil
}

// Flush waits until every batch handed to Publish before the call is stored or failed, or ctx
// is done. It returns a *PublishError for the batches that failed since the last Flush, nil
// if none did.
func (p *AsyncPublisher) Flush(ctx context.Context) error {
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.errs) == 0 {
		return nil
	}
	err := &PublishError{Envelopes: p.failed, Err: errors.Join(p.errs...)}
	p.failed, p.errs = nil, nil
	return err
}

// Close refuses further batches and flushes. It is idempotent.
func (p *AsyncPublisher) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	return p.Flush(ctx)
}

// encodedBatch holds a batch's wire bytes in one buffer. Batches are pooled: a publish that
// the driver confirmed returns its batch for reuse (drivers keep no reference to the bodies
// once Publish has returned without error), so steady publishing allocates no wire buffers.
type encodedBatch struct {
	buf   []byte
	ends  []int // ends[i] is where message i's bytes end in buf
	msgs  []RawMessage
	trace publishTrace // the batch's spans, ended by publishEncoded
}

// maxPooledBatchBytes bounds the buffers kept for reuse: one unusually large batch must not
// pin its memory for the life of the process.
const maxPooledBatchBytes = 4 << 20

var encodedBatches = sync.Pool{New: func() any { return new(encodedBatch) }}

// release returns the batch for reuse; the caller must not touch it afterwards.
func (eb *encodedBatch) release() {
	if cap(eb.buf) > maxPooledBatchBytes {
		return
	}
	clear(eb.msgs) // drop the ids and bodies so the pool pins nothing else
	eb.buf, eb.ends, eb.msgs = eb.buf[:0], eb.ends[:0], eb.msgs[:0]
	encodedBatches.Put(eb)
}

// encode encodes envs for stream (see Publish for what Encode fills in) into a pooled batch,
// starting its spans in ctx: each message's trace context goes into its headers and, on v2,
// into its meta.headers, which are encoded.
func (b *Bus) encode(ctx context.Context, stream string, envs []*envelope.Envelope) (*encodedBatch, error) {
	eb := encodedBatches.Get().(*encodedBatch)
	eb.msgs = slices.Grow(eb.msgs[:0], len(envs))[:len(envs)]
	clear(eb.msgs)
	b.tr.startPublish(ctx, stream, &eb.trace, len(envs), func(i int) *map[string]string { return &eb.msgs[i].Headers })
	if b.cfg.Track == envelope.TrackV2 {
		b.tr.injectMeta(envs, eb.msgs)
	}
	// Offsets first: the buffer may move while it grows, so bodies are sliced at the end.
	var err error
	if eb.buf, eb.ends, err = b.codec.AppendEncodeBatch(eb.buf[:0], eb.ends[:0], envs); err != nil {
		eb.trace.end(eb.msgs, nil, err)
		eb.release()
		return nil, fmt.Errorf("transport: publish to %s: %w", stream, err)
	}
	start := 0
	for i, e := range envs {
		end := eb.ends[i]
		// A full slice expression: a driver appending to one body cannot overwrite the next.
		eb.msgs[i].Body, eb.msgs[i].ID = eb.buf[start:end:end], e.ID
		start = end
	}
	return eb, nil
}

// publishEncoded hands an encoded batch to the driver and records the outcome. The batch is
// reused once the driver has confirmed it; after an error the driver may still hold its bodies
// (an asynchronous client retrying), so it is left to the garbage collector.
func (b *Bus) publishEncoded(ctx context.Context, stream string, eb *encodedBatch) error {
	start := time.Now()
	var (
		ids []string
		err error
	)
	if s, ok := b.drv.(driver.Sender); ok && !eb.trace.wantsIDs(eb.msgs) {
		err = s.Send(ctx, stream, eb.msgs)
	} else {
		ids, err = b.drv.Publish(ctx, stream, eb.msgs)
	}
	b.observePublish(stream, len(eb.msgs), err, time.Since(start))
	eb.trace.end(eb.msgs, ids, err)
	if err != nil {
		return fmt.Errorf("transport: publish %d message(s) to %s: %w", len(eb.msgs), stream, err)
	}
	eb.release()
	return nil
}
