package jetstream_test

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/internal/natstest"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/jetstream"
)

// countingObserver counts consume outcomes and redeliveries.
type countingObserver struct {
	mu          sync.Mutex
	outcomes    map[string]int
	redelivered atomic.Int64
}

func (o *countingObserver) Published(string, string, error, time.Duration) {}
func (o *countingObserver) Redelivered(string)                             { o.redelivered.Add(1) }
func (o *countingObserver) DeadLettered(string, string)                    {}
func (o *countingObserver) Lag(string, time.Duration)                      {}
func (o *countingObserver) Consumed(_, _ string, outcome transport.Outcome) {
	o.mu.Lock()
	if o.outcomes == nil {
		o.outcomes = map[string]int{}
	}
	o.outcomes[outcome]++
	o.mu.Unlock()
}

func (o *countingObserver) get(outcome string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.outcomes[outcome]
}

// TestClusterLeaderFailover proves, on a three-node JetStream cluster in this process with
// R3 streams, that losing the stream leader mid-run loses nothing: a publisher and a consumer
// run continuously through transport.Bus, the stream leader is shut down, publishing resumes,
// every message whose publish was acknowledged (before or after the failure) is consumed, and
// the redeliveries the failover causes are absorbed by idempotency (counted as duplicates).
func TestClusterLeaderFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("three-node cluster: not in -short")
	}
	t0 := time.Now()
	cluster := natstest.StartCluster(t, 3)
	t.Logf("cluster ready (meta leader elected) in %s", time.Since(t0).Round(time.Millisecond))
	const stream = "telemetry.feedback"
	obs := &countingObserver{}
	cfg := config(cluster.ClientURLs(), "mdp")
	cfg.Track = envelope.TrackV2
	cfg.Replicas = 3
	cfg.AckWait = 2 * time.Second
	cfg.Observer = obs
	bus := openBus(t, cfg)
	ctx := context.Background()

	// The cluster elects its meta leader after the routes are up: subscribe once it can.
	seen := newSeenSet()
	var sub *transport.Subscription
	require.Eventually(t, func() bool {
		var err error
		sub, err = bus.Subscribe(ctx, stream, seen.handler, transport.SubscribeOptions{})
		return err == nil
	}, 30*time.Second, 100*time.Millisecond, "the cluster accepts an R3 stream")
	defer sub.Close()

	// Publisher: batches of 10 until stopped; a failed batch is published again with the same
	// ids (v2), as a producer retrying would.
	var (
		mu          sync.Mutex
		acked       []string
		failedCalls int
		stop        atomic.Bool
		batches     atomic.Int64
	)
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := 0; !stop.Load(); i++ {
			envs := feedback("c", 10)
			for {
				pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				err := bus.Publish(pctx, stream, envs...)
				cancel()
				if err == nil {
					break
				}
				mu.Lock()
				failedCalls++
				mu.Unlock()
				if stop.Load() {
					return
				}
			}
			mu.Lock()
			acked = append(acked, idsOf(envs)...)
			mu.Unlock()
			batches.Add(1)
		}
	}()
	ackedCount := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }

	require.Eventually(t, func() bool { return ackedCount() >= 500 }, 20*time.Second, 5*time.Millisecond)

	// Shut down the stream leader.
	js := bus.Driver().(*jetstream.Driver).JetStream()
	st, err := js.Stream(ctx, jetstream.StreamName("mdp", stream))
	require.NoError(t, err)
	leader := st.CachedInfo().Cluster.Leader
	require.NotEmpty(t, leader)
	killedAt := ackedCount()
	var killed bool
	for _, s := range cluster.Servers {
		if s.Name() == leader {
			t.Logf("shutting down stream leader %s after %d acknowledged messages", leader, killedAt)
			s.Shutdown()
			killed = true
		}
	}
	require.True(t, killed, "leader %s is one of ours", leader)
	failedAt := time.Now()

	// Publishing resumes: another 500 acknowledged after the failure.
	require.Eventually(t, func() bool { return ackedCount() >= killedAt+500 }, 30*time.Second, 5*time.Millisecond,
		"publishing resumes after the leader is gone")
	t.Logf("500 more acknowledged %s after the failure", time.Since(failedAt).Round(time.Millisecond))
	stop.Store(true)
	<-pubDone

	mu.Lock()
	all := append([]string(nil), acked...)
	failed := failedCalls
	mu.Unlock()
	if !assert.Eventually(t, func() bool { return len(seen.missing(all)) == 0 }, 30*time.Second, 10*time.Millisecond) {
		missing := seen.missing(all)
		st, err := js.Stream(ctx, jetstream.StreamName("mdp", stream))
		require.NoError(t, err)
		info, err := st.Info(ctx)
		require.NoError(t, err)
		t.Fatalf("%d of %d acknowledged messages never consumed (at %v of the acknowledged, the leader shut down after %d); the stream holds %d messages, seq %d..%d, sub err %v",
			len(missing), len(all), positions(all, missing), killedAt, info.State.Msgs, info.State.FirstSeq, info.State.LastSeq, sub.Err())
	}
	require.Empty(t, seen.multiples(), "the handler saw each message once")
	t.Logf("acknowledged %d messages; failed publish calls retried: %d; duplicates absorbed by idempotency: %d; new leader %s",
		len(all), failed, obs.get(transport.OutcomeDuplicate), func() string {
			st, err := js.Stream(ctx, jetstream.StreamName("mdp", stream))
			if err != nil {
				return "?"
			}
			return st.CachedInfo().Cluster.Leader
		}())
}

// positions are the indexes in all of the ids of some.
func positions(all, some []string) []int {
	var out []int
	for i, id := range all {
		if slices.Contains(some, id) {
			out = append(out, i)
		}
	}
	return out
}
