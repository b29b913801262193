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

// TestReconnect proves that a client whose embedded server (file store) stops and restarts
// on the same port and store resumes by itself: while the server is away, Ping and the
// subscription's Err report ErrUnavailable; a publish started during the outage completes once
// the server is back; every message is handled exactly once.
func TestReconnect(t *testing.T) {
	dir := t.TempDir()
	opts := natstest.Options(dir)
	srv, err := embedded.Start(context.Background(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { srv.Shutdown() })
	opts.Listen = srv.Addr().String() // same port on restart

	cfg := config(srv.ClientURL(), "reconn")
	cfg.Track = envelope.TrackV2
	cfg.AckWait = 2 * time.Second
	bus := openBus(t, cfg)
	ctx := context.Background()
	seen := newSeenSet()
	sub, err := bus.Subscribe(ctx, "telemetry.feedback", seen.handler, transport.SubscribeOptions{})
	require.NoError(t, err)
	defer sub.Close()

	before := feedback("before-", 20)
	require.NoError(t, bus.Publish(ctx, "telemetry.feedback", before...))
	require.Eventually(t, func() bool { return seen.has(idsOf(before)...) }, 10*time.Second, 5*time.Millisecond)

	srv.Shutdown()
	require.Eventually(t, func() bool {
		return errorsIs(bus.Ping(ctx), transport.ErrUnavailable)
	}, 10*time.Second, 5*time.Millisecond, "Ping reports the outage")
	require.Eventually(t, func() bool { return errorsIs(sub.Err(), transport.ErrUnavailable) }, 10*time.Second, 5*time.Millisecond,
		"the subscription reports the outage")

	during := feedback("during-", 5)
	published := make(chan error, 1)
	go func() {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		published <- bus.Publish(pctx, "telemetry.feedback", during...)
	}()

	srv, err = embedded.Start(context.Background(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { srv.Shutdown() })
	require.Eventually(t, func() bool { return bus.Ping(ctx) == nil }, 15*time.Second, 10*time.Millisecond, "Ping recovers")
	select {
	case err := <-published:
		require.NoError(t, err, "the publish made during the outage completes")
	case <-time.After(30 * time.Second):
		t.Fatal("the publish made during the outage never returned")
	}
	after := feedback("after-", 20)
	require.NoError(t, bus.Publish(ctx, "telemetry.feedback", after...))
	all := append(append(idsOf(before), idsOf(during)...), idsOf(after)...)
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
	opts := natstest.Options(t.TempDir())
	srv, err := embedded.Start(context.Background(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { srv.Shutdown() })
	opts.Listen = srv.Addr().String() // same port on restart

	cfg := config(srv.ClientURL(), "lost")
	cfg.Track = envelope.TrackV2
	bus := openBus(t, cfg)
	ctx := context.Background()
	seen := newSeenSet()
	sub, err := bus.Subscribe(ctx, "telemetry.feedback", seen.handler, transport.SubscribeOptions{})
	require.NoError(t, err)
	defer sub.Close()
	before := feedback("before-", 5)
	require.NoError(t, bus.Publish(ctx, "telemetry.feedback", before...))
	require.Eventually(t, func() bool { return seen.has(idsOf(before)...) }, 10*time.Second, 5*time.Millisecond)

	srv.Shutdown()
	require.Eventually(t, func() bool { return errorsIs(bus.Ping(ctx), transport.ErrUnavailable) }, 10*time.Second, 5*time.Millisecond)
	opts.DataDir = t.TempDir() // the store is gone
	srv, err = embedded.Start(context.Background(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { srv.Shutdown() })
	require.Eventually(t, func() bool { return bus.Ping(ctx) == nil }, 15*time.Second, 10*time.Millisecond, "Ping recovers")

	after := feedback("after-", 5)
	require.Eventually(t, func() bool {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return bus.Publish(pctx, "telemetry.feedback", after...) == nil
	}, 15*time.Second, 50*time.Millisecond, "publishing creates the stream again")
	require.Eventually(t, func() bool { return seen.has(idsOf(after)...) }, 30*time.Second, 10*time.Millisecond,
		"consuming resumes on the new stream by itself")
}
