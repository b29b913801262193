package main

// End-to-end tests of the feedback loop's robustness, each against the real binary and real
// brokers: restarts, replicas, clocks that lie, replays and hostile input.

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/jetstream/embedded"
)

// loopBus is where a loop test's `pulse run` processes and the test itself meet.
type loopBus struct {
	name string
	env  map[string]string // for the pulse processes (no HTTP address, no data directory)
	cfg  transport.Config  // for the test's own client
}

// sharedBuses are a JetStream server and a Redis of the test's own, which several `pulse
// run` processes (replicas, restarts) can share.
func sharedBuses(t *testing.T) []loopBus {
	t.Helper()
	srv, err := embedded.Start(context.Background(), embedded.Options{Listen: "127.0.0.1:-1", DataDir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(srv.Shutdown)
	url := redisSrv.Server(t).URL()
	ns := uniqueNamespace("e2e_loop")
	return []loopBus{
		{name: "jetstream", env: map[string]string{"NATS_URL": srv.ClientURL()},
			cfg: transport.Config{Backend: "jetstream", NATSURL: srv.ClientURL()}},
		{name: "redis", env: map[string]string{"EVENT_BUS_BACKEND": "redis", "REDIS_URL": url, "MD_NAMESPACE": ns},
			cfg: transport.Config{Backend: "redis", RedisURL: url, Namespace: ns}},
	}
}

// replicaEnv is b's environment for one replica: its own HTTP address and data directory,
// everything else the defaults.
func (b loopBus) replicaEnv(t *testing.T, extra map[string]string) map[string]string {
	env := map[string]string{"PULSE_HTTP_ADDR": "127.0.0.1:0", "PULSE_DATA_DIR": t.TempDir()}
	for k, v := range b.env {
		env[k] = v
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// startReady starts one replica on b with the defaults, waits until it is ready, and opens
// the test's own client; it returns the replica's environment too, for commands beside it.
func (b loopBus) startReady(t *testing.T) (map[string]string, *server, *transport.Bus) {
	t.Helper()
	env := b.replicaEnv(t, nil)
	s := startRun(t, env)
	s.ready(t)
	return env, s, b.client(t, "")
}

// client opens the test's own Bus on b (signing with token when not empty).
func (b loopBus) client(t *testing.T, token string) *transport.Bus {
	t.Helper()
	cfg := b.cfg
	cfg.Schemas = feedback.Schemas()
	cfg.PublisherToken = token
	bus, err := transport.Open(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { bus.Close() })
	return bus
}

// publishAt publishes a FeedbackEvent of coordinator at level, stamped ts, as a Store would.
func publishAt(t *testing.T, bus *transport.Bus, coordinator string, level feedback.Level, ts float64) {
	t.Helper()
	e, err := feedback.Event{CoordinatorID: coordinator, QueueSize: 80, Capacity: 100, Level: level, TS: envelope.Float(ts)}.Envelope(nil)
	require.NoError(t, err)
	require.NoError(t, bus.Publish(context.Background(), feedback.StreamFeedback, e))
}

func now() float64 { return float64(time.Now().UnixNano()) / 1e9 }

// ready waits for /readyz 200.
func (s *server) ready(t *testing.T) {
	t.Helper()
	eventually(t, "/readyz 200", func() bool { code, _ := get(t, s.url("/readyz")); return code == 200 })
}

// rate is the provider's current rate on /state.
func (s *server) rate(t *testing.T) float64 { return state(t, s).Providers["ibkr"].Rate }

// waitRate waits until the provider's rate is want.
func (s *server) waitRate(t *testing.T, want float64) {
	t.Helper()
	eventually(t, fmt.Sprintf("the provider's rate to be %v", want), func() bool { return s.rate(t) == want })
}

// metric returns the value of the series line of /metrics, or -1 when absent.
func (s *server) metric(t *testing.T, series string) float64 {
	t.Helper()
	_, body := get(t, s.url("/metrics"))
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			require.NoError(t, err, line)
			return v
		}
	}
	return -1
}

// waitMetric waits until series has the value want.
func (s *server) waitMetric(t *testing.T, series string, want float64) {
	t.Helper()
	eventually(t, fmt.Sprintf("%s = %v", series, want), func() bool { return s.metric(t, series) == want })
}

// kill sends SIGKILL and waits for the process to be gone.
func (s *server) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, s.cmd.Process.Kill())
	select {
	case <-s.exited:
	case <-time.After(exitTimeout):
		t.Fatalf("pulse run did not die within %s of SIGKILL", exitTimeout)
	}
}

