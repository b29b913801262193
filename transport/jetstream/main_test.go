package jetstream_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulse-bus/pulse/internal/natstest"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/jetstream"
)

var natsSrv natstest.Shared

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(natsSrv.Main(m))
}

// config is a Config for the driver against url, in a namespace of its own so that tests do
// not see each other's streams.
func config(url, ns string) transport.Config {
	return transport.Config{Backend: jetstream.Name, NATSURL: url, Namespace: ns}
}

// open opens a driver against url that t closes at the end.
func open(t testing.TB, cfg transport.Config) *jetstream.Driver {
	t.Helper()
	d, err := jetstream.Open(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d
}

// openBus opens a Bus over a new driver; t closes it at the end.
func openBus(t testing.TB, cfg transport.Config) *transport.Bus {
	t.Helper()
	b, err := transport.Open(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	return b
}

func errorsIs(err, target error) bool { return err != nil && errors.Is(err, target) }

var nsSeq atomic.Int64

// uniqueNS returns a namespace no other test (or repetition with -count) of this process uses
// on the shared server.
func uniqueNS(prefix string) string { return fmt.Sprintf("%s%d", prefix, nsSeq.Add(1)) }
