package main

// End-to-end tests of dead letters that cannot be written as usual: too large to copy, or a
// dead-letter stream that refuses them. None may loop for ever or vanish without a trace.

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/jetstream"
)

// poisonOfSize is a v1 FeedbackEvent envelope of about n bytes whose level is invalid.
func poisonOfSize(n int) []byte {
	head := `{"ts": 1764720000.0, "key": "c1", "meta": {"schema_id": "telemetry.FeedbackEvent", "track": "v1"}, "payload": {"coordinator_id": "c1", "queue_size": 1, "capacity": 2, "level": "extreme", "source": "store", "ts": 1764720000.0, "pad": "`
	tail := `"}}`
	return []byte(head + strings.Repeat("p", n-len(head)-len(tail)) + tail)
}

// groupInfo is the feedback stream's state for group.
func groupInfo(t *testing.T, bus *transport.Bus, group string) driver.StreamInfo {
	t.Helper()
	info, err := bus.Driver().(driver.StreamAdmin).Info(context.Background(), feedback.StreamFeedback, group)
	require.NoError(t, err)
	return info
}

// TestOversizedPoisonOnJetStream proves the ~1 MiB poison message of the issue — stored, but
// its dead-letter copy with headers over JetStream's 1 MiB limit, once retried every 30 s
// without end — is settled at once: the dead letter points at the original, which stays in
// the stream byte for byte, nothing is redelivered, the group's pending count is 0, and
// `pulse dlq replay` puts the original bytes back.
func TestOversizedPoisonOnJetStream(t *testing.T) {
	env := map[string]string{
		"PULSE_HTTP_ADDR":   "127.0.0.1:0",
		"PULSE_DATA_DIR":    t.TempDir(),
		"PULSE_NATS_LISTEN": "127.0.0.1:" + strconv.Itoa(freePort(t)),
	}
	s := startRun(t, env)
	s.ready(t)
	bus := loopBus{cfg: transport.Config{Backend: "jetstream", NATSURL: "nats://" + env["PULSE_NATS_LISTEN"]}}.client(t, "")
	body := poisonOfSize(1_048_500) // under the 1 MiB max payload; with the dead-letter headers over it
	ids, err := bus.PublishRaw(context.Background(), feedback.StreamFeedback, transport.RawMessage{Body: body})
	require.NoError(t, err)

	group := s.start["group"].(string)
	eventuallyWithin(t, time.Minute, "nothing pending", func() bool {
		info := groupInfo(t, bus, group)
		return info.Pending == 0 && info.Unread <= 0
	})
	s.waitMetric(t, `pulse_dlq_total{reason="invalid_payload",stream="telemetry.feedback"}`, 1)
	require.Equal(t, -1.0, s.metric(t, `pulse_redeliveries_total{stream="telemetry.feedback"}`), "never redelivered")
	s.waitLog(t, "the dead letter points at the original")

	code, list, errOut := pulse(t, env, "dlq", "list")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, list, "kept in telemetry.feedback")
	kept, err := bus.Driver().(driver.StreamAdmin).Get(context.Background(), feedback.StreamFeedback, ids[0])
	require.NoError(t, err)
	require.Equal(t, sha256.Sum256(body), sha256.Sum256(kept.Body), "the original stays, byte for byte")

	code, out, errOut := pulse(t, env, "dlq", "replay")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "replayed 1 dead letter(s)")
	var replayed driver.StoredMessage
	require.NoError(t, bus.Driver().(driver.StreamAdmin).Range(context.Background(), feedback.StreamFeedback, 0, func(m driver.StoredMessage) error {
		replayed = m
		return nil
	}))
	require.NotEqual(t, ids[0], replayed.TransportID)
	require.Equal(t, sha256.Sum256(body), sha256.Sum256(replayed.Body), "the replay re-published the original bytes")
	s.waitMetric(t, `pulse_dlq_total{reason="invalid_payload",stream="telemetry.feedback"}`, 2)
}

