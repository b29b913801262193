package transport_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/transporttest"
)

const stream = "unit.events"

// newBus returns a Bus over a fake driver with short timings, and its recorder.
func newBus(t *testing.T, mods ...func(*transport.Config)) (*transport.Bus, *fakeDriver, *transporttest.Recorder) {
	t.Helper()
	rec := transporttest.NewRecorder()
	cfg := transport.Config{
		Track:           envelope.TrackV2,
		MaxDeliveries:   3,
		RetryBackoffMin: 10 * time.Millisecond,
		RetryBackoffMax: 15 * time.Millisecond,
		DrainTimeout:    2 * time.Second,
		Observer:        rec,
	}
	for _, m := range mods {
		m(&cfg)
	}
	drv := newFakeDriver()
	bus, err := transport.New(drv, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = bus.Close() })
	return bus, drv, rec
}

// subscribe subscribes h and returns the fake driver's subscription.
func subscribe(t *testing.T, bus *transport.Bus, drv *fakeDriver, h transport.Handler) (*transport.Subscription, *fakeSub) {
	t.Helper()
	sub, err := bus.Subscribe(context.Background(), stream, h, transport.SubscribeOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Close() })
	return sub, drv.nextSub(t)
}

// body encodes a v2 envelope of n.
func body(t *testing.T, bus *transport.Bus, n int) []byte {
	t.Helper()
	b, err := bus.Codec().Encode(&envelope.Envelope{Meta: envelope.Meta{SchemaID: "unit.Event"}, Payload: json.RawMessage(fmt.Sprintf(`{"n":%d}`, n))})
	require.NoError(t, err)
	return b
}

func ok(context.Context, *transport.Delivery) error { return nil }

// TestSuccessesAckedPerBatch proves that the successes of one batch are acked in one driver
// call and counted success.
func TestSuccessesAckedPerBatch(t *testing.T) {
	bus, drv, rec := newBus(t)
	_, fs := subscribe(t, bus, drv, ok)
	fs.deliver(raw("1", 1, body(t, bus, 1)), raw("2", 1, body(t, bus, 2)), raw("3", 1, body(t, bus, 3)))
	c := drv.next(t)
	require.Equal(t, "ack", c.kind)
	require.Equal(t, []string{"1", "2", "3"}, c.tids)
	require.Equal(t, 3, rec.Outcome(stream, transport.OutcomeSuccess))
}

// TestAckOverlapsNextBatchAndDrains proves that a batch's ack does not hold up the next
// batch (it is handled while the broker has not answered the ack), that acks are not sent
// concurrently, and that Close returns only once the last ack is done.
func TestAckOverlapsNextBatchAndDrains(t *testing.T) {
	bus, drv, _ := newBus(t)
	handled := make(chan string, 10)
	sub, fs := subscribe(t, bus, drv, func(_ context.Context, d *transport.Delivery) error {
		handled <- d.TransportID
		return nil
	})
	fs.ackGate = make(chan struct{})
	fs.deliver(raw("1", 1, body(t, bus, 1)), raw("2", 1, body(t, bus, 2)))
	require.Equal(t, "1", <-handled)
	require.Equal(t, "2", <-handled)
	c := drv.next(t)
	require.Equal(t, []string{"1", "2"}, c.tids, "the first batch's ack is out and unanswered")

	fs.deliver(raw("3", 1, body(t, bus, 3)))
	select {
	case id := <-handled:
		require.Equal(t, "3", id)
	case <-time.After(5 * time.Second):
		t.Fatal("the next batch waited for the first batch's ack")
	}

	closed := make(chan error, 1)
	go func() { closed <- sub.Close() }()
	fs.ackGate <- struct{}{} // answer the first ack: the second goes out
	c = drv.next(t)
	require.Equal(t, "ack", c.kind)
	require.Equal(t, []string{"3"}, c.tids)
	select {
	case <-closed:
		t.Fatal("Close returned with an ack outstanding")
	default:
	}
	fs.ackGate <- struct{}{}
	require.NoError(t, <-closed)
}

