package main

// End-to-end tests of the real binary: TestMain builds it, each test runs it as an operator
// would and checks what docs/contract.md §5–8 promise from the outside.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/internal/redistest"
	"github.com/pulse-bus/pulse/internal/testutil"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	_ "github.com/pulse-bus/pulse/transport/jetstream"
	"github.com/pulse-bus/pulse/transport/jetstream/embedded"
	_ "github.com/pulse-bus/pulse/transport/redis"
)

// testVersion is stamped into the binary with -ldflags, as `make build` does.
const testVersion = "v0.0.0-e2e"

// Bounds of the waits in these tests.
const (
	startTimeout = 30 * time.Second
	waitTimeout  = 15 * time.Second
	exitTimeout  = 30 * time.Second
)

// pulseBin is the binary under test.
var pulseBin string

var redisSrv redistest.Shared

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pulse-e2e-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	pulseBin = filepath.Join(dir, "pulse")
	gobin, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: the go command is needed to build pulse:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	build := exec.Command(gobin, "build", "-o", pulseBin,
		"-ldflags", "-X github.com/pulse-bus/pulse/internal/app.Version="+testVersion, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building pulse:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := redisSrv.Main(m).Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: leaked goroutines:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// environ is the process environment for env: only PATH and HOME from the test's own, so
// that nothing on the machine (a NATS_URL, a REDIS_URL) leaks into the run.
func environ(env map[string]string) []string {
	out := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// pulse runs the binary to completion and returns its exit status, stdout and stderr.
func pulse(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, pulseBin, args...)
	cmd.Env = environ(env)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errOut.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), out.String(), errOut.String()
	}
	t.Fatalf("pulse %v: %v\n%s", args, err, errOut.String())
	return -1, "", ""
}

// server is a running `pulse run`.
type server struct {
	t      *testing.T
	cmd    *exec.Cmd
	logs   *testutil.LockedBuffer
	start  map[string]any // the "pulse running" log record
	exited chan struct{}
	err    error // Wait's result, valid after exited
}

// startRun starts `pulse run` with JSON logs and waits for its start line.
func startRun(t *testing.T, env map[string]string) *server {
	t.Helper()
	env["PULSE_LOG_FORMAT"] = "json"
	cmd := exec.Command(pulseBin, "run")
	cmd.Env = environ(env)
	logs := &testutil.LockedBuffer{}
	pr, pw := io.Pipe()
	cmd.Stderr = io.MultiWriter(logs, pw)
	cmd.Stdout = logs
	require.NoError(t, cmd.Start())
	s := &server{t: t, cmd: cmd, logs: logs, exited: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		pw.Close()
		close(s.exited)
	}()
	started := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "pulse running" {
				select {
				case started <- rec:
				default:
				}
			}
		}
		io.Copy(io.Discard, pr)
	}()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			cmd.Process.Kill()
			<-s.exited
		}
		if t.Failed() {
			t.Logf("pulse run logs:\n%s", logs.String())
		}
	})
	select {
	case s.start = <-started:
	case <-s.exited:
		t.Fatalf("pulse run exited before starting (%v):\n%s", s.err, logs.String())
	case <-time.After(startTimeout):
		t.Fatalf("pulse run did not start within %s:\n%s", startTimeout, logs.String())
	}
	return s
}

func (s *server) url(path string) string { return "http://" + s.start["http"].(string) + path }

// waitLog waits until the process's logs hold text. They reach s.logs through exec's copying
// goroutine, so a line the process wrote before what the test saw over HTTP may not be there
// yet when the test looks once.
func (s *server) waitLog(t *testing.T, text string) {
	t.Helper()
	eventually(t, "the log line "+strconv.Quote(text), func() bool { return strings.Contains(s.logs.String(), text) })
}

// stop sends sig and waits for the exit status.
func (s *server) stop(sig os.Signal) int {
	s.t.Helper()
	require.NoError(s.t, s.cmd.Process.Signal(sig))
	select {
	case <-s.exited:
	case <-time.After(exitTimeout):
		s.t.Fatalf("pulse run did not exit within %s of %v:\n%s", exitTimeout, sig, s.logs.String())
	}
	var exit *exec.ExitError
	if errors.As(s.err, &exit) {
		return exit.ExitCode()
	}
	require.NoError(s.t, s.err)
	return 0
}

var httpClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// eventually polls cond every few milliseconds until it holds or waitTimeout passes; on
// timeout it reports what, and the contents of missing if given.
func eventually(t *testing.T, what string, cond func() bool, missing ...*[]string) {
	t.Helper()
	eventuallyWithin(t, waitTimeout, what, cond, missing...)
}

// eventuallyWithin is eventually with its own bound, for waits on thousands of messages.
func eventuallyWithin(t *testing.T, d time.Duration, what string, cond func() bool, missing ...*[]string) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			if len(missing) > 0 {
				t.Fatalf("timed out waiting for %s; missing %q", what, *missing[0])
			}
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

type stateDoc struct {
	Providers map[string]struct {
		BaseRate float64 `json:"base_rate"`
		Scale    float64 `json:"scale"`
		Rate     float64 `json:"rate"`
	} `json:"providers"`
	Coordinators map[string]struct {
		Level     string    `json:"level"`
		EventTS   float64   `json:"event_ts"`
		AppliedAt time.Time `json:"applied_at"`
	} `json:"coordinators"`
	Consumer struct {
		Group     string `json:"group"`
		Restored  bool   `json:"restored"`
		Collision string `json:"collision"`
	} `json:"consumer"`
}

func state(t *testing.T, s *server) stateDoc {
	t.Helper()
	code, body := get(t, s.url("/state"))
	require.Equal(t, 200, code, body)
	var st stateDoc
	require.NoError(t, json.Unmarshal([]byte(body), &st), body)
	return st
}

// uniqueNamespace keeps runs that share the package's redis-server (go test -count) apart.
func uniqueNamespace(prefix string) string {
	return prefix + "_" + strconv.FormatInt(time.Now().UnixNano(), 36)
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// exercise is the operator's session against a running `pulse run`: ready, publish hard with
// `pulse publish`, see the provider's rate drop in /state and /metrics.
func exercise(t *testing.T, s *server, env map[string]string) string {
	t.Helper()
	eventually(t, "/readyz 200", func() bool { code, _ := get(t, s.url("/readyz")); return code == 200 })
	code, _ := get(t, s.url("/healthz"))
	require.Equal(t, 200, code)
	require.Equal(t, 60.0, state(t, s).Providers["ibkr"].Rate)

	code, out, errOut := pulse(t, env, "publish", "--coordinator", "c1", "--level", "hard")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "published FeedbackEvent coordinator=c1 level=hard queue_size=80 capacity=100")

	eventually(t, "the provider's rate to drop", func() bool { return state(t, s).Providers["ibkr"].Rate == 1 })
	st := state(t, s)
	require.Equal(t, 0.0, st.Providers["ibkr"].Scale)
	require.Equal(t, "hard", st.Coordinators["c1"].Level)
	require.False(t, st.Coordinators["c1"].AppliedAt.IsZero())

	track := env["SCHEMA_TRACK"]
	if track == "" {
		track = "v1"
	}
	var metrics string
	wants := []string{
		`pipeline_rate_scale_factor{provider="ibkr"} 0`,
		`pipeline_backpressure_state{provider="ibkr"} 2`,
		`feedback_events_processed_total{level="hard",provider="ibkr"} 1`,
		`pulse_consume_total{outcome="success",stream="telemetry.feedback",track="` + track + `"} 1`,
		`pulse_publish_total{outcome="success",stream="telemetry.rate_adjustment",track="` + track + `"} 1`,
		`pulse_lag_ms{stream="telemetry.feedback"}`,
	}
	var missing []string
	eventually(t, "the metrics", func() bool {
		_, metrics = get(t, s.url("/metrics"))
		missing = missing[:0]
		for _, w := range wants {
			if !strings.Contains(metrics, w) {
				missing = append(missing, w)
			}
		}
		return len(missing) == 0
	}, &missing)
	return metrics
}

// stoppedClean sends sig, requires exit status 0 and the drain in the logs.
func stoppedClean(t *testing.T, s *server, sig os.Signal) {
	t.Helper()
	require.Equal(t, 0, s.stop(sig), s.logs.String())
	require.Contains(t, s.logs.String(), `"msg":"pulse run: stopped"`)
}

