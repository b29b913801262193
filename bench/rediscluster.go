package bench

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/pulse-bus/pulse/internal/redistest"
	"github.com/pulse-bus/pulse/transport"
)

// Contender names of the Redis Cluster section.
const (
	NamePulseRedisCluster = "pulse redis cluster"
	NameRawRedisCluster   = "raw go-redis cluster"
)

// clusterMasters is how many masters the section's cluster has. Each trial's stream lives in
// one slot, so on one of them — usually not the seed node of the URL, which is the case that
// needs routing.
const clusterMasters = 3

// RedisCluster is the section's server: a redistest cluster of clusterMasters masters, no
// replicas, no persistence.
type RedisCluster struct {
	URL     string   // a REDIS_URL for PULSE_REDIS_MODE=cluster
	Masters []string // the masters' addresses
	Version string

	c *redistest.Cluster
}

// StartRedisCluster starts the cluster and returns once it is healthy.
func StartRedisCluster() (*RedisCluster, error) {
	c, err := redistest.StartCluster(clusterMasters, 0)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	rc := &RedisCluster{URL: c.URL(), c: c}
	for _, m := range c.Masters {
		rc.Masters = append(rc.Masters, m.Addr())
	}
	rc.Version, _ = c.Masters[0].Version() // only shown in the report
	return rc, nil
}

// Stop stops every node.
func (rc *RedisCluster) Stop() error { return rc.c.Close() }

func redisClusterSection() (*Section, []*Contender) {
	sec := &Section{
		Name: SectionRedisCluster,
		Title: fmt.Sprintf("Redis Cluster (%d masters): publish n, then consume+ack the n (fresh stream and group per trial, its slot on any master)",
			clusterMasters),
		Goals: []Goal{
			{Metric: MetricPublish, Versus: NameRawRedisCluster, MinRatio: 0.9},
			{Metric: MetricConsume, Versus: NameRawRedisCluster, MinRatio: 0.9},
		},
	}
	return sec, []*Contender{
		{Name: NamePulseRedisCluster, Pulse: true, NewTrial: newPulseRedisClusterTrial},
		{Name: NameRawRedisCluster, NewTrial: newRawRedisClusterTrial},
	}
}

func newPulseRedisClusterTrial(ctx context.Context, env *Env, id string) (Trial, error) {
	ns := namespaceFor(id)
	bus, err := openPulse(ctx, env, transport.Config{Backend: "redis", Namespace: ns, RedisURL: env.RedisCluster.URL, RedisMode: "cluster"})
	if err != nil {
		return nil, err
	}
	return &pulseTrial{bus: bus, env: env, inFlight: redisPipelinesInFlight, cleanup: func(ctx context.Context) error {
		return deleteRedisKeys(ctx, env.RedisCluster.Masters, ns+":*")
	}}, nil
}

// newRawRedisClusterTrial is rawRedisTrial on go-redis's ClusterClient, seeded with the same
// URL Pulse is given.
func newRawRedisClusterTrial(_ context.Context, env *Env, id string) (Trial, error) {
	opts, err := redis.ParseClusterURL(env.RedisCluster.URL)
	if err != nil {
		return nil, fmt.Errorf("bench: cluster url: %w", err)
	}
	return &rawRedisTrial{
		env: env, key: "raw:" + id, group: "bench",
		pub: redis.NewClusterClient(opts),
		sub: redis.NewClusterClient(opts),
	}, nil
}
