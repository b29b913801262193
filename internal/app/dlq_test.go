package app

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// runMain runs the pulse command line in process and returns its exit status, stdout and
// stderr.
func runMain(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	return runMainAnswering(t, env, false, "", args...)
}

// runMainAnswering is runMain with standard input holding answer, a terminal when
// interactive.
func runMainAnswering(t *testing.T, env map[string]string, interactive bool, answer string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(context.Background(), args, Env{Stdout: &out, Stderr: &errOut, Lookup: envconf.Map(env),
		Stdin: strings.NewReader(answer), Interactive: interactive})
	return code, out.String(), errOut.String()
}

// deadLetter writes a dead letter of stream with body into stream's DLQ, as a subscription
// does.
func writeDeadLetter(t *testing.T, b *transport.Bus, stream, body, originalID, reason string) {
	t.Helper()
	_, err := b.PublishRaw(context.Background(), stream+transport.DLQSuffix, transport.RawMessage{
		Body: []byte(body),
		Headers: map[string]string{
			transport.DLQOriginalID: originalID,
			transport.DLQReason:     reason,
			transport.DLQError:      "handler said no",
			transport.DLQAttempts:   "5",
			transport.DLQFailedAt:   "2026-01-02T03:04:05Z",
			transport.DLQStream:     stream,
		},
	})
	require.NoError(t, err)
}

func rangeAll(t *testing.T, b *transport.Bus, stream string) []driver.StoredMessage {
	t.Helper()
	var out []driver.StoredMessage
	require.NoError(t, b.Driver().(driver.StreamAdmin).Range(context.Background(), stream, 0, func(m driver.StoredMessage) error {
		out = append(out, m)
		return nil
	}))
	return out
}

// TestDLQListReplayPurge proves the dead-letter commands on each backend: list shows when,
// why, how many attempts and the original id; replay re-publishes the original bytes to the
// source stream and removes only what it replayed; purge drops the rest.
func TestDLQListReplayPurge(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			env := baseEnv(t, backend)
			b := clientBus(t, env, "")
			const stream = "telemetry.feedback"
			writeDeadLetter(t, b, stream, `{"first":1}`, "orig-1", "max_deliveries")
			writeDeadLetter(t, b, stream, `{"second":2}`, "orig-2", "malformed")

			code, out, errOut := runMain(t, env, "dlq", "list")
			require.Equal(t, ExitOK, code, errOut)
			require.Contains(t, out, "FAILED_AT")
			for _, want := range []string{"orig-1", "orig-2", "max_deliveries", "malformed", "2026-01-02T03:04:05Z", "handler said no"} {
				require.Contains(t, out, want)
			}
			require.Contains(t, errOut, "2 dead letter(s) in telemetry.feedback.dlq")

			code, out, errOut = runMain(t, env, "dlq", "replay", "--stream", stream+".dlq", "--limit", "1")
			require.Equal(t, ExitOK, code, errOut)
			require.Contains(t, out, "replayed 1 dead letter(s)")
			src := rangeAll(t, b, stream)
			require.Len(t, src, 1)
			require.Equal(t, `{"first":1}`, string(src[0].Body), "the original bytes go back")
			require.Empty(t, src[0].Headers[transport.DLQReason], "dead-letter headers do not go back")
			require.Equal(t, "orig-1", src[0].Headers[transport.DLQReplayOf], "marked as a replay of the original")
			left := rangeAll(t, b, stream+transport.DLQSuffix)
			require.Len(t, left, 1)
			require.Equal(t, "orig-2", left[0].Headers[transport.DLQOriginalID])

			code, _, errOut = runMain(t, env, "dlq", "purge")
			require.Equal(t, ExitUsage, code, "no terminal to ask on, and no --yes")
			require.Contains(t, errOut, "refusing to drop the dead letters of telemetry.feedback.dlq without --yes")
			code, _, errOut = runMainAnswering(t, env, true, "no\n", "dlq", "purge")
			require.Equal(t, ExitFailure, code)
			require.Contains(t, errOut, "Drop all 1 dead letter(s) of telemetry.feedback.dlq? This cannot be undone. Type yes to confirm:")
			require.Contains(t, errOut, "not confirmed; nothing dropped")
			require.Len(t, rangeAll(t, b, stream+transport.DLQSuffix), 1)

			code, out, errOut = runMainAnswering(t, env, true, "yes\n", "dlq", "purge")
			require.Equal(t, ExitOK, code, errOut)
			require.Contains(t, out, "purged 1 dead letter(s)")
			require.Empty(t, rangeAll(t, b, stream+transport.DLQSuffix))
			writeDeadLetter(t, b, stream, `{"third":3}`, "orig-3", "malformed")
			code, out, errOut = runMain(t, env, "dlq", "purge", "--yes")
			require.Equal(t, ExitOK, code, errOut)
			require.Contains(t, out, "purged 1 dead letter(s)")
		})
	}
}

