// Package transport is Pulse's portable event bus: one API over Redis Streams, NATS JetStream
// and an in-process broker, with the delivery policies every backend shares.
//
// A program opens a Bus — from a Config literal, or from the environment with FromEnv so
// that operators choose the backend with EVENT_BUS_BACKEND — and publishes envelopes with
// Bus.Publish (which returns once the broker has them) or, for throughput, an
// AsyncPublisher. Bus.Subscribe joins a consumer group and runs a Handler for each
// Delivery:
//
//   - returning nil acks it; returning an error fails it: it is redelivered with backoff
//     until the attempt limit, then moved to the stream's dead-letter stream (S.dlq);
//   - an error made with Poison (and every decoding error) dead-letters it at once;
//   - an error wrapping ErrStale acks it as deliberately not applied.
//
// Delivery is at least once; attempts are counted by the broker; a delivery's id is recorded
// as handled only after its handler succeeded, so a redelivery of handled work is acked as a
// duplicate without running the handler again; every group gets every message from the start
// of the retained stream; Close drains in-flight work. docs/design.md says why, and
// docs/contract.md what is on the wire.
//
// Backends are drivers that register themselves (Register): import the ones a program may
// use, for their side effect, as database/sql drivers are imported:
//
//	import (
//		_ "github.com/pulse-bus/pulse/transport/jetstream"
//		_ "github.com/pulse-bus/pulse/transport/redis"
//	)
//
// A driver package can also be opened directly, over a connection the program already has
// (jetstream.Options.Conn, redis.Options.Client), and handed to New. What a driver
// implements is in transport/driver; the conformance suite every driver passes is
// transport/transporttest.
package transport