// requireNothingUnacked opens the bus as a client and requires the feedback group to have
// no unsettled delivery and to have been given everything.
func requireNothingUnacked(t *testing.T, cfg transport.Config, group string, wantLen int64) {
	t.Helper()
	b, err := transport.Open(context.Background(), cfg)
	require.NoError(t, err)
	defer b.Close()
	info, err := b.Driver().(driver.StreamAdmin).Info(context.Background(), feedback.StreamFeedback, group)
	require.NoError(t, err)
	require.Equal(t, wantLen, info.Length)
	require.Zero(t, info.Pending, "nothing left unacked")
	require.LessOrEqual(t, info.Unread, int64(0), "nothing left unread")
}

// TestRunEmbeddedJetStream proves the zero-configuration path: `pulse run` hosts the
// embedded JetStream server on PULSE_NATS_LISTEN with its store under PULSE_DATA_DIR,
// `pulse publish` reaches it there, the rate drops, SIGTERM drains and exits 0, and the store
// shows nothing unacked. When promtool is installed, the scrape passes `promtool check
// metrics` but for the abbreviated unit of the two _ms metrics.
func TestRunEmbeddedJetStream(t *testing.T) {
	dataDir := t.TempDir()
	env := map[string]string{
		"PULSE_NATS_LISTEN": "127.0.0.1:" + strconv.Itoa(freePort(t)),
		"PULSE_DATA_DIR":    dataDir,
		"PULSE_HTTP_ADDR":   "127.0.0.1:0",
	}
	s := startRun(t, env)
	require.Equal(t, "jetstream", s.start["backend"])
	require.Contains(t, s.start["bus"], "embedded nats://"+env["PULSE_NATS_LISTEN"])
	for _, k := range []string{"namespace", "track", "group", "consumer", "http"} {
		require.NotEmpty(t, s.start[k], k)
	}
	metrics := exercise(t, s, env)
	checkPromtool(t, metrics)
	stoppedClean(t, s, syscall.SIGTERM)

	// The store survives the process: open it again and look at the group.
	srv, err := embedded.Start(context.Background(), embedded.Options{Listen: "127.0.0.1:-1", DataDir: dataDir})
	require.NoError(t, err)
	defer srv.Shutdown()
	requireNothingUnacked(t, transport.Config{Backend: "jetstream", NATSURL: srv.ClientURL()}, s.start["group"].(string), 1)
}

// TestRunExternalNATSWithAuthAndDLQ proves `pulse run` against a NATS server it does not
// own (NATS_URL), with PUBLISHER_TOKEN: a signed `pulse publish` applies; one without the
// token changes no rate and is dead-lettered `unauthenticated`, which `pulse dlq list`
// shows; after SIGTERM nothing is unacked, `pulse dlq replay` puts the original bytes back on
// the source stream and `pulse dlq purge` empties what is left.
func TestRunExternalNATSWithAuthAndDLQ(t *testing.T) {
	srv, err := embedded.Start(context.Background(), embedded.Options{Listen: "127.0.0.1:-1", DataDir: t.TempDir()})
	require.NoError(t, err)
	defer srv.Shutdown()
	env := map[string]string{
		"NATS_URL":        srv.ClientURL(),
		"PULSE_HTTP_ADDR": "127.0.0.1:0",
		"PUBLISHER_TOKEN": "e2e-token",
		"SCHEMA_TRACK":    "v2",
	}
	s := startRun(t, env)
	require.Equal(t, srv.ClientURL(), s.start["bus"])
	exercise(t, s, env)

	unsigned := map[string]string{"NATS_URL": srv.ClientURL()}
	code, _, errOut := pulse(t, unsigned, "publish", "--coordinator", "forger", "--level", "hard")
	require.Equal(t, 0, code, errOut)
	var list string
	eventually(t, "the forged event in the DLQ", func() bool {
		code, list, errOut = pulse(t, unsigned, "dlq", "list")
		return code == 0 && strings.Contains(list, "unauthenticated")
	})
	require.Contains(t, errOut, "1 dead letter(s) in telemetry.feedback.dlq")
	st := state(t, s)
	require.NotContains(t, st.Coordinators, "forger")
	require.Equal(t, 1.0, st.Providers["ibkr"].Rate, "still the hard of the signed event, nothing else")
	_, metrics := get(t, s.url("/metrics"))
	require.Contains(t, metrics, `pulse_consume_total{outcome="rejected",stream="telemetry.feedback",track="v1"} 1`, "counted under the track its envelope declares")
	require.Contains(t, metrics, `pulse_dlq_total{reason="unauthenticated",stream="telemetry.feedback"} 1`)

	stoppedClean(t, s, syscall.SIGTERM)
	cfg := transport.Config{Backend: "jetstream", NATSURL: srv.ClientURL()}
	requireNothingUnacked(t, cfg, st.Consumer.Group, 2)

	code, out, errOut := pulse(t, unsigned, "dlq", "replay")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "replayed 1 dead letter(s) from telemetry.feedback.dlq")
	b, err := transport.Open(context.Background(), cfg)
	require.NoError(t, err)
	defer b.Close()
	admin := b.Driver().(driver.StreamAdmin)
	info, err := admin.Info(context.Background(), feedback.StreamFeedback, "")
	require.NoError(t, err)
	require.Equal(t, int64(3), info.Length, "the dead letter is back on its source stream")
	info, err = admin.Info(context.Background(), feedback.StreamFeedback+transport.DLQSuffix, "")
	require.NoError(t, err)
	require.Zero(t, info.Length)

	code, _, errOut = pulse(t, unsigned, "dlq", "purge")
	require.Equal(t, 2, code, "standard input is no terminal: purging needs --yes")
	require.Contains(t, errOut, "without --yes")
	code, out, errOut = pulse(t, unsigned, "dlq", "purge", "--yes")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "purged 0 dead letter(s)")
}