// requireThrottledAtOnce checks, right after /readyz first answers 200 and without any new
// event, that s is at the provider's floor with c1 hard: the loop's state was restored.
func requireThrottledAtOnce(t *testing.T, s *server) {
	t.Helper()
	s.ready(t)
	st := state(t, s)
	require.Equal(t, 1.0, st.Providers["ibkr"].Rate, "at the floor as soon as ready")
	require.Equal(t, 0.0, st.Providers["ibkr"].Scale)
	require.Equal(t, "hard", st.Coordinators["c1"].Level)
	require.Equal(t, 0.0, s.metric(t, `pipeline_rate_scale_factor{provider="ibkr"}`))
	require.Equal(t, 2.0, s.metric(t, `pipeline_backpressure_state{provider="ibkr"}`))
}

// TestRestartKeepsTheThrottle proves a restart — SIGTERM or SIGKILL — does not lift the
// throttle: `pulse run` comes back at the floor with every coordinator's level, as soon as
// /readyz is 200 and before any new event. On the embedded JetStream (the default: the state
// lives under PULSE_DATA_DIR) and on Redis.
func TestRestartKeepsTheThrottle(t *testing.T) {
	url := redisSrv.Server(t).URL()
	for _, backend := range []string{"embedded", "redis"} {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			t.Run(backend+"/"+sig.String(), func(t *testing.T) {
				env := map[string]string{"PULSE_HTTP_ADDR": "127.0.0.1:0", "PULSE_DATA_DIR": t.TempDir()}
				if backend == "embedded" {
					env["PULSE_NATS_LISTEN"] = "127.0.0.1:" + strconv.Itoa(freePort(t))
				} else {
					env["EVENT_BUS_BACKEND"], env["REDIS_URL"], env["MD_NAMESPACE"] = "redis", url, uniqueNamespace("e2e_restart")
				}
				s := startRun(t, env)
				s.ready(t)
				code, _, errOut := pulse(t, env, "publish", "--coordinator", "c1", "--level", "hard")
				require.Equal(t, 0, code, errOut)
				code, _, errOut = pulse(t, env, "publish", "--coordinator", "c2", "--level", "ok")
				require.Equal(t, 0, code, errOut)
				eventually(t, "both events applied", func() bool { return len(state(t, s).Coordinators) == 2 })
				require.Equal(t, 1.0, s.rate(t))
				if sig == syscall.SIGKILL {
					s.kill(t)
				} else {
					stoppedClean(t, s, sig)
				}

				s2 := startRun(t, env)
				requireThrottledAtOnce(t, s2)
				require.Equal(t, "ok", state(t, s2).Coordinators["c2"].Level)
				s2.waitLog(t, `"msg":"loop state restored"`)
				require.Equal(t, s.start["group"], s2.start["group"], "the replica resumes its own group")
				stoppedClean(t, s2, syscall.SIGTERM)
			})
		}
	}
}

// TestReplicaStartedLaterStartsThrottled proves a replica started while a Store holds hard
// begins at the floor too, before it reads anything.
func TestReplicaStartedLaterStartsThrottled(t *testing.T) {
	for _, b := range sharedBuses(t) {
		t.Run(b.name, func(t *testing.T) {
			first := startRun(t, b.replicaEnv(t, nil))
			first.ready(t)
			publishAt(t, b.client(t, ""), "c1", feedback.LevelHard, now())
			first.waitRate(t, 1)

			later := startRun(t, b.replicaEnv(t, nil))
			requireThrottledAtOnce(t, later)
			require.NotEqual(t, first.start["group"], later.start["group"])
		})
	}
}

