package jetstream

import "strings"

// Subject is the NATS subject of logical stream S in namespace ns: `{ns}.{S}`, e.g.
// mdp.telemetry.feedback (docs/contract.md §1).
func Subject(ns, stream string) string { return ns + "." + stream }

// StreamName is the JetStream stream that stores logical stream S in namespace ns:
// `{ns}_{S}` with every '.' replaced by '_', upper-cased, e.g. MDP_TELEMETRY_FEEDBACK (its
// dead-letter stream telemetry.feedback.dlq: MDP_TELEMETRY_FEEDBACK_DLQ). JetStream stream
// names cannot contain '.'. Two logical names that differ only in case or in '.' against '_'
// would share a name; the driver refuses the second one rather than mixing them.
func StreamName(ns, stream string) string {
	return strings.ToUpper(ns + "_" + strings.ReplaceAll(stream, ".", "_"))
}

// DurableName is the durable pull consumer of a consumer group: the group name itself
// (pipeline by default). Every member of the group pulls from it, so they compete; each
// group has its own durable, so every group sees every message.
func DurableName(group string) string { return group }

// IdempotencyBucket is the key-value bucket of the shared idempotency record in namespace ns:
// `{NS}_PULSE_IDEMPOTENCY`, e.g. MDP_PULSE_IDEMPOTENCY (stored in stream KV_MDP_PULSE_IDEMPOTENCY).
func IdempotencyBucket(ns string) string {
	return strings.ToUpper(ns) + "_PULSE_IDEMPOTENCY"
}