// TestRunRedis proves `pulse run` on Redis Streams, stopped with SIGINT: publish, the rate
// drops, exit 0, the group has nothing pending.
func TestRunRedis(t *testing.T) {
	url := redisSrv.Server(t).URL()
	ns := uniqueNamespace("e2e_redis")
	env := map[string]string{
		"EVENT_BUS_BACKEND": "redis",
		"REDIS_URL":         url,
		"MD_NAMESPACE":      ns,
		"PULSE_HTTP_ADDR":   "127.0.0.1:0",
	}
	s := startRun(t, env)
	require.Equal(t, "redis", s.start["backend"])
	require.Equal(t, url, s.start["bus"])
	exercise(t, s, env)
	stoppedClean(t, s, syscall.SIGINT)
	requireNothingUnacked(t, transport.Config{Backend: "redis", RedisURL: url, Namespace: ns}, s.start["group"].(string), 1)
}

// checkPromtool runs `promtool check metrics` on a scrape when promtool is installed: the
// only complaints allowed are about the abbreviated unit of pulse_lag_ms and
// pulse_publish_latency_ms, whose names dashboards use (docs/contract.md §8).
func checkPromtool(t *testing.T, metrics string) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("promtool not installed: `promtool check metrics` not run (.ci/run installs it)")
		return
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(metrics)
	out, _ := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		allowed := (strings.HasPrefix(line, "pulse_lag_ms ") || strings.HasPrefix(line, "pulse_publish_latency_ms ")) &&
			strings.Contains(line, "unit")
		require.True(t, allowed, "promtool check metrics: %s", line)
	}
}