// TestTwoDefaultReplicasEachApplyEveryEvent proves replicas started with the defaults —
// two processes on one host, only their HTTP address and data directory differing — each
// apply every event (they used to share pipeline_w1 and split them 20/20), while two given
// the same PULSE_CONSUMER_NAME are told, in the log, on /readyz and on /state, that they
// split the events.
func TestTwoDefaultReplicasEachApplyEveryEvent(t *testing.T) {
	const events = 40
	for _, b := range sharedBuses(t) {
		t.Run(b.name, func(t *testing.T) {
			r1, r2 := startRun(t, b.replicaEnv(t, nil)), startRun(t, b.replicaEnv(t, nil))
			r1.ready(t)
			r2.ready(t)
			bus := b.client(t, "")
			for i := range events {
				publishAt(t, bus, "c"+strconv.Itoa(i), feedback.Levels[i%3], now())
			}
			for _, r := range []*server{r1, r2} {
				eventually(t, "every event applied by each replica", func() bool {
					return len(state(t, r).Coordinators) == events
				})
				total := 0.0
				for _, l := range feedback.Levels {
					total += max(r.metric(t, `feedback_events_processed_total{level="`+string(l)+`",provider="ibkr"}`), 0)
				}
				require.Equal(t, float64(events), total)
				_, body := get(t, r.url("/readyz"))
				require.NotContains(t, body, "warning")
			}
			require.NotEqual(t, r1.start["group"], r2.start["group"], "a group each")

			same := b.replicaEnv(t, map[string]string{"PULSE_CONSUMER_NAME": "twin"})
			t1 := startRun(t, same)
			same["PULSE_DATA_DIR"] = t.TempDir()
			t2 := startRun(t, same)
			for _, r := range []*server{t1, t2} {
				eventually(t, "the collision reported on /readyz", func() bool {
					code, body := get(t, r.url("/readyz"))
					return code == 200 && strings.Contains(body, "warning: feedback: another process reads as this replica")
				})
				require.Contains(t, state(t, r).Consumer.Collision, "is also used by instance")
				eventually(t, "the collision logged", func() bool {
					return strings.Contains(r.logs.String(), "another live process reads as this replica")
				})
			}
		})
	}
}

// TestFutureTimestampDeadLettered proves an event stamped in the year 3000 is dead-lettered
// with reason clock_skew and changes nothing, pulse_lag_ms stays honest, and the next real
// event of the coordinator applies.
func TestFutureTimestampDeadLettered(t *testing.T) {
	for _, b := range sharedBuses(t) {
		t.Run(b.name, func(t *testing.T) {
			env, s, bus := b.startReady(t)
			year3000 := float64(time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC).Unix())
			publishAt(t, bus, "c1", feedback.LevelHard, year3000)
			s.waitMetric(t, `pulse_dlq_total{reason="clock_skew",stream="telemetry.feedback"}`, 1)
			require.Empty(t, state(t, s).Coordinators)
			require.Equal(t, 60.0, s.rate(t))
			lag := s.metric(t, `pulse_lag_ms{stream="telemetry.feedback"}`)
			require.True(t, lag >= 0 && lag < 60_000, "pulse_lag_ms = %v after a ts in the year 3000", lag)
			code, list, errOut := pulse(t, env, "dlq", "list")
			require.Equal(t, 0, code, errOut)
			require.Contains(t, list, "clock_skew")

			publishAt(t, bus, "c1", feedback.LevelHard, now())
			s.waitRate(t, 1)
		})
	}
}

// TestClockStepBackAppliesTheNextEvent proves a Store whose clock steps back 10 minutes
// (hard at now, then ok stamped now − 600 s) gets its ok applied: the broker stored it later.
func TestClockStepBackAppliesTheNextEvent(t *testing.T) {
	for _, b := range sharedBuses(t) {
		t.Run(b.name, func(t *testing.T) {
			_, s, bus := b.startReady(t)
			publishAt(t, bus, "c1", feedback.LevelHard, now())
			s.waitRate(t, 1)
			publishAt(t, bus, "c1", feedback.LevelOK, now()-600)
			s.waitRate(t, 60)
			s.waitLog(t, "the Store's clock stepped back")
		})
	}
}