// TestBigPoisonOnRedis proves a big poison entry on Redis (which has no 1 MiB limit) is
// dead-lettered with its bytes copied, and nothing stays pending.
func TestBigPoisonOnRedis(t *testing.T) {
	url := redisSrv.Server(t).URL()
	ns := uniqueNamespace("e2e_bigpoison")
	env := map[string]string{"EVENT_BUS_BACKEND": "redis", "REDIS_URL": url, "MD_NAMESPACE": ns,
		"PULSE_HTTP_ADDR": "127.0.0.1:0", "PULSE_DATA_DIR": t.TempDir()}
	s := startRun(t, env)
	s.ready(t)
	bus := loopBus{cfg: transport.Config{Backend: "redis", RedisURL: url, Namespace: ns}}.client(t, "")
	body := poisonOfSize(4 << 20)
	_, err := bus.PublishRaw(context.Background(), feedback.StreamFeedback, transport.RawMessage{Body: body})
	require.NoError(t, err)
	s.waitMetric(t, `pulse_dlq_total{reason="invalid_payload",stream="telemetry.feedback"}`, 1)
	eventually(t, "nothing pending", func() bool { return groupInfo(t, bus, s.start["group"].(string)).Pending == 0 })
	var letter driver.StoredMessage
	require.NoError(t, bus.Driver().(driver.StreamAdmin).Range(context.Background(), feedback.StreamFeedback+transport.DLQSuffix, 0, func(m driver.StoredMessage) error {
		letter = m
		return nil
	}))
	require.Empty(t, letter.Headers[transport.DLQKeptIn], "copied, not kept in place")
	require.Equal(t, sha256.Sum256(body), sha256.Sum256(letter.Body))
}

// TestUnwritableDeadLetterSettled proves a dead-letter stream that refuses every dead letter
// (here the JetStream stream name is taken by other subjects) cannot make a poison message
// loop: it is retried a bounded number of times, then settled with the original left in its
// stream, the failure logged, counted and shown on /readyz and /state.
func TestUnwritableDeadLetterSettled(t *testing.T) {
	env := map[string]string{
		"PULSE_HTTP_ADDR":         "127.0.0.1:0",
		"PULSE_DATA_DIR":          t.TempDir(),
		"PULSE_NATS_LISTEN":       "127.0.0.1:" + strconv.Itoa(freePort(t)),
		"PULSE_MAX_DELIVERIES":    "2",
		"PULSE_RETRY_BACKOFF_MIN": "20ms",
		"PULSE_RETRY_BACKOFF_MAX": "50ms",
	}
	s := startRun(t, env)
	s.ready(t)
	bus := loopBus{cfg: transport.Config{Backend: "jetstream", NATSURL: "nats://" + env["PULSE_NATS_LISTEN"]}}.client(t, "")
	js := bus.Driver().(*jetstream.Driver).JetStream()
	_, err := js.CreateStream(context.Background(), natsjs.StreamConfig{
		Name: jetstream.StreamName("mdp", feedback.StreamFeedback+transport.DLQSuffix), Subjects: []string{"somebody.else"}})
	require.NoError(t, err)
	ids, err := bus.PublishRaw(context.Background(), feedback.StreamFeedback, transport.RawMessage{Body: []byte("{not json")})
	require.NoError(t, err)

	s.waitMetric(t, `pulse_dlq_failures_total{action="settled",stream="telemetry.feedback"}`, 1)
	require.Equal(t, 4.0, s.metric(t, `pulse_dlq_failures_total{action="retried",stream="telemetry.feedback"}`), "attempts 1 to 4, then settled at 5")
	eventually(t, "nothing pending", func() bool { return groupInfo(t, bus, s.start["group"].(string)).Pending == 0 })
	code, body := get(t, s.url("/readyz"))
	require.Equal(t, 200, code)
	require.Contains(t, body, "warning: 5 dead letter(s) could not be written")
	_, raw := get(t, s.url("/state"))
	var st struct {
		Consumer struct {
			Failures uint64 `json:"dead_letter_failures"`
			Last     string `json:"last_dead_letter_failure"`
		} `json:"consumer"`
	}
	require.NoError(t, json.Unmarshal([]byte(raw), &st))
	require.Equal(t, uint64(5), st.Consumer.Failures)
	require.Contains(t, st.Consumer.Last, "stream name collision")
	s.waitLog(t, "settled without a dead letter and stays in its stream")
	kept, err := bus.Driver().(driver.StreamAdmin).Get(context.Background(), feedback.StreamFeedback, ids[0])
	require.NoError(t, err)
	require.Equal(t, "{not json", string(kept.Body), "the original is still there")
	s.waitMetric(t, `pulse_consume_total{outcome="rejected",stream="telemetry.feedback",track="unknown"}`, 1)
}
