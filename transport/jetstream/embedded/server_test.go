package embedded_test

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulse-bus/pulse/internal/testutil"
	"github.com/pulse-bus/pulse/transport/jetstream/embedded"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestStartServeShutdown proves that a server on a random port stores JetStream data under
// DataDir/jetstream with the configured limits, accepts clients at ClientURL (and in process),
// logs through slog, and that Shutdown is idempotent and leaves no goroutine behind.
func TestStartServeShutdown(t *testing.T) {
	dir := t.TempDir()
	var logs testutil.LockedBuffer
	s, err := embedded.Start(context.Background(), embedded.Options{
		Listen:    "127.0.0.1:-1",
		DataDir:   dir,
		MaxMemory: 32 << 20,
		MaxStore:  64 << 20,
		Logger:    slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	require.NoError(t, err)
	require.True(t, s.Running())
	require.NotZero(t, s.Addr().Port)
	require.Equal(t, "nats://"+s.Addr().String(), s.ClientURL())
	require.Empty(t, s.ClusterURL())

	nc, err := nats.Connect(s.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	cfg := s.NATS().JetStreamConfig()
	require.NotNil(t, cfg)
	require.EqualValues(t, 32<<20, cfg.MaxMemory)
	require.EqualValues(t, 64<<20, cfg.MaxStore)
	require.Equal(t, filepath.Join(dir, "jetstream"), cfg.StoreDir)

	inproc, err := nats.Connect("", nats.InProcessServer(s))
	require.NoError(t, err)
	require.NoError(t, inproc.Publish("x", []byte("y")))
	require.NoError(t, inproc.Flush())
	inproc.Close()

	s.Shutdown()
	s.Shutdown()
	require.False(t, s.Running())
	require.Contains(t, logs.String(), "component=nats-server")
}

// TestStartErrors proves that a bad listen address, an incomplete cluster and a taken port
// are reported by Start at once, naming what is accepted, and leave nothing running.
func TestStartErrors(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	tests := []struct {
		name string
		opts embedded.Options
		want string
	}{
		{"no port", embedded.Options{Listen: "127.0.0.1"}, "accepted: host:port"},
		{"bad port", embedded.Options{Listen: "127.0.0.1:99999"}, "accepted: host:port"},
		{"cluster without routes", embedded.Options{Listen: "127.0.0.1:-1", ServerName: "a", Cluster: &embedded.ClusterOptions{Name: "c", Listen: "127.0.0.1:-1"}}, "at least one route"},
		{"port taken", embedded.Options{Listen: taken.Addr().String()}, "address already in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.DataDir = t.TempDir()
			start := time.Now()
			_, err := embedded.Start(context.Background(), tt.opts)
			require.ErrorIs(t, err, embedded.ErrStart)
			require.ErrorContains(t, err, tt.want)
			require.Less(t, time.Since(start), 5*time.Second, "reported at once, not after the start timeout")
		})
	}
}

// TestRestartKeepsData proves that a server restarted on the same store keeps its streams.
func TestRestartKeepsData(t *testing.T) {
	dir := t.TempDir()
	opts := embedded.Options{Listen: "127.0.0.1:-1", DataDir: dir}
	s, err := embedded.Start(context.Background(), opts)
	require.NoError(t, err)
	nc, err := nats.Connect(s.ClientURL())
	require.NoError(t, err)
	_, err = nc.Request("$JS.API.STREAM.CREATE.KEEP", []byte(`{"name":"KEEP","subjects":["keep"],"storage":"file"}`), 5*time.Second)
	require.NoError(t, err)
	nc.Close()
	s.Shutdown()

	s, err = embedded.Start(context.Background(), opts)
	require.NoError(t, err)
	defer s.Shutdown()
	nc, err = nats.Connect(s.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	resp, err := nc.Request("$JS.API.STREAM.INFO.KEEP", nil, 5*time.Second)
	require.NoError(t, err)
	require.NotContains(t, string(resp.Data), `"error"`)
}
