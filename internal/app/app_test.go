package app

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/internal/natstest"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/jetstream/embedded"
)

// backends are the backends the App tests run on (see testBackends).
var backends = testBackends("inmem", "jetstream", "redis")

// TestAppAppliesFeedbackAndServesHTTP proves the pipeline side end to end in process: once
// /readyz says ready, a hard FeedbackEvent published by another connection drops the
// provider's rate to its floor, /state and /metrics show it, the RateAdjustment is
// published, and an ok event restores the base rate.
func TestAppAppliesFeedbackAndServesHTTP(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			env := baseEnv(t, backend)
			a := startApp(t, env)
			base := "http://" + a.HTTPAddr()
			require.Eventually(t, func() bool { code, _ := get(t, base+"/readyz"); return code == 200 }, waitTimeout, 5*time.Millisecond)
			code, body := get(t, base+"/healthz")
			require.Equal(t, 200, code)
			require.Equal(t, "ok\n", body)

			b := clientBus(t, env, "")
			publishEvent(t, b, DefaultFeedbackStream, "c1", feedback.LevelHard)
			require.Eventually(t, func() bool { return a.Rates().Rate("ibkr") == 1 }, waitTimeout, 5*time.Millisecond)

			code, body = get(t, base+"/state")
			require.Equal(t, 200, code)
			var st stateDoc
			require.NoError(t, json.Unmarshal([]byte(body), &st), body)
			require.Equal(t, 60.0, st.Providers["ibkr"].BaseRate)
			require.Equal(t, 0.0, st.Providers["ibkr"].Scale)
			require.Equal(t, 1.0, st.Providers["ibkr"].Rate)
			require.Equal(t, feedback.LevelHard, st.Coordinators["c1"].Level)
			require.Greater(t, st.Coordinators["c1"].EventTS, 0.0)
			require.False(t, st.Coordinators["c1"].AppliedAt.IsZero())
			require.Equal(t, backend, st.Consumer.Backend)
			require.Equal(t, a.Group(), st.Consumer.Group)
			require.Equal(t, "pipeline-"+a.cfg.Bus.Consumer, st.Consumer.Group, "a group of this replica's own")
			require.True(t, st.Consumer.Restored)

			waitMetrics(t, base+"/metrics",
				`pipeline_rate_scale_factor{provider="ibkr"} 0`,
				`pipeline_backpressure_state{provider="ibkr"} 2`,
				`feedback_events_processed_total{level="hard",provider="ibkr"} 1`,
				`pulse_consume_total{outcome="success",stream="telemetry.feedback",track="`+testTrack()+`"} 1`,
				`pulse_publish_total{outcome="success",stream="telemetry.rate_adjustment",track="`+testTrack()+`"} 1`)

			admin := b.Driver().(driver.StreamAdmin)
			require.Eventually(t, func() bool {
				info, err := admin.Info(context.Background(), DefaultRateStream, "")
				return err == nil && info.Length == 1
			}, waitTimeout, 5*time.Millisecond, "the applied change is published as a RateAdjustment")

			publishEvent(t, b, DefaultFeedbackStream, "c1", feedback.LevelOK)
			require.Eventually(t, func() bool { return a.Rates().Rate("ibkr") == 60 }, waitTimeout, 5*time.Millisecond)
		})
	}
}

