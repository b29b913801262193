package transporttest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// rawSub subscribes directly to the driver (no Bus), closed when the test ends.
func (e *env) rawSub(drv driver.Driver, group, consumer string, batch int) driver.Subscription {
	e.t.Helper()
	sub, err := drv.Subscribe(e.ctx(), e.stream, driver.SubscribeOptions{
		Group: group, Consumer: consumer, AckWait: e.ackWait(), MaxDeliveries: 10, BatchSize: batch,
	})
	require.NoError(e.t, err, "driver Subscribe")
	e.t.Cleanup(func() { _ = sub.Close() })
	return sub
}

// receiveN receives exactly n deliveries (in as many batches as it takes).
func (e *env) receiveN(sub driver.Subscription, n int) []*driver.Delivery {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx(), e.timeout())
	defer cancel()
	var out []*driver.Delivery
	for len(out) < n {
		batch, err := sub.Receive(ctx, n-len(out))
		require.NoError(e.t, err, "Receive: %d of %d", len(out), n)
		require.LessOrEqual(e.t, len(batch), n-len(out), "Receive returned more than max")
		out = append(out, batch...)
	}
	return out
}

// receiveNone checks that nothing is delivered within d.
func (e *env) receiveNone(sub driver.Subscription, d time.Duration, msg string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx(), d)
	defer cancel()
	batch, err := sub.Receive(ctx, 10)
	require.Empty(e.t, batch, msg)
	require.ErrorIs(e.t, err, context.DeadlineExceeded, msg)
}

func rawMessages(n int) []driver.Message {
	msgs := make([]driver.Message, n)
	for i := range msgs {
		msgs[i] = driver.Message{Body: []byte(fmt.Sprintf(`{"raw":%d}`, i))}
	}
	return msgs
}

// testDriverReceiveContext proves that a driver's Receive blocks while there is nothing to
// deliver, wakes up when a message is published (by another driver), and returns ctx's error
// promptly once its context is cancelled or its deadline passes.
func testDriverReceiveContext(e *env) {
	drv := e.openDriver(e.config())
	sub := e.rawSub(drv, "g", "c", 8)

	// Cancelled while blocked.
	ctx, cancel := context.WithCancel(e.ctx())
	errc := make(chan error, 1)
	go func() {
		batch, err := sub.Receive(ctx, 8)
		if len(batch) > 0 {
			err = fmt.Errorf("got %d deliveries from an empty stream", len(batch))
		}
		errc <- err
	}()
	stop := time.AfterFunc(50*time.Millisecond, cancel)
	defer stop.Stop()
	select {
	case err := <-errc:
		require.ErrorIs(e.t, err, context.Canceled)
	case <-time.After(e.timeout()):
		e.t.Fatal("Receive did not return after its context was cancelled")
	}

	// Deadline.
	e.receiveNone(sub, 100*time.Millisecond, "an empty stream delivers nothing")

	// Woken by a publish from another driver.
	got := make(chan []*driver.Delivery, 1)
	rctx, rcancel := context.WithTimeout(e.ctx(), e.timeout())
	defer rcancel()
	go func() {
		batch, _ := sub.Receive(rctx, 8)
		got <- batch
	}()
	other := e.openDriver(e.config())
	_, err := other.Publish(e.ctx(), e.stream, rawMessages(1))
	require.NoError(e.t, err)
	select {
	case batch := <-got:
		require.Len(e.t, batch, 1, "the blocked Receive gets the published message")
		require.NoError(e.t, sub.Ack(e.ctx(), batch))
	case <-time.After(e.timeout()):
		e.t.Fatal("a blocked Receive was not woken by a publish")
	}
}

// testDriverNakDelay proves the driver's settlement vocabulary: Nak with a delay redelivers
// not before the delay (a bare immediate redelivery would spend every attempt at once) and
// then with the next attempt; Nak with no delay redelivers at once; Term settles for good (not
// redelivered even after ack-wait); every attempt is counted by the broker.
func testDriverNakDelay(e *env) {
	drv := e.openDriver(e.config())
	_, err := drv.Publish(e.ctx(), e.stream, rawMessages(1))
	require.NoError(e.t, err)
	sub := e.rawSub(drv, "g", "c", 4)
	d := e.receiveN(sub, 1)[0]
	require.Equal(e.t, 1, d.Attempt)

	delay := e.ackWait()
	require.NoError(e.t, sub.Nak(e.ctx(), d, delay))
	e.receiveNone(sub, delay/3, "Nak with a delay redelivered before the delay")
	d2 := e.receiveN(sub, 1)[0]
	require.Equal(e.t, 2, d2.Attempt)
	require.Equal(e.t, d.TransportID, d2.TransportID)
	require.Equal(e.t, string(d.Body), string(d2.Body))

	require.NoError(e.t, sub.Nak(e.ctx(), d2, 0))
	d3 := e.receiveN(sub, 1)[0]
	require.Equal(e.t, 3, d3.Attempt)

	require.NoError(e.t, sub.Term(e.ctx(), d3))
	e.receiveNone(sub, 2*e.ackWait(), "a terminated message was delivered again")
}

