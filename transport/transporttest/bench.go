package transporttest

import (
	"context"
	"encoding/json"
	"runtime/pprof"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
)

// BenchTracing runs the tracing benchmarks on the Buses open returns (one per call, on one
// broker; cfg is the base configuration, to which each mode of TracingModes is applied):
//
//   - publish/<mode>: Bus.Publish of one ~200-byte envelope per call, b.N calls;
//   - consume-ack/<mode>: a subscription decoding, de-duplicating, handling and acking b.N
//     messages published (in the same mode, so they carry what that mode writes) beforehand,
//     timed from Subscribe until every one was handled and the subscription drained.
//
// Both report allocations; consume-ack also msgs/s and the client's CPU per message
// (cpu-ns/msg, see ProcessCPU), which varies less than msgs/s on a machine the broker shares.
func BenchTracing(b *testing.B, cfg transport.Config, open func(b *testing.B, cfg transport.Config) *transport.Bus) {
	for _, mode := range TracingModes() {
		b.Run("publish/"+mode.Name, func(b *testing.B) {
			c := cfg
			mode.Apply(b, &c)
			benchPublish(b, open(b, c))
		})
		b.Run("consume-ack/"+mode.Name, func(b *testing.B) {
			c := cfg
			mode.Apply(b, &c)
			benchConsumeAck(b, open(b, c))
		})
	}
}

// TracingMode is one tracing configuration the benchmarks compare.
type TracingMode struct {
	Name  string
	Apply func(b *testing.B, cfg *transport.Config)
}

const benchStream = "bench.tracing"

// benchEnvelope is a FeedbackEvent-sized envelope, new each call (Publish fills its id and ts).
func benchEnvelope() *envelope.Envelope {
	key := "coord-1"
	return &envelope.Envelope{
		Key:     &key,
		Meta:    envelope.Meta{SchemaID: "telemetry.FeedbackEvent"},
		Payload: json.RawMessage(`{"coordinator_id":"coord-1","queue_size":42,"capacity":100,"level":"soft","source":"store","ts":1760812345.6789}`),
	}
}

func benchPublish(b *testing.B, bus *transport.Bus) {
	ctx := context.Background()
	env := benchEnvelope()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		env.ID, env.TS = "", 0 // a new message each time
		if err := bus.Publish(ctx, benchStream, env); err != nil {
			b.Fatal(err)
		}
	}
}

func benchConsumeAck(b *testing.B, bus *transport.Bus) {
	ctx := context.Background()
	const batch = 256
	envs := make([]*envelope.Envelope, batch)
	for i := range envs {
		envs[i] = benchEnvelope()
	}
	for left := b.N; left > 0; left -= batch {
		part := envs[:min(left, batch)]
		for _, e := range part {
			e.ID, e.TS = "", 0
		}
		if err := bus.Publish(ctx, benchStream, part...); err != nil {
			b.Fatal(err)
		}
	}
	var handled atomic.Int64
	all := make(chan struct{})
	n := int64(b.N)
	b.ReportAllocs()
	cpu0 := ProcessCPU()
	b.ResetTimer()
	// The subscription's goroutines inherit the label: `pprof -tagfocus phase=consume` shows a
	// CPU profile's consume phase without the publishing before it.
	var sub *transport.Subscription
	var err error
	pprof.Do(ctx, pprof.Labels("phase", "consume"), func(ctx context.Context) {
		sub, err = bus.Subscribe(ctx, benchStream, func(context.Context, *transport.Delivery) error {
			if handled.Add(1) == n {
				close(all)
			}
			return nil
		}, transport.SubscribeOptions{BatchSize: batch})
	})
	if err != nil {
		b.Fatal(err)
	}
	select {
	case <-all:
	case <-time.After(5 * time.Minute):
		b.Fatalf("handled %d of %d", handled.Load(), b.N)
	}
	if err := sub.Close(); err != nil { // drains: the last acks are sent
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64((ProcessCPU()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/msg")
}

// ProcessCPU is the CPU time this process has used so far (user+system, all goroutines). A
// broker running as a child process is not in it.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