// TestConfigRejectsEachBadVariable proves every invalid setting stops `pulse config` (and
// so start-up) with exit status 2 and a message naming the variable, the value and what is
// accepted.
func TestConfigRejectsEachBadVariable(t *testing.T) {
	for _, tc := range []struct{ name, value, accepted string }{
		{"PULSE_ENABLED", "maybe", "true or false"},
		{"EVENT_BUS_BACKEND", "kafka", "inmem, jetstream, redis"},
		{"NATS_URL", "http://n1:4222", "nats://"},
		{"PULSE_NATS_LISTEN", "4223", "host:port"},
		{"PULSE_NATS_LISTEN", "127.0.0.1:99999", "host:port"},
		{"REDIS_URL", "localhost:6379", "redis://"},
		{"MD_NAMESPACE", "MDP", "[a-z0-9_-]+"},
		{"SCHEMA_TRACK", "v3", "v1, v2"},
		{"PULSE_HTTP_ADDR", "nowhere", "host:port"},
		{"PULSE_GROUP", "a.b", "letters, digits"},
		{"PULSE_CONSUMER_NAME", "w 1", "letters, digits"},
		{"PULSE_FEEDBACK_STREAM", "a..b", "dot-separated"},
		{"PULSE_FEEDBACK_SHARED_GROUP", "sometimes", "true or false"},
		{"PULSE_MAX_DELIVERIES", "0", "an integer ≥ 1"},
		{"PULSE_ACK_WAIT", "30", "a positive duration"},
		{"PULSE_DRAIN_TIMEOUT", "-1s", "a positive duration"},
		{"PULSE_BATCH_SIZE", "many", "an integer ≥ 1"},
		{"PULSE_STREAM_MAX_AGE", "forever", "a positive duration"},
		{"PULSE_STREAM_MAX_BYTES", "-5", "an integer ≥ 0"},
		{"PULSE_STREAM_MAX_LEN", "1e3", "an integer ≥ 0"},
		{"PULSE_STREAM_REPLICAS", "7", "1 to 5"},
		{"PULSE_SHARED_IDEMPOTENCY", "2", "true or false"},
		{"MDP_FB_SCALE_OK", "1.5", "a number from 0 to 1"},
		{"MDP_FB_SCALE_SOFT", "half", "a number from 0 to 1"},
		{"MDP_FB_SCALE_HARD", "-0.1", "a number from 0 to 1"},
		{"MDP_FB_BASE_RATE", "0", "a number > 0"},
		{"MDP_FB_MIN_RATE", "100", "≤ MDP_FB_BASE_RATE=60"},
		{"MDP_FB_BURST", "0", "an integer ≥ 1"},
		{"PULSE_LOG_LEVEL", "verbose", "debug, info, warn, error"},
		{"PULSE_LOG_FORMAT", "xml", "text, json"},
		{"PULSE_SHUTDOWN_TIMEOUT", "soon", "a positive duration"},
		{"PULSE_NATS_CREDS", "/nonexistent.creds", "a readable NATS credentials file"},
		{"PULSE_NATS_NKEY", "/nonexistent.nk", "a readable file holding a user nkey seed"},
		{"PULSE_NATS_TLS_CA", "/nonexistent.pem", "a readable file of PEM CA certificates"},
		{"PULSE_NATS_TLS_CERT", "/nonexistent.pem", "a client certificate and its key together"},
	} {
		t.Run(tc.name+"="+tc.value, func(t *testing.T) {
			env := map[string]string{tc.name: tc.value}
			if tc.name == "REDIS_URL" { // a backend's own settings are checked when it is chosen
				env["EVENT_BUS_BACKEND"] = "redis"
			}
			code, out, errOut := pulse(t, env, "config")
			require.Equal(t, 2, code, "stdout: %s\nstderr: %s", out, errOut)
			require.Contains(t, errOut, fmt.Sprintf("invalid %s=%q", tc.name, tc.value))
			require.Contains(t, errOut, "accepted: ")
			require.Contains(t, errOut, tc.accepted)
		})
	}
	// The same through a flag names the flag and the variable.
	code, _, errOut := pulse(t, nil, "run", "--backend", "kafka")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, `invalid --backend="kafka" (EVENT_BUS_BACKEND): accepted: inmem, jetstream, redis`)
}

// TestVersionAndUsage proves `pulse version` prints the version stamped with -ldflags, and
// that usage errors exit 2 with the usage text.
func TestVersionAndUsage(t *testing.T) {
	code, out, _ := pulse(t, nil, "version")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(out, "pulse "+testVersion+" go1."), out)

	code, _, errOut := pulse(t, nil)
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "Usage: pulse <command>")
	code, _, errOut = pulse(t, nil, "run", "extra")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "Usage: pulse run")
}

// TestPublishWithoutABusFails proves `pulse publish` exits 1 (a run-time failure, not a
// usage error) when nothing listens where the bus should be.
func TestPublishWithoutABusFails(t *testing.T) {
	env := map[string]string{"PULSE_NATS_LISTEN": "127.0.0.1:" + strconv.Itoa(freePort(t))}
	code, _, errOut := pulse(t, env, "publish", "--coordinator", "c1", "--level", "ok")
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "pulse publish:")
}

// TestDemoBinary proves `pulse demo` on its default embedded JetStream runs to its summary
// and writes the plot.
func TestDemoBinary(t *testing.T) {
	plot := filepath.Join(t.TempDir(), "demo.svg")
	code, out, errOut := pulse(t, nil, "demo", "--fast", "--duration", "5s", "--plot", plot)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "over jetstream")
	require.Contains(t, out, "the loop settled")
	st, err := os.Stat(plot)
	require.NoError(t, err)
	require.Greater(t, st.Size(), int64(1000))
}

