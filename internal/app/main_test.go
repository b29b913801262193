package app

import (
	"cmp"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/internal/redistest"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/jetstream/embedded"
)

// redisSrv is the package's redis-server, started on first use.
var redisSrv redistest.Shared

// TestMain fails the package if a test leaves a goroutine behind: an App's HTTP server,
// watchers, consumer, bus or embedded server.
func TestMain(m *testing.M) { goleak.VerifyTestMain(redisSrv.Main(m)) }

// waitTimeout bounds every wait for a condition in these tests.
const waitTimeout = 10 * time.Second

// The environment variables with which CI's matrix selects one backend and one schema track
// (unset: every backend, the default track).
const (
	testBackendEnv = "PULSE_TEST_BACKEND"
	testTrackEnv   = "PULSE_TEST_TRACK"
)

// testBackends returns all, or only the backend PULSE_TEST_BACKEND names (none if it names
// another: that backend's tests are not this run's).
func testBackends(all ...string) []string {
	only := os.Getenv(testBackendEnv)
	if only == "" {
		return all
	}
	if slices.Contains(all, only) {
		return []string{only}
	}
	return nil
}

// testTrack is the schema track publishers write in these tests: PULSE_TEST_TRACK, else v1.
func testTrack() string { return cmp.Or(os.Getenv(testTrackEnv), "v1") }

var nsSeq atomic.Int64

// uniqueNamespace keeps tests that share the process-wide inmem brokers apart.
func uniqueNamespace(t *testing.T) string {
	return "apptest_" + strconv.FormatInt(nsSeq.Add(1), 10) + "_" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)
}

// testLogger writes to the test's log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// baseEnv is the environment of an App on backend in a namespace of its own, HTTP on a free
// loopback port. For jetstream it starts an embedded server the test owns (NATS_URL); for
// redis it uses the package's redis-server.
func baseEnv(t *testing.T, backend string) map[string]string {
	env := map[string]string{
		"EVENT_BUS_BACKEND": backend,
		"MD_NAMESPACE":      uniqueNamespace(t),
		"PULSE_HTTP_ADDR":   "127.0.0.1:0",
		"PULSE_ACK_WAIT":    "5s",
		"SCHEMA_TRACK":      testTrack(),
	}
	switch backend {
	case "jetstream":
		env["NATS_URL"] = startNATS(t).ClientURL()
	case "redis":
		env["REDIS_URL"] = redisSrv.Server(t).URL()
	}
	return env
}

// startNATS starts an embedded JetStream server on a free port, stopped at cleanup.
func startNATS(t *testing.T) *embedded.Server {
	t.Helper()
	s, err := embedded.Start(context.Background(), embedded.Options{Listen: "127.0.0.1:-1", DataDir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(s.Shutdown)
	return s
}

func loadEnv(t *testing.T, env map[string]string) Config {
	t.Helper()
	cfg, err := Load(envconf.Map(env), nil)
	require.NoError(t, err)
	return cfg
}

// startApp starts an App on env and stops it at cleanup.
func startApp(t *testing.T, env map[string]string) *App {
	t.Helper()
	a, err := New(loadEnv(t, env), testLogger(t))
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		require.NoError(t, a.Stop(ctx))
	})
	return a
}

// clientBus opens a second connection to the App's bus, as another process would, closed
// at cleanup. token signs what it publishes ("" signs nothing).
func clientBus(t *testing.T, env map[string]string, token string) *transport.Bus {
	t.Helper()
	cfg := loadEnv(t, env).Bus
	cfg.PublisherToken = token
	cfg.Schemas = feedback.Schemas()
	b, err := transport.Open(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	return b
}

// publishEvent publishes one FeedbackEvent at level for coordinator.
func publishEvent(t *testing.T, b *transport.Bus, stream, coordinator string, level feedback.Level) {
	t.Helper()
	e, err := feedback.Event{
		CoordinatorID: coordinator, QueueSize: levelDepth(level, 100), Capacity: 100, Level: level,
		TS: nowTS(),
	}.Envelope(nil)
	require.NoError(t, err)
	require.NoError(t, b.Publish(context.Background(), stream, e))
}

var tsSeq atomic.Int64

// nowTS is the current time as event ts, strictly increasing across calls.
func nowTS() envelope.Float {
	return envelope.Float(float64(time.Now().UnixNano())/1e9 + float64(tsSeq.Add(1))*1e-6)
}

// get fetches url and returns the status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// waitMetrics scrapes url until every line in wants appears, failing with the missing ones.
func waitMetrics(t *testing.T, url string, wants ...string) {
	t.Helper()
	var missing []string
	ok := waitCond(waitTimeout, func() bool {
		_, body := get(t, url)
		missing = missing[:0]
		for _, w := range wants {
			if !strings.Contains(body, w) {
				missing = append(missing, w)
			}
		}
		return len(missing) == 0
	})
	require.True(t, ok, "metrics lacking: %q", missing)
}

// waitCond polls cond until it holds or d passes.
func waitCond(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}
