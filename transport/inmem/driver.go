package inmem

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// Name is the registry name of this driver (EVENT_BUS_BACKEND=inmem).
const Name = "inmem"

// DefaultAckWait is used by a subscription whose options carry no AckWait.
const DefaultAckWait = transport.DefaultAckWait

func init() {
	transport.Register(Name, func(_ context.Context, cfg transport.Config) (driver.Driver, error) {
		return New(SharedBroker(cfg.Namespace), Options{StreamMaxLen: clampInt(cfg.StreamMaxLen)}), nil
	}, nil)
}

func clampInt(v int64) int {
	if v > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(v)
}

// Options configure a Driver. The zero value means the broker's settings.
type Options struct {
	// StreamMaxLen is the retention of the streams this driver creates (0 = the broker's
	// MaxLen). A stream keeps the retention it was created with.
	StreamMaxLen int
}

// Driver is a driver.Driver over a Broker; it also implements driver.Pinger,
// driver.StreamAdmin and driver.IdempotencyProvider. It is safe for concurrent use.
// After Close every method returns transport.ErrClosed; the broker and its messages stay.
type Driver struct {
	b    *Broker
	opts Options

	mu     sync.Mutex
	closed bool
	done   chan struct{} // closed by Close
	subs   map[*subscription]struct{}
}

var (
	_ driver.Driver              = (*Driver)(nil)
	_ driver.Pinger              = (*Driver)(nil)
	_ driver.StreamAdmin         = (*Driver)(nil)
	_ driver.IdempotencyProvider = (*Driver)(nil)
	_ driver.KeyValueProvider    = (*Driver)(nil)
)

// New returns a driver over b. Several drivers may share one broker; each is like a separate
// client connection.
func New(b *Broker, opts Options) *Driver {
	return &Driver{b: b, opts: opts, done: make(chan struct{}), subs: map[*subscription]struct{}{}}
}

// Broker returns the broker the driver uses.
func (d *Driver) Broker() *Broker { return d.b }

func (d *Driver) isClosed() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// Publish implements driver.Driver. The bodies and headers are copied; the caller keeps
// msgs. It blocks only while the stream is full and its oldest message is still needed by a
// group (see the package doc), and then returns ctx.Err() or ErrClosed with the ids of the
// messages already stored.
func (d *Driver) Publish(ctx context.Context, stream string, msgs []driver.Message) ([]string, error) {
	if d.isClosed() {
		return nil, transport.ErrClosed
	}
	if stream == "" {
		return nil, errors.New("inmem: publish: empty stream name")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	st := d.b.stream(stream, d.opts.StreamMaxLen)
	return st.publish(ctx, copyMessages(msgs), d.done)
}

// Subscribe implements driver.Driver: it joins group opts.Group of stream (creating the
// group at the start of the retained stream) as a new member.
func (d *Driver) Subscribe(ctx context.Context, stream string, opts driver.SubscribeOptions) (driver.Subscription, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if stream == "" || opts.Group == "" {
		return nil, fmt.Errorf("inmem: subscribe: stream %q and group %q must not be empty", stream, opts.Group)
	}
	if opts.AckWait <= 0 {
		opts.AckWait = DefaultAckWait
	}
	if opts.BatchSize < 1 {
		opts.BatchSize = transport.DefaultBatchSize
	}
	st := d.b.stream(stream, d.opts.StreamMaxLen)
	st.mu.Lock()
	g := st.group(opts.Group)
	st.mu.Unlock()
	t := time.NewTimer(time.Hour)
	t.Stop()
	s := &subscription{
		drv:     d,
		st:      st,
		g:       g,
		ackWait: durationNanos(opts.AckWait),
		batch:   opts.BatchSize,
		timer:   t,
		done:    make(chan struct{}),
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, transport.ErrClosed
	}
	d.subs[s] = struct{}{}
	return s, nil
}

// Close implements driver.Driver: it closes the driver's subscriptions (their pending
// deliveries are redelivered after AckWait) and wakes its blocked calls with ErrClosed. The
// broker is left as it is. Idempotent.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	close(d.done)
	subs := d.subs
	d.subs = nil
	d.mu.Unlock()
	for s := range subs {
		s.close()
	}
	return nil
}

