package jetstream_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/internal/natstest"
	"github.com/pulse-bus/pulse/internal/testutil"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/jetstream"
)

// TestNames proves the documented mapping from logical names to JetStream names.
func TestNames(t *testing.T) {
	tests := []struct {
		ns, stream, subject, name string
	}{
		{"mdp", "telemetry.feedback", "mdp.telemetry.feedback", "MDP_TELEMETRY_FEEDBACK"},
		{"mdp", "telemetry.feedback.dlq", "mdp.telemetry.feedback.dlq", "MDP_TELEMETRY_FEEDBACK_DLQ"},
		{"mdp", "telemetry.rate_adjustment", "mdp.telemetry.rate_adjustment", "MDP_TELEMETRY_RATE_ADJUSTMENT"},
		{"dev-1", "mdp.telemetry.feedback", "dev-1.mdp.telemetry.feedback", "DEV-1_MDP_TELEMETRY_FEEDBACK"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.subject, jetstream.Subject(tt.ns, tt.stream))
		require.Equal(t, tt.name, jetstream.StreamName(tt.ns, tt.stream))
	}
	require.Equal(t, "pipeline", jetstream.DurableName("pipeline"))
	require.Equal(t, "MDP_PULSE_IDEMPOTENCY", jetstream.IdempotencyBucket("mdp"))
}

// TestBadURL proves that NATS_URL values that are not NATS URLs are refused with a
// *envconf.Error naming the variable, with the credentials masked.
func TestBadURL(t *testing.T) {
	for _, u := range []string{"http://u:secret@localhost:4222", "nats://", "localhost:4222", "nats://a:1,redis://b:2"} {
		_, err := jetstream.Open(context.Background(), config(u, "x"))
		var ce *envconf.Error
		require.ErrorAs(t, err, &ce, u)
		require.Equal(t, "NATS_URL", ce.Var)
		require.NotContains(t, err.Error(), "secret")
	}
}

// TestOpenUnreachable proves that opening against an address where nothing listens fails at
// once with ErrUnavailable and, for the embedded default, says where it looked.
func TestOpenUnreachable(t *testing.T) {
	start := time.Now()
	_, err := jetstream.Open(context.Background(), transport.Config{NATSURL: "nats://127.0.0.1:1"})
	require.ErrorIs(t, err, transport.ErrUnavailable)
	require.Less(t, time.Since(start), 10*time.Second)
	if embeddedDefaultFree() {
		_, err = jetstream.Open(context.Background(), transport.Config{})
		require.ErrorIs(t, err, transport.ErrUnavailable)
		require.Contains(t, err.Error(), "NATS_URL is unset, so this is the embedded server's default address")
	}
}

// embeddedDefaultFree reports whether nothing listens on the embedded server's default
// address (a `pulse run` on this machine would).
func embeddedDefaultFree() bool {
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(jetstream.DefaultURL, "nats://"), time.Second)
	if err != nil {
		return true
	}
	c.Close()
	return false
}