// testDriverHeadersAndIDs proves the driver's storage contract: Publish returns one distinct
// transport id per message in order; bodies and headers (the dead-letter metadata) come back
// unchanged, in publish order, under those ids; the driver does not alias the caller's
// buffers; and acked deliveries are not delivered again.
func testDriverHeadersAndIDs(e *env) {
	drv := e.openDriver(e.config())
	msgs := rawMessages(5)
	msgs[0].Headers = map[string]string{transport.DLQOriginalID: "17", transport.DLQReason: "max_deliveries", "x-unicode": "héllo"}
	msgs[3].Headers = map[string]string{"a": "1"}
	msgs[2].ID = "01JCONFORMANCE00000000000"
	want := make([][]byte, len(msgs))
	for i := range msgs {
		want[i] = slices.Clone(msgs[i].Body)
	}
	ids, err := drv.Publish(e.ctx(), e.stream, msgs)
	require.NoError(e.t, err)
	require.Len(e.t, ids, len(msgs))
	seen := map[string]bool{}
	for _, id := range ids {
		require.NotEmpty(e.t, id)
		require.False(e.t, seen[id], "transport id %s returned twice", id)
		seen[id] = true
	}
	for i := range msgs { // the caller may reuse its buffers once Publish returned
		clear(msgs[i].Body)
	}

	sub := e.rawSub(drv, "g", "c", 16)
	got := e.receiveN(sub, len(msgs))
	for i, d := range got {
		require.Equal(e.t, ids[i], d.TransportID, "deliveries come in publish order")
		require.Equal(e.t, string(want[i]), string(d.Body))
		headers := d.HeaderMap()
		require.Equal(e.t, len(msgs[i].Headers), len(headers), "headers of message %d: %v", i, headers)
		require.Equal(e.t, len(msgs[i].Headers) > 0, d.HasHeaders(), "message %d has headers", i)
		for k, v := range msgs[i].Headers {
			require.Equal(e.t, v, headers[k], "header %s of message %d", k, i)
			require.Equal(e.t, v, d.Header(k), "header %s of message %d", k, i)
		}
		require.Equal(e.t, 1, d.Attempt)
	}
	require.NoError(e.t, sub.Ack(e.ctx(), got))
	e.receiveNone(sub, 2*e.ackWait(), "an acked message was delivered again")
}

