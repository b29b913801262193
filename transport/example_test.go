package transport_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	_ "github.com/pulse-bus/pulse/transport/inmem" // registers "inmem"
)

// event is an envelope of schema example.Event with payload p.
func event(p string) *envelope.Envelope {
	return &envelope.Envelope{Meta: envelope.Meta{SchemaID: "example.Event"}, Payload: []byte(p)}
}

// Open a bus from a Config literal; zero fields take their defaults.
func ExampleOpen() {
	bus, err := transport.Open(context.Background(), transport.Config{Backend: "inmem", Namespace: "example_open"})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()
	cfg := bus.Config()
	fmt.Println(cfg.Backend, cfg.Track, cfg.Group, cfg.MaxDeliveries, cfg.AckWait)
	// Output: inmem v1 pipeline 5 30s
}

// Read the bus configuration from the environment, as pulse does: pass os.LookupEnv. A bad
// value is an *envconf.Error naming the variable and what is accepted.
func ExampleFromEnv() {
	env := envconf.Map(map[string]string{"EVENT_BUS_BACKEND": "inmem", "SCHEMA_TRACK": "v2", "PULSE_MAX_DELIVERIES": "3"})
	cfg, err := transport.FromEnv(env) // os.LookupEnv in a program
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(cfg.Backend, cfg.Track, cfg.MaxDeliveries)

	_, err = transport.FromEnv(envconf.Map(map[string]string{"PULSE_ACK_WAIT": "soon"}))
	var bad *envconf.Error
	fmt.Println(errors.As(err, &bad), bad.Var)
	fmt.Println(err)
	// Output:
	// inmem v2 3
	// true PULSE_ACK_WAIT
	// invalid PULSE_ACK_WAIT="soon": accepted: a positive duration such as 500ms, 30s or 2m
}

// Publish and subscribe: Publish returns once the broker has the messages; the handler acks
// a delivery by returning nil.
func ExampleBus_Subscribe() {
	ctx := context.Background()
	bus, err := transport.Open(ctx, transport.Config{Backend: "inmem", Namespace: "example_subscribe"})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()
	if err := bus.Publish(ctx, "orders", event(`{"n":1}`), event(`{"n":2}`)); err != nil {
		log.Fatal(err)
	}
	got := make(chan string)
	sub, err := bus.Subscribe(ctx, "orders", func(_ context.Context, d *transport.Delivery) error {
		got <- fmt.Sprintf("%s (attempt %d)", d.Envelope.Payload, d.Attempt)
		return nil
	}, transport.SubscribeOptions{Group: "billing"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-got)
	fmt.Println(<-got)
	if err := sub.Close(); err != nil { // drains: what was handled is acked
		log.Fatal(err)
	}
	// Output:
	// {"n": 1} (attempt 1)
	// {"n": 2} (attempt 1)
}

// A handler dead-letters a message that can never succeed with Poison: it goes to the
// stream's dead-letter stream at once, with the reason, and is not retried.
func ExamplePoison() {
	ctx := context.Background()
	bus, err := transport.Open(ctx, transport.Config{Backend: "inmem", Namespace: "example_poison"})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()
	if err := bus.Publish(ctx, "orders", event(`{"n":-1}`)); err != nil {
		log.Fatal(err)
	}
	seen := make(chan struct{})
	sub, err := bus.Subscribe(ctx, "orders", func(_ context.Context, d *transport.Delivery) error {
		defer close(seen)
		return transport.Poison("negative_amount", fmt.Errorf("payload %s: n must be ≥ 0", d.Envelope.Payload))
	}, transport.SubscribeOptions{})
	if err != nil {
		log.Fatal(err)
	}
	<-seen
	sub.Close() // the dead letter is written before the subscription has drained

	admin := bus.Driver().(driver.StreamAdmin)
	admin.Range(ctx, "orders"+transport.DLQSuffix, 0, func(m driver.StoredMessage) error {
		fmt.Println(m.Headers[transport.DLQReason], m.Headers[transport.DLQAttempts], m.Headers[transport.DLQError])
		return nil
	})
	// Output: negative_amount 1 negative_amount: payload {"n": -1}: n must be ≥ 0
}

// An AsyncPublisher keeps several batches awaiting the broker while the next is encoded and
// sent; Close waits for them, and reports what was not confirmed in a *PublishError.
func ExampleBus_NewAsyncPublisher() {
	ctx := context.Background()
	bus, err := transport.Open(ctx, transport.Config{Backend: "inmem", Namespace: "example_async", Track: envelope.TrackV2})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()
	p, err := bus.NewAsyncPublisher("ticks", 4) // at most 4 batches in flight
	if err != nil {
		log.Fatal(err)
	}
	for i := range 3 {
		if err := p.Publish(ctx, event(fmt.Sprintf(`{"batch":%d,"i":0}`, i)), event(fmt.Sprintf(`{"batch":%d,"i":1}`, i))); err != nil {
			log.Fatal(err) // encoding errors, ctx, ErrClosed
		}
	}
	var pe *transport.PublishError
	if err := p.Close(ctx); errors.As(err, &pe) {
		fmt.Println("not confirmed, publish again:", len(pe.Envelopes)) // v2 ids make that safe
	}
	info, _ := bus.Driver().(driver.StreamAdmin).Info(ctx, "ticks", "")
	fmt.Println("stored:", info.Length)
	// Output: stored: 6
}

// A KeyValue bucket keeps small records in the broker, shared by every process on the bus,
// with compare-and-set.
func ExampleBus_KeyValue() {
	ctx := context.Background()
	bus, err := transport.Open(ctx, transport.Config{Backend: "inmem", Namespace: "example_kv"})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()
	kv, err := bus.KeyValue(ctx, "leases")
	if err != nil {
		log.Fatal(err)
	}
	rev, _ := kv.Create(ctx, "job-1", []byte("worker-a"))
	_, err = kv.Create(ctx, "job-1", []byte("worker-b"))
	fmt.Println(errors.Is(err, transport.ErrConflict))
	_, err = kv.Update(ctx, "job-1", []byte("worker-b"), rev)
	fmt.Println(err)
	e, _ := kv.Get(ctx, "job-1")
	fmt.Println(string(e.Value))
	// Output:
	// true
	// <nil>
	// worker-b
}
