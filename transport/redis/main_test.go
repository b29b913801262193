package redis

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulse-bus/pulse/internal/redistest"
	"github.com/pulse-bus/pulse/transport"
)

// redisSrv is the package's redis-server, started on first use. Tests that stop or restart
// Redis start their own.
var redisSrv redistest.Shared

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" { // re-executed as a consumer process by TestConsumerKilledMidBatch
		os.Exit(runChild())
	}
	goleak.VerifyTestMain(redisSrv.Main(m))
}

var nsCounter atomic.Int64

// uniqueNS returns a namespace no other test uses, so tests never share keys.
func uniqueNS(t testing.TB) string {
	name := strings.ToLower(t.Name())
	name = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, name)
	if len(name) > 40 {
		name = name[:40]
	}
	return fmt.Sprintf("t%d-%s", nsCounter.Add(1), name)
}

// testConfig is a configuration on the shared server in a namespace of the test's own.
func testConfig(t testing.TB) transport.Config {
	return transport.Config{
		Backend:   Name,
		RedisURL:  redisSrv.Server(t).URL(),
		Namespace: uniqueNS(t),
		Logger:    testLogger(t),
	}
}

// testLogger writes the driver's logs to the test log (shown when a test fails).
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// openDriver opens a driver and closes it at cleanup.
func openDriver(t testing.TB, cfg transport.Config) *Driver {
	t.Helper()
	d, err := Open(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, d.Close()) })
	return d
}

// rawClient is a plain go-redis client on url, closed at cleanup: the test's view of Redis.
// driverAndClient opens a driver on a namespace of the test's own, and a raw client to the
// same server to look at what it wrote.
func driverAndClient(t testing.TB) (transport.Config, *Driver, *goredis.Client) {
	t.Helper()
	cfg := testConfig(t)
	return cfg, openDriver(t, cfg), rawClient(t, cfg.RedisURL)
}

// loggedDriverAndClient is driverAndClient with the driver's log recorded.
func loggedDriverAndClient(t testing.TB) (transport.Config, *Driver, *goredis.Client, *recordingHandler) {
	t.Helper()
	cfg := testConfig(t)
	logs := &recordingHandler{}
	cfg.Logger = slog.New(logs)
	return cfg, openDriver(t, cfg), rawClient(t, cfg.RedisURL), logs
}

func rawClient(t testing.TB, url string) *goredis.Client {
	t.Helper()
	opts, err := goredis.ParseURL(url)
	require.NoError(t, err)
	c := goredis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// recordingHandler is a slog handler that keeps every message, for asserting on warnings.
type recordingHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Message)
	return nil
}
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordingHandler) contains(sub string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range h.msgs {
		if strings.Contains(m, sub) {
			return true
		}
	}
	return false
}

// waitFor is the deadline every condition in these tests is waited for.
const waitFor = 10 * time.Second