// TestRoundTrip proves, directly on the driver, that bodies, ids and headers survive, that
// the transport id is the stream sequence and the first attempt is 1, and that acked
// messages are not delivered again.
func TestRoundTrip(t *testing.T) {
	srv := natsSrv.Server(t)
	d := open(t, config(srv.ClientURL(), uniqueNS("rt")))
	ctx := context.Background()
	msgs := []driver.Message{
		{Body: []byte(`{"a":1}`), ID: "id-1"},
		{Body: []byte(`{"a":2}`), Headers: map[string]string{"reason": "boom", "error": "line1\nline2"}},
		{Body: []byte(`{"a":3}`)},
	}
	ids, err := d.Publish(ctx, "s.one", msgs)
	require.NoError(t, err)
	require.Equal(t, []string{"1", "2", "3"}, ids)

	sub, err := d.Subscribe(ctx, "s.one", driver.SubscribeOptions{Group: "g", Consumer: "c", AckWait: 5 * time.Second, BatchSize: 8})
	require.NoError(t, err)
	defer sub.Close()
	var got []*driver.Delivery
	for len(got) < 3 {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		batch, err := sub.Receive(rctx, 8)
		cancel()
		require.NoError(t, err)
		got = append(got, batch...)
	}
	require.Len(t, got, 3)
	for i, g := range got {
		require.Equal(t, msgs[i].Body, g.Body)
		require.Equal(t, strconv.Itoa(i+1), g.TransportID)
		require.Equal(t, 1, g.Attempt)
	}
	require.Equal(t, "id-1", got[0].ID)
	require.Nil(t, got[0].Headers)
	require.Equal(t, map[string]string{"reason": "boom", "error": `line1\nline2`}, got[1].Headers)
	require.NoError(t, sub.Ack(ctx, got))

	require.Eventually(t, func() bool {
		info, err := d.Info(ctx, "s.one", "g")
		return err == nil && info.Length == 3 && info.Pending == 0 && info.Unread == 0
	}, 5*time.Second, 10*time.Millisecond)
	rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = sub.Receive(rctx, 8)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

// TestPublishDedupe proves that the same v2 id published twice within the duplicate window
// is stored once and that the retry gets the original sequence.
func TestPublishDedupe(t *testing.T) {
	srv := natsSrv.Server(t)
	d := open(t, config(srv.ClientURL(), uniqueNS("dedupe")))
	ctx := context.Background()
	m := driver.Message{Body: []byte(`{"x":1}`), ID: "01JABCDEFGHJKMNPQRSTVWXYZ0"}
	first, err := d.Publish(ctx, "s", []driver.Message{m})
	require.NoError(t, err)
	again, err := d.Publish(ctx, "s", []driver.Message{m, {Body: []byte(`{"x":2}`), ID: "other"}})
	require.NoError(t, err)
	require.Equal(t, first[0], again[0])
	require.NotEqual(t, first[0], again[1])
	info, err := d.Info(ctx, "s", "")
	require.NoError(t, err)
	require.EqualValues(t, 2, info.Length)
}

// TestNakDelay proves that a Nak with a delay is redelivered, with the attempt counted by
// the server, not before the delay.
func TestNakDelay(t *testing.T) {
	srv := natsSrv.Server(t)
	d := open(t, config(srv.ClientURL(), uniqueNS("nak")))
	ctx := context.Background()
	_, err := d.Publish(ctx, "s", []driver.Message{{Body: []byte("x")}})
	require.NoError(t, err)
	sub, err := d.Subscribe(ctx, "s", driver.SubscribeOptions{Group: "g", AckWait: 10 * time.Second, BatchSize: 4})
	require.NoError(t, err)
	defer sub.Close()
	recv := func() *driver.Delivery {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		b, err := sub.Receive(rctx, 4)
		require.NoError(t, err)
		require.Len(t, b, 1)
		return b[0]
	}
	first := recv()
	require.Equal(t, 1, first.Attempt)
	const delay = 300 * time.Millisecond
	naked := time.Now()
	require.NoError(t, sub.Nak(ctx, first, delay))
	second := recv()
	require.GreaterOrEqual(t, time.Since(naked), delay)
	require.Equal(t, 2, second.Attempt)
	require.Equal(t, first.TransportID, second.TransportID)
	require.NoError(t, sub.Term(ctx, second))
}

// TestCloseHandsBackBuffered proves that deliveries buffered in a member that closes are
// handed back at once (a new member gets them long before the 30 s AckWait), none lost.
func TestCloseHandsBackBuffered(t *testing.T) {
	srv := natsSrv.Server(t)
	d := open(t, config(srv.ClientURL(), uniqueNS("handback")))
	ctx := context.Background()
	const n = 50
	msgs := make([]driver.Message, n)
	for i := range msgs {
		msgs[i] = driver.Message{Body: []byte(strconv.Itoa(i))}
	}
	_, err := d.Publish(ctx, "s", msgs)
	require.NoError(t, err)
	opts := driver.SubscribeOptions{Group: "g", AckWait: 30 * time.Second, BatchSize: 16}
	a, err := d.Subscribe(ctx, "s", opts)
	require.NoError(t, err)
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	first, err := a.Receive(rctx, 1)
	cancel()
	require.NoError(t, err)
	require.NoError(t, a.Ack(ctx, first))
	// Let the member buffer what it can, then close it without receiving the rest.
	require.Eventually(t, func() bool {
		info, err := d.Info(ctx, "s", "g")
		return err == nil && info.Pending > 1
	}, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, a.Close())
	require.NoError(t, a.Close(), "Close is idempotent")
	rctx, cancel = context.WithTimeout(ctx, time.Second)
	_, err = a.Receive(rctx, 1)
	cancel()
	require.ErrorIs(t, err, transport.ErrClosed)

	b, err := d.Subscribe(ctx, "s", opts)
	require.NoError(t, err)
	defer b.Close()
	seen := map[string]bool{first[0].TransportID: true}
	deadline := time.Now().Add(10 * time.Second)
	for len(seen) < n && time.Now().Before(deadline) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		batch, err := b.Receive(rctx, 16)
		cancel()
		require.NoError(t, err)
		for _, m := range batch {
			seen[m.TransportID] = true
		}
		require.NoError(t, b.Ack(ctx, batch))
	}
	require.Len(t, seen, n)
}

