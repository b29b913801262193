package transport

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/cenkalti/backoff/v5"
	"github.com/pulse-bus/pulse/envelope"

	"github.com/pulse-bus/pulse/transport/driver"
)

// settleTimeout bounds one ack, nak, term or dead-letter publish. Settling uses its own
// context so that work finished while the subscription drains is still acknowledged.
const settleTimeout = 5 * time.Second

// Receive errors are retried with this backoff while the broker is away.
const (
	receiveRetryMin = 100 * time.Millisecond
	receiveRetryMax = 5 * time.Second
)

// Handler processes one delivery. Returning nil acks it. Returning an error fails it: it is
// redelivered with backoff until its last attempt, then dead-lettered — unless the error wraps
// ErrPoison (dead-lettered at once, see Poison) or ErrStale (acked, counted stale). A handler
// should return promptly once ctx is done (the subscription is draining past its deadline);
// a delivery whose handler returns a context error then is released for redelivery. A panic
// in a handler is recovered and treated as a failure.
type Handler func(ctx context.Context, d *Delivery) error

// Delivery is one message handed to a Handler. It must not be retained after the handler
// returns: Raw and Envelope.Payload alias the driver's buffer, which a batch's messages may
// share. Copy what must outlive the call.
type Delivery struct {
	// Envelope is the decoded (and, for double-wrapped messages, unwrapped) envelope.
	Envelope *envelope.Envelope
	// Stream is the logical stream it came from.
	Stream string
	// TransportID is the broker's id for the stored message.
	TransportID string
	// Attempt counts deliveries of this message to the group, from 1, as the broker counts.
	Attempt int
	// Position is the message's place in the broker's order of the stream: a message the
	// broker stored later has a greater one, a redelivery the same one (zero when the driver
	// cannot tell). It tells a newer publish from a redelivery without trusting any
	// producer's clock.
	Position Position
	// StoredAt is when the broker stored the message, by the broker's clock (zero when the
	// driver cannot tell).
	StoredAt time.Time
	// Replayed is true for a message that `pulse dlq replay` (or anything else) re-published
	// from a dead-letter stream: the broker stored it again, so its Position is that of the
	// replay, not of the original publish.
	Replayed bool
	// Raw is the message exactly as stored.
	Raw []byte
}

// ID is the delivery's identity for de-duplication: the producer id (v2), else the
// transport id (v1, whose producers assign none).
func (d *Delivery) ID() string {
	if d.Envelope != nil && d.Envelope.ID != "" {
		return d.Envelope.ID
	}
	return d.TransportID
}

// SubscribeOptions tune one subscription; zero fields take the bus configuration.
type SubscribeOptions struct {
	Group    string
	Consumer string
	// Concurrency is how many handlers run at once (default 1: in stream order).
	Concurrency   int
	BatchSize     int
	AckWait       time.Duration
	MaxDeliveries int
	DrainTimeout  time.Duration
}

// Subscription is one running member of a group. It fetches in batches, runs the handler,
// and settles each delivery; acks of one batch go to the broker together.
type Subscription struct {
	bus    *Bus
	stream string
	opts   SubscribeOptions
	h      Handler
	ds     driver.Subscription
	log    *slog.Logger
	// keyPrefix is "stream/group/", the start of every idempotency key.
	keyPrefix string
	// mem is the Bus's record when it is the in-process one (which takes a key as prefix and
	// id), nil for any other store.
	mem *MemoryIdempotency
	// positions, when set, records the handled deliveries without a producer id (see
	// positionWindow); the others, and what it cannot hold, go to the Bus's record as keys.
	positions *positionWindow

	fetchCtx     context.Context // cancelled to stop fetching: by Close, or with Subscribe's ctx
	cancelFetch  context.CancelFunc
	handleCtx    context.Context // cancelled when the drain deadline passes
	deferred     *deferredBase   // handleCtx and the propagator, for deliveries' deferred contexts
	cancelHandle context.CancelFunc
	stopWatch    func() bool
	done         chan struct{}

	localAcks bool          // the driver's Ack does not wait for the broker: ack inline
	acks      chan ackBatch // a batch's successes, to the acker; sent and closed by run
	ackerDone chan struct{}

	firstAttempts firstAttempts // for the links of redeliveries, while tracing

	errMu   sync.Mutex
	lastErr error

	dlqMu       sync.Mutex
	dlqFailures uint64
	dlqLast     error

	closeOnce sync.Once
	closeErr  error
}

