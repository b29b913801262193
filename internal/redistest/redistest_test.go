package redistest

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestLifecycle proves a server answers PING once Start returns, stops answering after Stop
// and Kill, and comes back on the same port after Restart.
func TestLifecycle(t *testing.T) {
	s := StartT(t)
	require.NoError(t, ping(s.Addr()))
	require.True(t, s.Running())
	port := s.Port()

	require.NoError(t, s.Stop())
	require.False(t, s.Running())
	require.Error(t, ping(s.Addr()), "a stopped server must not answer")
	require.NoError(t, s.Stop(), "Stop is idempotent")

	require.NoError(t, s.Restart())
	require.Equal(t, port, s.Port())
	require.NoError(t, ping(s.Addr()))

	require.NoError(t, s.Kill())
	require.Error(t, ping(s.Addr()), "a killed server must not answer")
	require.NoError(t, s.Restart())
	require.NoError(t, ping(s.Addr()))
	require.Equal(t, "redis://"+s.Addr()+"/0", s.URL())
}

// TestVersion proves Version reports the binary's version number (the v= field of
// `redis-server --version`), a dotted number such as 7.0.15.
func TestVersion(t *testing.T) {
	s := StartT(t)
	v, err := s.Version()
	require.NoError(t, err)
	require.Regexp(t, `^\d+\.\d+(\.\d+)?$`, v)
}

// TestMissingBinary proves that a missing redis-server is an error that says how to install
// it (tests then fail with that hint instead of skipping).
func TestMissingBinary(t *testing.T) {
	t.Setenv(BinaryEnv, "/nonexistent/redis-server")
	_, err := Start()
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorContains(t, err, "apt-get install redis-server")
}

// TestShared proves the shared server starts once, is reused, and is stopped by the Main
// wrapper after the tests ran.
func TestShared(t *testing.T) {
	var sh Shared
	a := sh.Server(t)
	b := sh.Server(t)
	require.Same(t, a, b)
	require.NoError(t, ping(a.Addr()))
	code := sh.Main(runnerFunc(func() int { return 3 })).Run()
	require.Equal(t, 3, code, "Main passes the tests' exit code through")
	require.False(t, a.Running(), "Main stops the shared server")
}

type runnerFunc func() int

func (f runnerFunc) Run() int { return f() }
