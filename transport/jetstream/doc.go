// Package jetstream is Pulse's NATS JetStream driver, registered as "jetstream"
// (EVENT_BUS_BACKEND=jetstream, the default). Import it for its side effect:
//
//	import _ "github.com/pulse-bus/pulse/transport/jetstream"
//
// # Connecting
//
// NATS_URL holds one or several comma-separated server URLs, nats:// or tls://; the client
// picks one and fails over to the others. It signs in with one of the credentials in the URL
// (user:password@ or token@), PULSE_NATS_TOKEN, PULSE_NATS_CREDS (a JWT and nkey seed file) or
// PULSE_NATS_NKEY (an nkey seed file), trusts the CAs of PULSE_NATS_TLS_CA and presents
// PULSE_NATS_TLS_CERT/KEY where the server verifies clients; CheckConfig checks them all
// before connecting. With NATS_URL unset the driver connects to DefaultURL, the embedded
// server that `pulse run` hosts (see the embedded subpackage). A program that has a
// *nats.Conn already passes it with OpenWith and Options.Conn. The client
// reconnects forever; while it is disconnected, Receive and Ping return errors wrapping
// transport.ErrUnavailable and consuming resumes by itself once it is back.
//
// # Names (docs/contract.md §1)
//
// In namespace ns (MD_NAMESPACE), logical stream S is stored by the JetStream stream
// StreamName(ns, S) = upper-case `{ns}_{S}` with '.' replaced by '_', on the subject
// Subject(ns, S) = `{ns}.{S}`:
//
//	telemetry.feedback            MDP_TELEMETRY_FEEDBACK            mdp.telemetry.feedback
//	telemetry.feedback.dlq        MDP_TELEMETRY_FEEDBACK_DLQ        mdp.telemetry.feedback.dlq
//	telemetry.rate_adjustment     MDP_TELEMETRY_RATE_ADJUSTMENT     mdp.telemetry.rate_adjustment
//
// A consumer group G is the durable pull consumer DurableName(G) = G on that stream; its
// members (PULSE_CONSUMER_NAME) all pull from it and so compete. The shared idempotency
// record is the key-value bucket IdempotencyBucket(ns) = `{NS}_PULSE_IDEMPOTENCY`.
//
// Streams are created or updated on first use (publish or subscribe) with file storage,
// limits retention, max age PULSE_STREAM_MAX_AGE, max bytes PULSE_STREAM_MAX_BYTES, max
// messages PULSE_STREAM_MAX_LEN, PULSE_STREAM_REPLICAS replicas and a duplicate window of
// min(2m, max age). Consumers are created or updated on subscribe: deliver all, explicit ack,
// AckWait from the subscription, no server-side delivery limit (the Bus dead-letters on its
// last attempt, then terminates the message), MaxAckPending 4 × batch size. A subscription
// whose consumer is gone from the server (deleted, or lost with a store the server came back
// without) creates the stream and the consumer again by itself and goes on consuming; what it
// then reads is the new stream's, from its first message.
//
// # Wire format
//
// A message is the envelope's JSON as the body; a v2 id is also the Nats-Msg-Id header, so a
// publish retried within the duplicate window is stored once. Dead letters carry their
// metadata (original_id, reason, error, attempts, failed_at, stream) as headers, with CR and
// LF escaped as \r and \n. The transport id of a message is its stream sequence.
package jetstream
