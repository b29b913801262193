package natstest

import (
	"os"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestStart proves that Start gives t a running JetStream server on a random port.
func TestStart(t *testing.T) {
	s := Start(t, nil)
	require.True(t, s.Running())
	require.NotEqual(t, 4222, s.Addr().Port)
	nc, err := nats.Connect(s.ClientURL())
	require.NoError(t, err)
	nc.Close()
	require.NotNil(t, s.NATS().JetStreamConfig())
}

// TestShared proves that Shared starts one server on first use, returns it again, and that
// Stop shuts it down and removes its store.
func TestShared(t *testing.T) {
	var sh Shared
	a := sh.Server(t)
	require.Same(t, a, sh.Server(t))
	dir := sh.dir
	require.DirExists(t, dir)
	require.NoError(t, sh.Stop())
	require.False(t, a.Running())
	_, err := os.Stat(dir)
	require.True(t, os.IsNotExist(err))
}

// TestFreePorts proves that the ports are distinct and usable.
func TestFreePorts(t *testing.T) {
	ports, err := FreePorts(3)
	require.NoError(t, err)
	require.Len(t, ports, 3)
	require.NotEqual(t, ports[0], ports[1])
	require.NotEqual(t, ports[1], ports[2])
	require.NotEqual(t, ports[0], ports[2])
}