// Subscribe joins a group on stream and starts handling deliveries with h. The group is
// created if needed, from the start of the retained stream. The subscription lives until ctx
// is cancelled or Close is called; either drains it.
func (b *Bus) Subscribe(ctx context.Context, stream string, h Handler, opts SubscribeOptions) (*Subscription, error) {
	if h == nil {
		return nil, errors.New("transport: Subscribe with nil handler")
	}
	if !ValidStreamName(stream) {
		return nil, fmt.Errorf("transport: invalid stream name %q (accepted: dot-separated tokens of letters, digits, '_' and '-')", stream)
	}
	opts = b.resolve(opts)
	if !validName(opts.Group) || !validName(opts.Consumer) {
		return nil, fmt.Errorf("transport: invalid group %q or consumer %q (accepted: letters, digits, '_' and '-')", opts.Group, opts.Consumer)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, ErrClosed
	}
	b.mu.Unlock()
	ds, err := b.drv.Subscribe(ctx, stream, driver.SubscribeOptions{
		Group:         opts.Group,
		Consumer:      opts.Consumer,
		AckWait:       opts.AckWait,
		MaxDeliveries: opts.MaxDeliveries,
		BatchSize:     opts.BatchSize,
	})
	if err != nil {
		return nil, fmt.Errorf("transport: subscribe to %s as %s/%s: %w", stream, opts.Group, opts.Consumer, err)
	}
	s := &Subscription{
		bus:       b,
		stream:    stream,
		opts:      opts,
		h:         h,
		ds:        ds,
		log:       b.cfg.Logger.With("stream", stream, "group", opts.Group, "consumer", opts.Consumer),
		done:      make(chan struct{}),
		acks:      make(chan ackBatch),
		ackerDone: make(chan struct{}),

		keyPrefix: stream + "/" + opts.Group + "/",
	}
	if la, ok := ds.(driver.LocalAcker); ok {
		s.localAcks = la.AcksAreLocal()
	}
	s.mem, _ = b.idem.(*MemoryIdempotency)
	if sp, ok := ds.(driver.SequentialPositioner); ok && s.mem != nil && sp.PositionsAreSequential() {
		s.positions = s.mem.positions(s.keyPrefix)
	}
	s.fetchCtx, s.cancelFetch = context.WithCancel(ctx)
	s.handleCtx, s.cancelHandle = context.WithCancel(context.WithoutCancel(ctx))
	s.deferred = &deferredBase{Context: s.handleCtx, prop: b.tr.prop}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		ds.Close()
		return nil, ErrClosed
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	// The watch may fire at once (ctx already done, or cancelled by an early handler); it
	// waits until stopWatch is set, which Close reads.
	watchSet := make(chan struct{})
	s.stopWatch = context.AfterFunc(ctx, func() { <-watchSet; s.Close() })
	close(watchSet)
	go s.run()
	return s, nil
}

func (b *Bus) resolve(o SubscribeOptions) SubscribeOptions {
	if o.Group == "" {
		o.Group = b.cfg.Group
	}
	if o.Consumer == "" {
		o.Consumer = b.cfg.Consumer
	}
	if o.Concurrency < 1 {
		o.Concurrency = 1
	}
	if o.BatchSize < 1 {
		o.BatchSize = b.cfg.BatchSize
	}
	if o.AckWait <= 0 {
		o.AckWait = b.cfg.AckWait
	}
	if o.MaxDeliveries < 1 {
		o.MaxDeliveries = b.cfg.MaxDeliveries
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = b.cfg.DrainTimeout
	}
	return o
}

// Stream is the logical stream this subscription reads.
func (s *Subscription) Stream() string { return s.stream }

// Options are the resolved options.
func (s *Subscription) Options() SubscribeOptions { return s.opts }