// localSub is a fake driver subscription whose acks do not wait for the broker.
type localSub struct{ *fakeSub }

func (localSub) AcksAreLocal() bool { return true }

// TestLocalAcksInline proves that a driver whose Ack does not wait for the broker is acked
// inline: the next batch is handled only once the previous batch's Ack has returned.
func TestLocalAcksInline(t *testing.T) {
	drv := newFakeDriver()
	bus, err := transport.New(localDriver{drv}, transport.Config{Track: envelope.TrackV2, DrainTimeout: 2 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = bus.Close() })
	handled := make(chan string, 10)
	sub, err := bus.Subscribe(context.Background(), stream, func(_ context.Context, d *transport.Delivery) error {
		handled <- d.TransportID
		return nil
	}, transport.SubscribeOptions{})
	require.NoError(t, err)
	fs := drv.nextSub(t)
	fs.ackGate = make(chan struct{})
	fs.deliver(raw("1", 1, body(t, bus, 1)))
	require.Equal(t, "1", <-handled)
	require.Equal(t, []string{"1"}, drv.next(t).tids)
	fs.deliver(raw("2", 1, body(t, bus, 2)))
	select {
	case id := <-handled:
		t.Fatalf("batch 2 (%s) handled while batch 1's Ack had not returned", id)
	case <-time.After(100 * time.Millisecond): // proving a wait: bounded window
	}
	fs.ackGate <- struct{}{}
	require.Equal(t, "2", <-handled)
	require.Equal(t, []string{"2"}, drv.next(t).tids)
	fs.ackGate <- struct{}{}
	require.NoError(t, sub.Close())
}

// localDriver hands out localSubs.
type localDriver struct{ *fakeDriver }

func (d localDriver) Subscribe(ctx context.Context, stream string, opts driver.SubscribeOptions) (driver.Subscription, error) {
	ds, err := d.fakeDriver.Subscribe(ctx, stream, opts)
	if err != nil {
		return nil, err
	}
	return localSub{ds.(*fakeSub)}, nil
}

// TestFailureBacksOffThenDeadLetters proves the retry policy on the Bus side: a failing
// handler's delivery is Nak'ed with RetryBackoffMin, then doubled and capped at
// RetryBackoffMax, and on attempt MaxDeliveries it is published to the DLQ with the original
// bytes and its metadata, then terminated.
func TestFailureBacksOffThenDeadLetters(t *testing.T) {
	bus, drv, rec := newBus(t)
	boom := errors.New("boom")
	_, fs := subscribe(t, bus, drv, func(context.Context, *transport.Delivery) error { return boom })
	b := body(t, bus, 1)
	fs.deliver(raw("7", 1, b))
	c := drv.next(t)
	requireNak(t, c, "7", 10*time.Millisecond)
	fs.deliver(raw("7", 2, b))
	c = drv.next(t)
	requireNak(t, c, "7", 15*time.Millisecond) // doubled, capped at max
	fs.deliver(raw("7", 3, b))
	c = drv.next(t)
	require.Equal(t, "publish", c.kind)
	require.Equal(t, stream+transport.DLQSuffix, c.stream)
	require.Len(t, c.msgs, 1)
	dl := c.msgs[0]
	require.Equal(t, string(b), string(dl.Body))
	require.Equal(t, "7", dl.Headers[transport.DLQOriginalID])
	require.Equal(t, "max_deliveries", dl.Headers[transport.DLQReason])
	require.Equal(t, "3", dl.Headers[transport.DLQAttempts])
	require.Equal(t, stream, dl.Headers[transport.DLQStream])
	require.Equal(t, "boom", dl.Headers[transport.DLQError])
	_, err := time.Parse(time.RFC3339Nano, dl.Headers[transport.DLQFailedAt])
	require.NoError(t, err)
	require.Equal(t, call{kind: "term", stream: stream, tids: []string{"7"}}, drv.next(t))
	require.Equal(t, 2, rec.Outcome(stream, transport.OutcomeError))
	require.Equal(t, 1, rec.Outcome(stream, transport.OutcomeDeadLetter))
	require.Equal(t, 1, rec.DeadLetters(stream, "max_deliveries"))
	require.Equal(t, 2, rec.Redeliveries(stream))
}

