package feedback_test

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"

	"github.com/pulse-bus/pulse/feedback"
)

// TestRateCoordinatorScales proves SetScale moves the provider's limiter to
// max(floor, base × scale), in place (a Limiter held by a caller sees it), and that providers
// are independent.
func TestRateCoordinatorScales(t *testing.T) {
	rc, err := feedback.NewRateCoordinator(feedback.Limits{BaseRate: 60, MinRate: 1, Burst: 3})
	require.NoError(t, err)
	lim := rc.Limiter("ibkr")
	require.Equal(t, rate.Limit(60), lim.Limit())
	require.Equal(t, 3, lim.Burst())
	require.Equal(t, 1.0, rc.Scale("ibkr"))

	tests := []struct {
		scale float64
		rate  float64
	}{{0.5, 30}, {0, 1}, {0.01, 1}, {0.25, 15}, {1, 60}}
	for _, tt := range tests {
		require.NoError(t, rc.SetScale("ibkr", tt.scale))
		require.Equal(t, rate.Limit(tt.rate), lim.Limit(), "scale %v", tt.scale)
		require.Equal(t, tt.rate, rc.Rate("ibkr"))
		require.Equal(t, tt.scale, rc.Scale("ibkr"))
		require.Same(t, lim, rc.Limiter("ibkr"))
	}
	require.NoError(t, rc.SetScale("ibkr", 0))
	require.Equal(t, rate.Limit(60), rc.Limiter("other").Limit(), "another provider is untouched")
	require.Equal(t, []string{"ibkr", "other"}, rc.Providers())
	require.Equal(t, map[string]feedback.ProviderState{
		"ibkr":  {BaseRate: 60, MinRate: 1, Burst: 3, Scale: 0, Rate: 1},
		"other": {BaseRate: 60, MinRate: 1, Burst: 3, Scale: 1, Rate: 60},
	}, rc.Snapshot())
}

// TestRateCoordinatorRejects proves invalid scales and limits are refused and change nothing.
func TestRateCoordinatorRejects(t *testing.T) {
	rc, err := feedback.NewRateCoordinator(feedback.Limits{})
	require.NoError(t, err)
	for _, s := range []float64{-0.1, 1.1, nan()} {
		require.ErrorContains(t, rc.SetScale("ibkr", s), "from 0 to 1")
	}
	require.Equal(t, 1.0, rc.Scale("ibkr"))
	require.Error(t, rc.Configure("ibkr", feedback.Limits{BaseRate: 10, MinRate: 20}))
	_, err = feedback.NewRateCoordinator(feedback.Limits{Burst: -1})
	require.ErrorContains(t, err, "MDP_FB_BURST")
}

// TestRateCoordinatorConfigure proves per-provider limits keep the current scale.
func TestRateCoordinatorConfigure(t *testing.T) {
	rc, err := feedback.NewRateCoordinator(feedback.Limits{})
	require.NoError(t, err)
	require.NoError(t, rc.SetScale("slow", 0.5))
	require.NoError(t, rc.Configure("slow", feedback.Limits{BaseRate: 10, MinRate: 2, Burst: 5}))
	require.Equal(t, rate.Limit(5), rc.Limiter("slow").Limit())
	require.Equal(t, 5, rc.Limiter("slow").Burst())
	require.NoError(t, rc.SetScale("slow", 0))
	require.Equal(t, 2.0, rc.Rate("slow"))
}

// TestRateCoordinatorPaces proves Allow and Wait use the bucket: at the floor of 0.01/s with
// burst 1, one token is granted and the next is not (it is 100 s away), and Wait gives up
// with the context.
func TestRateCoordinatorPaces(t *testing.T) {
	rc, err := feedback.NewRateCoordinator(feedback.Limits{BaseRate: 1, MinRate: 0.01, Burst: 1})
	require.NoError(t, err)
	require.NoError(t, rc.SetScale("p", 0))
	require.True(t, rc.Allow("p"))
	require.False(t, rc.Allow("p"))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, rc.Wait(ctx, "p"), context.Canceled)

	fast, err := feedback.NewRateCoordinator(feedback.Limits{BaseRate: 1e9, Burst: 1})
	require.NoError(t, err)
	require.NoError(t, fast.Wait(context.Background(), "p"))
}

// TestRateCoordinatorConcurrent proves concurrent scaling and pacing are race-free.
func TestRateCoordinatorConcurrent(t *testing.T) {
	rc, err := feedback.NewRateCoordinator(feedback.Limits{BaseRate: 1e6})
	require.NoError(t, err)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				_ = rc.SetScale("p", float64((i+j)%3)/2)
				rc.Allow("p")
				_ = rc.Snapshot()
			}
		})
	}
	wg.Wait()
	require.Contains(t, []float64{0, 0.5, 1}, rc.Scale("p"))
}
