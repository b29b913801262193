package redis

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/internal/redistest"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/transporttest"
)

// The benchmarks compare Pulse on Redis with what a careful hand-written go-redis client does
// with the same bytes on the same server: publishing in pipelined batches, and consuming with
// XREADGROUP COUNT plus one XACK per batch. Each reports msgs/s. Run them with
//
//	go test -run '^$' -bench . -benchtime 200000x ./transport/redis
//
// (a fixed message count keeps the stream sizes comparable between contenders).
const benchBatch = 200

// benchEnvelopes returns n v1 envelopes of a FeedbackEvent-sized payload (~200 bytes on the
// wire) and their encoded bytes.
func benchEnvelopes(b *testing.B, n int) ([]*envelope.Envelope, [][]byte) {
	b.Helper()
	codec := &envelope.Codec{}
	envs := make([]*envelope.Envelope, n)
	bodies := make([][]byte, n)
	for i := range envs {
		key := fmt.Sprintf("coord-%d", i%8)
		envs[i] = &envelope.Envelope{
			Key:  &key,
			Meta: envelope.Meta{SchemaID: "telemetry.FeedbackEvent"},
			Payload: []byte(fmt.Sprintf(`{"coordinator_id":"%s","queue_size":%d,"capacity":100,"level":"soft","source":"store","ts":1760812345.6789}`,
				key, i%100)),
		}
		var err error
		if bodies[i], err = codec.Encode(envs[i]); err != nil {
			b.Fatal(err)
		}
	}
	return envs, bodies
}

func benchConfig(b *testing.B) transport.Config {
	return transport.Config{
		Backend:   Name,
		RedisURL:  redisSrv.Server(b).URL(),
		Namespace: uniqueNS(b),
		BatchSize: benchBatch,
	}
}

// startClock resets the benchmark timer and returns a report function: msgs/s of wall time,
// and the client process's CPU time per message (user+system, all goroutines; the Redis
// server's own CPU is not in it). The CPU figure varies less than msgs/s on a shared machine.
func startClock(b *testing.B) (report func(n int)) {
	cpu0 := transporttest.ProcessCPU()
	b.ResetTimer()
	return func(n int) {
		b.StopTimer()
		b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
		b.ReportMetric(float64((transporttest.ProcessCPU()-cpu0).Nanoseconds())/float64(n), "cpu-ns/msg")
		b.ReportMetric(0, "ns/op") // per-message time is what msgs/s already says
	}
}

// cleanupNS deletes the namespace's keys so that benchmarks do not fill the shared server.
func cleanupNS(b *testing.B, c *goredis.Client, ns string) {
	b.Cleanup(func() {
		ctx := context.Background()
		keys, _ := c.Keys(ctx, ns+":*").Result()
		if len(keys) > 0 {
			c.Del(ctx, keys...)
		}
	})
}