// TestPastLimitDeadLetteredWithoutHandling proves that a delivery whose attempt is already
// beyond MaxDeliveries — its earlier consumers died before settling it, as a message that
// crashes its process would — is dead-lettered without calling the handler again.
func TestPastLimitDeadLetteredWithoutHandling(t *testing.T) {
	bus, drv, rec := newBus(t)
	called := make(chan struct{}, 1)
	_, fs := subscribe(t, bus, drv, func(context.Context, *transport.Delivery) error {
		called <- struct{}{}
		return nil
	})
	b := body(t, bus, 1)
	fs.deliver(raw("9", 4, b))
	c := drv.next(t)
	require.Equal(t, "publish", c.kind)
	require.Equal(t, stream+transport.DLQSuffix, c.stream)
	require.Equal(t, "max_deliveries", c.msgs[0].Headers[transport.DLQReason])
	require.Equal(t, "4", c.msgs[0].Headers[transport.DLQAttempts])
	require.Equal(t, string(b), string(c.msgs[0].Body))
	require.Equal(t, call{kind: "term", stream: stream, tids: []string{"9"}}, drv.next(t))
	require.Len(t, called, 0, "the handler must not run past the limit")
	require.Equal(t, 1, rec.Outcome(stream, transport.OutcomeDeadLetter))
}

// TestHandlerPanicRecoveredAndRetried proves that a panicking handler neither crashes the
// subscription nor loses the message: the panic is a failure, retried with backoff, and the
// next attempt that succeeds is acked.
func TestHandlerPanicRecoveredAndRetried(t *testing.T) {
	bus, drv, rec := newBus(t)
	_, fs := subscribe(t, bus, drv, func(_ context.Context, d *transport.Delivery) error {
		if d.Attempt == 1 {
			panic("handler bug")
		}
		return nil
	})
	b := body(t, bus, 1)
	fs.deliver(raw("1", 1, b))
	requireNak(t, drv.next(t), "1", 10*time.Millisecond)
	fs.deliver(raw("1", 2, b))
	require.Equal(t, call{kind: "ack", stream: stream, tids: []string{"1"}}, drv.next(t))
	require.Equal(t, 1, rec.Outcome(stream, transport.OutcomeError))
	require.Equal(t, 1, rec.Outcome(stream, transport.OutcomeSuccess))
}

// TestErrStaleAcked proves that a handler returning (a wrapped) ErrStale gets its delivery
// acked, not retried, counted stale, and recorded as handled (a redelivery is a duplicate).
func TestErrStaleAcked(t *testing.T) {
	bus, drv, rec := newBus(t)
	calls := 0
	_, fs := subscribe(t, bus, drv, func(context.Context, *transport.Delivery) error {
		calls++
		return fmt.Errorf("older event: %w", transport.ErrStale)
	})
	b := body(t, bus, 1)
	fs.deliver(raw("1", 1, b))
	require.Equal(t, call{kind: "ack", stream: stream, tids: []string{"1"}}, drv.next(t))
	require.Equal(t, 1, rec.Outcome(stream, transport.OutcomeStale))
	fs.deliver(raw("1", 2, b))
	require.Equal(t, call{kind: "ack", stream: stream, tids: []string{"1"}}, drv.next(t))
	require.Equal(t, 1, rec.Outcome(stream, transport.OutcomeDuplicate))
	require.Equal(t, 1, calls)
}

