package jetstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// Client-side buffering of one subscription, derived from its BatchSize B (see bufferSizes).
const (
	// maxPull caps PullMaxMessages.
	maxPull = 4096
	// pullBytes bounds what one pull request may bring, so that a pull of thousands of large
	// messages cannot fill the client's memory: 16 MiB, or twice the server's max_payload if
	// that is more (a limit below one message's size would stall the consumer).
	pullBytes = 16 << 20
	// pullExpiry is the life of one pull request; idle heartbeats come every half of it, so
	// a pull lost to a leader change or a dead server is noticed within this time.
	pullExpiry = 5 * time.Second
	// closeDrainWait bounds how long Close waits for the pull subscription to drain.
	closeDrainWait = 2 * time.Second
)

// bufferSizes derives, from the Bus's batch size B, how many messages the client may hold:
// pull requests keep up to 8B messages coming (PullMaxMessages, at most maxPull; B=256 →
// 2048), the driver's queue holds B more, and the Bus works on one batch of B. The pull size
// sets the server's cost per message as much as the client's: consuming 500k 211-byte
// messages from a nats-server process took 2.58 s with pulls of 512, 2.37 s with 1024 and
// 2.15 s with 2048 (4096: 1.99 s), the server's CPU going from 5.4 to 4.6 µs a message and
// Pulse's from 3.1 to 2.5 µs (pulsebench jetstream-external); 100 had halved 512's rate.
// MaxAckPending is their sum (10B), so the server never has more unacknowledged messages out
// than the members can hold, and a message waits behind at most 10B-1 others: with a 30 s
// AckWait and the default B=256, handlers of up to ~11 ms per message never let a buffered
// message age past AckWait. Slower handlers should lower PULSE_BATCH_SIZE, which shrinks
// every buffer with it. A message that has waited more than half of AckWait in the buffer
// gets InProgress() when it is handed to the Bus, so its handler has a whole AckWait.
func bufferSizes(batch int) (pull, queue, maxAckPending int) {
	batch = max(batch, 1)
	pull = min(8*batch, maxPull)
	queue = batch
	return pull, queue, pull + queue + batch
}

// PullSizes is what a subscription of the given batch size asks of the server: up to pull
// messages a pull request, and maxAckPending unacknowledged at once (see bufferSizes). It
// lets a benchmark give a hand-written client the same settings.
func PullSizes(batch int) (pull, maxAckPending int) {
	pull, _, maxAckPending = bufferSizes(batch)
	return pull, maxAckPending
}

// consumerConfig is the durable pull consumer of a group: every message of the retained
// stream (a group created after publishing still gets the earlier messages), explicit acks,
// the subscription's AckWait, and no delivery limit — the Bus dead-letters on the last attempt
// itself and then terminates the message, so the server must not give up first.
func consumerConfig(opts driver.SubscribeOptions) jetstream.ConsumerConfig {
	_, _, maxAck := bufferSizes(opts.BatchSize)
	return jetstream.ConsumerConfig{
		Durable:       DurableName(opts.Group),
		Description:   "pulse group " + opts.Group,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       opts.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: maxAck,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	}
}

// ensureConsumer creates or updates the group's durable consumer (and the stream), and
// returns it with the stream's creation time.
func (d *Driver) ensureConsumer(ctx context.Context, stream string, opts driver.SubscribeOptions) (jetstream.Consumer, time.Time, error) {
	for attempt := 0; ; attempt++ {
		st, err := d.ensureStream(ctx, stream)
		if err != nil {
			return nil, time.Time{}, err
		}
		actx, cancel := apiCtx(ctx)
		cons, err := st.CreateOrUpdateConsumer(actx, consumerConfig(opts))
		cancel()
		if errors.Is(err, jetstream.ErrStreamNotFound) && attempt == 0 {
			d.forgetStream(stream) // deleted behind our back: create it again
			continue
		}
		if err != nil {
			return nil, time.Time{}, d.wrap(ctx, fmt.Sprintf("create or update consumer %s on %s", DurableName(opts.Group), StreamName(d.cfg.Namespace, stream)), err)
		}
		return cons, st.CachedInfo().Created, nil
	}
}

