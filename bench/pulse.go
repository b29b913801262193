package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// Pulse contenders open their bus by backend name through the registry, as an application
// does; drivers.go imports the driver packages. A backend that is not registered makes its
// contender unavailable rather than breaking the build.

// pulseStream is the logical stream every Pulse trial uses (its namespace is per trial).
const pulseStream = "bench.events"

// pulseGroup and pulseConsumer name the subscription of every Pulse trial.
const (
	pulseGroup    = "bench"
	pulseConsumer = "bench_c1"
)

// ackPollInterval is how often a consume phase checks that the broker has every ack.
const ackPollInterval = time.Millisecond

func openPulse(ctx context.Context, env *Env, cfg transport.Config) (*transport.Bus, error) {
	cfg.Track = env.Work.Codec().Track
	cfg.BatchSize = env.Batch
	bus, err := transport.Open(ctx, cfg)
	if errors.Is(err, transport.ErrUnknownBackend) {
		return nil, fmt.Errorf("%w: backend %q is not registered in this build (%v)", ErrUnavailable, cfg.Backend, err)
	}
	if err != nil {
		return nil, fmt.Errorf("bench: open pulse %s: %w", cfg.Backend, err)
	}
	return bus, nil
}

// pulseEnvelopes builds envelopes 0..n-1, fresh ones (Encode writes ids and timestamps into
// them), before the timed phase: the raw contenders' bytes are made beforehand too.
func pulseEnvelopes(env *Env, n int) []*envelope.Envelope {
	envs := make([]*envelope.Envelope, n)
	for i := range envs {
		envs[i] = env.Work.Envelope(i)
	}
	return envs
}

// pulsePublish publishes envs in batches of env.Batch; the bus encodes them.
func pulsePublish(ctx context.Context, bus *transport.Bus, env *Env, stream string, envs []*envelope.Envelope) error {
	for i := 0; i < len(envs); i += env.Batch {
		if err := bus.Publish(ctx, stream, envs[i:min(len(envs), i+env.Batch)]...); err != nil {
			return err
		}
	}
	return nil
}

// pulseConsume subscribes, waits until all n messages were handled, then until the broker
// reports nothing pending for the group (when the driver can tell), and closes the
// subscription.
func pulseConsume(ctx context.Context, bus *transport.Bus, env *Env, stream string, n int, tal *tally) error {
	sub, err := bus.Subscribe(ctx, stream, func(_ context.Context, d *transport.Delivery) error {
		tal.add(d.Envelope.Payload)
		return nil
	}, transport.SubscribeOptions{Group: pulseGroup, Consumer: pulseConsumer, BatchSize: env.Batch})
	if err != nil {
		return err
	}
	defer sub.Close()
	if err := tal.wait(ctx); err != nil {
		return err
	}
	return pulseAcked(ctx, bus, stream)
}

// pulseAcked waits until the driver reports no pending deliveries for the bench group, if the
// driver implements driver.StreamAdmin.
func pulseAcked(ctx context.Context, bus *transport.Bus, stream string) error {
	adm, ok := bus.Driver().(driver.StreamAdmin)
	if !ok {
		return nil
	}
	return waitFor(ctx, ackPollInterval, func(ctx context.Context) (bool, error) {
		info, err := adm.Info(ctx, stream, pulseGroup)
		if err != nil {
			return false, fmt.Errorf("bench: stream info: %w", err)
		}
		return info.Pending == 0, nil
	})
}

// pulseTrial is Pulse on a broker: a fresh namespace per trial, so every stream and group is
// new; cleanup removes what the trial created.
type pulseTrial struct {
	bus *transport.Bus
	// inFlight > 1 publishes through a transport.AsyncPublisher with that many batches
	// awaiting the broker (to match a raw client's async window); otherwise Bus.Publish, one
	// batch at a time (to match a raw client's synchronous pipelines).
	inFlight int
	env      *Env
	envs     []*envelope.Envelope
	tallied
	cleanup func(context.Context) error
}

func (t *pulseTrial) Prepare(_ context.Context, n int) error {
	t.envs = pulseEnvelopes(t.env, n)
	return nil
}

// Publish publishes the prepared envelopes lo..hi-1 (Prepare must have been called).
func (t *pulseTrial) Publish(ctx context.Context, lo, hi int) error {
	if hi > len(t.envs) {
		return fmt.Errorf("bench: pulse trial publishes %d..%d but prepared %d envelopes", lo, hi, len(t.envs))
	}
	if t.inFlight > 1 {
		return pulsePublishAsync(ctx, t.bus, t.env, pulseStream, t.envs[lo:hi], t.inFlight)
	}
	return pulsePublish(ctx, t.bus, t.env, pulseStream, t.envs[lo:hi])
}

// pulsePublishAsync publishes envs in batches of env.Batch with up to inFlight batches
// awaiting the broker, and returns once every one is confirmed.
func pulsePublishAsync(ctx context.Context, bus *transport.Bus, env *Env, stream string, envs []*envelope.Envelope, inFlight int) error {
	p, err := bus.NewAsyncPublisher(stream, inFlight)
	if err != nil {
		return err
	}
	for i := 0; i < len(envs); i += env.Batch {
		if err := p.Publish(ctx, envs[i:min(len(envs), i+env.Batch)]...); err != nil {
			return errors.Join(err, p.Close(ctx))
		}
	}
	return p.Close(ctx)
}

func (t *pulseTrial) Consume(ctx context.Context, n int) error {
	t.envs = nil
	t.tal = newTally(n)
	return pulseConsume(ctx, t.bus, t.env, pulseStream, n, t.tal)
}

func (t *pulseTrial) Latency(ctx context.Context, warm, n int, rate float64) (Latencies, error) {
	return measureLatency(ctx, warm, n, rate, func(received func([]byte)) (func(), error) {
		sub, err := t.bus.Subscribe(ctx, pulseStream, func(_ context.Context, d *transport.Delivery) error {
			received(d.Envelope.Payload)
			return nil
		}, transport.SubscribeOptions{Group: pulseGroup, Consumer: pulseConsumer, BatchSize: t.env.Batch})
		if err != nil {
			return nil, err
		}
		return func() { sub.Close() }, nil
	}, func(seq int, sent func()) error {
		e := t.env.Work.Envelope(seq)
		sent()
		return t.bus.Publish(ctx, pulseStream, e)
	})
}

func (t *pulseTrial) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := t.bus.Close()
	if t.cleanup != nil {
		err = errors.Join(err, t.cleanup(ctx))
	}
	return err
}

// namespaceFor is a fresh, valid namespace for trial id.
func namespaceFor(id string) string { return "pb" + id }
