package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
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

	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/internal/testutil"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/jetstream"
)

// publisherToken signs the test's feedback events; an event published without it is
// dead-lettered `unauthenticated`.
const publisherToken = "deploy-test-token"

// service is a running `pulse run`, built from this tree.
type service struct {
	bin    string
	env    map[string]string
	cmd    *exec.Cmd
	logs   *testutil.LockedBuffer
	http   string // the HTTP address from the start line
	exited chan struct{}
	err    error // Wait's result, valid after exited
}

// startPulse builds the pulse binary and starts `pulse run` on the embedded JetStream server
// with PUBLISHER_TOKEN, two deliveries before a dead letter, a short retry backoff and room
// for two coordinators; it returns once /readyz answers 200. The process is killed at
// cleanup if still running.
func startPulse(t *testing.T) *service {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "pulse")
	gobin, err := exec.LookPath("go")
	require.NoError(t, err, "the go command builds pulse")
	build := exec.Command(gobin, "build", "-o", bin, "./cmd/pulse")
	build.Dir = ".."
	out, err := build.CombinedOutput()
	require.NoError(t, err, "building pulse:\n%s", out)

	s := &service{
		bin: bin,
		env: map[string]string{
			"PULSE_NATS_LISTEN":       "127.0.0.1:" + strconv.Itoa(freePort(t)),
			"PULSE_DATA_DIR":          filepath.Join(dir, "data"),
			"PULSE_HTTP_ADDR":         "127.0.0.1:0",
			"PULSE_LOG_FORMAT":        "json",
			"PUBLISHER_TOKEN":         publisherToken,
			"PULSE_MAX_DELIVERIES":    "2",
			"PULSE_RETRY_BACKOFF_MIN": "20ms",
			"PULSE_RETRY_BACKOFF_MAX": "50ms",
			"MDP_FB_MAX_COORDINATORS": "2",
		},
		logs:   &testutil.LockedBuffer{},
		exited: make(chan struct{}),
	}
	s.cmd = exec.Command(bin, "run")
	s.cmd.Env = environ(s.env)
	pr, pw := io.Pipe()
	s.cmd.Stderr = io.MultiWriter(s.logs, pw)
	s.cmd.Stdout = s.logs
	require.NoError(t, s.cmd.Start())
	go func() {
		s.err = s.cmd.Wait()
		pw.Close()
		close(s.exited)
	}()
	started := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var rec struct{ Msg, HTTP string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "pulse running" {
				select {
				case started <- rec.HTTP:
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
			s.cmd.Process.Kill()
			<-s.exited
		}
		if t.Failed() {
			t.Logf("pulse run logs:\n%s", s.logs.String())
		}
	})
	select {
	case s.http = <-started:
	case <-s.exited:
		t.Fatalf("pulse run exited before starting (%v):\n%s", s.err, s.logs.String())
	case <-time.After(startTimeout):
		t.Fatalf("pulse run did not start within %s:\n%s", startTimeout, s.logs.String())
	}
	require.True(t, poll(waitTimeout, func() bool { code, _ := get(s.url("/readyz")); return code == 200 }), "/readyz 200")
	return s
}

// exercise makes every metric of the contract appear: signed events from three coordinators
// (a rate change, published; one coordinator evicted), a poison message whose dead letter the
// dead-letter stream refuses (retried, redelivered, settled), and an unsigned event that is
// dead-lettered.
func (s *service) exercise(t *testing.T) {
	t.Helper()
	for _, c := range []struct{ id, level string }{{"c1", "hard"}, {"c2", "ok"}, {"c3", "ok"}} {
		s.publish(t, true, c.id, c.level)
	}
	s.waitFor(t, `feedback_coordinators_evicted_total{provider="ibkr"}`)
	s.waitFor(t, `pipeline_backpressure_state{provider="ibkr"} 2`)

	// The dead-letter stream's name taken by other subjects: its dead letter cannot be written.
	bus, err := transport.Open(context.Background(), transport.Config{Backend: "jetstream", NATSURL: "nats://" + s.env["PULSE_NATS_LISTEN"]})
	require.NoError(t, err)
	defer bus.Close()
	js := bus.Driver().(*jetstream.Driver).JetStream()
	dlq := jetstream.StreamName("mdp", feedback.StreamFeedback+transport.DLQSuffix)
	_, err = js.CreateStream(context.Background(), natsjs.StreamConfig{Name: dlq, Subjects: []string{"deploy-test.elsewhere"}})
	require.NoError(t, err)
	_, err = bus.PublishRaw(context.Background(), feedback.StreamFeedback, transport.RawMessage{Body: []byte("{not json")})
	require.NoError(t, err)
	s.waitFor(t, `pulse_dlq_failures_total{action="settled",stream="telemetry.feedback"}`)
	require.NoError(t, js.DeleteStream(context.Background(), dlq))

	s.publish(t, false, "forger", "hard")
	s.waitFor(t, `pulse_dlq_total{reason="unauthenticated",stream="telemetry.feedback"}`)
}

// publish runs `pulse publish`, signed with the service's token or not.
func (s *service) publish(t *testing.T, signed bool, coordinator, level string) {
	t.Helper()
	env := map[string]string{"PULSE_NATS_LISTEN": s.env["PULSE_NATS_LISTEN"]}
	if signed {
		env["PUBLISHER_TOKEN"] = publisherToken
	}
	ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.bin, "publish", "--coordinator", coordinator, "--level", level)
	cmd.Env = environ(env)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "pulse publish --coordinator %s --level %s:\n%s", coordinator, level, out)
}

// waitFor waits until a line of /metrics starts with series.
func (s *service) waitFor(t *testing.T, series string) {
	t.Helper()
	ok := poll(waitTimeout, func() bool {
		_, body := get(s.url("/metrics"))
		return strings.Contains("\n"+body, "\n"+series)
	})
	require.True(t, ok, "timed out waiting for %s in /metrics", series)
}

// families scrapes /metrics and returns its metric families' names and types.
func (s *service) families(t *testing.T) map[string]string {
	t.Helper()
	code, body := get(s.url("/metrics"))
	require.Equal(t, http.StatusOK, code, body)
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err, "scrape is not Prometheus text:\n%s", body)
	out := map[string]string{}
	for name, f := range fams {
		out[name] = strings.ToLower(f.GetType().String())
	}
	return out
}

// stop sends SIGTERM and returns the exit status.
func (s *service) stop(t *testing.T) int {
	t.Helper()
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-s.exited:
	case <-time.After(exitTimeout):
		t.Fatalf("pulse run did not exit within %s of SIGTERM", exitTimeout)
	}
	var exit *exec.ExitError
	if errors.As(s.err, &exit) {
		return exit.ExitCode()
	}
	require.NoError(t, s.err)
	return 0
}

func (s *service) url(path string) string { return "http://" + s.http + path }

// environ is the process environment for env: only PATH and HOME from the test's own, so
// that nothing on the machine (a NATS_URL, a REDIS_URL) reaches the service.
func environ(env map[string]string) []string {
	out := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

var httpClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// get returns the status and body of url, or 0 and the error's text.
func get(url string) (int, string) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	if _, err := body.ReadFrom(resp.Body); err != nil {
		return 0, err.Error()
	}
	return resp.StatusCode, body.String()
}

// poll checks cond every few milliseconds until it holds (true) or d has passed (false).
func poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
