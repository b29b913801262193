package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pulse-bus/pulse/transport"
	pulsejs "github.com/pulse-bus/pulse/transport/jetstream"
)

// Contender names of the JetStream section.
const (
	NamePulseJetStream          = "pulse jetstream"
	NameRawNATS                 = "raw nats.go"
	NameRawNATSPulsePull        = "raw nats.go, Pulse's pull"
	NameWatermillJetStream      = "watermill jetstream"
	NameWatermillJetStreamAsync = "watermill jetstream AckAsync"
)

// Settings of the raw nats.go contender: what BACKEND-NOTES.md measured as the broker's best
// here (PublishAsync with 4096 in flight; pull Consume with PullMaxMessages 500 and the
// default MaxAckPending 1000).
const (
	rawNATSMaxInFlight   = 4096
	rawNATSPullMax       = 500
	rawNATSMaxAckPending = 1000
)

func jetstreamSection() (*Section, []*Contender) {
	sec := &Section{
		Name:  SectionJetStream,
		Title: "JetStream, file store: publish n, then consume+ack the n (fresh stream and durable per trial); latency trials at a steady rate",
		Goals: []Goal{
			{Metric: MetricPublish, Versus: NameRawNATS, MinRatio: 0.9},
			{Metric: MetricConsume, Versus: NameRawNATS, MinRatio: 0.9},
			{Metric: MetricConsume, Versus: NameWatermillJetStream, MinRatio: 3},
			{Metric: MetricP99, MaxLatency: 2 * time.Millisecond},
		},
	}
	wm := func(async bool) func(ctx context.Context, env *Env, id string) (*watermillJSTrial, error) {
		return func(ctx context.Context, env *Env, id string) (*watermillJSTrial, error) {
			return newWatermillJSTrial(ctx, env, id, async)
		}
	}
	return sec, []*Contender{
		{Name: NamePulseJetStream, Pulse: true,
			NewTrial:   asTrial(newPulseJetStreamTrial),
			NewLatency: asLatency(newPulseJetStreamTrial)},
		{Name: NameRawNATS,
			NewTrial:   asTrial(newRawNATSTrial),
			NewLatency: asLatency(newRawNATSTrial)},
		{Name: NameWatermillJetStream,
			NewTrial:   asTrial(wm(false)),
			NewLatency: asLatency(wm(false))},
		{Name: NameWatermillJetStreamAsync,
			NewTrial: asTrial(wm(true))},
	}
}

// asTrial and asLatency adapt a constructor of a type that is both a Trial and a LatencyTrial.
func asTrial[T Trial](f func(context.Context, *Env, string) (T, error)) func(context.Context, *Env, string) (Trial, error) {
	return func(ctx context.Context, env *Env, id string) (Trial, error) {
		t, err := f(ctx, env, id)
		if err != nil {
			return nil, err
		}
		return t, nil
	}
}

func asLatency[T LatencyTrial](f func(context.Context, *Env, string) (T, error)) func(context.Context, *Env, string) (LatencyTrial, error) {
	return func(ctx context.Context, env *Env, id string) (LatencyTrial, error) {
		t, err := f(ctx, env, id)
		if err != nil {
			return nil, err
		}
		return t, nil
	}
}

// natsAdmin is a connection for creating, inspecting and deleting streams.
func natsAdmin(url string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url, nats.Name("pulsebench-admin"))
	if err != nil {
		return nil, nil, fmt.Errorf("bench: connect to %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("bench: jetstream: %w", err)
	}
	return nc, js, nil
}

// natsAllAcked waits until every consumer of stream has nothing pending and nothing
// unacknowledged.
func natsAllAcked(ctx context.Context, js jetstream.JetStream, stream string) error {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("bench: stream %s: %w", stream, err)
	}
	return waitFor(ctx, ackPollInterval, func(ctx context.Context) (bool, error) {
		lister := s.ListConsumers(ctx)
		done := true
		for ci := range lister.Info() {
			if ci.NumAckPending > 0 || ci.NumPending > 0 {
				done = false
			}
		}
		if err := lister.Err(); err != nil {
			return false, fmt.Errorf("bench: consumers of %s: %w", stream, err)
		}
		return done, nil
	})
}

