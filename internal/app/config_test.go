package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/feedback"
)

// TestLoadDefaults proves the defaults of docs/contract.md §5 with an empty environment.
func TestLoadDefaults(t *testing.T) {
	cfg, err := Load(envconf.Map(nil), nil)
	require.NoError(t, err)
	require.True(t, cfg.Enabled)
	require.Equal(t, "jetstream", cfg.Bus.Backend)
	require.Empty(t, cfg.Bus.NATSURL)
	require.True(t, cfg.EmbeddedNATS())
	require.Equal(t, "127.0.0.1:4223", cfg.Embedded.Listen)
	require.Equal(t, "redis://localhost:6379/0", cfg.Bus.RedisURL)
	require.Equal(t, "mdp", cfg.Bus.Namespace)
	require.Equal(t, "v1", string(cfg.Bus.Track))
	require.Empty(t, cfg.Bus.PublisherToken)
	require.Equal(t, "./.pulse", cfg.Embedded.DataDir)
	require.Equal(t, "127.0.0.1:9464", cfg.HTTPAddr)
	require.Equal(t, "pipeline", cfg.Bus.Group)
	host, err := os.Hostname()
	require.NoError(t, err)
	dir, err := filepath.Abs("./.pulse")
	require.NoError(t, err)
	require.Equal(t, feedback.ReplicaName(host, dir, "127.0.0.1:9464"), cfg.Bus.Consumer, "derived, so that replicas on the defaults never share a group")
	require.Equal(t, "telemetry.feedback", cfg.FeedbackStream)
	require.Equal(t, 5, cfg.Bus.MaxDeliveries)
	require.Equal(t, 30*time.Second, cfg.Bus.AckWait)
	require.Equal(t, "ibkr", cfg.Policy.Provider)
	require.Equal(t, 60.0, cfg.Policy.BaseRate)
	require.Equal(t, []float64{1, 0.5, 0}, []float64{cfg.Policy.Scale("ok"), cfg.Policy.Scale("soft"), cfg.Policy.Scale("hard")})
	require.Equal(t, "INFO", cfg.LogLevel.String())
	require.Equal(t, "text", cfg.LogFormat)
}

// TestFlagsOverrideTheEnvironment proves a flag wins over its variable, and that an invalid
// value given by flag is reported under the flag's name and the variable's.
func TestFlagsOverrideTheEnvironment(t *testing.T) {
	env := map[string]string{"EVENT_BUS_BACKEND": "jetstream", "PULSE_GROUP": "from-env", "MDP_FB_SCALE_SOFT": "0.4"}
	code, out, errOut := runMain(t, env, "config", "--backend", "inmem", "--group", "from-flag", "--enabled=false")
	require.Equal(t, ExitOK, code, errOut)
	require.Regexp(t, `EVENT_BUS_BACKEND=inmem\s+# flag`, out)
	require.Regexp(t, `PULSE_GROUP=from-flag\s+# flag`, out)
	require.Regexp(t, `PULSE_ENABLED=false\s+# flag`, out)
	require.Regexp(t, `MDP_FB_SCALE_SOFT=0.4\s+# env`, out)
	require.Regexp(t, `PULSE_CONSUMER_NAME=pulse-[A-Za-z0-9_-]+-[0-9a-f]{8}\s+# derived from the host name, PULSE_DATA_DIR and PULSE_HTTP_ADDR`, out)

	code, _, errOut = runMain(t, env, "config", "--scale-hard", "2")
	require.Equal(t, ExitUsage, code)
	require.Contains(t, errOut, `invalid --scale-hard="2" (MDP_FB_SCALE_HARD): accepted: a number from 0 to 1`)
}

// TestConfigMasksSecrets proves `pulse config` never prints the publisher token or a
// password or token inside REDIS_URL / NATS_URL.
func TestConfigMasksSecrets(t *testing.T) {
	env := map[string]string{
		"PUBLISHER_TOKEN": "tok-SECRET-1",
		"REDIS_URL":       "rediss://user:pw-SECRET-2@redis.example:6380/2",
		"NATS_URL":        "nats://tk-SECRET-3@n1:4222,nats://u:pw-SECRET-4@n2:4222",
	}
	code, out, errOut := runMain(t, env, "config")
	require.Equal(t, ExitOK, code, errOut)
	require.NotContains(t, out, "SECRET")
	require.Contains(t, out, "PUBLISHER_TOKEN=xxxxx")
	require.Contains(t, out, "REDIS_URL=rediss://user:xxxxx@redis.example:6380/2")
	require.Contains(t, out, "NATS_URL=nats://xxxxx@n1:4222,nats://u:xxxxx@n2:4222")

	env["EVENT_BUS_BACKEND"] = "redis" // REDIS_URL is the redis backend's to check
	for _, bad := range []string{"http://user:pw-SECRET-5@h/0", "redis://h:6379/0?password=pw-SECRET-6"} {
		env["REDIS_URL"] = bad
		code, _, errOut = runMain(t, env, "config")
		require.Equal(t, ExitUsage, code)
		require.Contains(t, errOut, "REDIS_URL")
		require.NotContains(t, errOut, "SECRET", "an invalid URL is reported masked too")
	}
	require.Contains(t, errOut, "?password=xxxxx")
}

