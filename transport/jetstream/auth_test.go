package jetstream_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/jetstream"
)

// startAuthServer starts a JetStream server requiring the given credentials, stopped when t
// ends.
func startAuthServer(t *testing.T, edit func(*server.Options)) *server.Server {
	t.Helper()
	o := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		JetStreamMaxMemory: 16 << 20, JetStreamMaxStore: 64 << 20, NoLog: true, NoSigs: true}
	edit(o)
	s, err := server.NewServer(o)
	require.NoError(t, err)
	s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	require.True(t, s.ReadyForConnections(10*time.Second))
	return s
}

// TestURLCredentials proves that user:password@ and token@ in NATS_URL authenticate, that
// wrong credentials are refused as a configuration error (not an outage), and that no error
// shows the secret.
func TestURLCredentials(t *testing.T) {
	ctx := context.Background()
	userSrv := startAuthServer(t, func(o *server.Options) { o.Username, o.Password = "pulse", "s3cret-pw" })
	tokenSrv := startAuthServer(t, func(o *server.Options) { o.Authorization = "s3cret-token" })
	userAddr := userSrv.Addr().String()
	tokenAddr := tokenSrv.Addr().String()

	for _, url := range []string{
		fmt.Sprintf("nats://pulse:s3cret-pw@%s", userAddr),
		fmt.Sprintf("nats://s3cret-token@%s", tokenAddr),
	} {
		d, err := jetstream.Open(ctx, config(url, "auth"))
		require.NoError(t, err, transport.RedactURLs(url))
		require.NoError(t, d.Ping(ctx))
		require.NoError(t, d.Close())
	}
	for _, url := range []string{
		fmt.Sprintf("nats://pulse:wrong-pw@%s", userAddr),
		fmt.Sprintf("nats://wrong-token@%s", tokenAddr),
	} {
		_, err := jetstream.Open(ctx, config(url, "auth"))
		require.Error(t, err)
		require.ErrorContains(t, err, "credentials refused")
		require.NotErrorIs(t, err, transport.ErrUnavailable, "a configuration error, not an outage")
		require.NotContains(t, err.Error(), "wrong-")
	}
}

// TestMissingCredsFile proves that an unreadable PULSE_NATS_CREDS is a configuration error
// naming the variable.
func TestMissingCredsFile(t *testing.T) {
	cfg := config("nats://127.0.0.1:1", "auth")
	cfg.NATSCredsFile = t.TempDir() + "/missing.creds"
	_, err := jetstream.Open(context.Background(), cfg)
	var ce *envconf.Error
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "PULSE_NATS_CREDS", ce.Var)
}
