package redis

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/internal/pyfixtures"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// openBus opens a Bus over the redis backend and closes it at cleanup.
func openBus(t *testing.T, cfg transport.Config) *transport.Bus {
	t.Helper()
	b, err := transport.Open(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b
}

// TestPythonFixturesConsumed proves that entries XADDed exactly as the Python core writes
// them (one field `data`, its bytes) are consumed and decoded through the Bus: the v1 id is
// the Redis entry id, and the double-wrapped Store message is unwrapped to its inner event.
func TestPythonFixturesConsumed(t *testing.T) {
	cfg := testConfig(t)
	c := rawClient(t, cfg.RedisURL)
	ctx := context.Background()
	key := cfg.Namespace + ":mdp.telemetry.feedback" // beside the Python core: PULSE_FEEDBACK_STREAM=mdp.telemetry.feedback

	want := map[string]string{} // entry id → expected inner schema_id
	for _, name := range pyfixtures.Names() {
		body := pyfixtures.Message(name)
		id, err := c.XAdd(ctx, &goredis.XAddArgs{Stream: key, Values: []any{"data", body}}).Result()
		require.NoError(t, err)
		want[id] = name
	}

	type got struct {
		env *envelope.Envelope
		id  string
	}
	var mu sync.Mutex
	seen := map[string]got{}
	b := openBus(t, cfg)
	_, err := b.Subscribe(ctx, "mdp.telemetry.feedback", func(_ context.Context, d *transport.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		seen[d.TransportID] = got{env: d.Envelope, id: d.ID()}
		return nil
	}, transport.SubscribeOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == len(want)
	}, waitFor, 10*time.Millisecond)

	mu.Lock()
	defer mu.Unlock()
	for id, name := range want {
		g := seen[id]
		require.NotNil(t, g.env, name)
		require.Equal(t, id, g.id, "%s: a v1 message's id is the Redis entry id", name)
		require.Equal(t, envelope.TrackV1, g.env.Meta.Track, name)
		var p map[string]any
		require.NoError(t, json.Unmarshal(g.env.Payload, &p), name)
		switch name {
		case "v1-rate-adjustment.json":
			require.Equal(t, "telemetry.RateAdjustment", g.env.Meta.SchemaID)
			require.Equal(t, "ibkr", p["provider"])
		case "v1-store-double-wrapped.json":
			require.Equal(t, "telemetry.FeedbackEvent", g.env.Meta.SchemaID, "the outer EventEnvelope is unwrapped")
			require.Equal(t, "soft", p["level"])
			require.Equal(t, "high_watermark", g.env.Header("reason"), "the inner headers survive")
		case "v1-feedback-hard.json":
			require.Equal(t, "telemetry.FeedbackEvent", g.env.Meta.SchemaID)
			require.Equal(t, "hard", p["level"])
		case "v1-feedback-ok-null-key.json":
			require.Nil(t, g.env.Key)
			require.Equal(t, "ok", p["level"])
		}
	}
	requireNothingPending(t, b, "mdp.telemetry.feedback", "everything consumed was acknowledged")
}

