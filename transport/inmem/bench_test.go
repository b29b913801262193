package inmem_test

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/inmem"
)

// The benchmarks measure publish → consume → ack, one op per message, with a publisher and a
// consumer running at once (the workload of issue 2's goal: ≥ 2× Watermill GoChannel):
//
//	go test -run '^$' -bench . -benchtime 1000000x ./transport/inmem/
//
// They report msgs/s beside ns/op.

const benchBatch = 256

// benchBody is a 200-byte envelope as the v1 codec writes it.
func benchBody(b *testing.B) []byte {
	b.Helper()
	env := benchEnvelope()
	body, err := (&envelope.Codec{}).Encode(env)
	if err != nil {
		b.Fatal(err)
	}
	return body
}

// benchEnvelope returns an envelope whose v1 encoding is about 200 bytes.
func benchEnvelope() *envelope.Envelope {
	return &envelope.Envelope{
		Meta:    envelope.Meta{SchemaID: "bench.m"},
		Payload: json.RawMessage(`{"seq":123456}`),
	}
}

// BenchmarkDriver measures the driver alone: raw 200-byte messages published in batches of
// 256, received in batches of up to 256 and acked per batch.
func BenchmarkDriver(b *testing.B) {
	body := benchBody(b)
	drv := inmem.New(inmem.NewBroker(inmem.BrokerOptions{}), inmem.Options{})
	defer drv.Close()
	ctx := context.Background()
	sub, err := drv.Subscribe(ctx, "bench", driver.SubscribeOptions{
		Group: "g", Consumer: "c", AckWait: transport.DefaultAckWait, MaxDeliveries: 5, BatchSize: benchBatch,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	msgs := make([]driver.Message, benchBatch)
	for i := range msgs {
		msgs[i] = driver.Message{Body: body}
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	pubErr := make(chan error, 1)
	go func() {
		for left := b.N; left > 0; left -= benchBatch {
			if _, err := drv.Publish(ctx, "bench", msgs[:min(left, benchBatch)]); err != nil {
				pubErr <- err
				return
			}
		}
		pubErr <- nil
	}()
	for got := 0; got < b.N; {
		ds, err := sub.Receive(ctx, benchBatch)
		if err != nil {
			b.Fatal(err)
		}
		if err := sub.Ack(ctx, ds); err != nil {
			b.Fatal(err)
		}
		got += len(ds)
	}
	if err := <-pubErr; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkBus measures the whole path through transport.Bus: envelopes encoded and
// published in batches of 256, a subscription decoding each one, checking and recording its
// id in the idempotency record, calling a handler and acking per batch.
func BenchmarkBus(b *testing.B) {
	for _, track := range []envelope.Track{envelope.TrackV1, envelope.TrackV2} {
		b.Run(string(track), func(b *testing.B) { benchBus(b, track) })
	}
}

func benchBus(b *testing.B, track envelope.Track) {
	drv := inmem.New(inmem.NewBroker(inmem.BrokerOptions{}), inmem.Options{})
	bus, err := transport.New(drv, transport.Config{Backend: inmem.Name, Track: track})
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close()
	ctx := context.Background()
	var handled atomic.Int64
	done := make(chan struct{})
	n := int64(b.N)
	sub, err := bus.Subscribe(ctx, "bench", func(context.Context, *transport.Delivery) error {
		if handled.Add(1) == n {
			close(done)
		}
		return nil
	}, transport.SubscribeOptions{BatchSize: benchBatch})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	envs := make([]*envelope.Envelope, benchBatch)
	for i := range envs {
		envs[i] = benchEnvelope()
	}
	body, _ := bus.Codec().Encode(benchEnvelope())
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for left := b.N; left > 0; left -= benchBatch {
		batch := envs[:min(left, benchBatch)]
		for _, e := range batch {
			e.ID, e.TS = "", 0 // a new message each time
		}
		if err := bus.Publish(ctx, "bench", batch...); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
