package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/pulse-bus/pulse/transport"
)

// Contender names of the Redis section.
const (
	NamePulseRedis     = "pulse redis"
	NameRawRedis       = "raw go-redis"
	NameWatermillRedis = "watermill redisstream"
)

// redisBlock is the XREADGROUP BLOCK of the raw consumer: short, so cancellation is prompt.
const redisBlock = time.Second

// redisPipelinesInFlight is how many publish pipelines the raw client and Pulse's
// AsyncPublisher keep awaiting Redis at once. One pipeline at a time leaves Redis idle for a
// whole round trip (~70 µs on this loopback) per batch and leaves the client idle while Redis
// works; several in flight keep both busy, which is what a throughput-minded client does.
const redisPipelinesInFlight = 4

func redisSection() (*Section, []*Contender) {
	sec := &Section{
		Name:  SectionRedis,
		Title: "Redis Streams: publish n, then consume+ack the n (fresh stream and group per trial)",
		Goals: []Goal{
			{Metric: MetricPublish, Versus: NameRawRedis, MinRatio: 0.9},
			{Metric: MetricConsume, Versus: NameRawRedis, MinRatio: 0.9},
			{Metric: MetricConsume, Versus: NameWatermillRedis, MinRatio: 5},
		},
	}
	return sec, []*Contender{
		{Name: NamePulseRedis, Pulse: true, NewTrial: newPulseRedisTrial},
		{Name: NameRawRedis, NewTrial: newRawRedisTrial},
		{Name: NameWatermillRedis, NewTrial: newWatermillRedisTrial},
	}
}

// deleteRedisKeys removes every key matching pattern (the trial's streams) from each of the
// servers at addrs (a cluster's masters: every key lives on one). Keys are deleted one per
// command, as a cluster refuses a DEL of keys in different slots.
func deleteRedisKeys(ctx context.Context, addrs []string, pattern string) error {
	for _, addr := range addrs {
		c := redis.NewClient(&redis.Options{Addr: addr})
		err := deleteKeysOn(ctx, c, pattern)
		c.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func deleteKeysOn(ctx context.Context, c *redis.Client, pattern string) error {
	pipe := c.Pipeline()
	iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		pipe.Unlink(ctx, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("bench: scan %s on %s: %w", pattern, c.Options().Addr, err)
	}
	if pipe.Len() == 0 {
		return nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("bench: delete %s on %s: %w", pattern, c.Options().Addr, err)
	}
	return nil
}

// redisPendingZero waits until group on key has no pending entries.
func redisPendingZero(ctx context.Context, c redis.Cmdable, key, group string) error {
	return waitFor(ctx, ackPollInterval, func(ctx context.Context) (bool, error) {
		p, err := c.XPending(ctx, key, group).Result()
		if err != nil {
			return false, fmt.Errorf("bench: xpending %s %s: %w", key, group, err)
		}
		return p.Count == 0, nil
	})
}

func newPulseRedisTrial(ctx context.Context, env *Env, id string) (Trial, error) {
	ns := namespaceFor(id)
	bus, err := openPulse(ctx, env, transport.Config{Backend: "redis", Namespace: ns, RedisURL: "redis://" + env.RedisAddr + "/0"})
	if err != nil {
		return nil, err
	}
	return &pulseTrial{bus: bus, env: env, inFlight: redisPipelinesInFlight, cleanup: func(ctx context.Context) error {
		return deleteRedisKeys(ctx, []string{env.RedisAddr}, ns+":*")
	}}, nil
}

// rawRedisTrial is what a careful hand-written go-redis client does: XADD pipelined in batches
// of env.Batch (one field "data", the envelope bytes, as Pulse stores them) with up to
// redisPipelinesInFlight pipelines awaiting Redis, XREADGROUP with COUNT env.Batch and one
// XACK per batch, the reader on its own client. On a cluster the clients are go-redis's
// ClusterClient, which sends each pipeline to the node owning the stream's slot.
type rawRedisTrial struct {
	env        *Env
	pub, sub   redis.UniversalClient
	key, group string
	tallied
}

func newRawRedisTrial(_ context.Context, env *Env, id string) (Trial, error) {
	return &rawRedisTrial{
		env: env, key: "raw:" + id, group: "bench",
		pub: redis.NewClient(&redis.Options{Addr: env.RedisAddr}),
		sub: redis.NewClient(&redis.Options{Addr: env.RedisAddr}),
	}, nil
}

func (t *rawRedisTrial) Publish(ctx context.Context, lo, hi int) error {
	bodies, err := t.env.Bodies(hi)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(redisPipelinesInFlight)
	for i := lo; i < hi; i += t.env.Batch {
		batch := bodies[i:min(hi, i+t.env.Batch)]
		g.Go(func() error {
			pipe := t.pub.Pipeline()
			for _, b := range batch {
				pipe.XAdd(ctx, &redis.XAddArgs{Stream: t.key, Values: []any{"data", b}})
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return fmt.Errorf("bench: xadd pipeline: %w", err)
			}
			return nil
		})
	}
	return g.Wait()
}

func (t *rawRedisTrial) Consume(ctx context.Context, n int) error {
	t.tal = newTally(n)
	if err := t.sub.XGroupCreateMkStream(ctx, t.key, t.group, "0").Err(); err != nil {
		return fmt.Errorf("bench: xgroup create: %w", err)
	}
	ids := make([]string, 0, t.env.Batch)
	for t.tal.unique.Load() < int64(n) {
		res, err := t.sub.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: t.group, Consumer: "c1", Streams: []string{t.key, ">"}, Count: int64(t.env.Batch), Block: redisBlock,
		}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return fmt.Errorf("bench: xreadgroup: %w (%d of %d handled)", err, t.tal.unique.Load(), n)
		}
		ids = ids[:0]
		for _, s := range res {
			for _, m := range s.Messages {
				data, _ := m.Values["data"].(string)
				t.tal.add([]byte(data))
				ids = append(ids, m.ID)
			}
		}
		if len(ids) > 0 {
			if err := t.sub.XAck(ctx, t.key, t.group, ids...).Err(); err != nil {
				return fmt.Errorf("bench: xack: %w", err)
			}
		}
	}
	return redisPendingZero(ctx, t.sub, t.key, t.group)
}

