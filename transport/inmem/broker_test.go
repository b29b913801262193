package inmem_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/inmem"
)

const wait = 5 * time.Second

func msgs(from, n int) []driver.Message {
	out := make([]driver.Message, n)
	for i := range out {
		out[i] = driver.Message{Body: []byte(fmt.Sprintf("m%d", from+i))}
	}
	return out
}

func newDriver(t *testing.T, b *inmem.Broker) *inmem.Driver {
	t.Helper()
	d := inmem.New(b, inmem.Options{})
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func sub(t *testing.T, d *inmem.Driver, stream, group string, ackWait time.Duration) driver.Subscription {
	t.Helper()
	s, err := d.Subscribe(t.Context(), stream, driver.SubscribeOptions{
		Group: group, Consumer: "c", AckWait: ackWait, MaxDeliveries: 5, BatchSize: 100,
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func receive(t *testing.T, s driver.Subscription, max int) []*driver.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	ds, err := s.Receive(ctx, max)
	require.NoError(t, err)
	return ds
}

func bodies(ds []*driver.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = string(d.Body)
	}
	return out
}

func rangeBodies(t *testing.T, d *inmem.Driver, stream string) []string {
	t.Helper()
	var out []string
	require.NoError(t, d.Range(t.Context(), stream, 0, func(m driver.StoredMessage) error {
		out = append(out, string(m.Body))
		return nil
	}))
	return out
}

// TestRetentionTrimsWithoutGroups proves that a stream nobody reads keeps only its newest
// MaxLen messages and that Publish never blocks on it.
func TestRetentionTrimsWithoutGroups(t *testing.T) {
	d := newDriver(t, inmem.NewBroker(inmem.BrokerOptions{MaxLen: 3}))
	for i := range 5 {
		_, err := d.Publish(t.Context(), "s", msgs(i*2, 2))
		require.NoError(t, err)
	}
	require.Equal(t, []string{"m7", "m8", "m9"}, rangeBodies(t, d, "s"))
	info, err := d.Info(t.Context(), "s", "late")
	require.NoError(t, err)
	require.EqualValues(t, 3, info.Length)
	require.EqualValues(t, 3, info.Unread, "a group created now would read the three retained")
	s := sub(t, d, "s", "late", time.Minute)
	require.Equal(t, []string{"m7", "m8", "m9"}, bodies(receive(t, s, 10)))

	ids, err := d.Publish(t.Context(), "one-batch", msgs(0, 5)) // a batch longer than MaxLen
	require.NoError(t, err)
	require.Equal(t, []string{"1", "2", "3", "4", "5"}, ids)
	require.Equal(t, []string{"m2", "m3", "m4"}, rangeBodies(t, d, "one-batch"))
}

// TestFullStreamBlocksPublisherUntilGroupReads proves the back-pressure: when the oldest
// retained message has not yet been given to some group, Publish waits (and gives up with
// ctx's error, saying which messages it stored) until that group reads on.
func TestFullStreamBlocksPublisherUntilGroupReads(t *testing.T) {
	d := newDriver(t, inmem.NewBroker(inmem.BrokerOptions{MaxLen: 2}))
	s := sub(t, d, "s", "g", time.Minute) // the group exists, at the start
	ids, err := d.Publish(t.Context(), "s", msgs(0, 2))
	require.NoError(t, err)
	require.Len(t, ids, 2)

	short, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	ids, err = d.Publish(short, "s", msgs(2, 2))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Empty(t, ids, "nothing could be stored")

	done := make(chan error, 1)
	go func() {
		_, err := d.Publish(t.Context(), "s", msgs(2, 2))
		done <- err
	}()
	require.Equal(t, []string{"m0", "m1"}, bodies(receive(t, s, 10))) // reading frees room
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(wait):
		t.Fatal("Publish stayed blocked after the group read on")
	}
	require.Equal(t, []string{"m2", "m3"}, bodies(receive(t, s, 10)))
}

// TestBlockedPublishEndsOnClose proves that closing the driver wakes a Publish blocked on
// retention with ErrClosed.
func TestBlockedPublishEndsOnClose(t *testing.T) {
	b := inmem.NewBroker(inmem.BrokerOptions{MaxLen: 1})
	d := newDriver(t, b)
	sub(t, newDriver(t, b), "s", "g", time.Minute)
	_, err := d.Publish(t.Context(), "s", msgs(0, 1))
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := d.Publish(context.Background(), "s", msgs(1, 1))
		done <- err
	}()
	require.Never(t, func() bool { return len(done) > 0 }, 30*time.Millisecond, time.Millisecond, "Publish should block")
	require.NoError(t, d.Close())
	select {
	case err := <-done:
		require.ErrorIs(t, err, transport.ErrClosed)
	case <-time.After(wait):
		t.Fatal("Close did not wake the blocked Publish")
	}
}