// Subscribe implements driver.Driver: it creates or updates the stream and the group's
// durable consumer, and starts pulling.
func (d *Driver) Subscribe(ctx context.Context, stream string, opts driver.SubscribeOptions) (driver.Subscription, error) {
	if d.closed.Load() {
		return nil, transport.ErrClosed
	}
	if err := checkStream(stream); err != nil {
		return nil, err
	}
	if opts.Group == "" {
		opts.Group = transport.DefaultGroup
	}
	if opts.AckWait <= 0 {
		opts.AckWait = transport.DefaultAckWait
	}
	if opts.BatchSize < 1 {
		opts.BatchSize = transport.DefaultBatchSize
	}
	pull, queue, _ := bufferSizes(opts.BatchSize)
	s := &subscription{
		d:      d,
		stream: stream,
		opts:   opts,
		log:    d.log.With("stream", stream, "group", opts.Group, "consumer", opts.Consumer),
		pull:   pull,
		queue:  newMsgQueue(queue),
		stop:   make(chan struct{}),
		born:   time.Now(),
	}
	s.mu.Lock()
	err := s.startLocked(ctx)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	d.subsMu.Lock()
	d.subs[s] = struct{}{}
	d.subsMu.Unlock()
	if d.closed.Load() {
		s.Close()
		return nil, transport.ErrClosed
	}
	return s, nil
}

// subscription is one member of a group: a Consume on the group's durable consumer whose
// callback feeds a bounded queue that Receive empties.
type subscription struct {
	d      *Driver
	stream string
	opts   driver.SubscribeOptions
	log    *slog.Logger
	pull   int
	queue  *msgQueue
	stop   chan struct{} // closed by Close
	// born is when the subscription started: queued.at counts from it, because reading the
	// monotonic clock alone (time.Since) costs half of time.Now here (24 vs 43 ns), on every
	// message.
	born time.Time
	// scratch is Receive's buffer (Receive runs on one goroutine).
	scratch []queued
	// epoch is the Position epoch of what is delivered: the stream's creation time, set each
	// time the consumer is (re)started on the stream.
	epoch atomic.Uint64

	mu     sync.Mutex // guards the fields below
	closed bool
	cons   jetstream.Consumer
	cc     jetstream.ConsumeContext
	ccDone <-chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// startLocked (re)creates the consumer and starts consuming. s.mu is held.
func (s *subscription) startLocked(ctx context.Context) error {
	cons, created, err := s.d.ensureConsumer(ctx, s.stream, s.opts)
	if err != nil {
		return err
	}
	s.epoch.Store(uint64(max(created.UnixNano(), 0)))
	cc, err := cons.Consume(s.onMsg,
		jetstream.PullMaxMessagesWithBytesLimit(s.pull, max(pullBytes, 2*int(s.d.nc.MaxPayload()))),
		jetstream.PullExpiry(pullExpiry),
		jetstream.ConsumeErrHandler(s.onConsumeErr),
	)
	if err != nil {
		return s.d.wrap(ctx, "consume "+StreamName(s.d.cfg.Namespace, s.stream), err)
	}
	s.cons, s.cc, s.ccDone = cons, cc, cc.Closed()
	return nil
}

// onMsg runs on the pull subscription's goroutine, one message at a time. While the queue is
// full it blocks, and the client stops pulling (PullMaxMessages bounds what waits behind).
func (s *subscription) onMsg(m jetstream.Msg) {
	select {
	case <-s.stop:
		_ = m.Nak() // closing: hand it back for another member at once
		return
	default:
	}
	if !s.queue.push(queued{msg: m, at: time.Since(s.born)}, s.stop) {
		_ = m.Nak()
	}
}

func (s *subscription) onConsumeErr(cc jetstream.ConsumeContext, err error) {
	if errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, jetstream.ErrConsumerLeadershipChanged) {
		s.log.Debug("pull consumer notice", "err", err)
		if errors.Is(err, jetstream.ErrNoHeartbeat) {
			s.stopIfConsumerGone(cc)
		}
		return
	}
	s.log.Warn("pull consumer error", "err", err)
}

// stopIfConsumerGone stops cc when the server no longer knows its consumer, so that the next
// Receive creates the stream and consumer again (consuming). nats.go stops a Consume by
// itself only on the server's "consumer deleted" notice, which a client never gets when the
// consumer went while it was disconnected (a server that came back without its store, or
// with JetStream in memory): it would pull from nothing, missing heartbeats, forever. It runs
// on nats.go's goroutine of cc, after missed heartbeats (a pull expiry at most), so the lookup
// costs nothing while messages flow.
func (s *subscription) stopIfConsumerGone(cc jetstream.ConsumeContext) {
	s.mu.Lock()
	cons, current := s.cons, s.cc == cc && !s.closed
	s.mu.Unlock()
	if !current || !s.d.nc.IsConnected() {
		return
	}
	ctx, cancel := apiCtx(context.Background())
	defer cancel()
	_, err := cons.Info(ctx)
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		s.log.Warn("the server no longer has the group's consumer; creating it again", "err", err)
		cc.Stop()
	}
}

