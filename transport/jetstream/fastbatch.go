package jetstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// Fast-batch publishing (nats-server ≥ 2.12, "fast ingest", through orbit.go's jetstreamext):
// the messages of a batch are sent back to back and the server confirms them with one flow
// ack per fastBatchFlow messages and one ack at the commit, rather than a PubAck each.
// Measured on this 2-core machine against a nats-server process (211-byte messages, 100,000):
// one batch of everything 168k–172k msgs/s, batches of 256 with 16 in flight ~155k, async
// publishing with 4096 PubAcks outstanding ~141k. Hence one batch per stream that stays open
// for as long as Send calls keep coming (a lane), rather than one per call. The flow: with
// 2 acks outstanding, 256 gave 0.90–0.91× of `nats bench js pub fast` (its default flow 500,
// 1 outstanding) in the same runs of `make bench` (jetstream-external, 5 reps), 512 gave
// 0.95–0.99×, 1024 0.93–0.99×, and 512 with 4 outstanding 0.92–1.05× with a worse p99.
const (
	// fastBatchFlow is the flow asked for: the server acks every this many messages (it may
	// change it), and a Send waiting for its last message to be acked waits at most that many
	// more messages or the commit.
	fastBatchFlow = 512
	// fastBatchOutstanding is how many flow acks may be outstanding before the lane waits for
	// one: with fastBatchFlow, the window of unconfirmed messages of a lane.
	fastBatchOutstanding = 2
	// laneQueue bounds the Send calls waiting for a lane.
	laneQueue = 64
)

// Send is the driver.Sender of the Bus's envelope publishing. A call of more than one message
// on a stream whose server allows batch publishing (detected from the stream's configuration
// as the server reports it: Pulse asks for it, and a server older than 2.12 does not know it)
// goes through the stream's fast-batch lane; its messages are confirmed stored once the
// server's flow ack or commit covers the last of them. Nats-Msg-Id de-duplicates as in
// Publish. What the lane could not confirm (a leader lost mid-batch, no ack in time, batch
// publishing turned off) is published again with Publish's asynchronous path and its retries,
// so a message may be stored twice, which Nats-Msg-Id (v2) or the consumers' de-duplication
// absorbs. Other calls use that path directly.
func (d *Driver) Send(ctx context.Context, stream string, msgs []driver.Message) error {
	nmsgs, err := d.natsMessages(stream, msgs)
	if err != nil {
		return err
	}
	if len(nmsgs) > 1 {
		if l := d.fastLane(ctx, stream); l != nil {
			stored, err := l.send(ctx, nmsgs)
			switch {
			case err == nil:
				return nil
			case ctx.Err() != nil:
				return ctx.Err()
			case d.closed.Load():
				return transport.ErrClosed
			}
			d.log.Debug("fast batch incomplete; publishing the rest asynchronously",
				"stream", stream, "confirmed", stored, "of", len(nmsgs), "err", err)
			nmsgs = nmsgs[stored:]
		}
	}
	_, err = d.publishAsync(ctx, stream, nmsgs)
	return err
}

// fastLane returns stream's lane, starting it on first use, or nil when the stream does not
// take fast batches (or cannot be ensured now: Publish's path then retries and reports).
func (d *Driver) fastLane(ctx context.Context, stream string) *fastLane {
	st, err := d.ensureStream(ctx, stream)
	if err != nil || !st.CachedInfo().Config.AllowBatchPublish {
		return nil
	}
	d.lanesMu.Lock()
	defer d.lanesMu.Unlock()
	if d.closed.Load() {
		return nil
	}
	l := d.lanes[stream]
	if l == nil {
		l = &fastLane{d: d, stream: stream, reqs: make(chan *laneReq, laneQueue)}
		d.lanes[stream] = l
		d.lanesWG.Add(1)
		go l.run() // owned by the driver: ends at Close, which waits for it
	}
	if l.disabled.Load() {
		return nil
	}
	return l
}

// fastLane publishes one stream's Send calls, in the order they arrive, as one fast batch
// for as long as calls keep coming, and commits the batch when none is waiting.
type fastLane struct {
	d      *Driver
	stream string
	reqs   chan *laneReq
	// disabled is set once the server refused a batch because the stream does not allow
	// batch publishing (an operator turned it off): the stream's calls then go async.
	disabled atomic.Bool
}

// laneReq is one Send call in a lane.
type laneReq struct {
	msgs []*nats.Msg
	// first and last are the batch sequences of its first and last message sent (0: none).
	first, last uint64
	done        chan laneResult // buffered: the lane never waits for the caller
}

// laneResult is the outcome of a laneReq: its leading stored messages are confirmed; err
// is nil when all of them are.
type laneResult struct {
	stored int
	err    error
}

