package transport_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
)

// TestFromEnvDefaults proves that an empty environment yields a valid Config whose Bus
// settings are the documented defaults.
func TestFromEnvDefaults(t *testing.T) {
	cfg, err := transport.FromEnv(envconf.Map(nil))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	bus, err := transport.New(newFakeDriver(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = bus.Close() })
	got := bus.Config()
	require.Equal(t, transport.DefaultBackend, got.Backend)
	require.Equal(t, transport.DefaultNamespace, got.Namespace)
	require.Equal(t, envelope.DefaultTrack, got.Track)
	require.Equal(t, transport.DefaultGroup, got.Group)
	require.Equal(t, transport.DefaultConsumer, got.Consumer)
	require.Equal(t, transport.DefaultMaxDeliveries, got.MaxDeliveries)
	require.Equal(t, transport.DefaultAckWait, got.AckWait)
	require.Equal(t, transport.DefaultRedisURL, got.RedisURL)
	require.Equal(t, transport.DefaultBatchSize, got.BatchSize)
	require.Equal(t, transport.DefaultDrainTimeout, got.DrainTimeout)
	require.Nil(t, bus.Codec().Signer, "PUBLISHER_TOKEN unset: no signing")
}

// TestFromEnvReadsEverything proves that each variable of docs/contract.md §5 that the transport
// owns lands in its field.
func TestFromEnvReadsEverything(t *testing.T) {
	cfg, err := transport.FromEnv(envconf.Map(map[string]string{
		"EVENT_BUS_BACKEND":        "redis",
		"MD_NAMESPACE":             "ns_1",
		"SCHEMA_TRACK":             "v2",
		"PUBLISHER_TOKEN":          "s3cret",
		"PULSE_GROUP":              "replica-2",
		"PULSE_CONSUMER_NAME":      "w_9",
		"PULSE_MAX_DELIVERIES":     "7",
		"PULSE_ACK_WAIT":           "45s",
		"PULSE_DRAIN_TIMEOUT":      "3s",
		"PULSE_BATCH_SIZE":         "64",
		"REDIS_URL":                "rediss://u:p@h:6380/1",
		"NATS_URL":                 "nats://h:4222",
		"PULSE_NATS_CREDS":         "/creds",
		"PULSE_STREAM_MAX_AGE":     "48h",
		"PULSE_STREAM_MAX_BYTES":   "1000000",
		"PULSE_STREAM_MAX_LEN":     "5000",
		"PULSE_STREAM_REPLICAS":    "3",
		"PULSE_SHARED_IDEMPOTENCY": "yes",
	}))
	require.NoError(t, err)
	require.Equal(t, transport.Config{
		Backend: "redis", Namespace: "ns_1", Track: envelope.TrackV2, PublisherToken: "s3cret",
		Group: "replica-2", Consumer: "w_9", MaxDeliveries: 7, AckWait: 45 * time.Second,
		DrainTimeout: 3 * time.Second, BatchSize: 64, RedisURL: "rediss://u:p@h:6380/1",
		NATSURL: "nats://h:4222", NATSCredsFile: "/creds",
		StreamMaxAge: 48 * time.Hour, StreamMaxBytes: 1000000, StreamMaxLen: 5000, Replicas: 3,
		SharedIdempotency: true,
	}, cfg)
}

// TestFromEnvRejects proves that every bad value is reported as a *envconf.Error naming the
// variable, the value and what is accepted.
func TestFromEnvRejects(t *testing.T) {
	for _, tc := range []struct {
		name, value, accepted string
	}{
		{"MD_NAMESPACE", "Prod", "[a-z0-9_-]+"},
		{"MD_NAMESPACE", "a.b", "[a-z0-9_-]+"},
		{"SCHEMA_TRACK", "v3", "v1, v2"},
		{"PULSE_GROUP", "a.b", "letters, digits"},
		{"PULSE_CONSUMER_NAME", "w 1", "letters, digits"},
		{"PULSE_MAX_DELIVERIES", "0", "integer ≥ 1"},
		{"PULSE_MAX_DELIVERIES", "five", "integer ≥ 1"},
		{"PULSE_ACK_WAIT", "30", "positive duration"},
		{"PULSE_ACK_WAIT", "-1s", "positive duration"},
		{"PULSE_DRAIN_TIMEOUT", "soon", "positive duration"},
		{"PULSE_RETRY_BACKOFF_MIN", "-1s", "positive duration"},
		{"PULSE_BATCH_SIZE", "-4", "integer ≥ 1"},
		{"PULSE_STREAM_MAX_AGE", "0s", "positive duration"},
		{"PULSE_STREAM_MAX_BYTES", "-1", "integer ≥ 0"},
		{"PULSE_STREAM_MAX_LEN", "many", "integer ≥ 0"},
		{"PULSE_STREAM_REPLICAS", "7", "1 to 5"},
		{"PULSE_STREAM_REPLICAS", "0", "integer ≥ 1"},
		{"PULSE_SHARED_IDEMPOTENCY", "maybe", "true or false"},
	} {
		t.Run(tc.name+"="+tc.value, func(t *testing.T) {
			_, err := transport.FromEnv(envconf.Map(map[string]string{tc.name: tc.value}))
			var ce *envconf.Error
			require.True(t, errors.As(err, &ce), "want *envconf.Error, got %v", err)
			require.Equal(t, tc.name, ce.Var)
			require.Equal(t, tc.value, ce.Value)
			require.Contains(t, ce.Accepted, tc.accepted)
			require.Contains(t, err.Error(), tc.name)
			require.Contains(t, err.Error(), tc.value)
		})
	}
}

// TestValidate proves Config.Validate on values that do not come from the environment: each
// is a *envconf.Error naming the setting.
func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  transport.Config
		want string
	}{
		{"zero value is valid", transport.Config{}, ""},
		{"negative ack wait", transport.Config{AckWait: -time.Second}, "PULSE_ACK_WAIT"},
		{"negative max deliveries", transport.Config{MaxDeliveries: -1}, "PULSE_MAX_DELIVERIES"},
		{"backoff min above max", transport.Config{RetryBackoffMin: time.Second, RetryBackoffMax: time.Millisecond}, "PULSE_RETRY_BACKOFF_MAX"},
		{"negative batch", transport.Config{BatchSize: -1}, "PULSE_BATCH_SIZE"},
		{"six replicas", transport.Config{Replicas: 6}, "PULSE_STREAM_REPLICAS"},
		{"negative max len", transport.Config{StreamMaxLen: -1}, "PULSE_STREAM_MAX_LEN"},
		{"negative max bytes", transport.Config{StreamMaxBytes: -1}, "PULSE_STREAM_MAX_BYTES"},
		{"bad track", transport.Config{Track: "v0"}, "SCHEMA_TRACK"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			var ce *envconf.Error
			require.True(t, errors.As(err, &ce), "want *envconf.Error, got %v", err)
			require.Equal(t, tc.want, ce.Var)
			require.NotEmpty(t, ce.Accepted)
			_, err = transport.New(newFakeDriver(), tc.cfg)
			require.ErrorAs(t, err, &ce, "New validates too")
		})
	}
}
