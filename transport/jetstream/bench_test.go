package jetstream_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/jetstream"
)

// Run with a fixed count, e.g.
//
//	go test -run '^$' -bench . -benchtime 200000x ./transport/jetstream/
//
// Every benchmark uses the package's embedded server (file store) and streams of its own.
// Pulse and raw nats.go move the same bytes: a ~230-byte v1 FeedbackEvent envelope.

// Raw nats.go settings: what BACKEND-NOTES.md measured as the broker's best here.
const (
	rawMaxInFlight   = 4096
	rawPullMax       = 500
	rawMaxAckPending = 1000
)

// benchBatch is the Pulse publish batch and subscription batch size (the Bus default).
const benchBatch = transport.DefaultBatchSize

var benchSeq atomic.Int64

// benchNS returns a namespace of its own for one benchmark run.
func benchNS(kind string) string { return fmt.Sprintf("b%s%d", kind, benchSeq.Add(1)) }

func benchEnvelope(i int) *envelope.Envelope {
	key := fmt.Sprintf("coord-%d", i%16)
	p := fmt.Sprintf(`{"coordinator_id": %q, "queue_size": %d, "capacity": 100, "level": "soft", "source": "store", "ts": 1729263600.1}`, key, i%100)
	return &envelope.Envelope{Key: &key, Meta: envelope.Meta{SchemaID: "telemetry.FeedbackEvent", Headers: map[string]string{"reason": "high_watermark"}}, Payload: json.RawMessage(p)}
}

// benchBody is the wire form of one benchmark message.
func benchBody(b *testing.B) []byte {
	c := &envelope.Codec{Track: envelope.TrackV1}
	body, err := c.Encode(benchEnvelope(1))
	if err != nil {
		b.Fatal(err)
	}
	return body
}

func reportRate(b *testing.B, n int, d time.Duration) {
	b.ReportMetric(float64(n)/d.Seconds(), "msgs/s")
}

// BenchmarkPublish compares Bus.Publish (batches of envelopes encoded by the codec, each call
// waiting for its PubAcks; from one or several goroutines) with raw nats.go PublishAsync (4096
// in flight, one wait for all PubAcks at the end).
func BenchmarkPublish(b *testing.B) {
	srv := natsSrv.Server(b)
	for _, c := range []struct {
		batch, publishers int
		encoded           bool
	}{{benchBatch, 1, false}, {benchBatch, 4, false}, {benchBatch, 1, true}, {benchBatch, 4, true}} {
		name := "Publish"
		if c.encoded {
			name = "PublishRaw"
		}
		b.Run(fmt.Sprintf("pulse/%s/batch=%d/publishers=%d", name, c.batch, c.publishers), func(b *testing.B) {
			benchPulsePublish(b, srv.ClientURL(), c.batch, c.publishers, c.encoded)
		})
	}
	b.Run("raw", func(b *testing.B) {
		body := benchBody(b)
		nc, js := rawConn(b, srv.ClientURL())
		defer nc.Close()
		subject := rawStream(b, js, benchNS("rawpub"))
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			if _, err := js.PublishAsync(subject, body, natsjs.WithStallWait(5*time.Second)); err != nil {
				b.Fatal(err)
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(time.Minute):
			b.Fatal("PubAcks missing")
		}
		reportRate(b, b.N, time.Since(start))
	})
}

