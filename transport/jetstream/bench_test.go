package jetstream_test

import (
	"context"
	"encoding/json"
	"errors"
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
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/jetstream"
)

// Run with a fixed count of messages per trial, e.g.
//
//	go test -run '^$' -bench 'Publish|Consume|VsRaw' -benchtime 100000x ./transport/jetstream/
//	go test -run '^$' -bench Latency -benchtime 5000x ./transport/jetstream/
//
// Every trial uses the package's embedded server (file store) and a stream of its own, deleted
// afterwards. Pulse and raw nats.go move the same bytes: a ~230-byte v1 FeedbackEvent
// envelope. The machine is shared: compare Pulse with raw nats.go through BenchmarkVsRaw,
// which interleaves their trials and reports medians.

// Raw nats.go settings: what BACKEND-NOTES.md measured as the broker's best here.
const (
	rawMaxInFlight   = 4096
	rawPullMax       = 500
	rawMaxAckPending = 1000
)

// benchBatch is the Pulse publish batch and subscription batch size (the Bus default).
const benchBatch = transport.DefaultBatchSize

var benchSeq atomic.Int64

// benchNS returns a namespace of its own for one trial.
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

// publishMode is how a Pulse publish trial publishes.
type publishMode struct {
	batch, publishers int
	// raw publishes the encoded bytes with Bus.PublishRaw (what raw nats.go sends); otherwise
	// envelopes with Bus.Publish, encoding included.
	raw bool
}

func (m publishMode) String() string {
	call := "Publish"
	if m.raw {
		call = "PublishRaw"
	}
	return fmt.Sprintf("%s/batch=%d/publishers=%d", call, m.batch, m.publishers)
}

var publishModes = []publishMode{
	{batch: benchBatch, publishers: 1},
	{batch: benchBatch, publishers: 4},
	{batch: benchBatch, publishers: 1, raw: true},
	{batch: benchBatch, publishers: 4, raw: true},
}

// BenchmarkPublish measures Bus.Publish / Bus.PublishRaw (each call waiting for its PubAcks;
// from one or several goroutines) and raw nats.go PublishAsync (4096 in flight, one wait for
// every PubAck at the end), b.N messages each.
func BenchmarkPublish(b *testing.B) {
	url := natsSrv.Server(b).ClientURL()
	for _, m := range publishModes {
		b.Run("pulse/"+m.String(), func(b *testing.B) { reportRate(b, pulsePublishTrial(b, url, b.N, m)) })
	}
	b.Run("raw", func(b *testing.B) { reportRate(b, rawPublishTrial(b, url, b.N)) })
}

// BenchmarkConsume measures a Bus subscription (decode, idempotency record, handler, one ack
// per delivery, batches of 256), the driver alone (Receive and Ack batches of 256), and raw
// nats.go Consume on a durable pull consumer with explicit acks (PullMaxMessages 500,
// MaxAckPending 1000), each reading b.N messages published beforehand.
func BenchmarkConsume(b *testing.B) {
	url := natsSrv.Server(b).ClientURL()
	b.Run("pulse", func(b *testing.B) { reportRate(b, pulseConsumeTrial(b, url, b.N)) })
	b.Run("pulse-driver", func(b *testing.B) { reportRate(b, driverConsumeTrial(b, url, b.N)) })
	b.Run("raw", func(b *testing.B) { reportRate(b, rawConsumeTrial(b, url, b.N)) })
}

// vsRawTrials is how many interleaved trial pairs BenchmarkVsRaw runs.
const vsRawTrials = 7

