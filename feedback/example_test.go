package feedback_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/transport"
	_ "github.com/pulse-bus/pulse/transport/inmem"
)

// adjustments passes RateAdjustments on to the bus and tells the example each one.
type adjustments struct {
	bus  *transport.Bus
	seen chan feedback.RateAdjustment
}

func (a adjustments) Publish(ctx context.Context, stream string, envs ...*envelope.Envelope) error {
	if err := a.bus.Publish(ctx, stream, envs...); err != nil {
		return err
	}
	for _, e := range envs {
		adj, _ := feedback.ParseRateAdjustment(e)
		a.seen <- adj
	}
	return nil
}

// The pipeline side: a Consumer applies the Stores' feedback events to a RateCoordinator,
// which paces the provider (rate = max(floor, base × scale)). The Handler keeps the loop's
// state in the bus, so a restart resumes where it was.
func ExampleConsumer() {
	ctx := context.Background()
	bus, err := transport.Open(ctx, transport.Config{Backend: "inmem", Namespace: "example_consumer", Schemas: feedback.Schemas()})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()
	rates, err := feedback.NewRateCoordinator(feedback.Limits{BaseRate: 60, MinRate: 1})
	if err != nil {
		log.Fatal(err)
	}
	state, err := feedback.OpenStateStore(ctx, bus, feedback.StreamFeedback)
	if err != nil {
		log.Fatal(err)
	}
	pub := adjustments{bus: bus, seen: make(chan feedback.RateAdjustment, 1)}
	h, err := feedback.NewHandler(feedback.HandlerConfig{Rates: rates, Publisher: pub, State: state})
	if err != nil {
		log.Fatal(err)
	}
	c, err := feedback.NewConsumer(bus, h, feedback.ConsumerConfig{Consumer: "replica-1"})
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// A Store reports its queue full.
	ev := feedback.Event{CoordinatorID: "bars_1", QueueSize: 85, Capacity: 100, Level: feedback.LevelHard,
		TS: envelope.Float(float64(time.Now().UnixNano()) / 1e9)}
	e, err := ev.Envelope(nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := bus.Publish(ctx, feedback.StreamFeedback, e); err != nil {
		log.Fatal(err)
	}
	adj := <-pub.seen
	fmt.Println(adj.Provider, adj.Reason, adj.Scale, rates.Rate("ibkr"), c.Group())
	// Output: ibkr hard 0 1 pipeline-replica-1
}

// events records the feedback events a Watermarks queue publishes.
type events chan feedback.Event

func (ch events) Publish(_ context.Context, _ string, envs ...*envelope.Envelope) error {
	for _, e := range envs {
		ev, _ := feedback.ParseEvent(e)
		ch <- ev
	}
	return nil
}

// The Store side: Watermarks is a bounded queue that publishes a FeedbackEvent when its depth
// crosses a mark — soft at the middle of the band, hard at 80% of the capacity, ok again at
// 50% — and nothing while the level holds.
func ExampleWatermarks() {
	out := make(events, 4)
	q, err := feedback.NewWatermarks[int](feedback.WatermarkConfig{CoordinatorID: "bars_1", Capacity: 10, Publisher: out})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()
	for i := range 8 { // the writer is slow: the queue fills
		if err := q.Offer(i); err != nil {
			log.Fatal(err)
		}
	}
	for range 3 { // it catches up
		q.Take()
	}
	for range 4 {
		ev := <-out
		fmt.Println(ev.Level, ev.QueueSize, ev.Capacity)
	}
	fmt.Println("now", q.Level())
	// Output:
	// soft 6 10
	// hard 8 10
	// soft 6 10
	// ok 5 10
	// now ok
}