// consuming returns the channel closed when the current Consume stops, restarting it if it
// stopped (consumer or stream deleted, connection closed).
func (s *subscription) consuming(ctx context.Context) (<-chan struct{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, transport.ErrClosed
	}
	select {
	case <-s.ccDone:
	default:
		return s.ccDone, nil
	}
	s.log.Warn("pull consumer stopped; starting it again")
	s.d.forgetStream(s.stream)
	if err := s.startLocked(ctx); err != nil {
		return nil, err
	}
	return s.ccDone, nil
}

// Receive implements transport.Subscription. It blocks until a message is buffered,
// ctx is done (ctx.Err() is returned) or the subscription is closed (ErrClosed). While the
// connection is down and nothing is buffered it returns an error wrapping
// transport.ErrUnavailable at once; consuming resumes by itself after reconnecting.
func (s *subscription) Receive(ctx context.Context, limit int) ([]*driver.Delivery, error) {
	limit = max(limit, 1)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ccDone, err := s.consuming(ctx)
		if err != nil {
			return nil, err
		}
		up, changed := s.d.conn.get()
		taken := s.queue.take(s.scratch[:0], limit)
		if len(taken) == 0 {
			if !up {
				return nil, fmt.Errorf("jetstream: receive from %s: %w: disconnected from NATS, reconnecting", StreamName(s.d.cfg.Namespace, s.stream), transport.ErrUnavailable)
			}
			select {
			case <-s.queue.ready:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-s.stop:
				return nil, transport.ErrClosed
			case <-changed:
				continue
			case <-ccDone:
				continue
			}
		}
		out := make([]*driver.Delivery, 0, len(taken))
		slab := make([]driver.Delivery, len(taken)) // one allocation for the batch
		now := time.Now()
		for i, q := range taken {
			out = s.appendDelivery(out, &slab[i], q, now)
		}
		clear(taken)
		s.scratch = taken[:0]
		if len(out) > 0 {
			return out, nil
		}
	}
}

// appendDelivery fills rd from q and appends it to out, unless q has no JetStream metadata.
// now is when the batch is handed out.
func (s *subscription) appendDelivery(out []*driver.Delivery, rd *driver.Delivery, q queued, now time.Time) []*driver.Delivery {
	am, ok := ackFields(q.msg.Reply())
	if !ok { // a form of ack subject this reader does not know: ask nats.go
		meta, err := q.msg.Metadata()
		if err != nil {
			s.log.Error("dropping a message without JetStream metadata", "subject", q.msg.Subject(), "err", err)
			return out
		}
		am = ackMeta{delivered: meta.NumDelivered, streamSeq: meta.Sequence.Stream, stored: meta.Timestamp.UnixNano()}
	}
	if now.Sub(s.born)-q.at > s.opts.AckWait/2 {
		_ = q.msg.InProgress() // buffered long: give its handler a whole AckWait
	}
	// rd is zero, in the batch's slab: its fields are written one by one, which measured
	// cheaper than one struct write into heap memory (see deferredContext in
	// transport/tracing.go).
	rd.Body = q.msg.Data()
	rd.TransportID = am.transportID()
	rd.Attempt = int(am.delivered)
	rd.Position = driver.Position{Epoch: s.epoch.Load(), Seq: am.streamSeq}
	rd.StoredAt = time.Unix(0, am.stored)
	rd.Handle = q.msg
	if h := q.msg.Headers(); len(h) > 0 {
		rd.ID, rd.Headers = fromHeader(h)
	}
	return append(out, rd)
}

// ackMeta is what a delivery's ack subject tells.
type ackMeta struct {
	delivered, streamSeq uint64
	stored               int64 // when the server stored the message, unix nanoseconds
	// seqText is the stream sequence in decimal as the subject spells it, a substring of the
	// subject that the delivery's message keeps anyway: the TransportID without allocating.
	seqText string
}

// transportID is the stream sequence in decimal: the subject's own text where it has it.
func (m ackMeta) transportID() string {
	if m.seqText != "" {
		return m.seqText
	}
	return strconv.FormatUint(m.streamSeq, 10)
}