// Done is closed once the subscription has stopped.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err is the last error fetching from the broker, nil while fetching works: the
// subscription's health.
func (s *Subscription) Err() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.lastErr
}

func (s *Subscription) setErr(err error) {
	s.errMu.Lock()
	prev := s.lastErr
	s.lastErr = err
	s.errMu.Unlock()
	switch {
	case err != nil && prev == nil:
		s.log.Warn("fetching failed; retrying", "err", err)
	case err == nil && prev != nil:
		s.log.Warn("fetching recovered", "after", prev)
	}
}

// Close stops fetching, lets in-flight handlers finish and settle for up to the drain
// timeout, then cancels their context and leaves the group; deliveries not settled by then
// are redelivered after AckWait. Close is idempotent and safe to call concurrently; it waits
// at most about twice the drain timeout even if a handler ignores its context.
func (s *Subscription) Close() error {
	s.closeOnce.Do(func() {
		s.stopWatch()
		s.cancelFetch()
		drain := time.NewTimer(s.opts.DrainTimeout)
		defer drain.Stop()
		select {
		case <-s.done:
		case <-drain.C:
			s.log.Warn("drain deadline passed; cancelling handlers", "drain_timeout", s.opts.DrainTimeout)
			s.cancelHandle()
			drain.Reset(s.opts.DrainTimeout)
			select {
			case <-s.done:
			case <-drain.C:
				s.log.Error("a handler ignores cancellation; leaving it behind")
			}
		}
		s.cancelHandle()
		s.closeErr = s.ds.Close()
		s.bus.forget(s)
	})
	return s.closeErr
}

func (s *Subscription) run() {
	defer close(s.done)
	if !s.localAcks {
		go s.acker()
		defer func() { // drained means acked too
			close(s.acks)
			<-s.ackerDone
		}()
	}
	retry := backoff.NewExponentialBackOff() // ×1.5 per failure, ±50% jitter
	retry.InitialInterval, retry.MaxInterval = receiveRetryMin, receiveRetryMax
	for {
		batch, err := s.ds.Receive(s.fetchCtx, s.opts.BatchSize)
		if err == nil || len(batch) > 0 { // a receive that worked, even empty: fetching works
			s.setErr(nil)
			retry.Reset()
		}
		if len(batch) > 0 {
			s.process(batch)
		}
		if s.fetchCtx.Err() != nil || errors.Is(err, ErrClosed) {
			return
		}
		if err != nil && len(batch) == 0 {
			s.setErr(err)
			if !sleepCtx(s.fetchCtx, retry.NextBackOff()) {
				return
			}
		}
	}
}

// sleepCtx waits for d or ctx; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// ackBatch is a batch's successes and, while tracing, the links of their recorded process
// spans (for the ack span).
type ackBatch struct {
	ds    []*driver.Delivery
	links []trace.Link
}

// process handles one batch and acks its successes in one call. The batch's lag is measured
// against one reading of the clock, taken when it arrives.
func (s *Subscription) process(batch []*driver.Delivery) {
	acks := ackBatch{ds: make([]*driver.Delivery, 0, len(batch))}
	dels := make([]Delivery, len(batch)) // one allocation for the batch's deliveries
	var dcs []deferredContext            // and one for their contexts, if they carry any
	if slices.ContainsFunc(batch, func(d *driver.Delivery) bool { return d.HasHeaders() }) {
		dcs = make([]deferredContext, len(batch))
	}
	dcOf := func(i int) *deferredContext {
		if dcs == nil {
			return nil
		}
		return &dcs[i]
	}
	// What every delivery of the batch shares: when it arrived (its lag is measured against
	// one reading of the clock), and the tracer, looked up once (~35 ns a message when it was
	// looked up for each, while tracing is off).
	at := batchInfo{received: time.Now(), tracer: s.bus.tr.tracer.Get()}
	if s.opts.Concurrency == 1 {
		dec := newBatchDecoder(s.bus.codec, batch)
		for i, d := range batch {
			if s.handleCtx.Err() != nil {
				break // past the drain deadline: leave the rest for redelivery
			}
			env, err := dec.get(i)
			if ack, link, traced := s.handleOne(d, env, err, &dels[i], dcOf(i), &at); ack {
				acks.ds = append(acks.ds, d)
				if traced {
					acks.links = append(acks.links, link)
				}
			}
		}
		dec.finish()
	} else {
		var mu sync.Mutex
		var g errgroup.Group
		g.SetLimit(s.opts.Concurrency)
		for i, d := range batch {
			if s.handleCtx.Err() != nil {
				break
			}
			g.Go(func() error {
				env, err := s.bus.codec.DecodeImmutable(d.Body) // a delivery never changes (driver.Delivery)
				if ack, link, traced := s.handleOne(d, env, err, &dels[i], dcOf(i), &at); ack {
					mu.Lock()
					acks.ds = append(acks.ds, d)
					if traced {
						acks.links = append(acks.links, link)
					}
					mu.Unlock()
				}
				return nil
			})
		}
		g.Wait()
	}
	switch {
	case len(acks.ds) == 0:
	case s.localAcks:
		s.ack(acks)
	default:
		s.acks <- acks // waits while the acker still settles the previous batch
	}
}

