package bench

import (
	"context"
	"errors"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
)

// Contender names of the inmem section.
const (
	NamePulseInmem = "pulse inmem"
	NameGoChannel  = "watermill gochannel"
)

func inmemSection() (*Section, []*Contender) {
	sec := &Section{
		Name:  SectionInmem,
		Title: "in-process, publish in batches → handler → ack, publisher and subscriber running together",
		Goals: []Goal{{Metric: MetricE2E, Versus: NameGoChannel, MinRatio: 2}},
	}
	return sec, []*Contender{
		{Name: NamePulseInmem, Pulse: true, NewPipe: newPulseInmemPipe},
		{Name: NameGoChannel, NewPipe: newGoChannelPipe},
	}
}

// pulseInmemPipe is Pulse's bus over transport/inmem: one subscription (a group of one
// member, handler concurrency 1, batched acks) and one publisher publishing batches of
// env.Batch envelopes.
type pulseInmemPipe struct {
	bus  *transport.Bus
	env  *Env
	envs []*envelope.Envelope
	tallied
}

func newPulseInmemPipe(ctx context.Context, env *Env, id string) (Pipe, error) {
	bus, err := openPulse(ctx, env, transport.Config{Backend: "inmem", Namespace: namespaceFor(id)})
	if err != nil {
		return nil, err
	}
	return &pulseInmemPipe{bus: bus, env: env}, nil
}

func (p *pulseInmemPipe) Prepare(_ context.Context, n int) error {
	p.envs = pulseEnvelopes(p.env, n)
	return nil
}

func (p *pulseInmemPipe) Run(ctx context.Context, n int) error {
	if len(p.envs) != n {
		p.envs = pulseEnvelopes(p.env, n)
	}
	envs := p.envs
	p.envs = nil
	p.tal = newTally(n)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sub, err := p.bus.Subscribe(ctx, pulseStream, func(_ context.Context, d *transport.Delivery) error {
		p.tal.add(d.Envelope.Payload)
		return nil
	}, transport.SubscribeOptions{Group: pulseGroup, Consumer: pulseConsumer, BatchSize: p.env.Batch})
	if err != nil {
		return err
	}
	defer sub.Close()
	pubErr := make(chan error, 1)
	go func() { pubErr <- pulsePublish(ctx, p.bus, p.env, pulseStream, envs) }()
	if err := p.tal.wait(ctx); err != nil {
		cancel()
		return errors.Join(err, <-pubErr)
	}
	if err := <-pubErr; err != nil {
		return err
	}
	return pulseAcked(ctx, p.bus, pulseStream)
}

func (p *pulseInmemPipe) Close() error { return p.bus.Close() }

// goChannelPipe is Watermill's GoChannel in its default configuration (unbuffered output,
// not persistent) with a no-op logger: the subscriber acks every message; the publisher
// publishes the same bytes in batches of env.Batch.
type goChannelPipe struct {
	gc  *gochannel.GoChannel
	env *Env
	tallied
}

func newGoChannelPipe(_ context.Context, env *Env, _ string) (Pipe, error) {
	return &goChannelPipe{gc: gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{}), env: env}, nil
}

const goChannelTopic = "bench.events"

func (p *goChannelPipe) Run(ctx context.Context, n int) error {
	bodies, err := p.env.Bodies(n)
	if err != nil {
		return err
	}
	p.tal = newTally(n)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop, err := subscribeWatermill(ctx, p.gc, goChannelTopic, p.tal.add, "gochannel")
	if err != nil {
		return err
	}
	defer stop()
	pubErr := make(chan error, 1)
	go func() { pubErr <- publishWatermill(ctx, p.gc, goChannelTopic, bodies, p.env.Batch, "gochannel") }()
	err = p.tal.wait(ctx)
	cancel() // ends the subscription: its channel closes and the reader returns
	return errors.Join(err, <-pubErr)
}

func (p *goChannelPipe) Close() error { return p.gc.Close() }