// ackFields reads a delivery's count, stream sequence and storage time from its ack subject,
// without allocating (nats.go's Metadata builds a struct and parses every field, ~0.3 µs per
// message here): $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>,
// or the same with <domain>.<account hash> after $JS.ACK. and a token more at the end. ok is
// false for anything else. One pass finds the dots and the numbers are read digit by digit:
// 87 → 55 ns a message with strings.Cut and strconv (BenchmarkAckFields).
func ackFields(reply string) (m ackMeta, ok bool) {
	rest, found := strings.CutPrefix(reply, "$JS.ACK.")
	if !found {
		return m, false
	}
	var dots [10]int // where each token after the first ends
	n := 0
	for i := 0; i < len(rest); i++ {
		if rest[i] == '.' {
			if n == len(dots) {
				return m, false
			}
			dots[n] = i
			n++
		}
	}
	var first int // the index in dots of the dot before <delivered>
	switch n + 1 {
	case 7:
		first = 1
	case 9, 10:
		first = 3
	default:
		return m, false
	}
	token := func(k int) string { // the k-th token after <delivered>'s dot, from 0
		end := len(rest)
		if j := first + k + 1; j < n {
			end = dots[j]
		}
		return rest[dots[first+k]+1 : end]
	}
	sseq := token(1)
	delivered, ok1 := decimal(token(0))
	streamSeq, ok2 := decimal(sseq)
	stored, ok3 := decimal(token(3))
	if !ok1 || !ok2 || !ok3 || delivered == 0 || streamSeq == 0 || stored > math.MaxInt64 {
		return ackMeta{}, false
	}
	if sseq[0] == '0' { // not as FormatUint spells it (the server never writes one so)
		sseq = ""
	}
	return ackMeta{delivered: delivered, streamSeq: streamSeq, stored: int64(stored), seqText: sseq}, true
}

// decimal reads s, 1 to 19 decimal digits (any uint64 up to 10¹⁹-1: the server's sequences
// and nanosecond times), or reports false.
func decimal(s string) (uint64, bool) {
	if len(s) == 0 || len(s) > 19 {
		return 0, false
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i] - '0'
		if c > 9 {
			return 0, false
		}
		v = v*10 + uint64(c)
	}
	return v, true
}

func handle(d *driver.Delivery) (jetstream.Msg, error) {
	m, ok := d.Handle.(jetstream.Msg)
	if !ok || m == nil {
		return nil, fmt.Errorf("jetstream: delivery %s was not received by this driver", d.TransportID)
	}
	return m, nil
}

// AcksAreLocal implements driver.LocalAcker: Ack only queues +ACKs on the connection.
func (s *subscription) AcksAreLocal() bool { return true }

// PositionsAreSequential implements driver.SequentialPositioner: Seq is the stream sequence,
// and Epoch the stream's creation time, which a stream created again makes greater.
func (s *subscription) PositionsAreSequential() bool { return true }

// Ack implements transport.Subscription with one fire-and-forget +ACK per delivery
// (they share the connection's write buffer); Close flushes them.
func (s *subscription) Ack(ctx context.Context, ds []*driver.Delivery) error {
	var errs []error
	for _, d := range ds {
		m, err := handle(d)
		if err == nil {
			err = m.Ack()
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return s.d.wrap(ctx, fmt.Sprintf("ack %d of %d deliveries", len(errs), len(ds)), errors.Join(errs...))
	}
	return nil
}

// Nak implements transport.Subscription: NakWithDelay, or a bare Nak when delay ≤ 0.
func (s *subscription) Nak(ctx context.Context, d *driver.Delivery, delay time.Duration) error {
	m, err := handle(d)
	if err != nil {
		return err
	}
	if delay > 0 {
		err = m.NakWithDelay(delay)
	} else {
		err = m.Nak()
	}
	return s.d.wrap(ctx, "nak "+d.TransportID, err)
}

// Term implements transport.Subscription.
func (s *subscription) Term(ctx context.Context, d *driver.Delivery) error {
	m, err := handle(d)
	if err != nil {
		return err
	}
	return s.d.wrap(ctx, "term "+d.TransportID, m.Term())
}

// Close implements transport.Subscription: it stops pulling, hands every buffered
// delivery back (Nak, so another member gets it without waiting for AckWait), and flushes
// the acks sent so far. Deliveries handed out by Receive and not settled are redelivered after
// AckWait. It is idempotent.
func (s *subscription) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		cc, ccDone := s.cc, s.ccDone
		s.mu.Unlock()
		close(s.stop)
		if cc != nil {
			if s.d.nc.IsConnected() {
				cc.Drain() // buffered messages pass through onMsg, which naks them
				t := time.NewTimer(closeDrainWait)
				select {
				case <-ccDone:
				case <-t.C:
					s.log.Warn("pull subscription did not drain in time; the rest comes back after AckWait")
				}
				t.Stop()
			} else {
				cc.Stop()
			}
		}
		for _, q := range s.queue.take(nil, s.queue.len()) {
			_ = q.msg.Nak()
		}
		if s.d.nc.IsConnected() {
			if err := s.d.nc.FlushTimeout(DefaultFlushTimeout); err != nil {
				s.closeErr = fmt.Errorf("jetstream: flush acks at close: %w: %w", transport.ErrUnavailable, err)
			}
		} else {
			s.log.Warn("closing while disconnected; unsent acks are lost and those messages come back after AckWait")
		}
		s.d.forget(s)
	})
	return s.closeErr
}