func (t *rawRedisTrial) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := t.pub.Del(ctx, t.key).Err()
	return errors.Join(err, t.pub.Close(), t.sub.Close())
}

// watermillRedisTrial is Watermill's redisstream publisher and subscriber (consumer group,
// reading from the start of the stream) with their defaults and a no-op logger. The payload
// is the same envelope bytes; Watermill adds its uuid and metadata fields to each entry.
type watermillRedisTrial struct {
	env   *Env
	pubC  *redis.Client
	subC  *redis.Client
	pub   *redisstream.Publisher
	topic string
	group string
	tallied
	closeSub func() error
}

func newWatermillRedisTrial(_ context.Context, env *Env, id string) (Trial, error) {
	t := &watermillRedisTrial{
		env: env, topic: "wm:" + id, group: "bench",
		pubC: redis.NewClient(&redis.Options{Addr: env.RedisAddr}),
		subC: redis.NewClient(&redis.Options{Addr: env.RedisAddr}),
	}
	pub, err := redisstream.NewPublisher(redisstream.PublisherConfig{Client: t.pubC}, watermill.NopLogger{})
	if err != nil {
		t.pubC.Close()
		t.subC.Close()
		return nil, fmt.Errorf("bench: watermill redisstream publisher: %w", err)
	}
	t.pub = pub
	return t, nil
}

func (t *watermillRedisTrial) Publish(ctx context.Context, lo, hi int) error {
	bodies, err := t.env.Bodies(hi)
	if err != nil {
		return err
	}
	return publishWatermill(ctx, t.pub, t.topic, bodies[lo:hi], t.env.Batch, "watermill redisstream")
}

func (t *watermillRedisTrial) Consume(ctx context.Context, n int) error {
	t.tal = newTally(n)
	sub, err := redisstream.NewSubscriber(redisstream.SubscriberConfig{
		Client: t.subC, ConsumerGroup: t.group, Consumer: "c1", DisableIndefiniteInitialBlock: true,
	}, watermill.NopLogger{})
	if err != nil {
		return fmt.Errorf("bench: watermill redisstream subscriber: %w", err)
	}
	t.closeSub = sub.Close
	stop, err := subscribeWatermill(ctx, sub, t.topic, t.tal.add, "watermill redisstream")
	if err != nil {
		return err
	}
	defer stop()
	if err := t.tal.wait(ctx); err != nil {
		return err
	}
	return redisPendingZero(ctx, t.pubC, t.topic, t.group)
}

func (t *watermillRedisTrial) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	if t.closeSub != nil {
		errs = append(errs, t.closeSub())
	}
	errs = append(errs, t.pubC.Del(ctx, t.topic).Err())
	errs = append(errs, t.pub.Close()) // closes pubC
	if t.closeSub == nil {
		errs = append(errs, t.subC.Close()) // else the subscriber closed it
	}
	return errors.Join(errs...)
}