// deleteNATSStreams deletes every stream whose name contains marker.
func deleteNATSStreams(ctx context.Context, url, marker string) error {
	nc, js, err := natsAdmin(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	names := js.StreamNames(ctx)
	var del []string
	for name := range names.Name() {
		if strings.Contains(name, marker) {
			del = append(del, name)
		}
	}
	errs := []error{names.Err()}
	for _, name := range del {
		errs = append(errs, js.DeleteStream(ctx, name))
	}
	return errors.Join(errs...)
}

func newPulseJetStreamTrial(ctx context.Context, env *Env, id string) (*pulseTrial, error) {
	ns := namespaceFor(id)
	bus, err := openPulse(ctx, env, transport.Config{Backend: "jetstream", Namespace: ns, NATSURL: env.NATSURL})
	if err != nil {
		return nil, err
	}
	// The same in-flight window as the raw client (rawNATSMaxInFlight messages), in batches.
	return &pulseTrial{bus: bus, env: env, inFlight: max(1, rawNATSMaxInFlight/env.Batch), cleanup: func(ctx context.Context) error {
		return deleteNATSStreams(ctx, env.NATSURL, strings.ToUpper(ns)+"_")
	}}, nil
}

// rawNATSTrial is what a careful hand-written nats.go client does: PublishAsync with at most
// rawNATSMaxInFlight unacknowledged, every PubAck checked; a durable pull consumer with
// explicit acks, consumed with Consume (PullMaxMessages rawNATSPullMax).
type rawNATSTrial struct {
	env *Env
	// pullMax and maxAckPending are the consumer's settings (rawNATSPullMax and
	// rawNATSMaxAckPending, unless newRawNATSPulsePullTrial set Pulse's).
	pullMax, maxAckPending int
	nc                     *nats.Conn
	js                     jetstream.JetStream
	stream                 jetstream.Stream
	name                   string
	subject                string
	pubErrs                atomic.Int64
	lastErr                atomic.Value
	tallied
}

func newRawNATSTrial(ctx context.Context, env *Env, id string) (*rawNATSTrial, error) {
	t := &rawNATSTrial{env: env, pullMax: rawNATSPullMax, maxAckPending: rawNATSMaxAckPending,
		name: "RAW_" + strings.ToUpper(id), subject: "raw." + id}
	nc, err := nats.Connect(env.NATSURL, nats.Name("pulsebench-raw"))
	if err != nil {
		return nil, fmt.Errorf("bench: connect: %w", err)
	}
	t.nc = nc
	t.js, err = jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(rawNATSMaxInFlight),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			t.pubErrs.Add(1)
			t.lastErr.Store(err)
		}))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("bench: jetstream: %w", err)
	}
	t.stream, err = t.js.CreateStream(ctx, benchStreamConfig(t.name, t.subject))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("bench: create stream %s: %w", t.name, err)
	}
	return t, nil
}

// newRawNATSPulsePullTrial is the raw client consuming with the pull size and MaxAckPending
// that Pulse's subscription asks for at the run's batch size, so that the report also
// compares the clients at equal settings (the pull size moves the server's cost per message
// as much as the client's).
func newRawNATSPulsePullTrial(ctx context.Context, env *Env, id string) (*rawNATSTrial, error) {
	t, err := newRawNATSTrial(ctx, env, id)
	if err != nil {
		return nil, err
	}
	t.pullMax, t.maxAckPending = pulsejs.PullSizes(env.Batch)
	return t, nil
}

func (t *rawNATSTrial) publishErr() error {
	if n := t.pubErrs.Load(); n > 0 {
		return fmt.Errorf("bench: %d async publishes failed, last: %v", n, t.lastErr.Load())
	}
	return nil
}

// publishAsync publishes body without per-message options (any option makes nats.go allocate
// option state and a header map per message), trying again while the in-flight window stays
// full for longer than the default stall wait (200 ms), as Pulse's driver does.
func (t *rawNATSTrial) publishAsync(ctx context.Context, body []byte) error {
	for {
		_, err := t.js.PublishAsync(t.subject, body)
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) || ctx.Err() != nil {
			return err
		}
	}
}

func (t *rawNATSTrial) Publish(ctx context.Context, lo, hi int) error {
	bodies, err := t.env.Bodies(hi)
	if err != nil {
		return err
	}
	for i := lo; i < hi; i++ {
		if err := t.publishAsync(ctx, bodies[i]); err != nil {
			return fmt.Errorf("bench: publish async: %w", err)
		}
	}
	select {
	case <-t.js.PublishAsyncComplete():
	case <-ctx.Done():
		return ctx.Err()
	}
	return t.publishErr()
}

func (t *rawNATSTrial) consume(ctx context.Context, fn func(b []byte)) (jetstream.ConsumeContext, error) {
	cons, err := t.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: t.maxAckPending,
	})
	if err != nil {
		return nil, fmt.Errorf("bench: create consumer: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		fn(m.Data())
		m.Ack()
	}, jetstream.PullMaxMessages(t.pullMax))
	if err != nil {
		return nil, fmt.Errorf("bench: consume: %w", err)
	}
	return cc, nil
}