// TestAppPublisherAuthentication proves docs/contract.md §4 through the App: with PUBLISHER_TOKEN
// on both sides a signed hard event applies; with it on the consumer only, an unsigned (or
// wrongly signed) hard event changes no rate, is dead-lettered `unauthenticated` and counted
// `rejected`.
func TestAppPublisherAuthentication(t *testing.T) {
	const token = "s3cret-token"
	for _, backend := range backends {
		for _, tc := range []struct {
			name, publisherToken string
			applies              bool
		}{
			{"signed", token, true},
			{"unsigned", "", false},
			{"forged", "another-token", false},
		} {
			t.Run(backend+"/"+tc.name, func(t *testing.T) {
				env := baseEnv(t, backend)
				env["PUBLISHER_TOKEN"] = token
				a := startApp(t, env)
				b := clientBus(t, env, tc.publisherToken)
				publishEvent(t, b, DefaultFeedbackStream, "c1", feedback.LevelHard)
				admin := b.Driver().(driver.StreamAdmin)
				base := "http://" + a.HTTPAddr()
				if tc.applies {
					require.Eventually(t, func() bool { return a.Rates().Rate("ibkr") == 1 }, waitTimeout, 5*time.Millisecond)
					return
				}
				var letters []driver.StoredMessage
				require.Eventually(t, func() bool {
					letters = letters[:0]
					err := admin.Range(context.Background(), DefaultFeedbackStream+transport.DLQSuffix, 0, func(m driver.StoredMessage) error {
						letters = append(letters, m)
						return nil
					})
					return err == nil && len(letters) == 1
				}, waitTimeout, 5*time.Millisecond)
				require.Equal(t, "unauthenticated", letters[0].Headers[transport.DLQReason])
				require.Equal(t, 60.0, a.Rates().Rate("ibkr"), "a forged hard event must not throttle the pipeline")
				require.Empty(t, a.Handler().State().Coordinators)
				waitMetrics(t, base+"/metrics",
					`pulse_consume_total{outcome="rejected",stream="telemetry.feedback",track="`+testTrack()+`"} 1`,
					`pulse_dlq_total{reason="unauthenticated",stream="telemetry.feedback"} 1`,
					`pipeline_rate_scale_factor{provider="ibkr"} 1`)
			})
		}
	}
}

// TestAppEmbeddedJetStream proves that with the jetstream backend and no NATS_URL the App
// hosts the JetStream server itself (on PULSE_NATS_LISTEN, store under PULSE_DATA_DIR) and
// that another connection to it reaches the consumer.
func TestAppEmbeddedJetStream(t *testing.T) {
	env := map[string]string{
		"EVENT_BUS_BACKEND": "jetstream",
		"PULSE_NATS_LISTEN": "127.0.0.1:0",
		"PULSE_DATA_DIR":    t.TempDir(),
		"PULSE_HTTP_ADDR":   "127.0.0.1:0",
	}
	a := startApp(t, env)
	require.True(t, strings.HasPrefix(a.NATSURL(), "nats://127.0.0.1:"), a.NATSURL())
	require.Contains(t, a.where(), "embedded "+a.NATSURL())
	env["NATS_URL"] = a.NATSURL()
	b := clientBus(t, env, "")
	publishEvent(t, b, DefaultFeedbackStream, "store-1", feedback.LevelSoft)
	require.Eventually(t, func() bool { return a.Rates().Rate("ibkr") == 30 }, waitTimeout, 5*time.Millisecond)
}

// TestAppStopIsIdempotent proves Stop can be called again (and concurrently) with the first
// call's result, and that after it the bus is closed and HTTP no longer answers.
func TestAppStopIsIdempotent(t *testing.T) {
	a, err := New(loadEnv(t, baseEnv(t, "inmem")), testLogger(t))
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	addr := a.HTTPAddr()
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- a.Stop(context.Background()) }()
	}
	for range 3 {
		require.NoError(t, <-errs)
	}
	require.NoError(t, a.Stop(context.Background()))
	require.ErrorIs(t, a.Bus().Publish(context.Background(), "s", nil), transport.ErrClosed)
	_, err = net.DialTimeout("tcp", addr, time.Second)
	require.Error(t, err, "HTTP must be shut down")
	require.Error(t, a.ready(context.Background()))
}

// TestStackUnwindsLIFO proves the teardown order: last started, first stopped, each once,
// errors joined and named.
func TestStackUnwindsLIFO(t *testing.T) {
	var s stack
	var order []string
	boom := errors.New("boom")
	for _, name := range []string{"a", "b", "c"} {
		s.push(name, func(context.Context) error {
			order = append(order, name)
			if name == "b" {
				return boom
			}
			return nil
		})
	}
	err := s.unwind(context.Background())
	require.ErrorIs(t, err, boom)
	require.ErrorContains(t, err, "stop b")
	require.Equal(t, []string{"c", "b", "a"}, order)
	require.NoError(t, s.unwind(context.Background()))
	require.Len(t, order, 3, "a second unwind stops nothing again")
}

