package main

// End-to-end tests of who can write to the bus, what is masked, and what an operator is
// asked before something is destroyed.

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/internal/testutil"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/jetstream/embedded"
)

// runUntil runs `pulse run` with env until its output satisfies done (or waitTimeout
// passes, failing the test), kills it and returns everything it wrote, standard output and
// standard error interleaved.
func runUntil(t *testing.T, env map[string]string, done func(out string) bool) string {
	t.Helper()
	cmd := exec.Command(pulseBin, "run")
	cmd.Env = environ(env)
	var out testutil.LockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { cmd.Process.Kill(); <-exited }()
	deadline := time.Now().Add(waitTimeout)
	for !done(out.String()) {
		select {
		case <-exited:
			t.Fatalf("pulse run exited:\n%s", out.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out; pulse run wrote:\n%s", out.String())
		}
	}
	cmd.Process.Kill()
	<-exited
	return out.String()
}

// TestJSONLogStaysJSONWhileRedisIsDown proves that with PULSE_LOG_FORMAT=json and Redis
// unreachable every line pulse writes is JSON: go-redis's own complaints (once 8 plain
// "redis: <date> pool.go:…" lines in 4 s) go through the service's logger.
func TestJSONLogStaysJSONWhileRedisIsDown(t *testing.T) {
	env := map[string]string{
		"EVENT_BUS_BACKEND": "redis",
		"REDIS_URL":         "redis://127.0.0.1:" + strconv.Itoa(freePort(t)) + "/0",
		"PULSE_LOG_FORMAT":  "json",
		"PULSE_HTTP_ADDR":   "127.0.0.1:0",
	}
	out := runUntil(t, env, func(out string) bool { return strings.Count(out, "bus unavailable; retrying") >= 3 })
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec), "a line that is not JSON: %q", line)
	}
	require.Contains(t, out, `"msg":"redis client: `, "go-redis's own lines are among them, as JSON")
}

// TestDLQPurgeAsksOnATerminal proves `pulse dlq purge` on a terminal (a pseudo-terminal made
// by script(1), from util-linux) asks first: "no" drops nothing and exits 1, "yes" drops the
// dead letters.
func TestDLQPurgeAsksOnATerminal(t *testing.T) {
	script, err := exec.LookPath("script")
	require.NoError(t, err, "script(1) from util-linux runs the command on a pseudo-terminal")
	srv, err := embedded.Start(context.Background(), embedded.Options{Listen: "127.0.0.1:-1", DataDir: t.TempDir()})
	require.NoError(t, err)
	defer srv.Shutdown()
	b := loopBus{cfg: transport.Config{Backend: "jetstream", NATSURL: srv.ClientURL()}}.client(t, "")
	_, err = b.PublishRaw(context.Background(), feedback.StreamFeedback+transport.DLQSuffix,
		transport.RawMessage{Body: []byte(`{"dead":1}`), Headers: map[string]string{transport.DLQReason: "malformed"}})
	require.NoError(t, err)
	purge := func(answer string) (int, string) {
		t.Helper()
		cmd := exec.Command(script, "-qec", pulseBin+" dlq purge", "/dev/null")
		cmd.Env = environ(map[string]string{"NATS_URL": srv.ClientURL()})
		cmd.Stdin = strings.NewReader(answer + "\n")
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode(), string(out)
		}
		require.NoError(t, err)
		return 0, string(out)
	}
	length := func() int64 {
		info, err := b.Driver().(driver.StreamAdmin).Info(context.Background(), feedback.StreamFeedback+transport.DLQSuffix, "")
		require.NoError(t, err)
		return info.Length
	}
	code, out := purge("no")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "Drop all 1 dead letter(s) of telemetry.feedback.dlq? This cannot be undone. Type yes to confirm:")
	require.Contains(t, out, "nothing dropped")
	require.Equal(t, int64(1), length())
	code, out = purge("yes")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "purged 1 dead letter(s)")
	require.Zero(t, length())
}