// acker settles each batch's successes with one driver call, in the background, so that the
// next batch is handled during the broker's round trip (~70 µs per batch on loopback, where
// the gain was within the benchmark's noise; across a network a round trip per 256 messages
// costs microseconds per message). One call is outstanding at most. It is one goroutine for
// the life of run rather than one per batch, whose stack the driver's ack path grew every
// time. run waits for it before the subscription counts as drained.
func (s *Subscription) acker() {
	defer close(s.ackerDone)
	for acks := range s.acks {
		s.ack(acks)
	}
}

// ack settles a batch's successes with one driver call (an Ack that does not wait for the
// broker needs no deadline).
func (s *Subscription) ack(acks ackBatch) {
	span := s.ackSpan(acks.links, len(acks.ds))
	var err error
	if s.localAcks {
		err = s.ds.Ack(context.WithoutCancel(s.handleCtx), acks.ds)
	} else {
		ctx, cancel := s.settleCtx()
		err = s.ds.Ack(ctx, acks.ds)
		cancel()
	}
	endSettle(span, err)
	if err != nil {
		// Handled ids are recorded, so the redeliveries this causes are absorbed as duplicates.
		s.log.Warn("ack failed; the messages will be redelivered and de-duplicated", "count", len(acks.ds), "err", err)
	}
}

func (s *Subscription) settleCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(s.handleCtx), settleTimeout)
}

// batchInfo is what the deliveries of one batch share.
type batchInfo struct {
	received time.Time    // when the batch arrived
	tracer   trace.Tracer // the Bus's tracer for the batch (nil: tracing is off)
}