// Ping implements driver.Pinger: nil until the driver is closed.
func (d *Driver) Ping(context.Context) error {
	if d.isClosed() {
		return transport.ErrClosed
	}
	return nil
}

// IdempotencyStore implements driver.IdempotencyProvider with a record shared by every
// driver of the broker (so by every Bus of the namespace in this process), bounded to
// transport.DefaultIdempotencySize keys.
func (d *Driver) IdempotencyStore(_ context.Context, ttl time.Duration) (driver.IdempotencyStore, error) {
	if d.isClosed() {
		return nil, transport.ErrClosed
	}
	return d.b.idempotency(ttl), nil
}

// rangeChunk is how many entries Range copies per lock hold.
const rangeChunk = 256

// Range implements driver.StreamAdmin. fn runs without the broker's lock held, so it may
// use the driver. The messages passed to fn alias the stream's storage and must not be
// modified.
func (d *Driver) Range(ctx context.Context, stream string, limit int, fn func(driver.StoredMessage) error) error {
	if d.isClosed() {
		return transport.ErrClosed
	}
	st := d.b.lookup(stream)
	if st == nil {
		return nil
	}
	if limit <= 0 {
		limit = math.MaxInt
	}
	chunk := make([]driver.StoredMessage, 0, min(limit, rangeChunk))
	var seq uint64
	for limit > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		chunk = chunk[:0]
		st.mu.Lock()
		seq = max(seq, st.first)
		for ; seq < st.next && len(chunk) < min(limit, rangeChunk); seq++ {
			if e := st.at(seq); !e.deleted {
				chunk = append(chunk, driver.StoredMessage{Message: e.message(), TransportID: e.tid})
			}
		}
		st.mu.Unlock()
		if len(chunk) == 0 {
			return nil
		}
		for _, m := range chunk {
			if err := fn(m); err != nil {
				return err
			}
		}
		limit -= len(chunk)
	}
	return nil
}