// TestReceiveHonoursContext proves that a blocked Receive returns ctx.Err() promptly.
func TestReceiveHonoursContext(t *testing.T) {
	srv := natsSrv.Server(t)
	d := open(t, config(srv.ClientURL(), uniqueNS("ctx")))
	sub, err := d.Subscribe(context.Background(), "s", driver.SubscribeOptions{Group: "g", AckWait: time.Second, BatchSize: 4})
	require.NoError(t, err)
	defer sub.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := sub.Receive(ctx, 4)
		errc <- err
	}()
	cancel()
	select {
	case err := <-errc:
		require.True(t, errors.Is(err, context.Canceled), "got %v", err)
	case <-time.After(2 * time.Second):
		t.Fatal("Receive did not return after cancel")
	}
}

// TestInProcess proves that a driver opened with Options.InProcess works through the
// in-process connection of an embedded server hosted by the test.
func TestInProcess(t *testing.T) {
	srv := natstest.Start(t, nil)
	ctx := context.Background()
	d, err := jetstream.OpenWith(ctx, config(srv.ClientURL(), "inproc"), jetstream.Options{InProcess: srv})
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, d.Ping(ctx))
	ids, err := d.Publish(ctx, "s", []driver.Message{{Body: []byte("x")}})
	require.NoError(t, err)
	require.Equal(t, []string{"1"}, ids)
	srv.Shutdown()
	require.Eventually(t, func() bool { return errors.Is(d.Ping(ctx), transport.ErrUnavailable) }, 5*time.Second, 5*time.Millisecond)
}