// TestPoisonDeadLetteredAtOnce proves that an undecodable message and one the handler
// declares poison go to the DLQ on attempt 1 with their reasons, are terminated, and are
// counted rejected; the undecodable one never reaches the handler.
func TestPoisonDeadLetteredAtOnce(t *testing.T) {
	bus, drv, rec := newBus(t)
	calls := 0
	_, fs := subscribe(t, bus, drv, func(context.Context, *transport.Delivery) error {
		calls++
		return transport.Poison("refused", errors.New("never"))
	})
	fs.deliver(raw("1", 1, []byte("{not json")))
	c := drv.next(t)
	require.Equal(t, "publish", c.kind)
	require.Equal(t, "malformed", c.msgs[0].Headers[transport.DLQReason])
	require.Equal(t, "1", c.msgs[0].Headers[transport.DLQAttempts])
	require.Equal(t, "{not json", string(c.msgs[0].Body))
	require.Equal(t, call{kind: "term", stream: stream, tids: []string{"1"}}, drv.next(t))
	require.Zero(t, calls)

	fs.deliver(raw("2", 1, body(t, bus, 2)))
	c = drv.next(t)
	require.Equal(t, "publish", c.kind)
	require.Equal(t, "refused", c.msgs[0].Headers[transport.DLQReason])
	require.Equal(t, call{kind: "term", stream: stream, tids: []string{"2"}}, drv.next(t))
	require.Equal(t, 2, rec.Outcome(stream, transport.OutcomeRejected))
	require.Equal(t, map[string]int{"malformed": 1, "refused": 1}, rec.DeadLetterReasons(stream))
}

// TestDeadLetterWriteFailureRetries proves that when the DLQ cannot be written the original
// is Nak'ed for a later retry, not terminated: dead-lettering never loses a message.
func TestDeadLetterWriteFailureRetries(t *testing.T) {
	bus, drv, rec := newBus(t)
	drv.setPublishErr(errors.New("broker down"))
	_, fs := subscribe(t, bus, drv, ok)
	fs.deliver(raw("1", 1, []byte("garbage")))
	requireNak(t, drv.next(t), "1", 10*time.Millisecond)
	require.Zero(t, rec.DeadLetters(stream, "malformed"))
}

// TestDuplicateAckedWithoutHandling proves that a second delivery of an id already handled
// (the v2 producer id, under another transport id: a publish retry) is acked without calling
// the handler and counted duplicate.
func TestDuplicateAckedWithoutHandling(t *testing.T) {
	bus, drv, rec := newBus(t)
	calls := 0
	_, fs := subscribe(t, bus, drv, func(context.Context, *transport.Delivery) error { calls++; return nil })
	b := body(t, bus, 1)
	fs.deliver(raw("1", 1, b))
	require.Equal(t, "ack", drv.next(t).kind)
	fs.deliver(raw("2", 1, b))
	require.Equal(t, call{kind: "ack", stream: stream, tids: []string{"2"}}, drv.next(t))
	require.Equal(t, 1, calls)
	require.Equal(t, 1, rec.Outcome(stream, transport.OutcomeDuplicate))
}

// TestV1RedeliveryDeduplicated proves that a v1 message (no producer id) handled once is
// acked without handling when the broker delivers it again (its ack was lost), on a driver
// whose positions are sequential and on one whose are not. On the first, the record of it is
// a bit of the group's position window, not a hashed key: the map of keys stays empty (it
// held one key per message before the window, the largest cost of the Bus's own on
// JetStream's consume path).
func TestV1RedeliveryDeduplicated(t *testing.T) {
	v1 := &envelope.Codec{Track: envelope.TrackV1}
	for _, sequential := range []bool{true, false} {
		t.Run(fmt.Sprintf("sequential=%v", sequential), func(t *testing.T) {
			idem := transport.NewMemoryIdempotency(1000, time.Hour)
			bus, drv, rec := newBus(t, func(c *transport.Config) { c.Idempotency = idem })
			drv.sequential = sequential
			calls := 0
			_, fs := subscribe(t, bus, drv, func(context.Context, *transport.Delivery) error { calls++; return nil })
			const n = 100
			batch := make([]*driver.Delivery, n)
			for i := range batch {
				b, err := v1.Encode(&envelope.Envelope{Meta: envelope.Meta{SchemaID: "unit.Event"}, Payload: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))})
				require.NoError(t, err)
				batch[i] = raw(strconv.Itoa(i+1), 1, b)
				batch[i].Position = transport.Position{Epoch: 42, Seq: uint64(i + 1)}
			}
			fs.deliver(batch...)
			require.Len(t, drv.next(t).tids, n)
			if sequential {
				require.Zero(t, idem.Len(), "v1 deliveries are recorded by position, not as keys")
			} else {
				require.Equal(t, n, idem.Len(), "without sequential positions, each is a key")
			}
			again := *batch[6]
			again.Attempt = 2
			fs.deliver(&again)
			require.Equal(t, call{kind: "ack", stream: stream, tids: []string{"7"}}, drv.next(t))
			require.Equal(t, n, calls, "the redelivery is not handled again")
			require.Equal(t, 1, rec.Outcome(stream, transport.OutcomeDuplicate))

			other := *batch[6] // the same transport id in a stream created again: a new message
			other.Attempt, other.Position.Epoch = 2, 43
			if sequential {
				fs.deliver(&other)
				require.Equal(t, "ack", drv.next(t).kind)
				require.Equal(t, n+1, calls, "a newer epoch's message is handled")
			}
		})
	}
}

