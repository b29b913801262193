package transport_test

import (
	"math"
	"testing"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/inmem"
	"github.com/pulse-bus/pulse/transport/transporttest"
)

// BenchmarkTracing is what tracing costs the Bus on the in-process broker, where nothing else
// hides it: publish and consume+ack with tracing off, and on at 1 trace in 100. The broker
// retains every message consume-ack publishes beforehand (b.N of them; the default MaxLen
// would drop all but the newest 100,000 and leave the benchmark waiting for them).
//
//	go test -run '^$' -bench Tracing -benchmem -count 5 ./transport/
func BenchmarkTracing(b *testing.B) {
	transporttest.BenchTracing(b, transport.Config{Backend: inmem.Name}, func(b *testing.B, cfg transport.Config) *transport.Bus {
		bus, err := transport.New(inmem.New(inmem.NewBroker(inmem.BrokerOptions{MaxLen: math.MaxInt}), inmem.Options{}), cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = bus.Close() })
		return bus
	})
}