// TestTrimmedPendingStillRedelivered proves that trimming never loses a message still being
// worked on: a delivery whose message was evicted from the log is still redelivered after
// ack-wait, bytes intact.
func TestTrimmedPendingStillRedelivered(t *testing.T) {
	d := newDriver(t, inmem.NewBroker(inmem.BrokerOptions{MaxLen: 2}))
	s := sub(t, d, "s", "g", 50*time.Millisecond)
	_, err := d.Publish(t.Context(), "s", msgs(0, 2))
	require.NoError(t, err)
	first := receive(t, s, 1) // m0 pending, never acked
	require.Equal(t, []string{"m0"}, bodies(first))
	require.Equal(t, []string{"m1"}, bodies(receive(t, s, 1)))
	_, err = d.Publish(t.Context(), "s", msgs(2, 2)) // both given out: m0, m1 evicted
	require.NoError(t, err)
	require.Equal(t, []string{"m2", "m3"}, rangeBodies(t, d, "s"))

	got := map[string]int{}
	for len(got) < 4 {
		for _, dl := range receive(t, s, 10) {
			got[string(dl.Body)] = dl.Attempt
			if string(dl.Body) != "m0" {
				require.NoError(t, s.Ack(t.Context(), []*driver.Delivery{dl}))
			}
		}
	}
	require.Equal(t, 2, got["m0"], "m0 redelivered after ack-wait although trimmed")
}

// TestMaxAckPendingBoundsAGroup proves that a group holds at most MaxAckPending unsettled
// deliveries: beyond it Receive waits, and an Ack lets it go on.
func TestMaxAckPendingBoundsAGroup(t *testing.T) {
	d := newDriver(t, inmem.NewBroker(inmem.BrokerOptions{MaxAckPending: 2}))
	s := sub(t, d, "s", "g", time.Minute)
	_, err := d.Publish(t.Context(), "s", msgs(0, 5))
	require.NoError(t, err)
	first := receive(t, s, 10)
	require.Equal(t, []string{"m0", "m1"}, bodies(first))

	short, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	ds, err := s.Receive(short, 10)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Empty(t, ds)

	got := make(chan []*driver.Delivery, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		ds, _ := s.Receive(ctx, 10)
		got <- ds
	}()
	require.NoError(t, s.Ack(t.Context(), first[:1]))
	select {
	case ds := <-got:
		require.Equal(t, []string{"m2"}, bodies(ds), "one settled, one more given")
	case <-time.After(wait):
		t.Fatal("an Ack did not wake the Receive waiting on MaxAckPending")
	}
}

// TestAckWaitTimerWakesReceive proves that a Receive blocked with nothing new wakes up by
// itself when a pending delivery's ack-wait passes, and hands it out as the next attempt.
func TestAckWaitTimerWakesReceive(t *testing.T) {
	d := newDriver(t, inmem.NewBroker(inmem.BrokerOptions{}))
	a := sub(t, d, "s", "g", 40*time.Millisecond)
	b := sub(t, d, "s", "g", 40*time.Millisecond)
	_, err := d.Publish(t.Context(), "s", msgs(0, 1))
	require.NoError(t, err)
	require.Equal(t, 1, receive(t, a, 1)[0].Attempt)
	ds := receive(t, b, 1) // blocks until the timer fires
	require.Equal(t, 2, ds[0].Attempt)
	require.Equal(t, "m0", string(ds[0].Body))
}

// TestStaleSettlement proves who may settle a redelivered message: a Nak from the earlier
// delivery is ignored (the new holder owns it), while an Ack from it settles the message,
// whose work is done.
func TestStaleSettlement(t *testing.T) {
	d := newDriver(t, inmem.NewBroker(inmem.BrokerOptions{}))
	a := sub(t, d, "s", "g", 30*time.Millisecond)
	b := sub(t, d, "s", "g", time.Minute)
	_, err := d.Publish(t.Context(), "s", msgs(0, 1))
	require.NoError(t, err)
	old := receive(t, a, 1)[0]
	cur := receive(t, b, 1)[0] // after a's ack-wait
	require.Equal(t, 2, cur.Attempt)
	require.NoError(t, a.Nak(t.Context(), old, 0))
	info, err := d.Info(t.Context(), "s", "g")
	require.NoError(t, err)
	require.EqualValues(t, 1, info.Pending)
	short, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	ds, _ := b.Receive(short, 1)
	require.Empty(t, ds, "a stale Nak must not hand the message out again")
	require.NoError(t, a.Ack(t.Context(), []*driver.Delivery{old}))
	info, err = d.Info(t.Context(), "s", "g")
	require.NoError(t, err)
	require.Zero(t, info.Pending)
	require.NoError(t, b.Ack(t.Context(), []*driver.Delivery{cur}), "settling twice is harmless")
}

// TestForeignDeliveryRejected proves that settling a delivery of another group (or driver)
// is an error naming it, not a silent corruption of someone else's pending table.
func TestForeignDeliveryRejected(t *testing.T) {
	d := newDriver(t, inmem.NewBroker(inmem.BrokerOptions{}))
	g1 := sub(t, d, "s", "g1", time.Minute)
	g2 := sub(t, d, "s", "g2", time.Minute)
	_, err := d.Publish(t.Context(), "s", msgs(0, 1))
	require.NoError(t, err)
	ds := receive(t, g1, 1)
	require.ErrorContains(t, g2.Ack(t.Context(), ds), "not received by group g2")
	require.Error(t, g2.Nak(t.Context(), ds[0], 0))
	require.Error(t, g2.Term(t.Context(), ds[0]))
	foreign := &driver.Delivery{TransportID: "1", Attempt: 1}
	require.Error(t, g1.Ack(t.Context(), []*driver.Delivery{foreign}))
}

