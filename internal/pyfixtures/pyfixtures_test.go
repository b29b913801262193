package pyfixtures_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/internal/pyfixtures"
)

// sharedDir is where the original fixtures are: PULSE_SHARED_FIXTURES, else ../shared/fixtures
// beside the repository.
func sharedDir() string {
	if d := os.Getenv("PULSE_SHARED_FIXTURES"); d != "" {
		return d
	}
	return filepath.Join("..", "..", "..", "shared", "fixtures")
}

// TestFixturesMatchShared proves the fixtures are byte-identical to the original set, file for
// file, with none missing and none extra. Where there is no original set it skips, except in
// the GitHub workflow, which must provide one (.github/workflows/ci.yml).
func TestFixturesMatchShared(t *testing.T) {
	shared := sharedDir()
	if _, err := os.Stat(shared); err != nil {
		if os.Getenv("GITHUB_ACTIONS") == "true" {
			t.Fatalf("in the GitHub workflow the original fixtures must be at %s (PULSE_SHARED_FIXTURES): %v", shared, err)
		}
		t.Skipf("no original fixtures at %s (PULSE_SHARED_FIXTURES names another directory)", shared)
	}
	theirs, err := filepath.Glob(filepath.Join(shared, "*.json"))
	require.NoError(t, err)
	for i := range theirs {
		theirs[i] = filepath.Base(theirs[i])
	}
	require.Equal(t, theirs, pyfixtures.Names(), "the same fixture files")
	names := pyfixtures.Names()
	if _, err := os.Stat(filepath.Join(shared, "README.md")); err == nil {
		names = append(names, "README.md")
	}
	for _, name := range names {
		want, err := os.ReadFile(filepath.Join(shared, name))
		require.NoError(t, err)
		got, err := pyfixtures.File(name)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got), "%s drifted from %s", name, shared)
	}
}

// TestPythonWritesTheFixtures proves generate.py, which writes each message with Python's own
// json module the way the core's JsonCodec does, reproduces every fixture byte for byte: the
// fixtures are what Python writes, not what Pulse thinks it writes.
func TestPythonWritesTheFixtures(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3 on this machine")
	}
	out := t.TempDir()
	b, err := exec.Command(python, "generate.py", out).CombinedOutput()
	require.NoError(t, err, "%s", b)
	for _, name := range pyfixtures.Names() {
		want, err := pyfixtures.File(name)
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join(out, name))
		require.NoError(t, err)
		require.Equal(t, string(want), string(got), "python3 generate.py writes %s", name)
	}
}

// TestMessageDropsTheFileNewline proves a message body is the JSON object alone.
func TestMessageDropsTheFileNewline(t *testing.T) {
	require.Len(t, pyfixtures.Names(), 4)
	for _, name := range pyfixtures.Names() {
		m := pyfixtures.Message(name)
		require.Equal(t, byte('{'), m[0], name)
		require.Equal(t, byte('}'), m[len(m)-1], name)
	}
	require.Panics(t, func() { pyfixtures.Message("nope.json") })
}