// TestIdempotencyUnavailableHandlesAnyway proves that a failing idempotency record does not
// stop consumption: at least once wins over exactly once.
func TestIdempotencyUnavailableHandlesAnyway(t *testing.T) {
	bus, drv, rec := newBus(t, func(c *transport.Config) { c.Idempotency = errIdem{} })
	_, fs := subscribe(t, bus, drv, ok)
	fs.deliver(raw("1", 1, body(t, bus, 1)))
	require.Equal(t, call{kind: "ack", stream: stream, tids: []string{"1"}}, drv.next(t))
	require.Equal(t, 1, rec.Outcome(stream, transport.OutcomeSuccess))
}

// TestDrainFinishesInFlight proves that Close lets an in-flight handler finish and acks its
// delivery before returning.
func TestDrainFinishesInFlight(t *testing.T) {
	bus, drv, _ := newBus(t)
	started, release := make(chan struct{}), make(chan struct{})
	sub, fs := subscribe(t, bus, drv, func(context.Context, *transport.Delivery) error {
		close(started)
		<-release
		return nil
	})
	fs.deliver(raw("1", 1, body(t, bus, 1)))
	<-started
	closed := make(chan error)
	go func() { closed <- sub.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while a handler was running")
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	require.Equal(t, call{kind: "ack", stream: stream, tids: []string{"1"}}, drv.next(t))
	require.NoError(t, <-closed)
	<-sub.Done()
}

// TestDrainDeadlineReleasesDelivery proves that a handler still running at the drain deadline
// has its context cancelled, and that its delivery, cut off, is handed back at once (Nak
// without delay) for another member rather than counted as a failure.
func TestDrainDeadlineReleasesDelivery(t *testing.T) {
	bus, drv, rec := newBus(t, func(c *transport.Config) { c.DrainTimeout = 30 * time.Millisecond })
	started := make(chan struct{})
	sub, fs := subscribe(t, bus, drv, func(ctx context.Context, _ *transport.Delivery) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	})
	fs.deliver(raw("1", 1, body(t, bus, 1)))
	<-started
	require.NoError(t, sub.Close())
	require.Equal(t, call{kind: "nak", stream: stream, tids: []string{"1"}, delay: 0}, drv.next(t))
	require.Zero(t, rec.Outcome(stream, transport.OutcomeError))
}

// TestReceiveErrorReportedAndRecovered proves that fetch errors are the subscription's
// health (Err) and are retried, and that Err clears once deliveries flow again.
func TestReceiveErrorReportedAndRecovered(t *testing.T) {
	bus, drv, _ := newBus(t)
	sub, fs := subscribe(t, bus, drv, ok)
	fs.recvErr <- fmt.Errorf("conn reset: %w", transport.ErrUnavailable)
	require.Eventually(t, func() bool { return errors.Is(sub.Err(), transport.ErrUnavailable) }, 5*time.Second, time.Millisecond)
	fs.deliver(raw("1", 1, body(t, bus, 1)))
	require.Equal(t, "ack", drv.next(t).kind)
	require.NoError(t, sub.Err())
}