// BenchmarkVsRaw interleaves Pulse and raw nats.go trials of b.N messages (vsRawTrials pairs,
// so that load from elsewhere hits both alike) and reports the medians and the median ratio
// Pulse/raw, for publish (Bus.Publish and Bus.PublishRaw, one publisher and four) and for
// consume+ack (through a Bus, and straight from the driver to isolate the transport from the
// Bus's decoding and idempotency record).
func BenchmarkVsRaw(b *testing.B) {
	url := natsSrv.Server(b).ClientURL()
	for _, m := range publishModes {
		b.Run("publish/"+m.String(), func(b *testing.B) {
			reportVs(b, func() float64 { return pulsePublishTrial(b, url, b.N, m) }, func() float64 { return rawPublishTrial(b, url, b.N) })
		})
	}
	b.Run("consume/bus", func(b *testing.B) {
		reportVs(b, func() float64 { return pulseConsumeTrial(b, url, b.N) }, func() float64 { return rawConsumeTrial(b, url, b.N) })
	})
	b.Run("consume/driver", func(b *testing.B) {
		reportVs(b, func() float64 { return driverConsumeTrial(b, url, b.N) }, func() float64 { return rawConsumeTrial(b, url, b.N) })
	})
}

func reportVs(b *testing.B, pulse, raw func() float64) {
	var ps, rs, ratios []float64
	for range vsRawTrials {
		p, r := pulse(), raw()
		ps, rs, ratios = append(ps, p), append(rs, r), append(ratios, p/r)
	}
	b.ReportMetric(median(ps), "pulse-msgs/s")
	b.ReportMetric(median(rs), "raw-msgs/s")
	b.ReportMetric(median(ratios), "pulse/raw")
	b.ReportMetric(0, "ns/op")
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

func reportRate(b *testing.B, rate float64) { b.ReportMetric(rate, "msgs/s") }

// pulsePublishTrial publishes n messages through a new Bus as m says and returns msgs/s.
func pulsePublishTrial(b *testing.B, url string, n int, m publishMode) float64 {
	b.StopTimer()
	ns := benchNS("pub")
	bus := openBus(b, config(url, ns))
	defer deleteStream(b, url, ns)
	ctx := context.Background()
	envs := make([]*envelope.Envelope, n)
	raws := make([]driver.Message, n)
	body := benchBody(b)
	for i := range envs {
		envs[i] = benchEnvelope(i)
		raws[i] = driver.Message{Body: body}
	}
	if err := bus.Publish(ctx, "bench", benchEnvelope(-1)); err != nil { // creates the stream
		b.Fatal(err)
	}
	var next atomic.Int64
	var g errgroup.Group
	elapsed := startTrial(b)
	for range m.publishers {
		g.Go(func() error {
			for {
				i := int(next.Add(int64(m.batch))) - m.batch
				if i >= n {
					return nil
				}
				j := min(i+m.batch, n)
				if m.raw {
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
	return float64(n) / elapsed().Seconds()
}

// rawPublishTrial publishes n messages with raw nats.go and returns msgs/s.
func rawPublishTrial(b *testing.B, url string, n int) float64 {
	b.StopTimer()
	ns := benchNS("rawpub")
	body := benchBody(b)
	nc, js := rawConn(b, url)
	defer nc.Close()
	subject := rawStream(b, js, ns)
	defer deleteStream(b, url, ns)
	elapsed := startTrial(b)
	rawPublishN(b, js, subject, body, n, "PubAcks missing")
	return float64(n) / elapsed().Seconds()
}

// pulseConsumeTrial has a new Bus consume n prefilled messages and returns msgs/s, timed from
// Subscribe to the last handler call.
func pulseConsumeTrial(b *testing.B, url string, n int) float64 {
	b.StopTimer()
	ns := benchNS("con")
	prefill(b, url, ns, n)
	defer deleteStream(b, url, ns)
	bus := openBus(b, config(url, ns))
	handled, done := countTo(n)
	elapsed := startTrial(b)
	sub, err := bus.Subscribe(context.Background(), "bench", func(context.Context, *transport.Delivery) error {
		handled()
		return nil
	}, transport.SubscribeOptions{})
	if err != nil {
		b.Fatal(err)
	}
	waitDone(b, done)
	rate := float64(n) / elapsed().Seconds()
	sub.Close()
	return rate
}

// driverConsumeTrial consumes and acks n prefilled messages straight from the driver
// (Receive batches of 256, Ack each batch; no decoding, no Bus) and returns msgs/s.
func driverConsumeTrial(b *testing.B, url string, n int) float64 {
	b.StopTimer()
	ns := benchNS("drvcon")
	prefill(b, url, ns, n)
	defer deleteStream(b, url, ns)
	d, err := jetstream.Open(context.Background(), config(url, ns))
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	elapsed := startTrial(b)
	sub, err := d.Subscribe(ctx, "bench", driver.SubscribeOptions{Group: "g", AckWait: 30 * time.Second, BatchSize: benchBatch})
	if err != nil {
		b.Fatal(err)
	}
	got := 0
	for got < n {
		batch, err := sub.Receive(ctx, benchBatch)
		if err != nil {
			b.Fatal(err)
		}
		got += len(batch)
		if err := sub.Ack(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	rate := float64(n) / elapsed().Seconds()
	sub.Close()
	return rate
}

// rawConsumeTrial consumes and acks n prefilled messages with raw nats.go and returns msgs/s.
func rawConsumeTrial(b *testing.B, url string, n int) float64 {
	b.StopTimer()
	ns := benchNS("rawcon")
	prefill(b, url, ns, n)
	defer deleteStream(b, url, ns)
	nc, js := rawConn(b, url)
	defer nc.Close()
	cons := rawConsumer(b, js, ns)
	handled, done := countTo(n)
	elapsed := startTrial(b)
	cc, err := cons.Consume(func(m natsjs.Msg) {
		if err := m.Ack(); err != nil {
			b.Error(err)
		}
		handled()
	}, natsjs.PullMaxMessages(rawPullMax))
	if err != nil {
		b.Fatal(err)
	}
	waitDone(b, done)
	rate := float64(n) / elapsed().Seconds()
	cc.Stop()
	return rate
}

// BenchmarkLatency measures publish → handle at a steady 1,000 msgs/s: each message is
// published on its own, with a Bus (Bus.Publish of one envelope, waiting for its PubAck, to a
// Bus subscription) and with raw nats.go (PublishAsync, consumed by a durable pull Consume),
// and the time from just before the publish to the start of the handler is recorded; b.N
// messages.
func BenchmarkLatency(b *testing.B) {
	url := natsSrv.Server(b).ClientURL()
	b.Run("pulse", func(b *testing.B) {
		bus := openBus(b, config(url, benchNS("lat")))
		ctx := context.Background()
		lat := newLatencies(b.N)
		sub, err := bus.Subscribe(ctx, "bench", func(_ context.Context, d *transport.Delivery) error {
			at := time.Now()
			var p struct {
				QueueSize int `json:"queue_size"`
			}
			if err := json.Unmarshal(d.Envelope.Payload, &p); err != nil {
				return err
			}
			lat.handled(p.QueueSize, at)
			return nil
		}, transport.SubscribeOptions{})
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Close()
		lat.run(b, func(i int) error {
			e := benchEnvelope(i)
			e.Payload = json.RawMessage(fmt.Sprintf(`{"coordinator_id": "c", "queue_size": %d, "capacity": 1000000000, "level": "ok", "source": "store", "ts": 1.0}`, i))
			return bus.Publish(ctx, "bench", e)
		})
	})
	b.Run("raw", func(b *testing.B) {
		ns := benchNS("rawlat")
		nc, js := rawConn(b, url)
		defer nc.Close()
		subject := rawStream(b, js, ns)
		defer deleteStream(b, url, ns)
		cons := rawConsumer(b, js, ns)
		lat := newLatencies(b.N)
		cc, err := cons.Consume(func(m natsjs.Msg) {
			at := time.Now()
			meta, err := m.Metadata()
			if err != nil {
				b.Error(err)
				return
			}
			_ = m.Ack()
			lat.handled(int(meta.Sequence.Stream)-1, at)
		}, natsjs.PullMaxMessages(rawPullMax))
		if err != nil {
			b.Fatal(err)
		}
		defer cc.Stop()
		body := benchBody(b)
		lat.run(b, func(int) error {
			f, err := js.PublishAsync(subject, body)
			if err != nil {
				return err
			}
			select {
			case <-f.Ok():
				return nil
			case err := <-f.Err():
				return err
			}
		})
	})
}

// latencies records publish → handle times of n messages published one per millisecond.
type latencies struct {
	sent  []time.Time
	lat   []time.Duration
	count atomic.Int64
	done  chan struct{}
}

func newLatencies(n int) *latencies {
	return &latencies{sent: make([]time.Time, n), lat: make([]time.Duration, n), done: make(chan struct{})}
}

// handled records message i as handled at.
func (l *latencies) handled(i int, at time.Time) {
	l.lat[i] = at.Sub(l.sent[i])
	if l.count.Add(1) == int64(len(l.lat)) {
		close(l.done)
	}
}

// run publishes message i with publish once per millisecond, waits for all, and reports p50,
// p99 and max.
func (l *latencies) run(b *testing.B, publish func(i int) error) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	b.ResetTimer()
	for i := range l.sent {
		<-tick.C
		l.sent[i] = time.Now()
		if err := publish(i); err != nil {
			b.Fatal(err)
		}
	}
	waitDone(b, l.done)
	b.StopTimer()
	slices.Sort(l.lat)
	n := len(l.lat)
	b.ReportMetric(float64(l.lat[n/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(l.lat[n*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(l.lat[n-1].Microseconds()), "max-µs")
	b.ReportMetric(0, "ns/op")
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
	// The limits Pulse's streams have by default, so both contenders ask the same of the server.
	_, err := js.CreateOrUpdateStream(context.Background(), natsjs.StreamConfig{
		Name: jetstream.StreamName(ns, "bench"), Subjects: []string{subject}, Storage: natsjs.FileStorage,
		MaxAge: transport.DefaultStreamMaxAge, Duplicates: jetstream.DefaultDuplicateWindow, AllowDirect: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	return subject
}

// deleteStream removes the stream of logical stream "bench" in ns (the test server's store is
// small).
func deleteStream(b *testing.B, url, ns string) {
	nc, js := rawConn(b, url)
	defer nc.Close()
	if err := js.DeleteStream(context.Background(), jetstream.StreamName(ns, "bench")); err != nil {
		b.Error(err)
	}
}

// prefill stores n benchmark messages on logical stream "bench" of ns.
func prefill(b *testing.B, url, ns string, n int) {
	body := benchBody(b)
	nc, js := rawConn(b, url)
	defer nc.Close()
	subject := rawStream(b, js, ns)
	rawPublishN(b, js, subject, body, n, "prefill: PubAcks missing")
}

// rawPublishN publishes body n times to subject with PublishAsync (at most rawMaxInFlight
// unacknowledged) and waits up to a minute for every PubAck; missing ones fail b with
// missing.
func rawPublishN(b *testing.B, js natsjs.JetStream, subject string, body []byte, n int, missing string) {
	for range n {
		// No per-message options (they cost an allocation or two each); a window that stays
		// full past the default stall wait is waited out, as Pulse's driver does.
		_, err := js.PublishAsync(subject, body)
		for errors.Is(err, natsjs.ErrTooManyStalledMsgs) {
			_, err = js.PublishAsync(subject, body)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal(missing)
	}
}

// rawConsumer is the raw contender's durable pull consumer on logical stream "bench" of ns:
// explicit acks, MaxAckPending rawMaxAckPending.
func rawConsumer(b *testing.B, js natsjs.JetStream, ns string) natsjs.Consumer {
	cons, err := js.CreateOrUpdateConsumer(context.Background(), jetstream.StreamName(ns, "bench"), natsjs.ConsumerConfig{
		Durable: "raw", AckPolicy: natsjs.AckExplicitPolicy, MaxAckPending: rawMaxAckPending,
	})
	if err != nil {
		b.Fatal(err)
	}
	return cons
}

// startTrial starts the benchmark timer (a trial sets up with it stopped) and a wall clock;
// elapsed stops the timer and returns the time since the start.
func startTrial(b *testing.B) (elapsed func() time.Duration) {
	b.StartTimer()
	start := time.Now()
	return func() time.Duration {
		d := time.Since(start)
		b.StopTimer()
		return d
	}
}

// countTo returns handled, to be called once per handled message from any goroutine, and
// done, closed when handled has been called n times.
func countTo(n int) (handled func(), done <-chan struct{}) {
	var count atomic.Int64
	ch := make(chan struct{})
	return func() {
		if count.Add(1) == int64(n) {
			close(ch)
		}
	}, ch
}