// testStreamAdmin proves a StreamAdmin's contract: Range yields retained messages in order
// with their ids and headers, honours limit and stops at fn's error; Info reports length and a
// group's pending deliveries; Delete removes by id; Purge empties the stream and says how
// many it removed.
func testStreamAdmin(e *env) {
	drv := e.openDriver(e.config())
	admin := drv.(driver.StreamAdmin)
	msgs := rawMessages(10)
	msgs[4].Headers = map[string]string{"k": "v"}
	ids, err := drv.Publish(e.ctx(), e.stream, msgs)
	require.NoError(e.t, err)

	var all []driver.StoredMessage
	require.NoError(e.t, admin.Range(e.ctx(), e.stream, 0, func(m driver.StoredMessage) error {
		all = append(all, m)
		return nil
	}))
	require.Len(e.t, all, 10)
	for i, m := range all {
		require.Equal(e.t, ids[i], m.TransportID)
		require.Equal(e.t, string(msgs[i].Body), string(m.Body))
	}
	require.Equal(e.t, "v", all[4].Headers["k"])

	one, err := admin.Get(e.ctx(), e.stream, ids[4])
	require.NoError(e.t, err)
	require.Equal(e.t, ids[4], one.TransportID)
	require.Equal(e.t, string(msgs[4].Body), string(one.Body))
	require.Equal(e.t, "v", one.Headers["k"])
	_, err = admin.Get(e.ctx(), e.stream+".none", ids[0])
	require.ErrorIs(e.t, err, transport.ErrMessageNotFound, "a stream that does not exist")

	n := 0
	require.NoError(e.t, admin.Range(e.ctx(), e.stream, 3, func(driver.StoredMessage) error { n++; return nil }))
	require.Equal(e.t, 3, n, "Range honours limit")
	errStop := errors.New("stop")
	n = 0
	err = admin.Range(e.ctx(), e.stream, 0, func(driver.StoredMessage) error { n++; return errStop })
	require.ErrorIs(e.t, err, errStop)
	require.Equal(e.t, 1, n, "Range stops at fn's error")

	sub := e.rawSub(drv, "g", "c", 4)
	e.receiveN(sub, 4)
	info, err := admin.Info(e.ctx(), e.stream, "g")
	require.NoError(e.t, err)
	require.EqualValues(e.t, 10, info.Length)
	// A driver may take more from the broker than Receive handed out (client-side prefetch,
	// as jetstream's pull consumer does): the group then holds at least the 4 received
	// unsettled, and pending plus not yet given still accounts for all 10.
	require.GreaterOrEqual(e.t, info.Pending, int64(4))
	require.LessOrEqual(e.t, info.Pending, int64(10))
	if info.Unread >= 0 {
		require.EqualValues(e.t, 10, info.Pending+info.Unread)
	}

	require.NoError(e.t, admin.Delete(e.ctx(), e.stream, ids[0], ids[9]))
	info, err = admin.Info(e.ctx(), e.stream, "")
	require.NoError(e.t, err)
	require.EqualValues(e.t, 8, info.Length)
	all = all[:0]
	require.NoError(e.t, admin.Range(e.ctx(), e.stream, 0, func(m driver.StoredMessage) error {
		all = append(all, m)
		return nil
	}))
	require.Len(e.t, all, 8)
	require.Equal(e.t, ids[1], all[0].TransportID)
	require.Equal(e.t, ids[8], all[7].TransportID)
	_, err = admin.Get(e.ctx(), e.stream, ids[9])
	require.ErrorIs(e.t, err, transport.ErrMessageNotFound, "a deleted message")

	purged, err := admin.Purge(e.ctx(), e.stream)
	require.NoError(e.t, err)
	require.EqualValues(e.t, 8, purged)
	info, err = admin.Info(e.ctx(), e.stream, "")
	require.NoError(e.t, err)
	require.Zero(e.t, info.Length)
}

// testPersistent proves, for brokers that outlive their clients, that messages published by a
// driver since closed are delivered to a group through a new driver, and that a group's
// position survives its driver: a third driver in the same group gets only what is new.
func testPersistent(e *env) {
	first := e.openDriver(e.config())
	_, err := first.Publish(e.ctx(), e.stream, rawMessages(5))
	require.NoError(e.t, err)
	require.NoError(e.t, first.Close())

	second := e.openDriver(e.config())
	sub := e.rawSub(second, "g", "c", 16)
	got := e.receiveN(sub, 5)
	require.NoError(e.t, sub.Ack(e.ctx(), got))
	require.NoError(e.t, second.Close())

	third := e.openDriver(e.config())
	ids, err := third.Publish(e.ctx(), e.stream, rawMessages(1))
	require.NoError(e.t, err)
	sub3 := e.rawSub(third, "g", "c", 16)
	got = e.receiveN(sub3, 1)
	require.Equal(e.t, ids[0], got[0].TransportID, "the group resumes after what it acked")
	require.Equal(e.t, 1, got[0].Attempt)
	require.NoError(e.t, sub3.Ack(e.ctx(), got))
}

