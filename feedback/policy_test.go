package feedback_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/feedback"
)

// TestPolicyFromEnvDefaults proves an empty environment gives docs/contract.md §5's defaults and
// the documented floor and burst, and no coordinator TTL.
func TestPolicyFromEnvDefaults(t *testing.T) {
	p, err := feedback.PolicyFromEnv(envconf.Map(nil))
	require.NoError(t, err)
	require.Equal(t, feedback.DefaultPolicy(), p)
	require.Equal(t, "ibkr", p.Provider)
	require.Equal(t, 60.0, p.BaseRate)
	require.Equal(t, 1.0, p.MinRate)
	require.Equal(t, 1, p.Burst)
	require.Zero(t, p.CoordinatorTTL, "coordinators never expire by default, as in the Python core")
	require.Equal(t, feedback.DefaultPolicy(), feedback.Policy{}.WithDefaults(), "the zero Policy means the defaults")
}

// TestPolicyFromEnv proves each MDP_FB_* variable is read, and every bad value is an
// *envconf.Error naming the variable, the value and what is accepted.
func TestPolicyFromEnv(t *testing.T) {
	tests := []struct {
		name     string
		env      map[string]string
		check    func(t *testing.T, p feedback.Policy)
		errVar   string
		errValue string
		accepted string
	}{
		{name: "all set", env: map[string]string{
			"MDP_FB_PROVIDER_NAME": "polygon", "MDP_FB_SCALE_OK": "0.9", "MDP_FB_SCALE_SOFT": "0.25",
			"MDP_FB_SCALE_HARD": "0.1", "MDP_FB_BASE_RATE": "120", "MDP_FB_MIN_RATE": "2.5", "MDP_FB_BURST": "4",
		}, check: func(t *testing.T, p feedback.Policy) {
			require.Equal(t, "polygon", p.Provider)
			require.Equal(t, 0.9, p.Scale(feedback.LevelOK))
			require.Equal(t, 0.25, p.Scale(feedback.LevelSoft))
			require.Equal(t, 0.1, p.Scale(feedback.LevelHard))
			require.Equal(t, feedback.Limits{BaseRate: 120, MinRate: 2.5, Burst: 4}, p.Limits())
		}},
		{name: "coordinator ttl", env: map[string]string{"MDP_FB_COORDINATOR_TTL": "90s"}, check: func(t *testing.T, p feedback.Policy) {
			require.Equal(t, 90*time.Second, p.CoordinatorTTL)
		}},
		{name: "coordinator ttl zero", env: map[string]string{"MDP_FB_COORDINATOR_TTL": "0"}, check: func(t *testing.T, p feedback.Policy) {
			require.Zero(t, p.CoordinatorTTL)
		}},
		{name: "coordinator ttl negative", env: map[string]string{"MDP_FB_COORDINATOR_TTL": "-5s"}, errVar: "MDP_FB_COORDINATOR_TTL", errValue: "-5s", accepted: "a duration ≥ 0"},
		{name: "coordinator ttl no unit", env: map[string]string{"MDP_FB_COORDINATOR_TTL": "30"}, errVar: "MDP_FB_COORDINATOR_TTL", errValue: "30", accepted: "0 = never expire"},
		{name: "coordinator ttl text", env: map[string]string{"MDP_FB_COORDINATOR_TTL": "soon"}, errVar: "MDP_FB_COORDINATOR_TTL", errValue: "soon", accepted: "such as 30s"},
		{name: "blank keeps default", env: map[string]string{"MDP_FB_SCALE_SOFT": "  "}, check: func(t *testing.T, p feedback.Policy) {
			require.Equal(t, 0.5, p.Scale(feedback.LevelSoft))
		}},
		{name: "low base rate lowers the default floor", env: map[string]string{"MDP_FB_BASE_RATE": "0.5"}, check: func(t *testing.T, p feedback.Policy) {
			require.Equal(t, 0.5, p.MinRate)
		}},
		{name: "scale above one", env: map[string]string{"MDP_FB_SCALE_OK": "1.5"}, errVar: "MDP_FB_SCALE_OK", errValue: "1.5", accepted: "from 0 to 1"},
		{name: "scale negative", env: map[string]string{"MDP_FB_SCALE_HARD": "-0.1"}, errVar: "MDP_FB_SCALE_HARD", errValue: "-0.1", accepted: "from 0 to 1"},
		{name: "scale not a number", env: map[string]string{"MDP_FB_SCALE_SOFT": "half"}, errVar: "MDP_FB_SCALE_SOFT", errValue: "half", accepted: "from 0 to 1"},
		{name: "base rate zero", env: map[string]string{"MDP_FB_BASE_RATE": "0"}, errVar: "MDP_FB_BASE_RATE", errValue: "0", accepted: "> 0"},
		{name: "base rate text", env: map[string]string{"MDP_FB_BASE_RATE": "fast"}, errVar: "MDP_FB_BASE_RATE", errValue: "fast", accepted: "> 0"},
		{name: "base rate infinite", env: map[string]string{"MDP_FB_BASE_RATE": "Inf"}, errVar: "MDP_FB_BASE_RATE", errValue: "Inf", accepted: "> 0"},
		{name: "min rate zero", env: map[string]string{"MDP_FB_MIN_RATE": "0"}, errVar: "MDP_FB_MIN_RATE", errValue: "0", accepted: "> 0"},
		{name: "min rate above base", env: map[string]string{"MDP_FB_BASE_RATE": "10", "MDP_FB_MIN_RATE": "11"}, errVar: "MDP_FB_MIN_RATE", errValue: "11", accepted: "≤ MDP_FB_BASE_RATE=10"},
		{name: "burst zero", env: map[string]string{"MDP_FB_BURST": "0"}, errVar: "MDP_FB_BURST", errValue: "0", accepted: "≥ 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := feedback.PolicyFromEnv(envconf.Map(tt.env))
			if tt.errVar == "" {
				require.NoError(t, err)
				tt.check(t, p)
				return
			}
			var ce *envconf.Error
			require.True(t, errors.As(err, &ce), "want *envconf.Error, got %v", err)
			require.Equal(t, tt.errVar, ce.Var)
			require.Equal(t, tt.errValue, ce.Value)
			require.Contains(t, ce.Accepted, tt.accepted)
			require.Contains(t, err.Error(), tt.errVar)
		})
	}
}

