package redistest_test

import (
	"context"
	"sync/atomic"
	"testing"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/internal/redistest"
)

// TestClusterForms proves StartCluster's nodes form one healthy cluster that go-redis's
// cluster client, given URL, writes through on every master.
func TestClusterForms(t *testing.T) {
	c := redistest.StartClusterT(t, 3, 1)
	require.Len(t, c.Masters, 3)
	require.Len(t, c.Replicas, 3)
	opts, err := goredis.ParseClusterURL(c.URL())
	require.NoError(t, err)
	cl := goredis.NewClusterClient(opts)
	defer cl.Close()
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
		require.NoError(t, cl.Set(ctx, k, "1", 0).Err())
	}
	var masters atomic.Int32 // ForEachMaster runs fn on every master at once
	require.NoError(t, cl.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error {
		masters.Add(1)
		return nil
	}))
	require.EqualValues(t, 3, masters.Load())
}

// TestSentinelForms proves StartSentinel's sentinels name the primary and go-redis's
// failover client, given URL, writes to it.
func TestSentinelForms(t *testing.T) {
	s := redistest.StartSentinelT(t)
	ctx := context.Background()
	primary, err := s.CurrentPrimary(ctx)
	require.NoError(t, err)
	require.Equal(t, s.Primary.Addr(), primary)
	opts, err := goredis.ParseFailoverURL(s.URL())
	require.NoError(t, err)
	cl := goredis.NewFailoverClient(opts)
	defer cl.Close()
	require.NoError(t, cl.Set(ctx, "k", "v", 0).Err())
}