// handleOne runs the policies for one delivery of the batch at, decoded as env (or failing to
// decode with decodeErr), filling del (its slot in the batch) for the handler, with dc its
// context's slot (nil: none deferred). It reports whether the delivery is to be acked, with
// its process span as a link for the ack span when traced; every other settlement (nak,
// dead-letter) is done here.
func (s *Subscription) handleOne(d *driver.Delivery, env *envelope.Envelope, decodeErr error, del *Delivery, dc *deferredContext, at *batchInfo) (ack bool, link trace.Link, traced bool) {
	pt := s.startProcess(d, env, dc, at.tracer)
	defer pt.end()
	obs := s.bus.cfg.Observer
	if d.Attempt > 1 {
		obs.Redelivered(s.stream)
	}
	if decodeErr != nil {
		track := string(envelope.TrackOf(decodeErr))
		if track == "" {
			track = "unknown"
		}
		pt.identify(d.TransportID, track)
		s.deadLetter(&pt, d, poisonReason(decodeErr), decodeErr, track, OutcomeRejected)
		return false, trace.Link{}, false
	}
	obs.Lag(s.stream, lag(at.received, d.StoredAt, env.TS))
	// del is zero, in its batch's allocation: its fields are written one by one rather than as
	// one struct (see deferredContext).
	del.Envelope, del.Stream, del.TransportID, del.Attempt = env, s.stream, d.TransportID, d.Attempt
	del.Position, del.StoredAt, del.Raw = d.Position, d.StoredAt, d.Body
	del.Replayed = d.Header(DLQReplayOf) != ""
	track := string(env.Meta.Track)
	pt.identify(del.ID(), track)
	// A message identified by its transport id (v1) on its first delivery to this group cannot
	// have been handled by the group yet, so only later attempts and producer ids (which a
	// retried publish repeats) are looked up.
	if d.Attempt > 1 || env.ID != "" {
		if seen, err := s.handledBefore(pt.ctx, del); err != nil {
			s.log.Warn("idempotency record unavailable; handling anyway (at least once)", "err", err)
		} else if seen {
			obs.Consumed(s.stream, track, OutcomeDuplicate)
			pt.settled(OutcomeDuplicate, "", nil)
			link, traced = pt.link()
			return true, link, traced
		}
	}
	if d.Attempt > s.opts.MaxDeliveries {
		// Delivered past the limit without being settled: each attempt died with its consumer
		// (or the dead-letter write failed). Dead-letter it without handling again, so a
		// message that crashes its consumer cannot loop for ever.
		s.deadLetter(&pt, d, "max_deliveries", fmt.Errorf("transport: delivered %d times without being settled (limit %d)", d.Attempt, s.opts.MaxDeliveries), track, OutcomeDeadLetter)
		return false, trace.Link{}, false
	}

	err := s.callHandler(pt.ctx, del)
	switch {
	case err == nil, errors.Is(err, ErrStale):
		if derr := s.recordHandled(pt.ctx, del); derr != nil {
			s.log.Warn("could not record handled id", "id", del.ID(), "err", derr)
		}
		outcome := OutcomeSuccess
		if err != nil {
			outcome = OutcomeStale
		}
		obs.Consumed(s.stream, track, outcome)
		pt.settled(outcome, "", err)
		link, traced = pt.link()
		return true, link, traced
	case s.handleCtx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		// Cut off by the drain deadline: hand it back for another member.
		pt.settled(OutcomeError, "", err)
		s.retrying(&pt, d)
		s.nak(&pt, d, 0)
		return false, trace.Link{}, false
	case errors.Is(err, ErrPoison):
		s.deadLetter(&pt, d, poisonReason(err), err, track, OutcomeRejected)
		return false, trace.Link{}, false
	case d.Attempt >= s.opts.MaxDeliveries:
		s.deadLetter(&pt, d, "max_deliveries", err, track, OutcomeDeadLetter)
		return false, trace.Link{}, false
	default:
		obs.Consumed(s.stream, track, OutcomeError)
		pt.settled(OutcomeError, "", err)
		s.log.Debug("handler failed; will retry", "id", del.ID(), "attempt", d.Attempt, "err", err)
		s.retrying(&pt, d)
		s.nak(&pt, d, s.bus.backoff(d.Attempt))
		return false, trace.Link{}, false
	}
}

// handledBefore asks the Bus's idempotency record whether this group handled d: by its
// Position in the group's window when it has no producer id and the window holds it, else by
// its id. The default record is given the key as prefix and id, which it hashes without
// joining them (the joined string was an allocation per message); any other store gets the
// whole key.
func (s *Subscription) handledBefore(ctx context.Context, d *Delivery) (bool, error) {
	if s.byPosition(d) && s.positions.seen(d.Position) {
		return true, nil
	}
	if s.mem != nil {
		return s.mem.seen(s.keyPrefix, d.ID()), nil
	}
	return s.bus.idem.Seen(ctx, s.keyPrefix+d.ID())
}

// recordHandled records that this group handled d: in the group's window when it has no
// producer id and the window can hold it, else by its id.
func (s *Subscription) recordHandled(ctx context.Context, d *Delivery) error {
	if s.byPosition(d) && s.positions.done(d.Position) {
		return nil
	}
	if s.mem != nil {
		s.mem.done(s.keyPrefix, d.ID())
		return nil
	}
	return s.bus.idem.Done(ctx, s.keyPrefix+d.ID())
}

// byPosition reports whether d is recorded in the group's position window when the window
// holds it: a delivery without a producer id, on a driver with sequential positions.
func (s *Subscription) byPosition(d *Delivery) bool {
	return s.positions != nil && d.Envelope.ID == ""
}

