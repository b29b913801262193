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

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/internal/testutil"
	"github.com/pulse-bus/pulse/transport"
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
		info, err := b.Driver().(transport.StreamAdmin).Info(context.Background(), feedback.StreamFeedback+transport.DLQSuffix, "")
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