// TestPoisonDeadLetterEntry proves the dead-letter entry of docs/contract.md §2 on Redis: an entry
// that is not an envelope lands in `{ns}:{S}.dlq` with `data` holding the original bytes
// unchanged and the fields original_id, reason, error, attempts, failed_at and stream; the
// original is acknowledged.
func TestPoisonDeadLetterEntry(t *testing.T) {
	cfg := testConfig(t)
	c := rawClient(t, cfg.RedisURL)
	ctx := context.Background()
	poison := []byte("{not json at all")
	id, err := c.XAdd(ctx, &goredis.XAddArgs{Stream: cfg.Namespace + ":telemetry.feedback", Values: []any{"data", poison}}).Result()
	require.NoError(t, err)

	b := openBus(t, cfg)
	_, err = b.Subscribe(ctx, "telemetry.feedback", func(context.Context, *transport.Delivery) error {
		return errors.New("the handler must not see poison")
	}, transport.SubscribeOptions{})
	require.NoError(t, err)

	var entries []goredis.XMessage
	require.Eventually(t, func() bool {
		entries, err = c.XRange(ctx, cfg.Namespace+":telemetry.feedback.dlq", "-", "+").Result()
		return err == nil && len(entries) == 1
	}, waitFor, 10*time.Millisecond)
	v := entries[0].Values
	require.Equal(t, string(poison), v["data"])
	require.Equal(t, id, v["original_id"])
	require.Equal(t, "malformed", v["reason"])
	require.NotEmpty(t, v["error"])
	require.Equal(t, "1", v["attempts"])
	require.Equal(t, "telemetry.feedback", v["stream"])
	_, err = time.Parse(time.RFC3339Nano, v["failed_at"].(string))
	require.NoError(t, err)
	require.Len(t, v, 7, "data plus the six dead-letter fields, nothing else")
	requireNothingPending(t, b, "telemetry.feedback", "the original is acknowledged once dead-lettered")
}

// TestAttemptsSurviveMembers proves that attempts are the broker's count, not a process's: a
// message failing on one member, which then leaves, is retried by another member as the next
// attempt, and is dead-lettered after MaxDeliveries in total with attempts=MaxDeliveries.
func TestAttemptsSurviveMembers(t *testing.T) {
	cfg := testConfig(t)
	cfg.Track = envelope.TrackV2
	cfg.MaxDeliveries = 3
	cfg.AckWait = 300 * time.Millisecond
	cfg.RetryBackoffMin = time.Hour // a member never retries by itself in this test
	cfg.RetryBackoffMax = time.Hour
	cfg.StreamMaxAge = 24 * time.Hour
	ctx := context.Background()

	pub := openBus(t, cfg)
	require.NoError(t, pub.Publish(ctx, "s", &envelope.Envelope{Meta: envelope.Meta{SchemaID: "x"}, Payload: []byte(`{"n":1}`)}))

	attempts := make(chan int, 10)
	fail := func(_ context.Context, d *transport.Delivery) error {
		attempts <- d.Attempt
		return errors.New("always fails")
	}
	for member := 1; member <= 3; member++ {
		b, err := transport.Open(ctx, cfg)
		require.NoError(t, err)
		_, err = b.Subscribe(ctx, "s", fail, transport.SubscribeOptions{Consumer: "m" + strconv.Itoa(member)})
		require.NoError(t, err)
		select {
		case a := <-attempts:
			require.Equal(t, member, a, "member %d sees the broker's attempt count", member)
		case <-time.After(waitFor):
			t.Fatalf("member %d got nothing", member)
		}
		require.NoError(t, b.Close()) // leaves; its waiting retry goes back to the group
	}

	var dl []driver.StoredMessage
	admin := pub.Driver().(driver.StreamAdmin)
	require.Eventually(t, func() bool {
		dl = dl[:0]
		err := admin.Range(ctx, "s.dlq", 0, func(m driver.StoredMessage) error { dl = append(dl, m); return nil })
		return err == nil && len(dl) == 1
	}, waitFor, 10*time.Millisecond)
	require.Equal(t, "3", dl[0].Headers["attempts"])
	require.Equal(t, "max_deliveries", dl[0].Headers["reason"])
	requireNothingPending(t, pub, "s", "the original is acknowledged once dead-lettered")
}

// requireNothingPending waits until the default group of stream has nothing pending: the Bus
// acks a batch on its acker goroutine after handling it, and a message after writing its dead
// letter, so the XACK can come a little after what a test waits for first.
func requireNothingPending(t *testing.T, b *transport.Bus, stream, msg string) {
	t.Helper()
	admin := b.Driver().(driver.StreamAdmin)
	require.Eventually(t, func() bool {
		info, err := admin.Info(context.Background(), stream, transport.DefaultGroup)
		return err == nil && info.Pending == 0
	}, waitFor, 10*time.Millisecond, msg)
}