// failingDriver wraps an inmem driver and fails every publish to a stream that is not a
// dead-letter stream: the replay's publish is refused.
type failingDriver struct{ driver.Driver }

var errRefused = errors.New("refused by test")

func (d failingDriver) Publish(ctx context.Context, stream string, msgs []transport.RawMessage) ([]string, error) {
	if !strings.HasSuffix(stream, transport.DLQSuffix) {
		return nil, errRefused
	}
	return d.Driver.Publish(ctx, stream, msgs)
}

func (d failingDriver) Range(ctx context.Context, stream string, limit int, fn func(driver.StoredMessage) error) error {
	return d.Driver.(driver.StreamAdmin).Range(ctx, stream, limit, fn)
}
func (d failingDriver) Delete(ctx context.Context, stream string, ids ...string) error {
	return d.Driver.(driver.StreamAdmin).Delete(ctx, stream, ids...)
}
func (d failingDriver) Purge(ctx context.Context, stream string) (int64, error) {
	return d.Driver.(driver.StreamAdmin).Purge(ctx, stream)
}
func (d failingDriver) Info(ctx context.Context, stream, group string) (driver.StreamInfo, error) {
	return d.Driver.(driver.StreamAdmin).Info(ctx, stream, group)
}
func (d failingDriver) Get(ctx context.Context, stream, id string) (driver.StoredMessage, error) {
	return d.Driver.(driver.StreamAdmin).Get(ctx, stream, id)
}

var registerFailing sync.Once

// TestDLQReplayKeepsWhatItCouldNotPublish proves replay deletes a dead letter only after the
// broker confirmed its publish: a refused publish leaves it in the DLQ and exits 1.
func TestDLQReplayKeepsWhatItCouldNotPublish(t *testing.T) {
	registerFailing.Do(func() {
		transport.Register("apptest-failing", func(ctx context.Context, cfg transport.Config) (driver.Driver, error) {
			cfg.Backend = "inmem"
			d, err := transport.OpenDriver(ctx, cfg)
			return failingDriver{d}, err
		}, nil)
	})
	env := baseEnv(t, "inmem")
	b := clientBus(t, env, "")
	writeDeadLetter(t, b, "telemetry.feedback", `{"x":1}`, "orig-1", "max_deliveries")
	env["EVENT_BUS_BACKEND"] = "apptest-failing"
	code, out, errOut := runMain(t, env, "dlq", "replay")
	require.Equal(t, ExitFailure, code)
	require.Contains(t, out, "replayed 0 dead letter(s)")
	require.Contains(t, errOut, errRefused.Error())
	require.Len(t, rangeAll(t, b, "telemetry.feedback.dlq"), 1, "the dead letter stays")
	require.Empty(t, rangeAll(t, b, "telemetry.feedback"))
}

// TestDLQUsage proves bad dlq invocations exit 2 with a message and the usage, and that
// `pulse dlq -h` prints the usage and exits 0.
func TestDLQUsage(t *testing.T) {
	env := baseEnv(t, "inmem")
	code, out, _ := runMain(t, env, "dlq", "-h")
	require.Equal(t, ExitOK, code)
	require.Contains(t, out, "Usage: pulse dlq list|replay|purge")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dlq"}, "missing sub-command"},
		{[]string{"dlq", "frob"}, `unknown sub-command "frob"`},
		{[]string{"dlq", "list", "--limit", "-1"}, "invalid --limit=-1"},
		{[]string{"dlq", "list", "--stream", "no spaces"}, `invalid --stream="no spaces"`},
		{[]string{"dlq", "list", "extra"}, `unexpected argument "extra"`},
		{[]string{"dlq", "list", "--bogus"}, "flag provided but not defined: -bogus"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, _, errOut := runMain(t, env, tc.args...)
			require.Equal(t, ExitUsage, code)
			require.Contains(t, errOut, tc.want)
			require.Contains(t, errOut, "Usage: pulse dlq")
		})
	}
}