// TestRedeliveredOlderEventStaysStale proves an older event redelivered after a newer one
// was applied changes nothing, even when the Store's clock stepped back between them (the
// older one carries the later ts): a member that took the hard event died without settling
// it, the ok published after it (stamped 10 minutes earlier) applied, and when the hard comes
// back after PULSE_ACK_WAIT it is counted stale, not applied by its ts.
func TestRedeliveredOlderEventStaysStale(t *testing.T) {
	for _, b := range sharedBuses(t) {
		t.Run(b.name, func(t *testing.T) {
			// The ack-wait leaves the new process ample time to apply the ok before the hard
			// comes back.
			const ackWait = 3 * time.Second
			env := b.replicaEnv(t, map[string]string{"PULSE_CONSUMER_NAME": "w1", "PULSE_ACK_WAIT": ackWait.String()})
			bus := b.client(t, "")
			publishAt(t, bus, "c1", feedback.LevelHard, now())
			takeAndDie(t, b, "pipeline-w1", ackWait) // a member takes the hard event and dies holding it
			publishAt(t, bus, "c1", feedback.LevelOK, now()-600)

			s := startRun(t, env)
			s.ready(t)
			eventually(t, "the ok applied", func() bool { return state(t, s).Coordinators["c1"].Level == "ok" })
			s.waitMetric(t, `pulse_consume_total{outcome="stale",stream="telemetry.feedback",track="v1"}`, 1)
			require.Greater(t, s.metric(t, `pulse_redeliveries_total{stream="telemetry.feedback"}`), 0.0)
			require.Equal(t, 60.0, s.rate(t), "the redelivered hard changed nothing")
		})
	}
}

// takeAndDie has a member of group take the first message of the feedback stream and go
// away without settling it, reading nothing else: a raw XREADGROUP COUNT 1 on Redis; on
// JetStream a driver subscription (the server hands it only what it pulls, and its Close
// hands the rest back).
func takeAndDie(t *testing.T, b loopBus, group string, ackWait time.Duration) {
	t.Helper()
	ctx := context.Background()
	if b.cfg.Backend == "redis" {
		opts, err := goredis.ParseURL(b.cfg.RedisURL)
		require.NoError(t, err)
		c := goredis.NewClient(opts)
		defer c.Close()
		key := b.cfg.Namespace + ":" + feedback.StreamFeedback
		require.NoError(t, c.XGroupCreateMkStream(ctx, key, group, "0").Err())
		res, err := c.XReadGroup(ctx, &goredis.XReadGroupArgs{Group: group, Consumer: "ghost", Streams: []string{key, ">"}, Count: 1}).Result()
		require.NoError(t, err)
		require.Len(t, res[0].Messages, 1)
		return
	}
	bus, err := transport.Open(ctx, b.cfg)
	require.NoError(t, err)
	defer bus.Close()
	ghost, err := bus.Driver().Subscribe(ctx, feedback.StreamFeedback, driver.SubscribeOptions{
		Group: group, Consumer: "ghost", AckWait: ackWait, MaxDeliveries: 5, BatchSize: 1})
	require.NoError(t, err)
	rctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	held, err := ghost.Receive(rctx, 1)
	require.NoError(t, err)
	require.Len(t, held, 1)
}

// TestCapturedSignedEventReplayedAfterRestart proves the replay attack of the issue: with
// PUBLISHER_TOKEN on both sides, a signed hard event captured off the stream (XRANGE, or a
// JetStream read), an ok published after it, a restart, and the captured bytes re-injected:
// the rate stays where the ok put it.
func TestCapturedSignedEventReplayedAfterRestart(t *testing.T) {
	const token = "e2e-replay-token"
	for _, b := range sharedBuses(t) {
		t.Run(b.name, func(t *testing.T) {
			env := b.replicaEnv(t, map[string]string{"PUBLISHER_TOKEN": token})
			s := startRun(t, env)
			s.ready(t)
			signer := b.client(t, token)
			publishAt(t, signer, "c1", feedback.LevelHard, now())
			s.waitRate(t, 1)

			var captured []byte
			admin := signer.Driver().(driver.StreamAdmin)
			require.NoError(t, admin.Range(context.Background(), feedback.StreamFeedback, 0, func(m driver.StoredMessage) error {
				captured = append([]byte(nil), m.Body...)
				return nil
			}))
			require.Contains(t, string(captured), `"signature"`)

			publishAt(t, signer, "c1", feedback.LevelOK, now())
			s.waitRate(t, 60)
			stoppedClean(t, s, syscall.SIGTERM)
			s2 := startRun(t, env)
			s2.ready(t)
			require.Equal(t, 60.0, s2.rate(t))

			attacker := b.client(t, "") // no token: it can only copy what it saw
			_, err := attacker.PublishRaw(context.Background(), feedback.StreamFeedback, transport.RawMessage{Body: captured})
			require.NoError(t, err)
			s2.waitMetric(t, `pulse_consume_total{outcome="stale",stream="telemetry.feedback",track="v1"}`, 1)
			require.Equal(t, 60.0, s2.rate(t), "the replayed hard changed nothing")
			s2.waitLog(t, "it repeats an event already applied")
		})
	}
}