// appliedCoordinators returns, per coordinator, how many times a `pulse run` (at debug
// level) logged applying its event.
func appliedCoordinators(logs string) map[string]int {
	out := map[string]int{}
	for _, line := range strings.Split(logs, "\n") {
		var rec struct {
			Msg         string `json:"msg"`
			Coordinator string `json:"coordinator"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		if rec.Msg == "provider rate adjusted" || rec.Msg == "feedback applied; scale unchanged" {
			out[rec.Coordinator]++
		}
	}
	return out
}

// TestRunDrainsAndResumes proves the shutdown contract under load, on JetStream and Redis:
// SIGTERM while a burst of feedback events is being consumed exits 0; a restarted `pulse run`
// resumes the same group and settles the rest; across the two runs every event was applied
// exactly once (one handled but left unacked by the first run would be applied again by the
// second, whose idempotency record is new) and the group ends with nothing pending or
// unread.
//
// Right after the first exit the group may still show deliveries pending: JetStream counts
// messages the client had fetched ahead and handed back (nak'd, never handled) as pending
// until they are delivered again, so "pending" alone cannot tell them from unacked work.
func TestRunDrainsAndResumes(t *testing.T) {
	const burst = 300
	for _, backend := range []string{"jetstream", "redis"} {
		t.Run(backend, func(t *testing.T) {
			env := map[string]string{
				"EVENT_BUS_BACKEND": backend,
				"PULSE_HTTP_ADDR":   "127.0.0.1:0",
				"PULSE_LOG_LEVEL":   "debug",
				"PULSE_ACK_WAIT":    "2s",
			}
			cfg := transport.Config{Backend: backend, Schemas: feedback.Schemas()}
			switch backend {
			case "jetstream":
				srv, err := embedded.Start(context.Background(), embedded.Options{Listen: "127.0.0.1:-1", DataDir: t.TempDir()})
				require.NoError(t, err)
				t.Cleanup(srv.Shutdown)
				env["NATS_URL"], cfg.NATSURL = srv.ClientURL(), srv.ClientURL()
			case "redis":
				url := redisSrv.Server(t).URL()
				env["REDIS_URL"], cfg.RedisURL = url, url
				ns := uniqueNamespace("e2e_drain")
				env["MD_NAMESPACE"], cfg.Namespace = ns, ns
			}
			s := startRun(t, env)
			eventually(t, "/readyz 200", func() bool { code, _ := get(t, s.url("/readyz")); return code == 200 })

			b, err := transport.Open(context.Background(), cfg)
			require.NoError(t, err)
			defer b.Close()
			envs := make([]*envelope.Envelope, burst)
			ts := float64(time.Now().UnixNano()) / 1e9
			for i := range envs {
				envs[i], err = feedback.Event{
					CoordinatorID: "c" + strconv.Itoa(i), QueueSize: 80, Capacity: 100,
					Level: feedback.Levels[i%3], TS: envelope.Float(ts),
				}.Envelope(nil)
				require.NoError(t, err)
			}
			require.NoError(t, b.Publish(context.Background(), feedback.StreamFeedback, envs...))
			eventually(t, "consumption to begin", func() bool {
				_, m := get(t, s.url("/metrics"))
				return strings.Contains(m, `pulse_consume_total{outcome="success"`)
			})
			stoppedClean(t, s, syscall.SIGTERM)
			first := appliedCoordinators(s.logs.String())
			t.Logf("the first run applied %d of %d events before it stopped", len(first), burst)

			group := s.start["group"].(string)
			admin := b.Driver().(driver.StreamAdmin)
			s2 := startRun(t, env)
			require.Equal(t, group, s2.start["group"], "a restarted replica resumes its own group")
			// The child's log reaches s2.logs through a pipe, a little after the child wrote it:
			// wait for every event to show, then for the group to settle, and count only once
			// the process has exited (its output is then complete).
			eventually(t, "every event to be applied", func() bool {
				second := appliedCoordinators(s2.logs.String())
				for i := range burst {
					if id := "c" + strconv.Itoa(i); first[id]+second[id] == 0 {
						return false
					}
				}
				return true
			})
			var info driver.StreamInfo
			eventually(t, "the restarted consumer to settle the rest", func() bool {
				info, err = admin.Info(context.Background(), feedback.StreamFeedback, group)
				return err == nil && info.Unread <= 0 && info.Pending == 0
			})
			require.Equal(t, int64(burst), info.Length)
			stoppedClean(t, s2, syscall.SIGTERM)
			second := appliedCoordinators(s2.logs.String())

			for i := range burst {
				id := "c" + strconv.Itoa(i)
				require.Equal(t, 1, first[id]+second[id], "event of %s applied once across the two runs", id)
			}
		})
	}
}