// TestDeleteAndPurge proves that a deleted message is skipped by groups that have not read
// it, that Purge drops pending deliveries too (settling them later does nothing), and that
// malformed ids are rejected saying what is accepted.
func TestDeleteAndPurge(t *testing.T) {
	d := newDriver(t, inmem.NewBroker(inmem.BrokerOptions{}))
	ids, err := d.Publish(t.Context(), "s", msgs(0, 3))
	require.NoError(t, err)
	require.NoError(t, d.Delete(t.Context(), "s", ids[1], "999"))
	require.ErrorContains(t, d.Delete(t.Context(), "s", "x-1"), "accepted")
	s := sub(t, d, "s", "g", time.Minute)
	ds := receive(t, s, 10)
	require.Equal(t, []string{"m0", "m2"}, bodies(ds))
	n, err := d.Purge(t.Context(), "s")
	require.NoError(t, err)
	require.EqualValues(t, 2, n)
	info, err := d.Info(t.Context(), "s", "g")
	require.NoError(t, err)
	require.Equal(t, driver.StreamInfo{}, info)
	require.NoError(t, s.Ack(t.Context(), ds), "acking purged deliveries is a no-op")
	_, err = d.Publish(t.Context(), "s", msgs(3, 1))
	require.NoError(t, err)
	require.Equal(t, []string{"m3"}, bodies(receive(t, s, 10)))
}

// TestDriverCloseEndsSubscriptions proves that closing a driver wakes its blocked Receives
// with ErrClosed and leaves the broker and other drivers working.
func TestDriverCloseEndsSubscriptions(t *testing.T) {
	b := inmem.NewBroker(inmem.BrokerOptions{})
	d, other := newDriver(t, b), newDriver(t, b)
	s := sub(t, d, "s", "g", time.Minute)
	done := make(chan error, 1)
	go func() {
		_, err := s.Receive(context.Background(), 10)
		done <- err
	}()
	require.NoError(t, d.Close())
	select {
	case err := <-done:
		require.ErrorIs(t, err, transport.ErrClosed)
	case <-time.After(wait):
		t.Fatal("Close did not wake the blocked Receive")
	}
	require.ErrorIs(t, d.Ping(t.Context()), transport.ErrClosed)
	_, err := other.Publish(t.Context(), "s", msgs(0, 1))
	require.NoError(t, err)
	require.NoError(t, other.Ping(t.Context()))
	require.Equal(t, []string{"m0"}, bodies(receive(t, sub(t, other, "s", "g", time.Minute), 10)))
}

// TestRegistrySharesABrokerPerNamespace proves what the registry promises: Buses opened by
// name in one process see the same streams within a namespace and none across namespaces;
// closing one leaves the other working; PULSE_STREAM_MAX_LEN sets new streams' retention.
func TestRegistrySharesABrokerPerNamespace(t *testing.T) {
	open := func(ns string, maxLen int64) *transport.Bus {
		b, err := transport.Open(t.Context(), transport.Config{Backend: inmem.Name, Namespace: ns, StreamMaxLen: maxLen})
		require.NoError(t, err)
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
	a, b, other := open("reg-a", 2), open("reg-a", 0), open("reg-b", 0)
	env := func(n int) *envelope.Envelope {
		return &envelope.Envelope{Meta: envelope.Meta{SchemaID: "s"}, Payload: []byte(fmt.Sprintf(`{"n":%d}`, n))}
	}
	require.NoError(t, a.Publish(t.Context(), "shared", env(1), env(2), env(3)))
	require.NoError(t, a.Close())
	admin := b.Driver().(driver.StreamAdmin)
	info, err := admin.Info(t.Context(), "shared", "")
	require.NoError(t, err)
	require.EqualValues(t, 2, info.Length, "retention from StreamMaxLen of the driver that created the stream")
	info, err = other.Driver().(driver.StreamAdmin).Info(t.Context(), "shared", "")
	require.NoError(t, err)
	require.Zero(t, info.Length, "namespaces do not share streams")
	require.Same(t, inmem.SharedBroker("reg-a"), b.Driver().(*inmem.Driver).Broker())
}

// TestIdempotencyStoreShared proves that the record a driver provides is the broker's, shared
// by every driver (every Bus of the namespace in the process).
func TestIdempotencyStoreShared(t *testing.T) {
	br := inmem.NewBroker(inmem.BrokerOptions{})
	r1, err := newDriver(t, br).IdempotencyStore(t.Context(), time.Minute)
	require.NoError(t, err)
	r2, err := newDriver(t, br).IdempotencyStore(t.Context(), time.Minute)
	require.NoError(t, err)
	require.NoError(t, r1.Done(t.Context(), "k"))
	seen, err := r2.Seen(t.Context(), "k")
	require.NoError(t, err)
	require.True(t, seen)
}
