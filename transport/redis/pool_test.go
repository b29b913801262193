package redis

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/transport"
)

// poolConnIDs are the CLIENT IDs of the driver's pooled connections (named pulse:{ns}).
func poolConnIDs(t *testing.T, d *Driver) []string {
	t.Helper()
	list, err := d.client.ClientList(context.Background()).Result()
	require.NoError(t, err)
	var ids []string
	for _, line := range strings.Split(list, "\n") {
		if !strings.Contains(line, " name="+d.nodes.single.pool.name+" ") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if id, ok := strings.CutPrefix(f, "id="); ok {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// TestPoolReusesConnections: sequential publishes and acks share one pooled connection;
// concurrent ones open more, never more than the pool size.
func TestPoolReusesConnections(t *testing.T) {
	cfg := testConfig(t)
	d := openDriver(t, cfg)
	for range 5 {
		publish(t, d, "s", bodies(3))
	}
	require.Len(t, poolConnIDs(t, d), 1)

	var wg sync.WaitGroup
	for range 3 * d.nodes.single.opts.PoolSize {
		wg.Go(func() {
			_, err := d.Publish(context.Background(), "s", bodies(50))
			require.NoError(t, err)
		})
	}
	wg.Wait()
	n := len(poolConnIDs(t, d))
	require.GreaterOrEqual(t, n, 1)
	require.LessOrEqual(t, n, d.nodes.single.opts.PoolSize)
	info, err := d.Info(context.Background(), "s", "")
	require.NoError(t, err)
	require.EqualValues(t, 15+3*d.nodes.single.opts.PoolSize*50, info.Length)
}

// TestPoolConnectionClosedWhileIdle: a pooled connection the server closed (CLIENT KILL, as a
// server timeout or a proxy would) fails before any reply; the publish goes out once more on a
// fresh connection and is stored exactly once.
func TestPoolConnectionClosedWhileIdle(t *testing.T) {
	cfg := testConfig(t)
	d := openDriver(t, cfg)
	publish(t, d, "s", bodies(1))
	ids := poolConnIDs(t, d)
	require.Len(t, ids, 1)
	require.NoError(t, d.client.Do(context.Background(), "client", "kill", "id", ids[0]).Err())

	got := publish(t, d, "s", bodies(2))
	require.Len(t, got, 2)
	info, err := d.Info(context.Background(), "s", "")
	require.NoError(t, err)
	require.EqualValues(t, 3, info.Length, "the retried batch is stored once")
	require.NotEqual(t, ids, poolConnIDs(t, d), "a fresh connection replaced the killed one")
}

// TestPublishErrorReply: a command Redis refuses (the key holds another type) fails the
// publish with Redis's words, not as unavailable, and leaves the connection in step for the
// next publish.
func TestPublishErrorReply(t *testing.T) {
	cfg := testConfig(t)
	d := openDriver(t, cfg)
	require.NoError(t, d.client.Set(context.Background(), cfg.Namespace+":str", "x", 0).Err())
	ids, err := d.Publish(context.Background(), "str", bodies(3))
	require.ErrorContains(t, err, "WRONGTYPE")
	require.NotErrorIs(t, err, transport.ErrUnavailable)
	require.Empty(t, ids)
	require.Len(t, publish(t, d, "s", bodies(2)), 2)
	require.Len(t, poolConnIDs(t, d), 1, "the connection was kept")
}

// TestPublishCancelled: a publish whose context is already done returns its error, and the
// driver goes on publishing.
func TestPublishCancelled(t *testing.T) {
	cfg := testConfig(t)
	d := openDriver(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := d.Publish(ctx, "s", bodies(1))
	require.ErrorIs(t, err, context.Canceled)
	require.Len(t, publish(t, d, "s", bodies(1)), 1)
	before := poolConnIDs(t, d)
	_, err = d.Publish(ctx, "s", bodies(1))
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, before, poolConnIDs(t, d), "the idle connection was not spent on it")
}