// TestSubscribeContextCancelCloses proves that cancelling Subscribe's context drains and
// stops the subscription.
func TestSubscribeContextCancelCloses(t *testing.T) {
	bus, drv, _ := newBus(t)
	ctx, cancel := context.WithCancel(context.Background())
	sub, err := bus.Subscribe(ctx, stream, ok, transport.SubscribeOptions{})
	require.NoError(t, err)
	drv.nextSub(t)
	cancel()
	select {
	case <-sub.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("cancelling the context did not stop the subscription")
	}
}

// TestSubscribeValidates proves that Subscribe rejects a nil handler and invalid stream,
// group and consumer names, saying what is accepted.
func TestSubscribeValidates(t *testing.T) {
	bus, _, _ := newBus(t)
	_, err := bus.Subscribe(context.Background(), stream, nil, transport.SubscribeOptions{})
	require.ErrorContains(t, err, "nil handler")
	for _, tc := range []struct {
		stream string
		opts   transport.SubscribeOptions
	}{
		{"", transport.SubscribeOptions{}},
		{"a..b", transport.SubscribeOptions{}},
		{"a b", transport.SubscribeOptions{}},
		{stream, transport.SubscribeOptions{Group: "a.b"}},
		{stream, transport.SubscribeOptions{Consumer: "c d"}},
	} {
		_, err := bus.Subscribe(context.Background(), tc.stream, ok, tc.opts)
		require.ErrorContains(t, err, "accepted", "%q %+v", tc.stream, tc.opts)
	}
}

// TestPublish proves Bus.Publish: one driver call per batch, v2 producer ids passed to the
// driver for de-duplication, v1 without, every message reported to the Observer, encode and
// driver errors returned (the latter wrapped) and counted, nothing sent for an empty batch.
func TestPublish(t *testing.T) {
	for _, track := range []envelope.Track{envelope.TrackV1, envelope.TrackV2} {
		t.Run(string(track), func(t *testing.T) {
			bus, drv, rec := newBus(t, func(c *transport.Config) { c.Track = track })
			envs := []*envelope.Envelope{
				{Meta: envelope.Meta{SchemaID: "s"}, Payload: json.RawMessage(`{"a":1}`)},
				{Meta: envelope.Meta{SchemaID: "s"}, Payload: json.RawMessage(`{"a":2}`)},
			}
			require.NoError(t, bus.Publish(t.Context(), stream, envs...))
			c := drv.next(t)
			require.Equal(t, "publish", c.kind)
			require.Len(t, c.msgs, 2)
			for i, m := range c.msgs {
				require.Equal(t, envs[i].ID, m.ID)
				if track == envelope.TrackV2 {
					require.NotEmpty(t, m.ID)
				} else {
					require.Empty(t, m.ID)
				}
				d, err := bus.Codec().Decode(m.Body)
				require.NoError(t, err)
				require.JSONEq(t, string(envs[i].Payload), string(d.Payload))
			}
			require.Equal(t, 2, rec.PublishedCount(stream, true))

			require.NoError(t, bus.Publish(t.Context(), stream))
			require.Error(t, bus.Publish(t.Context(), "bad stream", envs...))
			require.ErrorContains(t, bus.Publish(t.Context(), stream, &envelope.Envelope{Payload: json.RawMessage(`{}`)}), "schema_id")

			down := errors.New("down")
			drv.setPublishErr(down)
			require.ErrorIs(t, bus.Publish(t.Context(), stream, envs[0]), down)
			require.Equal(t, 1, rec.PublishedCount(stream, false))
			select {
			case c := <-drv.calls:
				t.Fatalf("unexpected driver call %+v", c)
			default:
			}
		})
	}
}