// TestAppStopHonoursItsDeadline proves Stop returns ErrStopTimeout when a component does not
// stop in time, instead of hanging the process.
func TestAppStopHonoursItsDeadline(t *testing.T) {
	a, err := New(loadEnv(t, baseEnv(t, "inmem")), testLogger(t))
	require.NoError(t, err)
	release := make(chan struct{})
	stopped := make(chan struct{})
	a.stack.push("stuck", func(context.Context) error {
		defer close(stopped)
		<-release
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, a.Stop(ctx), ErrStopTimeout)
	require.ErrorIs(t, a.Stop(context.Background()), ErrStopTimeout, "later calls return the first result")
	close(release)
	<-stopped
}

// TestAppReportsAFailedConsumer proves that a consumer that stops on its own (not through
// Stop) is reported on Failed and makes /readyz answer 503 with the reason.
func TestAppReportsAFailedConsumer(t *testing.T) {
	a := startApp(t, baseEnv(t, "inmem"))
	require.NoError(t, a.consumer.Load().Close())
	select {
	case err := <-a.Failed():
		require.ErrorContains(t, err, "feedback consumer")
	case <-time.After(waitTimeout):
		t.Fatal("no failure reported")
	}
	code, body := get(t, "http://"+a.HTTPAddr()+"/readyz")
	require.Equal(t, 503, code)
	require.Contains(t, body, "not ready: ")
	require.Contains(t, body, "closed")
	waitMetrics(t, "http://"+a.HTTPAddr()+"/metrics", "\npulse_ready 0\n")
}

// TestAppDisabledConsumer proves PULSE_ENABLED=false serves HTTP (ready, the provider at its
// base rate) without opening a bus.
func TestAppDisabledConsumer(t *testing.T) {
	env := baseEnv(t, "inmem")
	env["PULSE_ENABLED"] = "false"
	a := startApp(t, env)
	require.Nil(t, a.Bus())
	code, body := get(t, "http://"+a.HTTPAddr()+"/readyz")
	require.Equal(t, 200, code, body)
	_, body = get(t, "http://"+a.HTTPAddr()+"/state")
	require.Contains(t, body, `"enabled": false`)
	require.Contains(t, body, `"rate": 60`)
}

// TestAppStartFailureStopsWhatStarted proves that a component failing to start (the HTTP
// address is taken) fails Start with an error naming the setting and leaves nothing running
// (goleak checks the goroutines at the end of the package).
func TestAppStartFailureStopsWhatStarted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	env := baseEnv(t, "inmem")
	env["PULSE_HTTP_ADDR"] = ln.Addr().String()
	a, err := New(loadEnv(t, env), testLogger(t))
	require.NoError(t, err)
	err = a.Start(context.Background())
	require.ErrorContains(t, err, "PULSE_HTTP_ADDR")
	require.ErrorIs(t, a.Start(context.Background()), err, "Start runs once")
	require.NoError(t, a.Stop(context.Background()))
}

// TestAppReadyzReportsTheBrokerGone proves /readyz answers 503 with the reason once the
// broker stops answering, pulse_ready going from 1 to 0 with it, and that the App still stops
// within its deadline afterwards.
func TestAppReadyzReportsTheBrokerGone(t *testing.T) {
	srv := startNATS(t)
	env := baseEnv(t, "inmem")
	env["EVENT_BUS_BACKEND"] = "jetstream"
	env["NATS_URL"] = srv.ClientURL()
	a, err := New(loadEnv(t, env), testLogger(t))
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	readyz := "http://" + a.HTTPAddr() + "/readyz"
	require.True(t, waitCond(waitTimeout, func() bool { code, _ := get(t, readyz); return code == 200 }))
	waitMetrics(t, "http://"+a.HTTPAddr()+"/metrics", "\npulse_ready 1\n")

	srv.Shutdown()
	var body string
	require.True(t, waitCond(waitTimeout, func() bool {
		var code int
		code, body = get(t, readyz)
		return code == 503
	}), "readyz never reported the broker gone")
	require.Contains(t, body, "not ready: ")
	t.Log(strings.TrimSpace(body))
	waitMetrics(t, "http://"+a.HTTPAddr()+"/metrics", "\npulse_ready 0\n")

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	err = a.Stop(ctx)
	require.NotErrorIs(t, err, ErrStopTimeout)
}