// TestConsumerDeletedRecreated proves that a subscription whose durable consumer is deleted
// behind its back (an operator's `nats consumer rm`) recreates it and goes on receiving; the
// recreated group starts again from the start of the retained stream.
func TestConsumerDeletedRecreated(t *testing.T) {
	srv := natsSrv.Server(t)
	ctx := context.Background()
	var logs testutil.LockedBuffer
	ns := uniqueNS("recreate")
	cfg := config(srv.ClientURL(), ns)
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	d := open(t, cfg)
	sub, err := d.Subscribe(ctx, "s", driver.SubscribeOptions{Group: "g", AckWait: 5 * time.Second, BatchSize: 4})
	require.NoError(t, err)
	defer sub.Close()
	receive := func() []*driver.Delivery {
		t.Helper()
		var got []*driver.Delivery
		require.Eventually(t, func() bool {
			rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			b, err := sub.Receive(rctx, 4)
			if err == nil {
				got = b
				require.NoError(t, sub.Ack(ctx, b))
			}
			return err == nil
		}, 15*time.Second, time.Millisecond)
		return got
	}
	_, err = d.Publish(ctx, "s", []driver.Message{{Body: []byte("one")}})
	require.NoError(t, err)
	require.Equal(t, "one", string(receive()[0].Body))

	require.NoError(t, d.JetStream().DeleteConsumer(ctx, jetstream.StreamName(ns, "s"), "g"))
	_, err = d.Publish(ctx, "s", []driver.Message{{Body: []byte("two")}})
	require.NoError(t, err)
	var bodies []string
	for !slicesContains(bodies, "two") {
		for _, m := range receive() {
			bodies = append(bodies, string(m.Body))
		}
	}
	require.Subset(t, []string{"one", "two"}, bodies)
	require.Contains(t, logs.String(), "pull consumer stopped; starting it again")
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestStreamAndConsumerConfig proves the documented server-side settings: file storage,
// limits retention, max age/bytes/messages from the config, a duplicate window of min(2m, max
// age); a durable per group that delivers all, acks explicitly, has no delivery limit and
// MaxAckPending 4 × batch size.
func TestStreamAndConsumerConfig(t *testing.T) {
	srv := natsSrv.Server(t)
	ctx := context.Background()
	ns := uniqueNS("cfg")
	cfg := config(srv.ClientURL(), ns)
	cfg.StreamMaxAge = time.Minute
	cfg.StreamMaxBytes = 1 << 20
	cfg.StreamMaxLen = 500
	d := open(t, cfg)
	sub, err := d.Subscribe(ctx, "telemetry.feedback", driver.SubscribeOptions{Group: "pipeline", AckWait: 7 * time.Second, BatchSize: 16})
	require.NoError(t, err)
	defer sub.Close()
	st, err := d.JetStream().Stream(ctx, jetstream.StreamName(ns, "telemetry.feedback"))
	require.NoError(t, err)
	sc := st.CachedInfo().Config
	require.Equal(t, []string{ns + ".telemetry.feedback"}, sc.Subjects)
	require.Equal(t, natsjs.FileStorage, sc.Storage)
	require.Equal(t, natsjs.LimitsPolicy, sc.Retention)
	require.Equal(t, time.Minute, sc.MaxAge)
	require.Equal(t, time.Minute, sc.Duplicates)
	require.EqualValues(t, 1<<20, sc.MaxBytes)
	require.EqualValues(t, 500, sc.MaxMsgs)
	require.Equal(t, 1, sc.Replicas)
	cons, err := st.Consumer(ctx, "pipeline")
	require.NoError(t, err)
	cc := cons.CachedInfo().Config
	require.Equal(t, natsjs.DeliverAllPolicy, cc.DeliverPolicy)
	require.Equal(t, natsjs.AckExplicitPolicy, cc.AckPolicy)
	require.Equal(t, 7*time.Second, cc.AckWait)
	require.Equal(t, -1, cc.MaxDeliver)
	require.Equal(t, 160, cc.MaxAckPending, "10 × the batch size (bufferSizes)")
}

// TestSlowHandlerNoAgedRedelivery proves the buffering bound: with AckWait 1 s and batch
// size 2 (the client holds at most 10 × 2 messages), a handler taking 40 ms per message —
// within AckWait / 20 — works through 50 messages (2 s in all, twice AckWait) without a
// single message aging past AckWait in the buffer and being delivered again.
func TestSlowHandlerNoAgedRedelivery(t *testing.T) {
	srv := natsSrv.Server(t)
	obs := &countingObserver{}
	cfg := config(srv.ClientURL(), uniqueNS("slow"))
	cfg.Track = envelope.TrackV2
	cfg.AckWait = time.Second
	cfg.BatchSize = 2
	cfg.Observer = obs
	bus := openBus(t, cfg)
	ctx := context.Background()
	envs := feedback("slow-", 50)
	require.NoError(t, bus.Publish(ctx, "s", envs...))
	seen := newSeenSet()
	sub, err := bus.Subscribe(ctx, "s", func(ctx context.Context, d *transport.Delivery) error {
		select {
		case <-time.After(40 * time.Millisecond): // the slow work itself
		case <-ctx.Done():
			return ctx.Err()
		}
		return seen.handler(ctx, d)
	}, transport.SubscribeOptions{})
	require.NoError(t, err)
	defer sub.Close()
	require.Eventually(t, func() bool { return seen.has(idsOf(envs)...) }, 20*time.Second, 10*time.Millisecond)
	require.Zero(t, obs.redelivered.Load(), "no message was delivered twice")
	require.Zero(t, obs.get(transport.OutcomeDuplicate))
}

// TestPositionsSurviveStreamRecreation proves that a stream deleted and created again, whose
// sequence starts over at 1, still delivers Positions after every one of the old stream:
// the epoch is the stream's creation time.
func TestPositionsSurviveStreamRecreation(t *testing.T) {
	srv := natsSrv.Server(t)
	cfg := config(srv.ClientURL(), uniqueNS("epoch"))
	d := open(t, cfg)
	ctx := context.Background()
	receiveOne := func(s driver.Subscription) *driver.Delivery {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		ds, err := s.Receive(rctx, 1)
		require.NoError(t, err)
		require.NoError(t, s.Ack(ctx, ds))
		return ds[0]
	}
	s, err := d.Subscribe(ctx, "s", driver.SubscribeOptions{Group: "g", Consumer: "c", AckWait: time.Second, BatchSize: 4})
	require.NoError(t, err)
	defer s.Close()
	for range 3 {
		_, err := d.Publish(ctx, "s", []driver.Message{{Body: []byte(`{}`)}})
		require.NoError(t, err)
	}
	var old *driver.Delivery
	for range 3 {
		old = receiveOne(s)
	}
	require.Equal(t, uint64(3), old.Position.Seq)

	require.NoError(t, d.JetStream().DeleteStream(ctx, jetstream.StreamName(cfg.Namespace, "s")))
	// The subscription notices its consumer is gone and creates both again; publish until the
	// new stream has a message it can read.
	var fresh *driver.Delivery
	require.Eventually(t, func() bool {
		if _, err := d.Publish(ctx, "s", []driver.Message{{Body: []byte(`{}`)}}); err != nil {
			return false
		}
		rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		ds, err := s.Receive(rctx, 1)
		if err != nil || len(ds) == 0 {
			return false
		}
		fresh = ds[0]
		return true
	}, 20*time.Second, 50*time.Millisecond)
	require.NoError(t, s.Ack(ctx, []*driver.Delivery{fresh}))
	require.Less(t, fresh.Position.Seq, old.Position.Seq+10, "the sequence started over")
	require.Equal(t, 1, fresh.Position.Compare(old.Position), "new %v after old %v", fresh.Position, old.Position)
}

// TestOpenWithAConnectionOfTheProgram proves a program can hand the driver the *nats.Conn it
// already has: the bus works over it, its own handlers stay in place, the driver follows its
// state (Ping fails while it is down), and closing the driver leaves it open.
func TestOpenWithAConnectionOfTheProgram(t *testing.T) {
	srv := natstest.Start(t, nil)
	disconnects := make(chan struct{}, 10)
	nc, err := nats.Connect(srv.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond),
		nats.DisconnectErrHandler(func(*nats.Conn, error) { disconnects <- struct{}{} }))
	require.NoError(t, err)
	defer nc.Close()
	ctx := context.Background()
	d, err := jetstream.OpenWith(ctx, transport.Config{Namespace: uniqueNS("own"), NATSURL: "nats://unused.invalid:1"}, jetstream.Options{Conn: nc})
	require.NoError(t, err)
	bus, err := transport.New(d, transport.Config{Backend: jetstream.Name})
	require.NoError(t, err)
	got := make(chan string, 1)
	sub, err := bus.Subscribe(ctx, "own.s", func(_ context.Context, dl *transport.Delivery) error {
		got <- string(dl.Raw)
		return nil
	}, transport.SubscribeOptions{})
	require.NoError(t, err)
	_, err = bus.PublishRaw(ctx, "own.s", transport.RawMessage{Body: []byte(`{"ts":1,"meta":{"schema_id":"x","track":"v1"},"payload":{}}`)})
	require.NoError(t, err)
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("nothing consumed over the program's connection")
	}
	require.NoError(t, sub.Close())
	require.NoError(t, d.Ping(ctx))

	srv.Shutdown()
	select {
	case <-disconnects: // the program's own handler still runs
	case <-time.After(10 * time.Second):
		t.Fatal("the program's disconnect handler was not called")
	}
	require.Eventually(t, func() bool { return errors.Is(d.Ping(ctx), transport.ErrUnavailable) }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, bus.Close())
	require.False(t, nc.IsClosed(), "the driver leaves the program's connection open")
}

// TestLargeMessagesPastThePullByteLimit proves that the byte bound on pull requests
// (pullBytes, 16 MiB) never stalls a subscription: 24 messages of 900 KB, 21.6 MB in all,
// more than one pull may bring, all arrive.
func TestLargeMessagesPastThePullByteLimit(t *testing.T) {
	srv := natsSrv.Server(t)
	d := open(t, config(srv.ClientURL(), uniqueNS("big")))
	ctx := context.Background()
	body := bytes.Repeat([]byte("x"), 900_000)
	const n = 24
	for range n {
		_, err := d.Publish(ctx, "s.big", []driver.Message{{Body: body}})
		require.NoError(t, err)
	}
	sub, err := d.Subscribe(ctx, "s.big", driver.SubscribeOptions{Group: "g", AckWait: 30 * time.Second, BatchSize: 256})
	require.NoError(t, err)
	defer sub.Close()
	got := 0
	for got < n {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		batch, err := sub.Receive(rctx, 256)
		cancel()
		require.NoError(t, err, "after %d of %d messages", got, n)
		require.NoError(t, sub.Ack(ctx, batch))
		got += len(batch)
	}
	require.Equal(t, n, got)
}
