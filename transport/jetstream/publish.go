package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// maxHeaderValue bounds one header value (a dead letter's error text can hold a stack trace).
const maxHeaderValue = 4096

// Retry pacing of Publish.
const (
	publishRetryMin = 25 * time.Millisecond
	publishRetryMax = time.Second
)

// Publish stores msgs on the stream's subject with asynchronous publishes (at most
// DefaultPublishMaxPending in flight per driver) and returns once every one has its PubAck,
// with the stream sequences as transport ids. A message with an ID carries it as
// Nats-Msg-Id, so the stream stores it once however often it is sent within the duplicate
// window; RawMessage.Headers travel as NATS headers (CR and LF escaped as \r and \n, values
// cut at 4 KiB).
//
// A full in-flight window is waited out, never dropped. Messages that fail for a reason that
// may pass (disconnection, no PubAck in time, no stream leader) are sent again, with backoff,
// for up to DefaultPublishRetryFor; a message whose send is ambiguous may then be stored
// twice, which Nats-Msg-Id (v2) or the consumers' de-duplication absorbs. Retried messages
// may land after later ones of the same call. The stream is created on first use.
//
// Publish is safe for concurrent use and blocks until every PubAck is in, ctx is done
// (ctx.Err() is returned; some messages may be stored), the retry budget is spent, or the
// driver closes (ErrClosed). Because each call waits for its own PubAcks, throughput comes from
// large batches or several concurrent callers (see the package benchmarks). The bodies in msgs
// must not change while Publish runs, nor after an early return on ctx or Close (the client
// may still resend a message it has in flight).
func (d *Driver) Publish(ctx context.Context, stream string, msgs []driver.Message) ([]string, error) {
	nmsgs, err := d.natsMessages(stream, msgs)
	if err != nil {
		return nil, err
	}
	return d.publishAsync(ctx, stream, nmsgs)
}

// natsMessages checks a publish to stream and builds the NATS messages of msgs.
func (d *Driver) natsMessages(stream string, msgs []driver.Message) ([]*nats.Msg, error) {
	if d.closed.Load() {
		return nil, transport.ErrClosed
	}
	if err := checkStream(stream); err != nil {
		return nil, err
	}
	nmsgs := make([]*nats.Msg, len(msgs))
	slab := make([]nats.Msg, len(msgs)) // one allocation for the batch's messages
	subject := Subject(d.cfg.Namespace, stream)
	for i, m := range msgs {
		if err := toNATS(&slab[i], subject, m); err != nil {
			return nil, err
		}
		nmsgs[i] = &slab[i]
	}
	return nmsgs, nil
}

// publishAsync is Publish of NATS messages (see there).
func (d *Driver) publishAsync(ctx context.Context, stream string, nmsgs []*nats.Msg) ([]string, error) {
	ids := make([]string, len(nmsgs))
	if len(nmsgs) == 0 {
		return ids, nil
	}
	pending := make([]int, len(nmsgs))
	for i := range pending {
		pending[i] = i
	}
	var giveUp time.Time
	retry := backoff.NewExponentialBackOff() // ×1.5 per failure, ±50% jitter
	retry.InitialInterval, retry.MaxInterval = publishRetryMin, publishRetryMax
	for {
		var err error
		if _, err = d.ensureStream(ctx, stream); err == nil {
			pending, err = d.publishOnce(ctx, nmsgs, pending, ids)
			if err == nil {
				return ids, nil
			}
		}
		if ctx.Err() != nil {
			return ids, ctx.Err()
		}
		if d.closed.Load() {
			return ids, transport.ErrClosed
		}
		if !errors.Is(err, transport.ErrUnavailable) {
			return ids, err
		}
		if giveUp.IsZero() {
			giveUp = time.Now().Add(DefaultPublishRetryFor)
		} else if time.Now().After(giveUp) {
			return ids, fmt.Errorf("%w (gave up after %s)", err, DefaultPublishRetryFor)
		}
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
			d.forgetStream(stream) // deleted, or its leader moved: ensure it again
		}
		d.log.Debug("publish incomplete; retrying", "stream", stream, "left", len(pending), "err", err)
		t := time.NewTimer(retry.NextBackOff())
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ids, ctx.Err()
		case <-d.done:
			t.Stop()
			return ids, transport.ErrClosed
		}
	}
}