// lag is how long a message waited between being stored and received: by the broker's clock
// (storedAt) where the driver knows it, never by the producer's ts alone, which any producer
// can set to anything (a ts in the year 3000 once showed as 9.2e12 ms). Without storedAt the
// envelope ts stands in. Either way the lag is at least 0 and at most maxLag.
func lag(received, storedAt time.Time, ts float64) time.Duration {
	var l time.Duration
	if !storedAt.IsZero() {
		l = received.Sub(storedAt)
	} else if f := ts; f > 0 && f < maxLagTS {
		l = received.Sub(time.Unix(0, int64(f*1e9)))
	}
	return min(max(l, 0), maxLag)
}

// maxLag caps a reported lag: a message older than this is "very late" whatever its age.
const maxLag = 7 * 24 * time.Hour

// maxLagTS is the largest envelope ts (seconds) converted to a time for lag: beyond it the
// conversion to nanoseconds would overflow.
const maxLagTS = 9e9

func (s *Subscription) callHandler(ctx context.Context, d *Delivery) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("transport: handler panicked: %v\n%s", r, debug.Stack())
		}
	}()
	return s.h(ctx, d)
}

func (s *Subscription) nak(pt *processTrace, d *driver.Delivery, delay time.Duration) {
	span := pt.startSettle(s.bus.tr, opNak, pt.nameOf(opNak), s.opts.Group)
	ctx, cancel := s.settleCtx()
	defer cancel()
	err := s.ds.Nak(ctx, d, delay)
	endSettle(span, err)
	if err != nil {
		s.log.Warn("nak failed; the message comes back after ack-wait", "transport_id", d.TransportID, "err", err)
	}
}

// term settles d for good (it was dead-lettered, or could not be and is given up on).
func (s *Subscription) term(ctx context.Context, pt *processTrace, d *driver.Delivery) error {
	span := pt.startSettle(s.bus.tr, opTerm, pt.nameOf(opTerm), s.opts.Group)
	err := s.ds.Term(ctx, d)
	endSettle(span, err)
	return err
}

// deadLetterRetries is how many deliveries past the attempt limit a dead letter that cannot
// be written is tried again (with the retry backoff) before the original is settled anyway.
const deadLetterRetries = 3

// maxDeadLetterError bounds the error text a dead letter carries, in bytes.
const maxDeadLetterError = 1024

// DeadLetterFailureObserver is implemented by an Observer that counts dead letters that
// could not be written (pulse_dlq_failures_total); settled is false while the message is
// retried, true once it was settled without a dead letter. telemetry.Metrics does.
type DeadLetterFailureObserver interface {
	DeadLetterFailed(stream string, settled bool)
}