// TestBackendChecksItsOwnSettings proves backend settings are checked by the backend that owns
// them: a malformed REDIS_URL does not stop a jetstream deployment, and stops a redis one
// (exit 2, naming the variable).
func TestBackendChecksItsOwnSettings(t *testing.T) {
	env := map[string]string{"REDIS_URL": "not a url", "PULSE_REDIS_MODE": "cluster"}
	code, _, errOut := runMain(t, env, "config")
	require.Equal(t, ExitOK, code, "jetstream ignores the redis settings: %s", errOut)
	env["EVENT_BUS_BACKEND"] = "redis"
	code, _, errOut = runMain(t, env, "config")
	require.Equal(t, ExitUsage, code)
	require.Contains(t, errOut, "REDIS_URL")
}

// TestUsage proves the top-level usage: no command or an unknown one exits 2 with the list
// of commands; help exits 0.
func TestUsage(t *testing.T) {
	code, _, errOut := runMain(t, nil)
	require.Equal(t, ExitUsage, code)
	require.Contains(t, errOut, "Usage: pulse <command>")
	code, _, errOut = runMain(t, nil, "frobnicate")
	require.Equal(t, ExitUsage, code)
	require.Contains(t, errOut, `unknown command "frobnicate"`)
	code, out, _ := runMain(t, nil, "help")
	require.Equal(t, ExitOK, code)
	for _, c := range []string{"run", "publish", "dlq", "demo", "config", "version"} {
		require.True(t, strings.Contains(out, "  "+c+" "), c)
	}
	code, out, _ = runMain(t, nil, "version")
	require.Equal(t, ExitOK, code)
	require.True(t, strings.HasPrefix(out, "pulse "), out)
}

// TestPublishUsage proves `pulse publish` refuses incomplete or invalid events with exit 2
// before touching the bus.
func TestPublishUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"publish", "--level", "hard"}, "--coordinator is required"},
		{[]string{"publish", "--coordinator", "c1"}, "--level is required"},
		{[]string{"publish", "--coordinator", "c1", "--level", "HARD"}, `invalid --level="HARD" (accepted: ok, soft, hard)`},
		{[]string{"publish", "--coordinator", "c1", "--level", "ok", "--capacity", "0"}, "invalid --capacity=0"},
		{[]string{"publish", "--coordinator", "c1", "--level", "ok", "--queue-size", "x"}, `invalid value "x" for flag -queue-size`},
	} {
		t.Run(strings.Join(tc.args[1:], " "), func(t *testing.T) {
			code, _, errOut := runMain(t, nil, tc.args...)
			require.Equal(t, ExitUsage, code)
			require.Contains(t, errOut, tc.want)
		})
	}
}

// TestPublishThenApply proves `pulse publish` puts one event on the bus that the running
// App applies.
func TestPublishThenApply(t *testing.T) {
	env := baseEnv(t, "inmem")
	a := startApp(t, env)
	code, out, errOut := runMain(t, env, "publish", "--coordinator", "c9", "--level", "soft", "--capacity", "200")
	require.Equal(t, ExitOK, code, errOut)
	require.Contains(t, out, "published FeedbackEvent coordinator=c9 level=soft queue_size=100 capacity=200")
	require.Eventually(t, func() bool { return a.Rates().Rate("ibkr") == 30 }, waitTimeout, 5e6)
}

// TestLevelDepth proves the queue sizes `pulse publish` derives from a level.
func TestLevelDepth(t *testing.T) {
	require.Equal(t, 0, levelDepth("ok", 100))
	require.Equal(t, 50, levelDepth("soft", 100))
	require.Equal(t, 80, levelDepth("hard", 100))
	require.Equal(t, 3, levelDepth("hard", 3))
	require.Equal(t, 1, levelDepth("soft", 1))
}
