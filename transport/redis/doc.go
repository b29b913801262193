// Package redis is the Redis Streams backend of Pulse, registered as "redis"
// (EVENT_BUS_BACKEND=redis). Import it for its side effect, or call Open directly:
//
//	import _ "github.com/pulse-bus/pulse/transport/redis"
//
// It speaks the wire format of the Python market-data-core (docs/contract.md §1–2) and fixes what
// the Python driver never did: its ack was a no-op, nothing was redelivered, groups created at
// `$` lost earlier messages, and the dead-letter queue dropped the payload. The delivery
// policies (decoding, retries, dead-lettering, de-duplication, draining) live in the
// transport package; this driver moves bytes and counts attempts.
//
// # Configuration
//
// REDIS_URL (transport.Config.RedisURL) is `redis://[user[:password]@]host[:port][/db]`, or
// `rediss://…` for TLS. Anything else is a *envconf.Error naming REDIS_URL (the
// password masked); the pulse command exits with status 2 on it. Open pings Redis once; if it
// does not answer, the error wraps transport.ErrUnavailable. A program with go-redis options
// of its own (a Dialer, a TLS config) passes them with OpenWith and Options.Client instead.
//
// # Keys and entries
//
//   - The logical stream S lives at the key `{ns}:{S}` (MD_NAMESPACE, e.g.
//     `mdp:telemetry.feedback`); its dead letters at `{ns}:{S}.dlq`.
//   - An entry has one field, `data`, holding the envelope's JSON exactly as published.
//     Entries the Python core XADDs are read the same way. Other fields are headers (a
//     replayed dead letter carries `replay_of`); an entry with `data` twice is read as
//     redis-py reads it: the last one wins.
//   - A delivery's Position is its entry id <ms>-<seq> and its StoredAt the id's
//     milliseconds: Redis's clock, never the producer's.
//   - A dead-letter entry has `data` holding the original bytes unchanged, followed by the
//     fields original_id (the Redis entry id of the original), reason, error, attempts,
//     failed_at (RFC 3339) and stream (the logical source stream), sorted by name.
//   - The shared idempotency record (transport.Config.SharedIdempotency) is one key per
//     handled message, `{ns}:idem:{stream}/{group}/{id}`, written with SET NX PX and expiring
//     after transport.Config.IdempotencyTTL.
//
// # Consumer groups
//
// Subscribe creates the group with XGROUP CREATE {key} {group} 0 MKSTREAM: from id 0, the
// start of the retained stream, so a group created after messages were published still gets
// them (the Python core used `$` and lost them). BUSYGROUP, the group exists, is success. If a
// read finds the group gone (NOGROUP: Redis restarted without persistence, was flushed, or the
// group was destroyed), the group is recreated from 0 and reading goes on; it is recreated at
// most once a second, and in between the error goes back to the Bus, which backs off, so a
// group that keeps vanishing cannot cause a busy loop. A subscription's Close leaves its
// consumer registered: XGROUP DELCONSUMER would drop the consumer's pending entries.
//
// # Receiving and attempts
//
// Each Receive returns up to its limit of deliveries from the first source that has any:
//
//  1. this member's own delayed redeliveries that are due (see Nak below), claimed back with
//     XCLAIM;
//  2. entries of any member idle for at least AckWait (a member that died, hung, or lost its
//     connection), claimed with XAUTOCLAIM — scanned at most every AckWait/4 (10 ms to 2 s),
//     so such an entry is redelivered between AckWait and AckWait plus that interval after it
//     was last delivered;
//  3. new entries, XREADGROUP GROUP {group} {consumer} COUNT {limit} BLOCK 1000 STREAMS
//     {key} >, read by the subscription's fetcher goroutine on a connection of its own. BLOCK
//     is never 0 (that would wait forever). Receive waits for the fetcher with its own timer,
//     so it returns at once when its context is cancelled, and wakes in time for a delayed
//     redelivery or a scan even while a read is blocked.
//
// The fetcher reads two batches ahead: when Receive hands out a batch it asks for another, so
// while the Bus handles one batch the next is ready and Redis is reading the one after. A
// member therefore holds up to three batches pending. A batch that waited in the read-ahead
// buffer for AckWait/4 or
// more (slow handlers) has its idle time reset (XCLAIM … IDLE 0 JUSTID, not counted) when it is
// handed out, so its AckWait runs from the hand-out as without read-ahead; entries another
// member took meanwhile are left out. Close hands unread read-ahead batches back to the group
// at once (below).
//
// Attempt is Redis's own delivery counter for the entry in the group's pending entries list
// (PEL), read at the moment of delivery: an XREADGROUP `>` sets it to 1; every XCLAIM or
// XAUTOCLAIM adds 1 (the claim scripts read the counter with XPENDING in the same atomic Lua
// call). The driver never reads its own history with XREADGROUP id 0, and uses XCLAIM … JUSTID
// (which does not count) for bookkeeping, so Attempt counts handings-out exactly, whichever
// process handed it out. Because the count lives in Redis, PULSE_MAX_DELIVERIES and the
// dead-letter queue hold across restarts and across members: the Bus dead-letters on the last
// attempt. (Redis enforces no limit itself.)
//
// # Nak: retry after a delay without spinning
//
// Nak(d, delay) sends nothing to Redis. The entry stays pending under this consumer and its id
// goes into a heap owned by the subscription (bounded: while 10,000 entries wait, Receive
// reads no new ones). When the delay has passed, Receive claims it back to itself with XCLAIM
// (a Lua script checks first that it is still pending under this consumer) and hands it out as
// the next attempt — never before the delay, and without spending attempts meanwhile. While an
// entry waits, Receive resets its idle time every AckWait/4 with XCLAIM … IDLE 0 JUSTID (not
// counted), so other members do not take it over just because its delay is longer than
// AckWait. If this member dies meanwhile, the entry stops being refreshed and another member
// claims it with XAUTOCLAIM once it has been idle for AckWait. When a subscription closes, its
// waiting entries and its unread read-ahead batches are handed back at once: their idle time is
// set to AckWait (XCLAIM … IDLE JUSTID), so another member's next scan takes them.
//
// Ack sends one XACK for the whole batch; Term (after the Bus wrote the dead-letter copy) is
// an XACK. Acknowledged entries are not deleted (no XDEL): other groups on the same stream may
// not have read them yet. Streams are bounded by trimming instead.
//
// # Publishing
//
// Publish sends one XADD per message in a single pipelined round trip, in order, followed by
// the trim when one is due (below), and returns the entry ids. If Redis fails part-way, the
// ids of the leading entries that were stored are returned with the error. A pooled
// connection that fails before any reply arrived (closed by the server while idle) has its
// round trip sent once more on a fresh connection, as go-redis does, so a v1 message (which
// has no producer id) may in rare cases be stored twice — v2 ids let consumers drop such
// copies.
//
// # Retention
//
// Publishing trims the stream with `XTRIM {key} MINID ~ {now − StreamMaxAge}`
// (PULSE_STREAM_MAX_AGE, default 7 days) in the same round trip: on the first publish to a
// stream through the driver, then at most once a second. Entries older than the max age go, in
// whole radix-tree nodes (`~`), so a little more may stay. Open refuses (*envconf.Error) a max age shorter than the longest retry schedule,
// PULSE_MAX_DELIVERIES × (PULSE_ACK_WAIT + the longest retry backoff), so trimming by age never
// removes a message that is still being retried; it does remove messages that no consumer read
// within the max age (a group offline for longer loses them).
//
// With PULSE_STREAM_MAX_LEN = N > 0, a trim also cuts a stream to about N entries (XTRIM
// MAXLEN ~ N), and one is due as soon as N/8 entries were published since the last: a stream
// holds at most about N + N/8 entries (plus what `~` leaves) between trims. Redis trims by length whether or not entries are
// pending, and from Redis 7 a trimmed entry also leaves the pending list when it is next
// claimed: an entry trimmed before it was acknowledged is lost. That is not silent: the
// claim that finds it gone logs a warning with the ids. Use MAXLEN only with a limit far above
// the backlog a group can have. Dead-letter streams are never trimmed by length, only by age.
//
// # Connections and failures
//
// Publishing and acks go through a pool of the driver's own connections (CLIENT SETNAME
// pulse:{ns}; at most go-redis's pool size, 10 per CPU by default; idle ones reused for up to
// 30 minutes). Claims, admin commands and the idempotency record use one go-redis client.
// Each subscription's fetcher reads on a connection of its own (CLIENT SETNAME
// pulse-reader:{key}:{group}:{consumer}), so a blocked XREADGROUP never holds a connection a
// publisher needs; closing the subscription closes it, which ends a blocked read at once.
//
// The pooled and reading connections are dialed with go-redis's dialer and options (TLS,
// timeouts) but speak RESP2 themselves: they authenticate, select the database and name
// themselves, then write a batch of XADDs (or an XACK, or an XREADGROUP) as one buffer and
// read the replies straight into what the driver returns, a batch's ids and bodies in shared
// buffers. go-redis's generic command objects and reply parsing cost about nine allocations
// per consumed message and half of the driver's CPU time per published one. A connection
// that fails other than with an error reply (NOGROUP, WRONGTYPE) is closed, and the next use
// dials afresh.
//
// When Redis goes away, Ping fails (the pulse service's /readyz answers 503), Publish fails with
// an error wrapping transport.ErrUnavailable, and Receive returns such errors, on which the Bus
// backs off (100 ms doubling to 5 s) and reports them through Subscription.Err. go-redis
// reconnects by itself; once Redis answers again, publishing and consuming resume without
// help. Acknowledged work stays acknowledged. A Redis restarted without persistence comes back
// empty: its streams, groups and pending entries are gone, so messages published but not yet
// consumed when it stopped are lost with it, the groups are recreated on first read, and
// nothing from before is redelivered. Run Redis with AOF (appendonly yes) where that matters.
// A restart with persistence keeps the pending entries list, and with it every attempt count.
//
// # Redis Cluster
//
// Every command and Lua script touches one key (one stream), so each stream may live on any
// slot of a cluster (transport.Config.RedisMode ModeCluster, PULSE_REDIS_MODE=cluster). go-redis's
// ClusterClient keeps the slot map; the driver's own connections go to the primary that owns
// each key (see topology.go). MOVED, READONLY and the transient states reload the map and
// retry for up to 15 s; ASK is followed at once on the importing node with ASKING for
// publishes and acks, while a read waits for the migration to end.
package redis
