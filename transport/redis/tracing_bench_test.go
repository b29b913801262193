package redis

import (
	"context"
	"testing"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/transporttest"
)

// BenchmarkTracing is what tracing costs on Redis Streams (the package's redis-server):
// publish and consume+ack through a Bus with tracing off, and on at 1 trace in 100.
//
//	go test -run '^$' -bench Tracing -benchmem -count 5 -benchtime 20000x ./transport/redis/
func BenchmarkTracing(b *testing.B) {
	transporttest.BenchTracing(b, transport.Config{}, func(b *testing.B, cfg transport.Config) *transport.Bus {
		c := benchConfig(b) // a namespace of its own per trial
		c.TracerProvider = cfg.TracerProvider
		cleanupNS(b, rawClient(b, c.RedisURL), c.Namespace)
		bus, err := transport.Open(context.Background(), c)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = bus.Close() })
		return bus
	})
}