// pubBatch tracks the PubAcks of one publishOnce call. The JetStream context's ack and error
// handlers settle its messages (settlePub), so the publishing goroutine wakes once per batch
// rather than once per message.
type pubBatch struct {
	seqs []uint64 // stream sequence by position in the call; 0 = not stored
	left atomic.Int64
	done chan struct{} // closed when every message is settled

	mu      sync.Mutex
	lastErr error
}

// pubRef is what the driver's in-flight table holds for one sent message.
type pubRef struct {
	b *pubBatch
	k int
}

// pubTable maps each asynchronously published *nats.Msg to its place in its batch. (A mutex
// and a map: sync.Map allocated a node per message and cost ~0.35 µs per publish.)
type pubTable struct {
	mu sync.Mutex
	m  map[*nats.Msg]pubRef
}

// putAll registers msgs[idx[k]] as message k of b, for every k, under one lock.
func (t *pubTable) putAll(msgs []*nats.Msg, idx []int, b *pubBatch) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[*nats.Msg]pubRef, len(idx))
	}
	for k, i := range idx {
		t.m[msgs[i]] = pubRef{b: b, k: k}
	}
}

// len is the number of messages awaiting a PubAck.
func (t *pubTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// take removes m and returns its place, if it is registered.
func (t *pubTable) take(m *nats.Msg) (pubRef, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ref, ok := t.m[m]
	if ok {
		delete(t.m, m)
	}
	return ref, ok
}

// settlePub is the JetStream context's async ack and error handler: it settles message m of
// its batch with its PubAck or its error. A message is settled once: by its PubAck, an API
// error, a reset by a reconnect, a publisher reset (reclaimPending), or its batch
// giving up on it (giveUp); later calls for it find nothing to settle.
func (d *Driver) settlePub(m *nats.Msg, ack *jetstream.PubAck, err error) {
	ref, ok := d.inflight.take(m)
	if !ok {
		return
	}
	if errors.Is(err, jetstream.ErrJetStreamPublisherClosed) && !d.closed.Load() {
		err = jetstream.ErrAsyncPublishTimeout // reclaimPending: sent again, not given up
	}
	if err == nil && ack != nil {
		ref.b.seqs[ref.k] = ack.Sequence
	} else {
		if err == nil {
			err = jetstream.ErrInvalidJSAck
		}
		ref.b.mu.Lock()
		ref.b.lastErr = err
		ref.b.mu.Unlock()
	}
	if ref.b.left.Add(-1) == 0 {
		close(ref.b.done)
	}
}

// publishOnce sends msgs[idx...] and waits for their PubAcks, filling ids. It returns the
// indexes still to be sent and the error of the last failure (wrapped); a failure that may
// pass wraps transport.ErrUnavailable.
func (d *Driver) publishOnce(ctx context.Context, msgs []*nats.Msg, idx []int, ids []string) ([]int, error) {
	b := &pubBatch{seqs: make([]uint64, len(idx)), done: make(chan struct{})}
	b.left.Store(int64(len(idx)))
	// No publish options: with any option nats.go allocates option state and an empty header
	// map for every message. A message waits for a free in-flight slot for nats.go's default
	// stall wait (200 ms) before Publish checks its context and tries again.
	sent := 0
	var sendErr error
	d.inflight.putAll(msgs, idx, b) // before sending: a PubAck can come back at once
	for _, i := range idx {
		m := msgs[i]
		_, err := d.js.PublishMsgAsync(m)
		for errors.Is(err, jetstream.ErrTooManyStalledMsgs) && ctx.Err() == nil && !d.closed.Load() {
			// The in-flight window is full and no PubAck came within the stall wait: wait
			// again rather than drop the message.
			_, err = d.js.PublishMsgAsync(m)
		}
		if err != nil {
			sendErr = err
			break
		}
		sent++
	}
	for _, i := range idx[sent:] {
		d.inflight.take(msgs[i]) // not sent: no handler will settle them
	}
	if unsent := int64(len(idx) - sent); unsent > 0 && b.left.Add(-unsent) == 0 {
		close(b.done)
	}
	wait := time.NewTimer(d.pubAckTimeout)
	defer wait.Stop()
	select {
	case <-b.done:
	case <-wait.C:
		d.giveUp(msgs, idx[:sent], b)
		<-b.done // closes at once: the rest were settled or are being settled now
	case <-ctx.Done():
		return idx, ctx.Err()
	case <-d.done:
		return idx, transport.ErrClosed
	}
	var failed []int
	for k, i := range idx {
		if k >= sent || b.seqs[k] == 0 {
			failed = append(failed, i)
			continue
		}
		ids[i] = strconv.FormatUint(b.seqs[k], 10)
	}
	if len(failed) == 0 {
		return nil, nil
	}
	lastErr := sendErr
	if lastErr == nil {
		b.mu.Lock()
		lastErr = b.lastErr
		b.mu.Unlock()
	}
	return failed, d.wrap(ctx, fmt.Sprintf("publish %d of %d message(s) to %s", len(failed), len(idx), msgs[0].Subject), lastErr)
}

// giveUp settles the messages of batch b (msgs[sent...]) still awaiting a PubAck as failed
// with ErrAsyncPublishTimeout, so that Publish sends them again; a PubAck that comes for one
// of them later is ignored. nats.go keeps no timer per message, so it still counts them as
// pending until their PubAck comes, a reconnect resets them, or reclaimPending does.
func (d *Driver) giveUp(msgs []*nats.Msg, sent []int, b *pubBatch) {
	n := int64(0)
	for _, i := range sent {
		if _, ok := d.inflight.take(msgs[i]); ok {
			n++
		}
	}
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.lastErr = jetstream.ErrAsyncPublishTimeout
	b.mu.Unlock()
	if b.left.Add(-n) == 0 {
		close(b.done)
	}
	d.reclaimPending()
}

// reclaimPending resets nats.go's asynchronous publisher once publishes given up on take a
// quarter of its in-flight window (their PubAcks were lost, e.g. with a stream leader), so
// that they cannot fill it and stall every publish. The reset fails every publish still in
// flight, which settlePub turns into a retry.
func (d *Driver) reclaimPending() {
	abandoned := d.js.PublishAsyncPending() - d.inflight.len()
	if abandoned < DefaultPublishMaxPending/4 {
		return
	}
	d.log.Warn("resetting the asynchronous publisher: PubAcks were lost", "abandoned", abandoned)
	d.js.CleanupPublisher()
}

// toNATS builds the NATS message of m in nm. Headers are set directly (NATS header names are
// case sensitive and kept as given).
func toNATS(nm *nats.Msg, subject string, m driver.Message) error {
	*nm = nats.Msg{Subject: subject, Data: m.Body}
	if m.ID == "" && len(m.Headers) == 0 {
		return nil
	}
	nm.Header = make(nats.Header, len(m.Headers)+1)
	for k, v := range m.Headers {
		if k == "" || strings.ContainsAny(k, " \t\r\n:") {
			return fmt.Errorf("jetstream: invalid header name %q (accepted: non-empty, without spaces, colons or line breaks)", k)
		}
		nm.Header[k] = []string{headerValue(v)}
	}
	if m.ID != "" {
		if strings.ContainsAny(m.ID, "\r\n") {
			return fmt.Errorf("jetstream: invalid message id %q (accepted: a single line)", m.ID)
		}
		nm.Header[jetstream.MsgIDHeader] = []string{m.ID}
	}
	return nil
}

var headerEscaper = strings.NewReplacer("\r", `\r`, "\n", `\n`)

func headerValue(v string) string {
	v = headerEscaper.Replace(v)
	if len(v) > maxHeaderValue {
		v = strings.ToValidUTF8(v[:maxHeaderValue-len("…")], "") + "…"
	}
	return v
}

// fromHeader splits NATS headers into the producer id (Nats-Msg-Id) and the other headers;
// headers the server adds (Nats-*) are left out.
func fromHeader(h nats.Header) (id string, headers map[string]string) {
	for k, vs := range h {
		if len(vs) == 0 {
			continue
		}
		if k == jetstream.MsgIDHeader {
			id = vs[0]
			continue
		}
		if strings.HasPrefix(k, "Nats-") {
			continue
		}
		if headers == nil {
			headers = make(map[string]string, len(h))
		}
		headers[k] = vs[0]
	}
	return id, headers
}