// send queues msgs and waits for their outcome.
func (l *fastLane) send(ctx context.Context, msgs []*nats.Msg) (int, error) {
	r := &laneReq{msgs: msgs, done: make(chan laneResult, 1)}
	select {
	case l.reqs <- r:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-l.d.done:
		return 0, transport.ErrClosed
	}
	select {
	case res := <-r.done:
		return res.stored, res.err
	case <-ctx.Done():
		return 0, ctx.Err() // the lane may still store them
	case <-l.d.done:
		return 0, transport.ErrClosed
	}
}

func (l *fastLane) run() {
	defer l.d.lanesWG.Done()
	for {
		select {
		case r := <-l.reqs:
			l.batch(r)
		case <-l.d.done:
			for {
				select {
				case r := <-l.reqs:
					r.done <- laneResult{err: transport.ErrClosed}
				default:
					return
				}
			}
		}
	}
}

// batch publishes r, and every call that is waiting each time one has been sent, as one fast
// batch, confirming each call once a flow ack covers its last message, and commits the batch
// when no call is waiting. On a failure every call not yet confirmed ends with the count of
// its messages that the server's acks covered (with gap detection on, a flow ack for message
// n means 1..n are stored).
func (l *fastLane) batch(r *laneReq) {
	fp, err := jetstreamext.NewFastPublisher(l.d.js, jetstreamext.FastPublishFlowControl{
		Flow: fastBatchFlow, MaxOutstandingAcks: fastBatchOutstanding, AckTimeout: l.d.pubAckTimeout,
	})
	if err != nil {
		r.done <- laneResult{err: fmt.Errorf("jetstream: fast batch: %w", err)}
		return
	}
	var open []*laneReq // sent, not yet confirmed, in batch order
	var seq, acked uint64
	for r != nil {
		open = append(open, r)
		for _, m := range r.msgs {
			ack, err := fp.AddMsg(m)
			if err != nil {
				l.fail(open, acked, err)
				return
			}
			seq = ack.BatchSequence
			if r.first == 0 {
				r.first = seq
			}
			r.last = seq
			acked = max(acked, ack.AckSequence)
		}
		open = confirm(open, acked)
		select {
		case r = <-l.reqs:
		default:
			r = nil
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := context.AfterFunc(l.d.lifetime, cancel)
	defer stop()
	back, err := fp.Close(ctx)
	if err != nil {
		l.fail(open, acked, err)
		return
	}
	l.committed(open, seq, back.BatchSize)
}

// errShortCommit is a fast batch's commit acknowledging fewer messages than the batch had.
var errShortCommit = errors.New("jetstream: fast batch committed short")

// committed ends the calls of open once the commit of a batch of sent messages acknowledged
// count of them. A commit can store fewer than were sent: a leader that took over mid-batch
// had only the batch's start (TestClusterLeaderFailover: 1 of 10 when the leader was shut
// down, where confirming all 10 lost 9 acknowledged messages). Only the first count are
// stored then; the calls with the rest end with errShortCommit and what of theirs is stored,
// for Send to publish the rest again.
func (l *fastLane) committed(open []*laneReq, sent, count uint64) {
	if count >= sent {
		confirm(open, sent)
		return
	}
	open = confirm(open, count)
	l.fail(open, count, fmt.Errorf("%w: the commit stored %d of the batch's %d messages", errShortCommit, count, sent))
}

// confirm ends the leading calls of open whose last message acked covers and returns the rest.
func confirm(open []*laneReq, acked uint64) []*laneReq {
	k := 0
	for ; k < len(open) && open[k].last <= acked; k++ {
		open[k].done <- laneResult{stored: len(open[k].msgs)}
	}
	return open[k:]
}

// fail ends every call of open with err and the count of its messages acked covers.
func (l *fastLane) fail(open []*laneReq, acked uint64, err error) {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstreamext.JSErrCodeFastBatchNotEnabled {
		if !l.disabled.Swap(true) {
			l.d.log.Warn("the stream refuses batch publishing; publishing it asynchronously", "stream", l.stream)
		}
	}
	err = l.d.wrap(context.Background(), "fast batch to "+Subject(l.d.cfg.Namespace, l.stream), err)
	for _, r := range open {
		stored := 0
		if r.first != 0 && acked >= r.first {
			stored = int(min(acked, r.last) - r.first + 1)
		}
		r.done <- laneResult{stored: stored, err: err}
	}
}

// laneSet is the driver's fast-batch lanes.
type laneSet struct {
	lanesMu sync.Mutex
	lanes   map[string]*fastLane // by logical stream
	lanesWG sync.WaitGroup
	// lifetime ends when the driver closes.
	lifetime context.Context
}