// deadLetter copies d, bytes unchanged, to the stream's DLQ with why, then terminates the
// original. A copy too large for the broker is replaced by a pointer (DLQKeptIn): a small
// record of where the original stays, which is acked and retained in its stream like any
// other message. If the DLQ cannot be written at all, the original is retried later, up to
// deadLetterRetries deliveries past the attempt limit; then it is settled anyway, staying in
// its stream, and the failure is logged, counted and reported (DeadLetterFailures). No
// delivery loops for ever and none is dropped without a trace.
//
// The dead letter carries the trace context the delivery failed in: while tracing, that of
// its publish span, a child of the delivery's process span; otherwise the context the
// original carried. A replay (`pulse dlq replay`) so continues the original's trace.
func (s *Subscription) deadLetter(pt *processTrace, d *driver.Delivery, reason string, cause error, track string, outcome Outcome) {
	ctx, cancel := s.settleCtx()
	defer cancel()
	why := cause.Error()
	if len(why) > maxDeadLetterError {
		why = strings.ToValidUTF8(why[:maxDeadLetterError-len("…")], "") + "…"
	}
	headers := map[string]string{
		DLQOriginalID: d.TransportID,
		DLQReason:     reason,
		DLQError:      why,
		DLQAttempts:   strconv.Itoa(d.Attempt),
		DLQFailedAt:   time.Now().UTC().Format(time.RFC3339Nano),
		DLQStream:     s.stream,
	}
	pt.settled(outcome, reason, cause)
	var dt publishTrace
	dlq := s.stream + DLQSuffix
	s.bus.tr.startPublish(pt.ctx, dlq, &dt, 1, func(int) *map[string]string { return &headers })
	msgs := []RawMessage{{Body: d.Body, Headers: headers}}
	ids, err := s.bus.drv.Publish(ctx, dlq, msgs)
	kept := false
	if errors.Is(err, ErrTooLarge) {
		kept = true
		sum := sha256.Sum256(d.Body)
		pointer, _ := json.Marshal(DeadLetterPointer{KeptIn: s.stream, OriginalID: d.TransportID, Size: len(d.Body), SHA256: hex.EncodeToString(sum[:])})
		headers[DLQKeptIn] = s.stream
		msgs = []RawMessage{{Body: pointer, Headers: headers}}
		ids, err = s.bus.drv.Publish(ctx, dlq, msgs)
	}
	dt.end(msgs, ids, err)
	if err != nil {
		s.deadLetterFailed(ctx, pt, d, reason, err, track, outcome)
		return
	}
	// Counted once the copy is stored, before the original is terminated, so that whoever sees
	// the original settled also sees it counted.
	if kept {
		s.log.Warn("dead-lettered a message too large to copy: the dead letter points at the original, which stays in its stream",
			"transport_id", d.TransportID, "bytes", len(d.Body), "reason", reason, "attempts", d.Attempt, "err", cause)
	} else {
		s.log.Warn("dead-lettered", "transport_id", d.TransportID, "reason", reason, "attempts", d.Attempt, "err", cause)
	}
	s.bus.cfg.Observer.DeadLettered(s.stream, reason)
	s.bus.cfg.Observer.Consumed(s.stream, track, outcome)
	if err := s.term(ctx, pt, d); err != nil {
		s.log.Warn("terminating a dead-lettered message failed; it may be dead-lettered twice", "transport_id", d.TransportID, "err", err)
	}
}

// deadLetterFailed handles a dead letter that could not be written: retry the original
// later, or, past the last attempt, settle it where it is (see deadLetter).
func (s *Subscription) deadLetterFailed(ctx context.Context, pt *processTrace, d *driver.Delivery, reason string, err error, track string, outcome Outcome) {
	s.dlqMu.Lock()
	s.dlqFailures++
	s.dlqLast = fmt.Errorf("%s %s (%s, attempt %d): %w", s.stream, d.TransportID, reason, d.Attempt, err)
	s.dlqMu.Unlock()
	settle := d.Attempt >= s.opts.MaxDeliveries+deadLetterRetries
	if fo, ok := s.bus.cfg.Observer.(DeadLetterFailureObserver); ok {
		fo.DeadLetterFailed(s.stream, settle)
	}
	if !settle {
		s.log.Error("dead-lettering failed; will retry the message", "transport_id", d.TransportID, "reason", reason,
			"attempt", d.Attempt, "settled_after_attempt", s.opts.MaxDeliveries+deadLetterRetries, "err", err)
		s.retrying(pt, d)
		s.nak(pt, d, s.bus.backoff(d.Attempt))
		return
	}
	s.log.Error("dead-lettering failed on the last attempt: the message is settled without a dead letter and stays in its stream until retention removes it",
		"transport_id", d.TransportID, "position", d.Position.String(), "bytes", len(d.Body), "reason", reason, "attempts", d.Attempt, "err", err)
	s.bus.cfg.Observer.Consumed(s.stream, track, outcome)
	if err := s.term(ctx, pt, d); err != nil {
		s.log.Warn("terminating a message that could not be dead-lettered failed; it comes back after ack-wait", "transport_id", d.TransportID, "err", err)
	}
}

// DeadLetterFailures reports how many dead letters this subscription could not write (each
// retried, or at last settled without one; see deadLetter), and the last such failure.
func (s *Subscription) DeadLetterFailures() (uint64, error) {
	s.dlqMu.Lock()
	defer s.dlqMu.Unlock()
	return s.dlqFailures, s.dlqLast
}
