package main

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/internal/redistest"
)

// TestRunOnRedisCluster proves the first symptom is gone: with REDIS_URL naming one
// master of a three-master cluster and PULSE_REDIS_MODE=cluster, `pulse run` starts and
// `pulse publish` publishes to a feedback stream whose slot another master owns (both
// failed with MOVED), and the event applies.
func TestRunOnRedisCluster(t *testing.T) {
	c := redistest.StartClusterT(t, 3, 0)
	ns := ""
	for _, candidate := range []string{"mdp", "mdp1", "mdp2", "mdp3", "mdp4", "mdp5", "mdp6", "mdp7"} {
		owner, err := c.MasterOf(context.Background(), candidate+":telemetry.feedback")
		require.NoError(t, err)
		if owner != c.Masters[0] {
			ns = candidate
			break
		}
	}
	require.NotEmpty(t, ns, "a namespace whose feedback stream the seed does not own")
	env := map[string]string{"PULSE_HTTP_ADDR": "127.0.0.1:0", "PULSE_DATA_DIR": t.TempDir(), "EVENT_BUS_BACKEND": "redis",
		"REDIS_URL": "redis://" + c.Masters[0].Addr() + "/0", "PULSE_REDIS_MODE": "cluster", "MD_NAMESPACE": ns}
	s := startRun(t, env)
	s.ready(t)
	code, _, errOut := pulse(t, env, "publish", "--coordinator", "c1", "--level", "hard")
	require.Equal(t, 0, code, errOut)
	s.waitRate(t, 1)
}

// TestRedisModeMismatchStopsStartUp proves a REDIS_URL that names cluster seeds or a
// Sentinel master under another PULSE_REDIS_MODE stops start-up with exit status 2 and a
// message naming both variables.
func TestRedisModeMismatchStopsStartUp(t *testing.T) {
	for _, env := range []map[string]string{
		{"REDIS_URL": "redis://127.0.0.1:7001?addr=127.0.0.1:7002"},
		{"REDIS_URL": "redis://127.0.0.1:26379/0", "PULSE_REDIS_MODE": "sentinel"},
		{"REDIS_URL": "redis://127.0.0.1:7001/2", "PULSE_REDIS_MODE": "cluster"},
		{"REDIS_URL": "redis://127.0.0.1:6379/0", "PULSE_REDIS_MODE": "ring"},
	} {
		env["EVENT_BUS_BACKEND"] = "redis"
		env["PULSE_HTTP_ADDR"] = "127.0.0.1:0"
		code, _, errOut := pulse(t, env, "run")
		require.Equal(t, 2, code, "%v: %s", env, errOut)
		require.Contains(t, errOut, "PULSE_REDIS_MODE", env)
	}
}

// TestRunBehindSentinelFailover proves the Sentinel case end to end: `pulse run` behind
// three sentinels with PULSE_REDIS_MIN_REPLICAS=1 applies a hard event; the primary is
// SIGKILLed, /readyz reports the outage, the replica is promoted, the old primary comes back
// as its replica, and /readyz is 200 again and the next event applies — without a restart.
func TestRunBehindSentinelFailover(t *testing.T) {
	set := redistest.StartSentinelT(t)
	env := map[string]string{"PULSE_HTTP_ADDR": "127.0.0.1:0", "PULSE_DATA_DIR": t.TempDir(), "EVENT_BUS_BACKEND": "redis",
		"REDIS_URL": set.URL(), "PULSE_REDIS_MODE": "sentinel", "PULSE_REDIS_MIN_REPLICAS": "1", "MD_NAMESPACE": "e2e_sentinel"}
	s := startRun(t, env)
	s.ready(t)
	code, _, errOut := pulse(t, env, "publish", "--coordinator", "c1", "--level", "hard")
	require.Equal(t, 0, code, errOut)
	s.waitRate(t, 1)

	require.NoError(t, set.Primary.Kill())
	eventually(t, "/readyz reports the outage", func() bool { code, _ := get(t, s.url("/readyz")); return code != 200 })
	eventuallyWithin(t, time.Minute, "the sentinels promote the replica", func() bool {
		p, err := set.CurrentPrimary(context.Background())
		return err == nil && p == set.Replica.Addr()
	})
	require.NoError(t, set.Primary.Restart()) // back as the new primary's replica
	eventuallyWithin(t, time.Minute, "/readyz 200 again", func() bool { code, _ := get(t, s.url("/readyz")); return code == 200 })
	eventuallyWithin(t, time.Minute, "the next event applies", func() bool {
		code, _, _ := pulse(t, env, "publish", "--coordinator", "c1", "--level", "ok")
		return code == 0 && state(t, s).Coordinators["c1"].Level == "ok"
	})
}
