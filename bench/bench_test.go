package bench

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/internal/redistest"
)

// The benchmarks measure the same trials as the pulsebench report, one contender at a time,
// with b.N messages (each benchmark op is one message). They report msgs/s, and the latency
// benchmarks p50/p99. Servers start on first use and stop in TestMain.
//
//	go test -run '^$' -bench . -benchtime 100000x ./        # everything
//	go test -run '^$' -bench 'Redis/pulse' -benchtime 100000x -cpuprofile cpu.out ./

var (
	redisSrv redistest.Shared
	natsOnce sync.Once
	natsSrv  *NATSServer
	natsErr  error

	clusterOnce sync.Once
	clusterSrv  *RedisCluster
	clusterErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	redisSrv.Stop()
	if natsSrv != nil {
		natsSrv.Stop()
	}
	if clusterSrv != nil {
		clusterSrv.Stop()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func benchEnv(b *testing.B) *Env {
	b.Helper()
	w, err := NewWorkload(envelope.DefaultTrack, DefaultMessageSize)
	if err != nil {
		b.Fatal(err)
	}
	return &Env{Work: w, Batch: DefaultBatch}
}

func redisEnv(b *testing.B) *Env {
	b.Helper()
	srv := redisSrv.Server(b)
	env := benchEnv(b)
	env.RedisAddr = srv.Addr()
	return env
}

func redisClusterEnv(b *testing.B) *Env {
	b.Helper()
	clusterOnce.Do(func() { clusterSrv, clusterErr = StartRedisCluster() })
	if clusterErr != nil {
		b.Fatal(clusterErr)
	}
	env := benchEnv(b)
	env.RedisCluster = clusterSrv
	return env
}

func natsEnv(b *testing.B) *Env {
	b.Helper()
	natsOnce.Do(func() { natsSrv, natsErr = StartNATS(context.Background()) })
	if natsErr != nil {
		b.Fatal(natsErr)
	}
	env := benchEnv(b)
	env.NATSURL = natsSrv.URL
	return env
}

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

var benchSeq int

func benchID(prefix string) string {
	benchSeq++
	return fmt.Sprintf("%s%db", prefix, benchSeq)
}

// BenchmarkInmem measures publish→handle→ack in process: Pulse's inmem bus beside Watermill's
// GoChannel.
func BenchmarkInmem(b *testing.B) {
	_, cs := inmemSection()
	for _, c := range cs {
		b.Run(shortName(c.Name), func(b *testing.B) {
			env := benchEnv(b)
			p, err := c.NewPipe(b.Context(), env, benchID("in"))
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			if _, err := env.Bodies(b.N); err != nil { // encode the raw contenders' bytes untimed
				b.Fatal(err)
			}
			if err := prepare(b.Context(), p, b.N); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			if err := p.Run(b.Context(), b.N); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			reportRate(b)
		})
	}
}

// BenchmarkRedis measures publish, and consume+ack of published messages, on Redis Streams.
func BenchmarkRedis(b *testing.B) {
	_, cs := redisSection()
	brokerBenchmarks(b, cs, redisEnv)
}

// BenchmarkRedisCluster measures publish, and consume+ack, on a three-master Redis Cluster.
func BenchmarkRedisCluster(b *testing.B) {
	_, cs := redisClusterSection()
	brokerBenchmarks(b, cs, redisClusterEnv)
}

// BenchmarkJetStream measures publish, consume+ack, and publish→handle latency at
// DefaultLatencyRate msgs/s, on JetStream.
func BenchmarkJetStream(b *testing.B) {
	_, cs := jetstreamSection()
	brokerBenchmarks(b, cs, natsEnv)
	for _, c := range cs {
		if c.NewLatency == nil {
			continue
		}
		b.Run(shortName(c.Name)+"/latency", func(b *testing.B) {
			env := natsEnv(b)
			lt, err := c.NewLatency(b.Context(), env, benchID("lat"))
			if err != nil {
				b.Fatal(err)
			}
			defer lt.Close()
			lats, err := lt.Latency(b.Context(), min(b.N, DefaultLatencyWarm), b.N, DefaultLatencyRate)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(lats.Percentile(50))/float64(time.Microsecond), "p50-µs")
			b.ReportMetric(float64(lats.Percentile(99))/float64(time.Microsecond), "p99-µs")
		})
	}
}

func brokerBenchmarks(b *testing.B, cs []*Contender, envOf func(*testing.B) *Env) {
	for _, c := range cs {
		b.Run(shortName(c.Name)+"/publish", func(b *testing.B) {
			env := envOf(b)
			t, err := c.NewTrial(b.Context(), env, benchID("pub"))
			if err != nil {
				b.Fatal(err)
			}
			defer t.Close()
			if _, err := env.Bodies(b.N); err != nil {
				b.Fatal(err)
			}
			if err := prepare(b.Context(), t, b.N); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			if err := t.Publish(b.Context(), 0, b.N); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			reportRate(b)
		})
		b.Run(shortName(c.Name)+"/consume", func(b *testing.B) {
			env := envOf(b)
			t, err := c.NewTrial(b.Context(), env, benchID("con"))
			if err != nil {
				b.Fatal(err)
			}
			defer t.Close()
			if err := prepare(b.Context(), t, b.N); err != nil {
				b.Fatal(err)
			}
			if err := t.Publish(b.Context(), 0, b.N); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			if err := t.Consume(b.Context(), b.N); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			reportRate(b)
		})
	}
}