// benchPulsePublish publishes b.N messages through one Bus from publishers goroutines, each
// publishing batches of batch messages: envelopes with Bus.Publish (encoding included) or,
// when encoded, the benchmark's bytes with Bus.PublishRaw (what raw nats.go sends).
func benchPulsePublish(b *testing.B, url string, batch, publishers int, encoded bool) {
	bus := openBus(b, config(url, benchNS("pub")))
	ctx := context.Background()
	envs := make([]*envelope.Envelope, b.N)
	raws := make([]transport.RawMessage, b.N)
	body := benchBody(b)
	for i := range envs {
		envs[i] = benchEnvelope(i)
		raws[i] = transport.RawMessage{Body: body}
	}
	if err := bus.Publish(ctx, "bench", benchEnvelope(-1)); err != nil { // creates the stream
		b.Fatal(err)
	}
	var next atomic.Int64
	var g errgroup.Group
	b.ResetTimer()
	start := time.Now()
	for range publishers {
		g.Go(func() error {
			for {
				i := int(next.Add(int64(batch))) - batch
				if i >= b.N {
					return nil
				}
				j := min(i+batch, b.N)
				if encoded {
					if _, err := bus.PublishRaw(ctx, "bench", raws[i:j]...); err != nil {
						return err
					}
				} else if err := bus.Publish(ctx, "bench", envs[i:j]...); err != nil {
					return err
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	reportRate(b, b.N, time.Since(start))
}

// BenchmarkConsume compares a Bus subscription (decode, idempotency record, handler, one ack
// per delivery, batches of 256) with raw nats.go Consume on a durable pull consumer with
// explicit acks (PullMaxMessages 500, MaxAckPending 1000), both reading b.N messages published
// beforehand.
func BenchmarkConsume(b *testing.B) {
	srv := natsSrv.Server(b)
	b.Run("pulse", func(b *testing.B) {
		ns := benchNS("con")
		cfg := config(srv.ClientURL(), ns)
		prefill(b, srv.ClientURL(), ns, b.N)
		bus := openBus(b, cfg)
		var handled atomic.Int64
		done := make(chan struct{})
		b.ResetTimer()
		start := time.Now()
		sub, err := bus.Subscribe(context.Background(), "bench", func(context.Context, *transport.Delivery) error {
			if handled.Add(1) == int64(b.N) {
				close(done)
			}
			return nil
		}, transport.SubscribeOptions{})
		if err != nil {
			b.Fatal(err)
		}
		waitDone(b, done)
		reportRate(b, b.N, time.Since(start))
		b.StopTimer()
		sub.Close()
	})
	b.Run("raw", func(b *testing.B) {
		ns := benchNS("rawcon")
		prefill(b, srv.ClientURL(), ns, b.N)
		nc, js := rawConn(b, srv.ClientURL())
		defer nc.Close()
		ctx := context.Background()
		cons, err := js.CreateOrUpdateConsumer(ctx, jetstream.StreamName(ns, "bench"), natsjs.ConsumerConfig{
			Durable: "raw", AckPolicy: natsjs.AckExplicitPolicy, MaxAckPending: rawMaxAckPending,
		})
		if err != nil {
			b.Fatal(err)
		}
		var handled atomic.Int64
		done := make(chan struct{})
		b.ResetTimer()
		start := time.Now()
		cc, err := cons.Consume(func(m natsjs.Msg) {
			if err := m.Ack(); err != nil {
				b.Error(err)
			}
			if handled.Add(1) == int64(b.N) {
				close(done)
			}
		}, natsjs.PullMaxMessages(rawPullMax))
		if err != nil {
			b.Fatal(err)
		}
		waitDone(b, done)
		if err := nc.Flush(); err != nil {
			b.Fatal(err)
		}
		reportRate(b, b.N, time.Since(start))
		b.StopTimer()
		cc.Stop()
	})
}

// BenchmarkLatency measures publish → handle at a steady 1,000 msgs/s: each message is
// published on its own (Bus.Publish of one envelope, which waits for its PubAck) and the time
// from just before Publish to the start of the handler is recorded; b.N messages.
func BenchmarkLatency(b *testing.B) {
	srv := natsSrv.Server(b)
	bus := openBus(b, config(srv.ClientURL(), benchNS("lat")))
	ctx := context.Background()
	sent := make([]time.Time, b.N)
	lat := make([]time.Duration, b.N)
	var handled atomic.Int64
	done := make(chan struct{})
	sub, err := bus.Subscribe(ctx, "bench", func(_ context.Context, d *transport.Delivery) error {
		var p struct {
			QueueSize int `json:"queue_size"`
		}
		at := time.Now()
		if err := json.Unmarshal(d.Envelope.Payload, &p); err != nil {
			return err
		}
		lat[p.QueueSize] = at.Sub(sent[p.QueueSize])
		if handled.Add(1) == int64(b.N) {
			close(done)
		}
		return nil
	}, transport.SubscribeOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	b.ResetTimer()
	for i := range b.N {
		<-tick.C
		e := benchEnvelope(i)
		e.Payload = json.RawMessage(fmt.Sprintf(`{"coordinator_id": "c", "queue_size": %d, "capacity": 100000000, "level": "ok", "source": "store", "ts": 1.0}`, i))
		sent[i] = time.Now()
		if err := bus.Publish(ctx, "bench", e); err != nil {
			b.Fatal(err)
		}
	}
	waitDone(b, done)
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-µs")
}

func waitDone(b *testing.B, done <-chan struct{}) {
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatal("not every message was handled")
	}
}

func rawConn(b *testing.B, url string) (*nats.Conn, natsjs.JetStream) {
	nc, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	js, err := natsjs.New(nc, natsjs.WithPublishAsyncMaxPending(rawMaxInFlight))
	if err != nil {
		b.Fatal(err)
	}
	return nc, js
}

// rawStream creates the stream of logical stream "bench" in ns as the driver would and
// returns its subject.
func rawStream(b *testing.B, js natsjs.JetStream, ns string) string {
	subject := jetstream.Subject(ns, "bench")
	_, err := js.CreateOrUpdateStream(context.Background(), natsjs.StreamConfig{
		Name: jetstream.StreamName(ns, "bench"), Subjects: []string{subject}, Storage: natsjs.FileStorage,
	})
	if err != nil {
		b.Fatal(err)
	}
	return subject
}

// prefill stores n benchmark messages on logical stream "bench" of ns, outside the timer.
func prefill(b *testing.B, url, ns string, n int) {
	b.StopTimer()
	defer b.StartTimer()
	body := benchBody(b)
	nc, js := rawConn(b, url)
	defer nc.Close()
	subject := rawStream(b, js, ns)
	for range n {
		if _, err := js.PublishAsync(subject, body, natsjs.WithStallWait(5*time.Second)); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("prefill: PubAcks missing")
	}
}