// TestBusClose proves that Bus.Close stops every subscription, closes the driver once, is
// idempotent, and that the Bus then answers ErrClosed.
func TestBusClose(t *testing.T) {
	bus, drv, _ := newBus(t)
	sub, _ := subscribe(t, bus, drv, ok)
	require.NoError(t, bus.Close())
	<-sub.Done()
	require.Equal(t, "close", drv.next(t).kind)
	require.NoError(t, bus.Close())
	select {
	case c := <-drv.calls:
		t.Fatalf("second Close reached the driver: %+v", c)
	default:
	}
	require.ErrorIs(t, bus.Publish(t.Context(), stream), transport.ErrClosed)
	_, err := bus.PublishRaw(t.Context(), stream)
	require.ErrorIs(t, err, transport.ErrClosed)
	_, err = bus.Subscribe(t.Context(), stream, ok, transport.SubscribeOptions{})
	require.ErrorIs(t, err, transport.ErrClosed)
	require.ErrorIs(t, bus.Ping(t.Context()), transport.ErrClosed)
}

// TestConcurrentHandlersAckTogether proves that with Concurrency > 1 a batch's handlers run at
// once and their successes are still acked in one call.
func TestConcurrentHandlersAckTogether(t *testing.T) {
	bus, drv, _ := newBus(t)
	const n = 4
	arrived := make(chan struct{}, n)
	all := make(chan struct{})
	sub, err := bus.Subscribe(context.Background(), stream, func(context.Context, *transport.Delivery) error {
		arrived <- struct{}{}
		<-all // only returns once all n run at the same time
		return nil
	}, transport.SubscribeOptions{Concurrency: n})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Close() })
	fs := drv.nextSub(t)
	batch := make([]*driver.Delivery, n)
	for i := range batch {
		batch[i] = raw(strconv.Itoa(i), 1, body(t, bus, i))
	}
	fs.deliver(batch...)
	for range n {
		select {
		case <-arrived:
		case <-time.After(5 * time.Second):
			t.Fatal("handlers did not run concurrently")
		}
	}
	close(all)
	c := drv.next(t)
	require.Equal(t, "ack", c.kind)
	require.ElementsMatch(t, []string{"0", "1", "2", "3"}, c.tids)
}

// TestRejectedCountedUnderTheEnvelopesTrack proves a poison message is counted under the
// track its envelope declares whenever the envelope got that far (an invalid payload, a v2
// hash mismatch, a missing signature), and "unknown" only when it did not.
func TestRejectedCountedUnderTheEnvelopesTrack(t *testing.T) {
	schemas := envelope.NewSchemas()
	schemas.Register("unit.Event", func(p []byte) error {
		var v struct{ N int }
		if err := json.Unmarshal(p, &v); err != nil || v.N < 0 {
			return errors.New("n must be an integer ≥ 0")
		}
		return nil
	})
	bus, drv, rec := newBus(t, func(c *transport.Config) { c.Schemas = schemas })
	_, fs := subscribe(t, bus, drv, ok)
	v1 := envelope.Codec{Track: envelope.TrackV1}
	bad, err := v1.Encode(&envelope.Envelope{Meta: envelope.Meta{SchemaID: "unit.Event"}, Payload: json.RawMessage(`{"n":-1}`)})
	require.NoError(t, err)
	fs.deliver(raw("1", 1, bad))
	require.Equal(t, "publish", drv.next(t).kind)
	require.Equal(t, "term", drv.next(t).kind)
	require.Equal(t, 1, rec.OutcomeTrack(stream, "v1", transport.OutcomeRejected))

	v2 := body(t, bus, 2)
	tampered := []byte(strings.Replace(string(v2), `"n":2`, `"n":3`, 1))
	fs.deliver(raw("2", 1, tampered))
	require.Equal(t, "publish", drv.next(t).kind)
	require.Equal(t, "term", drv.next(t).kind)
	require.Equal(t, 1, rec.OutcomeTrack(stream, "v2", transport.OutcomeRejected))

	fs.deliver(raw("3", 1, []byte(`{"meta":{"track":"v9","schema_id":"unit.Event"},"ts":1,"payload":{}}`)))
	require.Equal(t, "publish", drv.next(t).kind)
	require.Equal(t, "term", drv.next(t).kind)
	require.Equal(t, 1, rec.OutcomeTrack(stream, "unknown", transport.OutcomeRejected))
}