// TestPolicyRate proves rate = max(min rate, base × scale): hard slows to the floor and never
// stops the provider.
func TestPolicyRate(t *testing.T) {
	p := feedback.DefaultPolicy()
	tests := []struct {
		level feedback.Level
		scale float64
		rate  float64
	}{
		{feedback.LevelOK, 1.0, 60},
		{feedback.LevelSoft, 0.5, 30},
		{feedback.LevelHard, 0.0, 1},
	}
	for _, tt := range tests {
		t.Run(string(tt.level), func(t *testing.T) {
			require.Equal(t, tt.scale, p.Scale(tt.level))
			require.Equal(t, tt.rate, p.Rate(p.Scale(tt.level)))
		})
	}
	require.Equal(t, 1.0, feedback.Limits{BaseRate: 60, MinRate: 1}.Rate(0.001), "60 × 0.001 is under the floor")
}

// TestPolicyValidate proves a hand-built policy is checked like the environment.
func TestPolicyValidate(t *testing.T) {
	require.NoError(t, feedback.Policy{}.Validate())
	var ce *envconf.Error
	err := feedback.Policy{Scales: map[feedback.Level]float64{feedback.LevelSoft: 2}}.Validate()
	require.True(t, errors.As(err, &ce))
	require.Equal(t, "MDP_FB_SCALE_SOFT", ce.Var)
	err = feedback.Policy{Scales: map[feedback.Level]float64{"critical": 0}}.Validate()
	require.ErrorContains(t, err, "critical")
	err = feedback.Policy{BaseRate: -1}.Validate()
	require.True(t, errors.As(err, &ce))
	require.Equal(t, "MDP_FB_BASE_RATE", ce.Var)
	err = feedback.Policy{CoordinatorTTL: -time.Second}.Validate()
	require.True(t, errors.As(err, &ce))
	require.Equal(t, "MDP_FB_COORDINATOR_TTL", ce.Var)
	require.Equal(t, "-1s", ce.Value)
}