// TestAppWaitsForABrokerThatIsNotUpYet proves that a broker unreachable at start-up is
// retried rather than fatal: /readyz answers 503 naming the wait meanwhile, Start returns once
// the broker is up and the App then becomes ready; and a Start interrupted while waiting
// returns promptly with the cause.
func TestAppWaitsForABrokerThatIsNotUpYet(t *testing.T) {
	ports, err := natstest.FreePorts(1)
	require.NoError(t, err)
	listen := "127.0.0.1:" + strconv.Itoa(ports[0])
	env := baseEnv(t, "inmem")
	env["EVENT_BUS_BACKEND"] = "jetstream"
	env["NATS_URL"] = "nats://" + listen

	a, err := New(loadEnv(t, env), testLogger(t))
	require.NoError(t, err)
	started := make(chan error, 1)
	go func() { started <- a.Start(context.Background()) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		require.NoError(t, a.Stop(ctx))
	})
	var body string
	require.True(t, waitCond(waitTimeout, func() bool {
		if a.HTTPAddr() == "" {
			return false
		}
		var code int
		code, body = get(t, "http://"+a.HTTPAddr()+"/readyz")
		return code == 503 && strings.Contains(body, "waiting for the jetstream bus")
	}), "readyz should report the wait; last answer %q", body)
	select {
	case err := <-started:
		t.Fatalf("Start returned while the broker is down: %v", err)
	default:
	}

	srv, err := embedded.Start(context.Background(), embedded.Options{Listen: listen, DataDir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(srv.Shutdown)
	select {
	case err := <-started:
		require.NoError(t, err)
	case <-time.After(waitTimeout):
		t.Fatal("Start did not return after the broker came up")
	}
	require.True(t, waitCond(waitTimeout, func() bool { code, _ := get(t, "http://"+a.HTTPAddr()+"/readyz"); return code == 200 }))

	// Interrupted while waiting: Start gives up with the cause.
	ports, err = natstest.FreePorts(1)
	require.NoError(t, err)
	env["NATS_URL"] = "nats://127.0.0.1:" + strconv.Itoa(ports[0])
	env["PULSE_HTTP_ADDR"] = "127.0.0.1:0"
	b, err := New(loadEnv(t, env), testLogger(t))
	require.NoError(t, err)
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() { started <- b.Start(ctx) }()
	cancel(errors.New("operator stopped it"))
	select {
	case err := <-started:
		require.ErrorContains(t, err, "operator stopped it")
	case <-time.After(waitTimeout):
		t.Fatal("an interrupted Start did not return")
	}
	require.NoError(t, b.Stop(context.Background()))
}

// TestStateBoundedByQuery proves /state lists at most ?coordinators=N of them (the most
// pressing first; 1,000 by default), counts them all, and refuses a bad N naming what is
// accepted.
func TestStateBoundedByQuery(t *testing.T) {
	env := baseEnv(t, "inmem")
	a := startApp(t, env)
	base := "http://" + a.HTTPAddr()
	require.Eventually(t, func() bool { code, _ := get(t, base+"/readyz"); return code == 200 }, waitTimeout, 5*time.Millisecond)
	b := clientBus(t, env, "")
	for i := range 5 {
		publishEvent(t, b, DefaultFeedbackStream, "c"+strconv.Itoa(i), feedback.LevelOK)
	}
	publishEvent(t, b, DefaultFeedbackStream, "hot", feedback.LevelHard)
	require.Eventually(t, func() bool { return a.Handler().State().CoordinatorsTracked == 6 }, waitTimeout, 5*time.Millisecond)

	code, body := get(t, base+"/state?coordinators=2")
	require.Equal(t, 200, code, body)
	var st stateDoc
	require.NoError(t, json.Unmarshal([]byte(body), &st))
	require.Len(t, st.Coordinators, 2)
	require.Contains(t, st.Coordinators, "hot")
	require.Equal(t, 6, st.CoordinatorsTracked)
	for _, bad := range []string{"-1", "many", "10001"} {
		code, body = get(t, base+"/state?coordinators="+bad)
		require.Equal(t, 400, code, bad)
		require.Contains(t, body, "accepted: 0 to 10000")
	}
}