// TestDLQReplayNeverOverridesNewer proves `pulse dlq replay` of an old hard event, after an ok
// stamped later applied, changes nothing: the replay lost its place in the broker's order and
// is ordered by its ts.
func TestDLQReplayNeverOverridesNewer(t *testing.T) {
	for _, b := range sharedBuses(t) {
		t.Run(b.name, func(t *testing.T) {
			env, s, bus := b.startReady(t)
			old, err := feedback.Event{CoordinatorID: "c1", QueueSize: 90, Capacity: 100, Level: feedback.LevelHard, TS: envelope.Float(now() - 5)}.Envelope(nil)
			require.NoError(t, err)
			body, err := bus.Codec().Encode(old)
			require.NoError(t, err)
			publishAt(t, bus, "c1", feedback.LevelOK, now())
			eventually(t, "the ok applied", func() bool { return state(t, s).Coordinators["c1"].Level == "ok" })

			// The old hard, as a dead letter of the feedback stream.
			_, err = bus.PublishRaw(context.Background(), feedback.StreamFeedback+transport.DLQSuffix, transport.RawMessage{Body: body, Headers: map[string]string{
				transport.DLQOriginalID: "1", transport.DLQReason: "max_deliveries", transport.DLQAttempts: "5",
				transport.DLQFailedAt: time.Now().UTC().Format(time.RFC3339Nano), transport.DLQStream: feedback.StreamFeedback,
			}})
			require.NoError(t, err)
			code, out, errOut := pulse(t, env, "dlq", "replay")
			require.Equal(t, 0, code, errOut)
			require.Contains(t, out, "replayed 1 dead letter(s)")
			s.waitMetric(t, `pulse_consume_total{outcome="stale",stream="telemetry.feedback",track="v1"}`, 1)
			require.Equal(t, 60.0, s.rate(t))
		})
	}
}