func (t *rawNATSTrial) Consume(ctx context.Context, n int) error {
	t.tal = newTally(n)
	cc, err := t.consume(ctx, t.tal.add)
	if err != nil {
		return err
	}
	defer cc.Stop()
	if err := t.tal.wait(ctx); err != nil {
		return err
	}
	return natsAllAcked(ctx, t.js, t.name)
}

func (t *rawNATSTrial) Latency(ctx context.Context, warm, n int, rate float64) (Latencies, error) {
	bodies, err := t.env.Bodies(warm + n)
	if err != nil {
		return nil, err
	}
	lat, err := measureLatency(ctx, warm, n, rate, func(received func([]byte)) (func(), error) {
		cc, err := t.consume(ctx, received)
		if err != nil {
			return nil, err
		}
		return cc.Stop, nil
	}, func(seq int, sent func()) error {
		sent()
		return t.publishAsync(ctx, bodies[seq])
	})
	if err != nil {
		return nil, err
	}
	return lat, t.publishErr()
}

func (t *rawNATSTrial) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := t.js.DeleteStream(ctx, t.name)
	t.nc.Close()
	return err
}

// watermillJSTrial is Watermill's nats jetstream publisher and subscriber with their defaults
// (synchronous publish; an ephemeral consumer per subscription; each ack confirmed by the
// server before the next message, unless async) and a no-op logger. Its stream is created by
// SubscribeInitialize, as Watermill does it (file storage).
type watermillJSTrial struct {
	env     *Env
	async   bool
	topic   string
	pub     *wmjs.Publisher
	sub     *wmjs.Subscriber
	adminNC *nats.Conn
	adminJS jetstream.JetStream
	tallied
}

func newWatermillJSTrial(_ context.Context, env *Env, id string, async bool) (*watermillJSTrial, error) {
	t := &watermillJSTrial{env: env, async: async, topic: "wm_" + id}
	var err error
	if t.adminNC, t.adminJS, err = natsAdmin(env.NATSURL); err != nil {
		return nil, err
	}
	t.pub, err = wmjs.NewPublisher(wmjs.PublisherConfig{URL: env.NATSURL, Logger: watermill.NopLogger{}})
	if err != nil {
		t.adminNC.Close()
		return nil, fmt.Errorf("bench: watermill jetstream publisher: %w", err)
	}
	t.sub, err = wmjs.NewSubscriber(wmjs.SubscriberConfig{URL: env.NATSURL, Logger: watermill.NopLogger{}, AckAsync: async})
	if err != nil {
		t.pub.Close()
		t.adminNC.Close()
		return nil, fmt.Errorf("bench: watermill jetstream subscriber: %w", err)
	}
	if err := t.sub.SubscribeInitialize(t.topic); err != nil {
		t.Close()
		return nil, fmt.Errorf("bench: watermill jetstream stream: %w", err)
	}
	return t, nil
}

func (t *watermillJSTrial) Publish(ctx context.Context, lo, hi int) error {
	bodies, err := t.env.Bodies(hi)
	if err != nil {
		return err
	}
	return publishWatermill(ctx, t.pub, t.topic, bodies[lo:hi], t.env.Batch, "watermill jetstream")
}

// subscribe runs fn on every message's payload and acks it, until the returned stop is
// called.
func (t *watermillJSTrial) subscribe(ctx context.Context, fn func([]byte)) (stop func(), err error) {
	return subscribeWatermill(ctx, t.sub, t.topic, fn, "watermill jetstream")
}

func (t *watermillJSTrial) Consume(ctx context.Context, n int) error {
	t.tal = newTally(n)
	stop, err := t.subscribe(ctx, t.tal.add)
	if err != nil {
		return err
	}
	defer stop()
	if err := t.tal.wait(ctx); err != nil {
		return err
	}
	return natsAllAcked(ctx, t.adminJS, t.topic)
}

func (t *watermillJSTrial) Latency(ctx context.Context, warm, n int, rate float64) (Latencies, error) {
	bodies, err := t.env.Bodies(warm + n)
	if err != nil {
		return nil, err
	}
	return measureLatency(ctx, warm, n, rate, func(received func([]byte)) (func(), error) {
		return t.subscribe(ctx, received)
	}, func(seq int, sent func()) error {
		m := message.NewMessage(watermill.NewUUID(), bodies[seq])
		sent()
		return t.pub.Publish(t.topic, m)
	})
}

func (t *watermillJSTrial) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errs := []error{t.sub.Close(), t.pub.Close()}
	if err := t.adminJS.DeleteStream(ctx, t.topic); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		errs = append(errs, err)
	}
	t.adminNC.Close()
	return errors.Join(errs...)
}