// Get implements driver.StreamAdmin. The message aliases the stream's storage and must
// not be modified.
func (d *Driver) Get(_ context.Context, stream, transportID string) (driver.StoredMessage, error) {
	if d.isClosed() {
		return driver.StoredMessage{}, transport.ErrClosed
	}
	notFound := fmt.Errorf("inmem: %s has no message %s: %w", stream, transportID, transport.ErrMessageNotFound)
	seq, err := strconv.ParseUint(transportID, 10, 64)
	st := d.b.lookup(stream)
	if err != nil || st == nil {
		return driver.StoredMessage{}, notFound
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if seq < st.first || seq >= st.next || st.at(seq).deleted {
		return driver.StoredMessage{}, notFound
	}
	e := st.at(seq)
	return driver.StoredMessage{Message: e.message(), TransportID: e.tid}, nil
}

// Delete implements driver.StreamAdmin. Deleted messages are no longer delivered to groups
// that have not yet been given them; deliveries already pending are not affected.
func (d *Driver) Delete(_ context.Context, stream string, transportIDs ...string) error {
	if d.isClosed() {
		return transport.ErrClosed
	}
	seqs := make([]uint64, len(transportIDs))
	for i, id := range transportIDs {
		seq, err := strconv.ParseUint(id, 10, 64)
		if err != nil || seq == 0 {
			return fmt.Errorf("inmem: delete from %s: invalid transport id %q (accepted: a sequence number ≥ 1)", stream, id)
		}
		seqs[i] = seq
	}
	st := d.b.lookup(stream)
	if st == nil {
		return nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, seq := range seqs {
		if seq < st.first || seq >= st.next {
			continue
		}
		if e := st.at(seq); !e.deleted {
			*e = entry{deleted: true}
			st.tombstones++
		}
	}
	st.dropHeadTombstones()
	st.wakePublishers()
	return nil
}

// Purge implements driver.StreamAdmin: it drops every retained message and every group's
// pending deliveries (settling them later is a no-op), and moves every group's cursor to the
// end.
func (d *Driver) Purge(_ context.Context, stream string) (int64, error) {
	if d.isClosed() {
		return 0, transport.ErrClosed
	}
	st := d.b.lookup(stream)
	if st == nil {
		return 0, nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	n := int64(st.length() - st.tombstones)
	st.buf, st.head, st.tombstones = nil, 0, 0
	st.first = st.next
	for _, g := range st.groupList {
		g.cursor = st.next
		for _, pe := range g.heap {
			pe.idx = -1
		}
		g.heap, g.pending = nil, 0
	}
	st.wakePublishers()
	return n, nil
}

// Info implements driver.StreamAdmin. An unknown stream has length 0; an unknown group has
// nothing pending and would read every retained message.
func (d *Driver) Info(_ context.Context, stream, group string) (driver.StreamInfo, error) {
	if d.isClosed() {
		return driver.StreamInfo{}, transport.ErrClosed
	}
	st := d.b.lookup(stream)
	if st == nil {
		return driver.StreamInfo{}, nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	info := driver.StreamInfo{Length: int64(st.length() - st.tombstones)}
	if group != "" {
		if g, ok := st.groups[group]; ok {
			info.Pending = int64(g.pending)
			info.Unread = g.unread()
		} else {
			info.Unread = info.Length
		}
	}
	return info, nil
}

// subscription is one member of a group.
type subscription struct {
	drv     *Driver
	st      *stream
	g       *group
	ackWait int64
	batch   int
	timer   *time.Timer     // owned by the Receive goroutine
	expired []*pendingEntry // scratch of take, guarded by st.mu

	closeOnce sync.Once
	done      chan struct{} // closed by Close
}

// delivery is a RawDelivery with what settling it needs; its Handle points to itself.
type delivery struct {
	driver.Delivery
	pe *pendingEntry
}

func (s *subscription) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Receive implements transport.Subscription. It returns up to max deliveries (max < 1
// means the subscription's BatchSize): first those of the group whose ack-wait or Nak delay
// has passed, then messages the group has not been given. It blocks until one is available,
// ctx is done (ctx.Err()) or the subscription or driver is closed (ErrClosed). The returned
// bodies alias the broker's storage and must not be modified.
func (s *subscription) Receive(ctx context.Context, max int) ([]*driver.Delivery, error) {
	if max < 1 {
		max = s.batch
	}
	st := s.st
	waiting := false
	defer func() {
		if waiting {
			st.mu.Lock()
			st.waiters--
			st.mu.Unlock()
		}
	}()
	for {
		if s.isClosed() {
			return nil, transport.ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		st.mu.Lock()
		if waiting {
			st.waiters--
			waiting = false
		}
		now := st.b.now()
		if out := s.take(now, max); len(out) > 0 {
			st.mu.Unlock()
			return out, nil
		}
		wait := int64(-1)
		if len(s.g.heap) > 0 {
			wait = s.g.heap[0].deadline - now
		}
		st.waiters++
		waiting = true
		signal := st.signal
		st.mu.Unlock()

		var timeout <-chan time.Time
		if wait >= 0 {
			s.timer.Reset(time.Duration(wait))
			timeout = s.timer.C
		}
		select {
		case <-signal:
		case <-timeout:
		case <-ctx.Done():
		case <-s.done:
		}
		if timeout != nil {
			s.timer.Stop()
		}
	}
}

// take hands out up to max deliveries. st.mu is held.
func (s *subscription) take(now int64, max int) []*driver.Delivery {
	g, st := s.g, s.st
	// Redeliveries first: pop the expired entries (up to max); they go back into the heap
	// below with their new deadline.
	expired := s.expired[:0]
	for len(expired) < max && len(g.heap) > 0 && g.heap[0].deadline <= now {
		pe := g.heap[0]
		g.remove(pe)
		expired = append(expired, pe)
	}
	if g.cursor < st.first {
		g.cursor = st.first
	}
	nNew := min(int(st.next-g.cursor), max-len(expired), st.maxAckPending-g.pending)
	if nNew < 0 {
		nNew = 0
	}
	if len(expired)+nNew == 0 {
		return nil
	}
	// The batch's deliveries and new pending entries are written field by field into zeroed
	// slots: cheaper than one struct write each into heap memory (see deferredContext in
	// transport/tracing.go).
	ds := make([]delivery, len(expired)+nNew)
	n := 0
	deadline := now + s.ackWait
	for _, pe := range expired {
		pe.attempts++
		pe.deadline = deadline
		g.push(pe)
		pe.deliverTo(&ds[n])
		n++
	}
	clear(expired)
	s.expired = expired[:0]
	// Then messages the group has not been given (skipping deleted ones).
	if nNew > 0 {
		pes := make([]pendingEntry, nNew)
		k := 0
		for k < nNew && g.cursor < st.next {
			e := st.at(g.cursor)
			g.cursor++
			if e.deleted {
				continue
			}
			pe := &pes[k]
			k++
			pe.g, pe.storedMsg, pe.tid, pe.seq, pe.stored = g, e.storedMsg, e.tid, e.seq, e.stored
			pe.attempts, pe.deadline = 1, deadline
			g.push(pe)
			g.pending++
			pe.deliverTo(&ds[n])
			n++
		}
		st.wakePublishers()
	}
	if n == 0 {
		return nil
	}
	ds = ds[:n]
	out := make([]*driver.Delivery, len(ds))
	for i := range ds {
		ds[i].Handle = &ds[i]
		out[i] = &ds[i].Delivery
	}
	return out
}

// deliverTo fills d, a zero delivery, with pe on its current attempt.
func (pe *pendingEntry) deliverTo(d *delivery) {
	d.Body, d.ID, d.HeaderFields = pe.msg.Body, pe.msg.ID, pe.fields
	d.TransportID, d.Attempt = pe.tid, pe.attempts
	d.Position = driver.Position{Seq: pe.seq}
	d.StoredAt = time.Unix(0, pe.stored)
	d.pe = pe
}

// pendingOf returns the pending entry of a delivery this group handed out, or an error for a
// delivery of another driver or group.
func (s *subscription) pendingOf(d *driver.Delivery) (*delivery, error) {
	h, ok := d.Handle.(*delivery)
	if !ok || h.pe == nil || h.pe.g != s.g {
		return nil, fmt.Errorf("inmem: delivery %s was not received by group %s of stream %s", d.TransportID, s.g.name, s.st.name)
	}
	return h, nil
}

// AcksAreLocal implements driver.LocalAcker: acks settle in memory.
func (s *subscription) AcksAreLocal() bool { return true }

// PositionsAreSequential implements driver.SequentialPositioner: Seq is the stream offset,
// which never starts over in a Broker (Purge keeps counting).
func (s *subscription) PositionsAreSequential() bool { return true }

// Ack implements transport.Subscription. Acking a delivery that was since redelivered
// still settles the message (its work is done); acking one already settled does nothing.
func (s *subscription) Ack(_ context.Context, ds []*driver.Delivery) error {
	if s.isClosed() {
		return transport.ErrClosed
	}
	var errs []error
	s.st.mu.Lock()
	for _, d := range ds {
		h, err := s.pendingOf(d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.g.settle(h.pe)
	}
	s.st.mu.Unlock()
	return errors.Join(errs...)
}

// Nak implements transport.Subscription: d is redelivered once delay has passed. A Nak
// of a delivery that was since redelivered to another member is ignored (that member owns
// it now).
func (s *subscription) Nak(_ context.Context, d *driver.Delivery, delay time.Duration) error {
	if s.isClosed() {
		return transport.ErrClosed
	}
	h, err := s.pendingOf(d)
	if err != nil {
		return err
	}
	st := s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	pe := h.pe
	if pe.idx < 0 || pe.attempts != h.Attempt {
		return nil
	}
	pe.deadline = st.b.now() + durationNanos(delay)
	s.g.fix(pe)
	if pe.idx == 0 {
		st.wake() // the group's next deadline moved earlier
	}
	return nil
}

// Term implements transport.Subscription: the message is settled and not delivered
// again.
func (s *subscription) Term(_ context.Context, d *driver.Delivery) error {
	if s.isClosed() {
		return transport.ErrClosed
	}
	h, err := s.pendingOf(d)
	if err != nil {
		return err
	}
	s.st.mu.Lock()
	s.g.settle(h.pe)
	s.st.mu.Unlock()
	return nil
}

// Close implements transport.Subscription: the member leaves; its unsettled deliveries
// are redelivered to other members after their ack-wait. Idempotent.
func (s *subscription) Close() error {
	s.close()
	s.drv.mu.Lock()
	delete(s.drv.subs, s)
	s.drv.mu.Unlock()
	return nil
}

func (s *subscription) close() {
	s.closeOnce.Do(func() { close(s.done) })
}