// TestDisabledConsumerStartLine proves the start line of `pulse run` with PULSE_ENABLED=false
// says no bus is there, rather than naming an embedded server nobody listens on.
func TestDisabledConsumerStartLine(t *testing.T) {
	s := startRun(t, map[string]string{"PULSE_ENABLED": "false", "PULSE_HTTP_ADDR": "127.0.0.1:0", "PULSE_DATA_DIR": t.TempDir()})
	require.Equal(t, false, s.start["consumer_enabled"])
	require.Contains(t, s.start["bus"], "none: PULSE_ENABLED=false")
	require.NotContains(t, s.start["bus"], "embedded on")
	s.ready(t)
	stoppedClean(t, s, syscall.SIGTERM)
}

// TestEmbeddedServerRequiresItsToken proves PULSE_NATS_TOKEN closes the embedded server: on
// every interface with a token, a client without it is refused (it can neither publish a
// hard event nor delete the stream), `pulse publish` given the token works, one without it
// is told which setting it lacks, and the token shows nowhere.
func TestEmbeddedServerRequiresItsToken(t *testing.T) {
	const token = "e2e-nats-t0ken"
	port := strconv.Itoa(freePort(t))
	env := map[string]string{
		"PULSE_NATS_LISTEN": "0.0.0.0:" + port,
		"PULSE_NATS_TOKEN":  token,
		"PULSE_HTTP_ADDR":   "127.0.0.1:0",
		"PULSE_DATA_DIR":    t.TempDir(),
	}
	s := startRun(t, env)
	s.ready(t)

	_, err := nats.Connect("nats://127.0.0.1:"+port, nats.MaxReconnects(0))
	require.ErrorIs(t, err, nats.ErrAuthorization, "an unauthenticated client is refused")
	_, err = nats.Connect("nats://wrong@127.0.0.1:"+port, nats.MaxReconnects(0))
	require.ErrorIs(t, err, nats.ErrAuthorization)
	nc, err := nats.Connect("nats://127.0.0.1:"+port, nats.Token(token))
	require.NoError(t, err, "the token opens it")
	nc.Close()

	client := map[string]string{"PULSE_NATS_LISTEN": "127.0.0.1:" + port}
	code, _, errOut := pulse(t, client, "publish", "--coordinator", "c1", "--level", "hard")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "the server requires credentials: set PULSE_NATS_TOKEN")
	require.Equal(t, 60.0, s.rate(t))

	client["PULSE_NATS_TOKEN"] = token
	code, _, errOut = pulse(t, client, "publish", "--coordinator", "c1", "--level", "hard")
	require.Equal(t, 0, code, errOut)
	s.waitRate(t, 1)

	code, out, _ := pulse(t, env, "config")
	require.Equal(t, 0, code)
	require.Contains(t, out, "PULSE_NATS_TOKEN=xxxxx")
	require.NotContains(t, out, token)
	stoppedClean(t, s, syscall.SIGTERM)
	require.NotContains(t, s.logs.String(), token)
}

// TestExposedEmbeddedServerNeedsAToken proves `pulse run` refuses to host the embedded server
// on a non-loopback address without PULSE_NATS_TOKEN (exit 2, naming both variables), while
// loopback needs no set-up.
func TestExposedEmbeddedServerNeedsAToken(t *testing.T) {
	for _, listen := range []string{"0.0.0.0:", ":", "[::]:"} {
		env := map[string]string{"PULSE_NATS_LISTEN": listen + strconv.Itoa(freePort(t)), "PULSE_HTTP_ADDR": "127.0.0.1:0", "PULSE_DATA_DIR": t.TempDir()}
		code, _, errOut := pulse(t, env, "run")
		require.Equal(t, 2, code, "%s: %s", listen, errOut)
		require.Contains(t, errOut, `invalid PULSE_NATS_LISTEN="`+env["PULSE_NATS_LISTEN"]+`"`)
		require.Contains(t, errOut, "once PULSE_NATS_TOKEN is set")
	}
	code, _, errOut := pulse(t, map[string]string{"PULSE_NATS_LISTEN": "0.0.0.0:1", "PULSE_DATA_DIR": t.TempDir()}, "run", "--nats-listen", "0.0.0.0:1")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, `invalid --nats-listen="0.0.0.0:1" (PULSE_NATS_LISTEN)`)
}
