package bench

import (
	"context"
	"fmt"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// What every Watermill contender (GoChannel, redisstream, nats jetstream) does the same way:
// publish the pre-encoded bodies in batches, and handle+ack every message of a subscription.

// publishWatermill publishes bodies to topic with pub, batch of them per Publish call, each
// as a message with a fresh UUID. It stops at the first error, or when ctx is done between
// two batches. what names the contender in errors ("watermill redisstream").
func publishWatermill(ctx context.Context, pub message.Publisher, topic string, bodies [][]byte, batch int, what string) error {
	msgs := make([]*message.Message, 0, batch)
	for i := 0; i < len(bodies); i += len(msgs) {
		if err := ctx.Err(); err != nil {
			return err
		}
		msgs = msgs[:0]
		for _, b := range bodies[i:min(len(bodies), i+batch)] {
			msgs = append(msgs, message.NewMessage(watermill.NewUUID(), b))
		}
		if err := pub.Publish(topic, msgs...); err != nil {
			return fmt.Errorf("bench: %s publish: %w", what, err)
		}
	}
	return nil
}

// subscribeWatermill subscribes sub to topic and runs fn on every message's payload, then
// acks it, on a goroutine of its own until stop is called (or ctx is done). stop cancels the
// subscription and waits for that goroutine; the caller must call it. what names the
// contender in errors.
func subscribeWatermill(ctx context.Context, sub message.Subscriber, topic string, fn func([]byte), what string) (stop func(), err error) {
	sctx, cancel := context.WithCancel(ctx)
	msgs, err := sub.Subscribe(sctx, topic)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("bench: %s subscribe: %w", what, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for m := range msgs {
			fn(m.Payload)
			m.Ack()
		}
	})
	return func() { cancel(); wg.Wait() }, nil
}