// testClose proves that Close is idempotent on a Subscription, a Bus and a driver; that
// using a closed Bus or driver returns transport.ErrClosed (Publish, PublishRaw, Subscribe,
// Ping; driver Publish, Subscribe and Receive of a closed subscription); that closing a Bus
// stops its subscriptions; and that nothing started by any of it is left running
// (goleak.VerifyNone against the goroutines that existed before the test).
func testClose(e *env) {
	opts := append([]goleak.Option{goleak.IgnoreCurrent()}, e.h.LeakOptions...)
	func() {
		cfg := e.config()
		drv, err := e.h.Open(e.ctx(), cfg)
		require.NoError(e.t, err)
		bus, err := transport.New(drv, cfg)
		require.NoError(e.t, err)
		col := newCollector()
		sub1, err := bus.Subscribe(context.Background(), e.stream, col.handler("a", nil), transport.SubscribeOptions{Group: "g1"})
		require.NoError(e.t, err)
		sub2, err := bus.Subscribe(context.Background(), e.stream, col.handler("b", nil), transport.SubscribeOptions{Group: "g2"})
		require.NoError(e.t, err)
		require.NoError(e.t, bus.Publish(e.ctx(), e.stream, envelopes(0, 3)...))
		e.eventually(func() bool { return col.total() == 6 }, "both groups handle the messages")
		require.NoError(e.t, bus.Ping(e.ctx()))

		require.NoError(e.t, sub1.Close())
		require.NoError(e.t, sub1.Close(), "Subscription.Close is idempotent")
		require.NoError(e.t, bus.Close())
		require.NoError(e.t, bus.Close(), "Bus.Close is idempotent")
		select {
		case <-sub2.Done():
		default:
			e.t.Fatal("Bus.Close left a subscription running")
		}
		require.NoError(e.t, sub2.Close())

		require.ErrorIs(e.t, bus.Publish(e.ctx(), e.stream, envelopes(3, 1)...), transport.ErrClosed)
		_, err = bus.PublishRaw(e.ctx(), e.stream, rawMessages(1)...)
		require.ErrorIs(e.t, err, transport.ErrClosed)
		_, err = bus.Subscribe(context.Background(), e.stream, col.handler("c", nil), transport.SubscribeOptions{})
		require.ErrorIs(e.t, err, transport.ErrClosed)
		require.ErrorIs(e.t, bus.Ping(e.ctx()), transport.ErrClosed)

		// The driver on its own.
		drv2, err := e.h.Open(e.ctx(), cfg)
		require.NoError(e.t, err)
		rs, err := drv2.Subscribe(e.ctx(), e.stream, driver.SubscribeOptions{
			Group: "g3", Consumer: "c", AckWait: e.ackWait(), MaxDeliveries: 5, BatchSize: 8,
		})
		require.NoError(e.t, err)
		require.NoError(e.t, rs.Close())
		require.NoError(e.t, rs.Close(), "Subscription.Close is idempotent")
		_, err = rs.Receive(e.ctx(), 8)
		require.ErrorIs(e.t, err, transport.ErrClosed, "Receive after the subscription closed")
		require.NoError(e.t, drv2.Close())
		require.NoError(e.t, drv2.Close(), "Driver.Close is idempotent")
		_, err = drv2.Publish(e.ctx(), e.stream, rawMessages(1))
		require.ErrorIs(e.t, err, transport.ErrClosed)
		_, err = drv2.Subscribe(e.ctx(), e.stream, driver.SubscribeOptions{Group: "g4", Consumer: "c", AckWait: e.ackWait(), MaxDeliveries: 5, BatchSize: 8})
		require.ErrorIs(e.t, err, transport.ErrClosed)
	}()
	goleak.VerifyNone(e.t, opts...)
}

// testDriverPositions proves the broker's order on deliveries: every message has a Position,
// later publishes greater ones (across Publish calls and within a batch), a redelivery the
// same one as its first delivery, and a StoredAt by the broker's clock within the publish.
func testDriverPositions(e *env) {
	drv := e.openDriver(e.config())
	before := time.Now().Add(-time.Second) // the broker's clock may differ a little
	_, err := drv.Publish(e.ctx(), e.stream, rawMessages(2))
	require.NoError(e.t, err)
	_, err = drv.Publish(e.ctx(), e.stream, rawMessages(1))
	require.NoError(e.t, err)
	after := time.Now().Add(time.Second)

	sub := e.rawSub(drv, "g", "c", 16)
	got := e.receiveN(sub, 3)
	for i, d := range got {
		require.False(e.t, d.Position.IsZero(), "delivery %d has no position", i)
		require.True(e.t, !d.StoredAt.Before(before) && !d.StoredAt.After(after),
			"delivery %d stored at %v, published between %v and %v", i, d.StoredAt, before, after)
		if i > 0 {
			require.Equal(e.t, 1, d.Position.Compare(got[i-1].Position),
				"delivery %d at %v is not after delivery %d at %v", i, d.Position, i-1, got[i-1].Position)
		}
		p, err := driver.ParsePosition(d.Position.String())
		require.NoError(e.t, err)
		require.Equal(e.t, d.Position, p)
	}
	require.NoError(e.t, sub.Nak(e.ctx(), got[1], 0))
	again := e.receiveN(sub, 1)[0]
	require.Equal(e.t, got[1].TransportID, again.TransportID)
	require.Equal(e.t, got[1].Position, again.Position, "a redelivery keeps the message's position")
	require.True(e.t, got[1].StoredAt.Equal(again.StoredAt), "a redelivery keeps the message's storage time")
	require.NoError(e.t, sub.Ack(e.ctx(), []*driver.Delivery{got[0], got[2], again}))
}