// TestDeadLetterTooLargeKeepsTheOriginal proves a dead letter whose copy the broker refuses
// as too large is written as a pointer — the original's stream, id, size and SHA-256 — and
// the original settled at once: it stays in its stream, and nothing spins.
func TestDeadLetterTooLargeKeepsTheOriginal(t *testing.T) {
	bus, drv, rec := newBus(t)
	drv.maxBody = 200
	_, fs := subscribe(t, bus, drv, ok)
	big := []byte(`{"not an envelope":"` + strings.Repeat("x", 300) + `"}`)
	fs.deliver(raw("7", 1, big))
	c := drv.next(t)
	require.Equal(t, "publish", c.kind)
	require.Equal(t, stream+transport.DLQSuffix, c.stream)
	require.Equal(t, stream, c.msgs[0].Headers[transport.DLQKeptIn])
	require.Equal(t, "7", c.msgs[0].Headers[transport.DLQOriginalID])
	require.Equal(t, "malformed", c.msgs[0].Headers[transport.DLQReason])
	var p transport.DeadLetterPointer
	require.NoError(t, json.Unmarshal(c.msgs[0].Body, &p))
	sum := sha256.Sum256(big)
	require.Equal(t, transport.DeadLetterPointer{KeptIn: stream, OriginalID: "7", Size: len(big), SHA256: hex.EncodeToString(sum[:])}, p)
	require.Equal(t, call{kind: "term", stream: stream, tids: []string{"7"}}, drv.next(t))
	require.Equal(t, 1, rec.DeadLetters(stream, "malformed"))
}

// TestDeadLetterThatCannotBeWrittenIsSettledAtLast proves the bound on a dead letter that
// cannot be written for any other reason: the original is retried with backoff until
// deadLetterRetries deliveries past the attempt limit, then settled without a dead letter,
// the failures counted and reported.
func TestDeadLetterThatCannotBeWrittenIsSettledAtLast(t *testing.T) {
	bus, drv, rec := newBus(t) // MaxDeliveries 3
	drv.setPublishErr(errors.New("dead-letter stream gone"))
	sub, fs := subscribe(t, bus, drv, ok)
	for attempt := 1; attempt < 6; attempt++ {
		fs.deliver(raw("9", attempt, []byte("garbage")))
		c := drv.next(t)
		require.Equal(t, "nak", c.kind, "attempt %d", attempt)
	}
	fs.deliver(raw("9", 6, []byte("garbage"))) // 3 + deadLetterRetries
	require.Equal(t, call{kind: "term", stream: stream, tids: []string{"9"}}, drv.next(t))
	n, last := sub.DeadLetterFailures()
	require.Equal(t, uint64(6), n)
	require.ErrorContains(t, last, "dead-letter stream gone")
	require.ErrorContains(t, last, "attempt 6")
	require.Zero(t, rec.DeadLetters(stream, "malformed"), "no dead letter was written")
	require.Equal(t, 1, rec.Outcome(stream, transport.OutcomeRejected), "settled once, counted once")
}

// TestDeadLetterErrorBounded proves a dead letter carries at most 1 KiB of error text.
func TestDeadLetterErrorBounded(t *testing.T) {
	bus, drv, _ := newBus(t)
	_, fs := subscribe(t, bus, drv, func(context.Context, *transport.Delivery) error {
		return transport.Poison("refused", errors.New(strings.Repeat("é", 5000)))
	})
	fs.deliver(raw("1", 1, body(t, bus, 1)))
	c := drv.next(t)
	require.Equal(t, "publish", c.kind)
	require.LessOrEqual(t, len(c.msgs[0].Headers[transport.DLQError]), 1024)
	require.True(t, utf8.ValidString(c.msgs[0].Headers[transport.DLQError]))
}

// requireNak checks that c naks tid on the test stream after the retry delay base, give or
// take the ±50% jitter.
func requireNak(t *testing.T, c call, tid string, base time.Duration) {
	t.Helper()
	require.Equal(t, call{kind: "nak", stream: stream, tids: []string{tid}}, call{kind: c.kind, stream: c.stream, tids: c.tids, msgs: c.msgs})
	require.GreaterOrEqual(t, c.delay, base/2)
	require.LessOrEqual(t, c.delay, base*3/2+1)
}