// TestHostileCoordinatorIDsBounded proves 20,000 events with distinct 10 KB coordinator ids
// (once: RSS 18 → 331 MB, /state 209 MB) are dead-lettered invalid_payload naming the limit
// and leave RSS and /state bounded; and that 20,000 distinct valid ids keep at most
// MDP_FB_MAX_COORDINATORS tracked, the evictions counted, /state bounded.
func TestHostileCoordinatorIDsBounded(t *testing.T) {
	const (
		n     = 20_000 // long ids
		valid = 6_000  // distinct valid ids, three times the limit
		limit = 2_000  // MDP_FB_MAX_COORDINATORS
		// bulk bounds the waits for thousands of events, each a dead letter or a state save.
		bulk = 2 * time.Minute
	)
	for _, b := range sharedBuses(t) {
		t.Run(b.name, func(t *testing.T) {
			env := b.replicaEnv(t, map[string]string{"MDP_FB_MAX_COORDINATORS": strconv.Itoa(limit)})
			s := startRun(t, env)
			s.ready(t)
			rssBefore := s.metric(t, "process_resident_memory_bytes")
			// A producer that validates nothing, as a hostile one would.
			bus, err := transport.Open(context.Background(), b.cfg)
			require.NoError(t, err)
			defer bus.Close()
			ts := now() - 2*n
			publishMany := func(n int, id func(i int) string) {
				t.Helper()
				p, err := bus.NewAsyncPublisher(feedback.StreamFeedback, 8)
				require.NoError(t, err)
				batch := make([]*envelope.Envelope, 0, 256)
				for i := range n {
					ts++
					batch = append(batch, &envelope.Envelope{Meta: envelope.Meta{SchemaID: feedback.SchemaFeedbackEvent},
						Payload: []byte(fmt.Sprintf(`{"coordinator_id":%q,"queue_size":1,"capacity":2,"level":"ok","source":"store","ts":%v}`, id(i), ts))})
					if len(batch) == cap(batch) || i == n-1 {
						require.NoError(t, p.Publish(context.Background(), batch...))
						batch = make([]*envelope.Envelope, 0, 256)
					}
				}
				require.NoError(t, p.Close(context.Background()))
			}
			long := strings.Repeat("x", 10_000)
			publishMany(n, func(i int) string { return long + strconv.Itoa(i) })
			eventuallyWithin(t, bulk, "every long id dead-lettered", func() bool {
				return s.metric(t, `pulse_dlq_total{reason="invalid_payload",stream="telemetry.feedback"}`) == n
			})
			code, body := get(t, s.url("/state"))
			require.Equal(t, 200, code)
			require.Less(t, len(body), 10_000, "no coordinator kept")
			rssLong := s.metric(t, "process_resident_memory_bytes")
			_, letters, _ := pulse(t, env, "dlq", "list", "--limit", "1")
			require.Contains(t, letters, "invalid_payload")
			var why string
			require.NoError(t, bus.Driver().(driver.StreamAdmin).Range(context.Background(), feedback.StreamFeedback+transport.DLQSuffix, 1,
				func(m driver.StoredMessage) error { why = m.Headers[transport.DLQError]; return nil }))
			require.Contains(t, why, "coordinator_id of 10001 bytes (accepted: a non-empty string of at most 256 bytes)")

			publishMany(valid, func(i int) string { return fmt.Sprintf("store-%06d-%s", i, strings.Repeat("y", 200)) })
			eventuallyWithin(t, bulk, "the valid events consumed", func() bool {
				return s.metric(t, `pulse_consume_total{outcome="success",stream="telemetry.feedback",track="v1"}`) == valid
			})
			code, body = get(t, s.url("/state"))
			require.Equal(t, 200, code)
			var st struct {
				Coordinators map[string]any `json:"coordinators"`
				Tracked      int            `json:"coordinators_tracked"`
				Evicted      int            `json:"coordinators_evicted"`
			}
			require.NoError(t, json.Unmarshal([]byte(body), &st))
			require.Equal(t, limit, st.Tracked)
			require.Equal(t, valid-limit, st.Evicted)
			require.Equal(t, float64(valid-limit), s.metric(t, `feedback_coordinators_evicted_total{provider="ibkr"}`))
			require.Len(t, st.Coordinators, 1000, "/state lists the 1,000 most pressing")
			require.Less(t, len(body), 1<<20, "/state is bounded")
			rssAfter := s.metric(t, "process_resident_memory_bytes")
			t.Logf("RSS %.0f MB at start, %.0f MB after the long ids, %.0f MB after the valid ones; /state %d bytes",
				rssBefore/1e6, rssLong/1e6, rssAfter/1e6, len(body))
			require.Less(t, rssAfter, rssBefore+60e6, "RSS bounded (it grew by 300 MB before the limits)")
			require.Equal(t, 0, s.stop(syscall.SIGTERM)) // (the log, past its buffer's limit, lacks the last lines)
		})
	}
}

// TestPublishValidatesItsNumbers proves `pulse publish` refuses a negative --queue-size with
// exit status 2 naming the flag, instead of silently putting 80 in its place.
func TestPublishValidatesItsNumbers(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--queue-size", "-3"}, "invalid --queue-size=-3 (accepted: an integer ≥ 0)"},
		{[]string{"--capacity", "0"}, "invalid --capacity=0 (accepted: an integer ≥ 1)"},
		{[]string{"--coordinator", strings.Repeat("c", 300)}, "coordinator_id of 300 bytes (accepted: a non-empty string of at most 256 bytes)"},
	} {
		all := append([]string{"publish", "--coordinator", "c1", "--level", "hard"}, tc.args...)
		code, _, errOut := pulse(t, nil, all...)
		require.Equal(t, 2, code, "%v: %s", tc.args, errOut)
		require.Contains(t, errOut, tc.want)
	}
}
