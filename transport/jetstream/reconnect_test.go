package jetstream_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/internal/natstest"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/jetstream/embedded"
)

// seenSet records handled envelope ids. Safe for concurrent use.
type seenSet struct {
	mu    sync.Mutex
	count map[string]int
}

func newSeenSet() *seenSet { return &seenSet{count: map[string]int{}} }

func (s *seenSet) handler(_ context.Context, d *transport.Delivery) error {
	s.mu.Lock()
	s.count[d.ID()]++
	s.mu.Unlock()
	return nil
}

func (s *seenSet) has(ids ...string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if s.count[id] == 0 {
			return false
		}
	}
	return true
}

func (s *seenSet) missing(ids []string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, id := range ids {
		if s.count[id] == 0 {
			out = append(out, id)
		}
	}
	return out
}

func (s *seenSet) multiples() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for id, n := range s.count {
		if n > 1 {
			out[id] = n
		}
	}
	return out
}

// feedback returns n v2 envelopes with distinct payloads.
func feedback(prefix string, n int) []*envelope.Envelope {
	out := make([]*envelope.Envelope, n)
	for i := range out {
		p := fmt.Sprintf(`{"coordinator_id":%q,"queue_size":%d,"capacity":100,"level":"ok","source":"store","ts":1.5}`, prefix+strconv.Itoa(i), i)
		out[i] = &envelope.Envelope{Meta: envelope.Meta{SchemaID: "telemetry.FeedbackEvent"}, Payload: json.RawMessage(p)}
	}
	return out
}

func idsOf(envs []*envelope.Envelope) []string {
	out := make([]string, len(envs))
	for i, e := range envs {
		out[i] = e.ID
	}
	return out
}

// restartable is an embedded server (file store) that stops and starts again on the same
// port, and a v2 Bus subscribed to telemetry.feedback through it.
type restartable struct {
	t    *testing.T
	opts embedded.Options
	srv  *embedded.Server
	bus  *transport.Bus
	sub  *transport.Subscription
	seen *seenSet
}

// startRestartable starts the server and the Bus (namespace ns, its Config changed by edit if
// not nil), subscribes, and returns once n envelopes published now are handled, with their
// ids. The caller closes r.sub.
func startRestartable(t *testing.T, ns string, edit func(*transport.Config), n int) (r *restartable, ids []string) {
	r = &restartable{t: t, opts: natstest.Options(t.TempDir()), seen: newSeenSet()}
	r.start()
	r.opts.Listen = r.srv.Addr().String() // same port on restart
	cfg := config(r.srv.ClientURL(), ns)
	cfg.Track = envelope.TrackV2
	if edit != nil {
		edit(&cfg)
	}
	r.bus = openBus(t, cfg)
	ctx := context.Background()
	var err error
	r.sub, err = r.bus.Subscribe(ctx, "telemetry.feedback", r.seen.handler, transport.SubscribeOptions{})
	require.NoError(t, err)
	before := feedback("before-", n)
	require.NoError(t, r.bus.Publish(ctx, "telemetry.feedback", before...))
	ids = idsOf(before)
	require.Eventually(t, func() bool { return r.seen.has(ids...) }, 10*time.Second, 5*time.Millisecond)
	return r, ids
}

func (r *restartable) start() {
	srv, err := embedded.Start(context.Background(), r.opts)
	require.NoError(r.t, err)
	r.t.Cleanup(srv.Shutdown)
	r.srv = srv
}

// stop shuts the server down and waits until Ping reports the outage.
func (r *restartable) stop() {
	r.srv.Shutdown()
	require.Eventually(r.t, func() bool {
		return errorsIs(r.bus.Ping(context.Background()), transport.ErrUnavailable)
	}, 10*time.Second, 5*time.Millisecond, "Ping reports the outage")
}

// restart starts the server again (with r.opts) and waits until Ping recovers.
func (r *restartable) restart() {
	r.start()
	require.Eventually(r.t, func() bool { return r.bus.Ping(context.Background()) == nil },
		15*time.Second, 10*time.Millisecond, "Ping recovers")
}

// TestReconnect proves that a client whose embedded server (file store) stops and restarts
// on the same port and store resumes by itself: while the server is away, Ping and the
// subscription's Err report ErrUnavailable; a publish started during the outage completes once
// the server is back; every message is handled exactly once.
func TestReconnect(t *testing.T) {
	r, before := startRestartable(t, "reconn", func(c *transport.Config) { c.AckWait = 2 * time.Second }, 20)
	defer r.sub.Close()
	bus, sub, seen, ctx := r.bus, r.sub, r.seen, context.Background()

	r.stop()
	require.Eventually(t, func() bool { return errorsIs(sub.Err(), transport.ErrUnavailable) }, 10*time.Second, 5*time.Millisecond,
		"the subscription reports the outage")

	during := feedback("during-", 5)
	published := make(chan error, 1)
	go func() {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		published <- bus.Publish(pctx, "telemetry.feedback", during...)
	}()

	r.restart()
	select {
	case err := <-published:
		require.NoError(t, err, "the publish made during the outage completes")
	case <-time.After(30 * time.Second):
		t.Fatal("the publish made during the outage never returned")
	}
	after := feedback("after-", 20)
	require.NoError(t, bus.Publish(ctx, "telemetry.feedback", after...))
	all := append(append(before, idsOf(during)...), idsOf(after)...)
	require.Eventually(t, func() bool { return seen.has(all...) }, 20*time.Second, 10*time.Millisecond,
		"consuming resumes by itself")
	require.Eventually(t, func() bool { return sub.Err() == nil }, 10*time.Second, 10*time.Millisecond, "the subscription is healthy again")
	require.Empty(t, seen.multiples(), "each message handled once")
}

// TestReconnectToAServerThatLostItsStore proves that a subscription recovers when the server
// it reconnects to no longer has the stream or the consumer (its store was lost, or it keeps
// JetStream in memory): no "consumer deleted" notice ever reaches the client then, only
// missing heartbeats, and the subscription must notice the consumer is gone and create both
// again rather than wait for heartbeats forever.
func TestReconnectToAServerThatLostItsStore(t *testing.T) {
	r, _ := startRestartable(t, "lost", nil, 5)
	defer r.sub.Close()
	ctx := context.Background()

	r.stop()
	r.opts.DataDir = t.TempDir() // the store is gone
	r.restart()

	after := feedback("after-", 5)
	require.Eventually(t, func() bool {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return r.bus.Publish(pctx, "telemetry.feedback", after...) == nil
	}, 15*time.Second, 50*time.Millisecond, "publishing creates the stream again")
	require.Eventually(t, func() bool { return r.seen.has(idsOf(after)...) }, 30*time.Second, 10*time.Millisecond,
		"consuming resumes on the new stream by itself")
}