// BenchmarkPublish: batches of 200 through transport.Bus.Publish (encode + pipelined XADD
// with the age trim) against raw pipelined XADD of the same, already encoded, bytes.
func BenchmarkPublish(b *testing.B) {
	b.Run("pulse", func(b *testing.B) {
		cfg := benchConfig(b)
		bus, err := transport.Open(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer bus.Close()
		cleanupNS(b, rawClient(b, cfg.RedisURL), cfg.Namespace)
		envs, _ := benchEnvelopes(b, benchBatch)
		ctx := context.Background()
		report := startClock(b)
		for i := 0; i < b.N; i += benchBatch {
			if err := bus.Publish(ctx, "bench", envs[:min(benchBatch, b.N-i)]...); err != nil {
				b.Fatal(err)
			}
		}
		report(b.N)
	})
	b.Run("pulse-driver", func(b *testing.B) { // the driver alone: the same bytes as raw, no encoding
		cfg := benchConfig(b)
		cleanupNS(b, rawClient(b, cfg.RedisURL), cfg.Namespace)
		benchDriverPublish(b, openDriver(b, cfg))
	})
	b.Run("raw-go-redis", func(b *testing.B) {
		cfg := benchConfig(b)
		c := rawClient(b, cfg.RedisURL)
		cleanupNS(b, c, cfg.Namespace)
		_, bodies := benchEnvelopes(b, benchBatch)
		key := cfg.Namespace + ":bench"
		ctx := context.Background()
		report := startClock(b)
		for i := 0; i < b.N; i += benchBatch {
			pipe := c.Pipeline()
			for j := range min(benchBatch, b.N-i) {
				pipe.XAdd(ctx, &goredis.XAddArgs{Stream: key, Values: []any{"data", bodies[j]}})
			}
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
		report(b.N)
	})
}

// fill XADDs n entries (pipelined, untimed) for a consume benchmark.
func fill(b *testing.B, c *goredis.Client, key string, n int) {
	b.Helper()
	_, bodies := benchEnvelopes(b, benchBatch)
	ctx := context.Background()
	for i := 0; i < n; i += benchBatch {
		pipe := c.Pipeline()
		for j := range min(benchBatch, n-i) {
			pipe.XAdd(ctx, &goredis.XAddArgs{Stream: key, Values: []any{"data", bodies[j]}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkConsume: a transport.Bus subscription (XREADGROUP COUNT 200, decode, de-duplicate,
// a handler that counts, one XACK per batch) against a raw XREADGROUP COUNT 200 + XACK loop on
// the same bytes. The clock stops once every message was handled and acknowledged.
func BenchmarkConsume(b *testing.B) {
	b.Run("pulse", func(b *testing.B) {
		cfg := benchConfig(b)
		c := rawClient(b, cfg.RedisURL)
		cleanupNS(b, c, cfg.Namespace)
		fill(b, c, cfg.Namespace+":bench", b.N)
		bus, err := transport.Open(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer bus.Close()
		var handled atomic.Int64
		all := make(chan struct{})
		report := startClock(b)
		sub, err := bus.Subscribe(context.Background(), "bench", func(context.Context, *transport.Delivery) error {
			if handled.Add(1) == int64(b.N) {
				close(all)
			}
			return nil
		}, transport.SubscribeOptions{BatchSize: benchBatch})
		if err != nil {
			b.Fatal(err)
		}
		select {
		case <-all:
		case <-time.After(time.Minute):
			b.Fatalf("handled %d of %d", handled.Load(), b.N)
		}
		if err := sub.Close(); err != nil { // drains: the last batch's XACK is sent
			b.Fatal(err)
		}
		report(b.N)
		if p := c.XPending(context.Background(), cfg.Namespace+":bench", transport.DefaultGroup).Val(); p == nil || p.Count != 0 {
			b.Fatalf("pending after the run: %+v", p)
		}
	})
	b.Run("pulse-driver", func(b *testing.B) { // the driver alone: Receive + one Ack per batch
		cfg := benchConfig(b)
		c := rawClient(b, cfg.RedisURL)
		cleanupNS(b, c, cfg.Namespace)
		fill(b, c, cfg.Namespace+":bench", b.N)
		d := openDriver(b, cfg)
		ctx := context.Background()
		report := startClock(b)
		s, err := d.Subscribe(ctx, "bench", driver.SubscribeOptions{Group: "g", Consumer: "c", AckWait: transport.DefaultAckWait})
		if err != nil {
			b.Fatal(err)
		}
		for done := 0; done < b.N; {
			ds, err := s.Receive(ctx, benchBatch)
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Ack(ctx, ds); err != nil {
				b.Fatal(err)
			}
			done += len(ds)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		report(b.N)
	})
	b.Run("raw-go-redis", func(b *testing.B) {
		cfg := benchConfig(b)
		c := rawClient(b, cfg.RedisURL)
		cleanupNS(b, c, cfg.Namespace)
		key := cfg.Namespace + ":bench"
		fill(b, c, key, b.N)
		reader := rawClient(b, cfg.RedisURL)
		ctx := context.Background()
		report := startClock(b)
		if err := reader.XGroupCreateMkStream(ctx, key, "g", "0").Err(); err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
			b.Fatal(err)
		}
		ids := make([]string, 0, benchBatch)
		for done := 0; done < b.N; {
			res, err := reader.XReadGroup(ctx, &goredis.XReadGroupArgs{
				Group: "g", Consumer: "c", Streams: []string{key, ">"}, Count: benchBatch, Block: maxBlock,
			}).Result()
			if errors.Is(err, goredis.Nil) {
				continue
			}
			if err != nil {
				b.Fatal(err)
			}
			ids = ids[:0]
			for _, m := range res[0].Messages {
				data, _ := m.Values["data"].(string)
				if len(data) == 0 {
					b.Fatal("empty entry")
				}
				ids = append(ids, m.ID)
			}
			if err := reader.XAck(ctx, key, "g", ids...).Err(); err != nil {
				b.Fatal(err)
			}
			done += len(ids)
		}
		report(b.N)
	})
}

// BenchmarkPublishMinReplicas is what PULSE_REDIS_MIN_REPLICAS costs: batches of 200
// through the driver to a primary with one replica, without WAIT and with WAIT 1.
func BenchmarkPublishMinReplicas(b *testing.B) {
	primary := redistest.StartT(b)
	replica, err := redistest.StartReplica(primary)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { replica.Close() })
	for _, n := range []int{0, 1} {
		b.Run(fmt.Sprintf("min-replicas=%d", n), func(b *testing.B) {
			cfg := benchConfig(b)
			cfg.RedisURL, cfg.RedisMinReplicas = primary.URL(), n
			benchDriverPublish(b, openDriver(b, cfg))
		})
	}
}

// benchDriverPublish publishes b.N encoded envelopes through d in batches of benchBatch.
func benchDriverPublish(b *testing.B, d *Driver) {
	_, bodies := benchEnvelopes(b, benchBatch)
	msgs := make([]driver.Message, len(bodies))
	for i := range msgs {
		msgs[i].Body = bodies[i]
	}
	ctx := context.Background()
	report := startClock(b)
	for i := 0; i < b.N; i += benchBatch {
		if _, err := d.Publish(ctx, "bench", msgs[:min(benchBatch, b.N-i)]); err != nil {
			b.Fatal(err)
		}
	}
	report(b.N)
}
