package redis

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	goredis "github.com/redis/go-redis/v9"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// Name is the backend name the driver registers under (EVENT_BUS_BACKEND=redis).
const Name = "redis"

// DataField is the one entry field that holds the envelope's JSON (docs/contract.md §2), as the
// Python market-data-core writes it.
const DataField = "data"

// IdempotencyKeyInfix sits between the namespace and the Bus's key in the shared idempotency
// record: `{ns}:idem:{stream}/{group}/{id}`. Stream keys never contain it (':' is not allowed
// in stream names), so the two cannot collide.
const IdempotencyKeyInfix = ":idem:"

func init() {
	transport.Register(Name, func(ctx context.Context, cfg transport.Config) (driver.Driver, error) {
		return Open(ctx, cfg)
	}, CheckConfig)
}

// Driver is the Redis Streams backend. It is safe for concurrent use. After Close every
// method returns transport.ErrClosed.
//
// A pool of the driver's own RESP connections (see respConn) per primary serves publishing
// and acks; one go-redis client (its own connection pools: one server, a cluster, or the
// primary behind Sentinel) serves claims, the admin commands, the key-value buckets and the
// idempotency record; every subscription reads on a connection of its own, so a blocked
// XREADGROUP never holds a connection a publisher is waiting for. The RESP connections go
// to the primary that owns the key (router); a reply that says it moved is followed.
type Driver struct {
	client      goredis.UniversalClient
	nodes       *router
	minReplicas int           // PULSE_REDIS_MIN_REPLICAS
	waitTimeout time.Duration // PULSE_REDIS_WAIT_TIMEOUT
	ns          string
	retention   retention
	trims       trimSchedule
	log         *slog.Logger

	mu     sync.Mutex
	closed bool // no new work; set first by Close
	subs   map[*subscription]struct{}
	// gone is set once the connection pool is closed, after the subscriptions were.
	gone atomic.Bool
}

var (
	_ driver.Driver              = (*Driver)(nil)
	_ driver.Pinger              = (*Driver)(nil)
	_ driver.StreamAdmin         = (*Driver)(nil)
	_ driver.IdempotencyProvider = (*Driver)(nil)
	_ driver.KeyValueProvider    = (*Driver)(nil)
)

// Open connects to the Redis of cfg.RedisURL (`redis://` or `rediss://`, with user, password
// and database number) and checks that it answers. Zero fields of cfg take the transport
// defaults. A malformed URL or an unsafe retention setting is a *envconf.Error; a
// Redis that does not answer is an error wrapping transport.ErrUnavailable.
func Open(ctx context.Context, cfg transport.Config) (*Driver, error) {
	return OpenWith(ctx, cfg, Options{})
}

// Options tune a driver beyond transport.Config.
type Options struct {
	// Client, when set, is how to reach Redis instead of cfg.RedisURL: go-redis's own options
	// (address, credentials, database, TLSConfig, Dialer, timeouts, pool size), as a program
	// that already talks to Redis has them. Every connection of the driver — go-redis's and
	// its own RESP connections for publishing, acks and reading — is dialed with them. The
	// driver copies them; it does not keep the pointer.
	Client *goredis.Options
}

// OpenWith is Open with driver options.
func OpenWith(ctx context.Context, cfg transport.Config, o Options) (*Driver, error) {
	var s setup
	if o.Client != nil {
		c := *o.Client
		s = setup{mode: ModeSingle, single: &c}
	} else {
		var err error
		if s, err = parseSetup(cfg); err != nil {
			return nil, err
		}
	}
	ret, err := retentionFor(cfg)
	if err != nil {
		return nil, err
	}
	ns := cfg.Namespace
	if ns == "" {
		ns = transport.DefaultNamespace
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	client := s.newClient()
	d := &Driver{
		client:      client,
		nodes:       newRouter(client, "pulse:"+ns),
		minReplicas: cfg.RedisMinReplicas,
		waitTimeout: cmp.Or(cfg.RedisWaitTimeout, DefaultWaitTimeout),
		trims:       trimSchedule{keys: map[string]*trimState{}},
		ns:          ns,
		retention:   ret,
		log:         log.With("backend", Name),
		subs:        map[*subscription]struct{}{},
	}
	if err := d.Ping(ctx); err != nil {
		d.nodes.close()
		d.client.Close()
		where := transport.RedactURLs(cfg.RedisURL)
		if o.Client != nil {
			where = o.Client.Addr
		}
		return nil, fmt.Errorf("redis: connect to %s: %w", where, err)
	}
	return d, nil
}

// ParseURL parses a REDIS_URL of PULSE_REDIS_MODE=single. Only `redis://` and `rediss://`
// (TLS) are accepted, with an optional user and password and a database number as the path.
// An error is a *envconf.Error naming REDIS_URL (the password masked) and the accepted forms.
// CheckConfig checks the URL of every mode.
func ParseURL(raw string) (*goredis.Options, error) {
	s, err := parseSetup(transport.Config{RedisURL: raw, RedisMode: ModeSingle})
	if err != nil {
		return nil, err
	}
	return s.single, nil
}

// key is the Redis key of a logical stream: `{ns}:{stream}` (docs/contract.md §1).
func (d *Driver) key(stream string) string { return d.ns + ":" + stream }

func (d *Driver) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// Ping reports whether Redis answers; while it is away the error wraps
// transport.ErrUnavailable.
func (d *Driver) Ping(ctx context.Context) error {
	if d.isClosed() {
		return transport.ErrClosed
	}
	return d.wrap("ping", d.client.Ping(ctx).Err())
}

// Publish XADDs msgs to the stream's key in one pipelined round trip, in order, each entry
// holding the body in the field `data` and, for dead letters, each header as a further field
// (sorted by name). The same round trip trims the stream as the retention settings say (see
// the package documentation). It returns the entry ids; on error, the ids of the leading entries
// that were stored. While Redis is away the error wraps transport.ErrUnavailable.
func (d *Driver) Publish(ctx context.Context, stream string, msgs []driver.Message) ([]string, error) {
	if d.isClosed() {
		return nil, transport.ErrClosed
	}
	if !transport.ValidStreamName(stream) {
		return nil, fmt.Errorf("redis: invalid stream name %q (accepted: dot-separated tokens of letters, digits, '_' and '-')", stream)
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	key := d.key(stream)
	ids := make([]string, 0, len(msgs))
	err := d.nodes.followMoves(ctx, key, func(n *node, asking bool) (err error) {
		ids, err = d.publishTo(ctx, n, asking, stream, key, msgs[len(ids):], ids)
		return err
	})
	if err != nil {
		return ids, d.wrap("publish to "+key, err)
	}
	return ids, nil
}

// publishTo writes msgs to key on node n in one round trip (XADDs, the trims due, and the
// WAIT for PULSE_REDIS_MIN_REPLICAS), appending to ids those of the leading entries stored.
// When fewer replicas than asked confirmed the batch in time, none of it counts as published.
// With asking (n is importing key's slot, see followMoves) each XADD is preceded by ASKING,
// and trimming waits for a publish after the migration.
func (d *Driver) publishTo(ctx context.Context, n *node, asking bool, stream, key string, msgs []driver.Message, ids []string) ([]string, error) {
	now := time.Now()
	minID, maxLen := d.retention.limits(stream, now)
	trims := 0
	if !asking && d.trims.due(key, now, len(msgs), maxLen) {
		trims = 1 + int(min(maxLen, 1))
	}
	head := xaddHead(key)
	base := len(ids)
	idBuf := arena{chunk: idBytes * len(msgs)}
	var trimErr, waitErr error
	var extraRead time.Duration
	if d.minReplicas > 0 {
		extraRead = d.waitTimeout
	}
	err := n.pool.roundTrip(ctx, extraRead, func(c *respConn) {
		for i := range msgs {
			if asking {
				c.appendCommand("asking")
			}
			c.appendXAdd(key, head, &msgs[i])
		}
		if trims > 0 { // after the batch's entries: trimming is housekeeping, see trimSchedule
			c.appendCommand("xtrim", key, "minid", "~", minID)
		}
		if trims > 1 {
			c.appendCommand("xtrim", key, "maxlen", "~", strconv.FormatInt(maxLen, 10))
		}
		if d.minReplicas > 0 {
			c.appendCommand("wait", strconv.Itoa(d.minReplicas), strconv.FormatInt(d.waitTimeout.Milliseconds(), 10))
		}
	}, func(c *respConn) (int, error) {
		ids, trimErr, waitErr = ids[:base], nil, nil // a retry reads afresh
		var failed error
		var reply respError
		for i := range msgs {
			if asking { // an error reply here shows in the XADD's too: ASK or MOVED
				if err := c.askingReply(); err != nil && !errors.As(err, &reply) {
					return i, err
				}
			}
			id, err := c.reply(&idBuf)
			switch {
			case errors.As(err, &reply):
				failed = cmp.Or(failed, err) // the rest are read, to keep the connection in step
			case err != nil:
				return i, err
			case failed == nil:
				ids = append(ids, unsafe.String(unsafe.SliceData(id), len(id)))
			}
		}
		for i := range trims {
			_, err := c.reply(nil)
			switch {
			case errors.As(err, &reply):
				trimErr = err
			case err != nil:
				return len(msgs) + i, err
			}
		}
		if d.minReplicas > 0 {
			got, err := c.reply(nil)
			if err != nil && !errors.As(err, &reply) {
				return len(msgs) + trims, err
			}
			n, perr := strconv.ParseInt(string(got), 10, 64)
			if err == nil && perr != nil {
				err = fmt.Errorf("redis: WAIT answered %q", got)
			}
			waitErr = d.checkReplicas(n, err)
		}
		return len(msgs) + trims + min(d.minReplicas, 1), failed
	})
	if trimErr != nil { // the messages are stored: trimming waits for the next publish
		d.log.Warn("trimming failed", "key", key, "err", trimErr)
	}
	if err == nil && waitErr != nil {
		return ids[:base], waitErr
	}
	return ids, err
}

// checkReplicas judges WAIT's answer, got replicas (or its error): nil when at least
// PULSE_REDIS_MIN_REPLICAS replicas have the connection's writes.
func (d *Driver) checkReplicas(got int64, err error) error {
	if err != nil {
		return fmt.Errorf("%w: WAIT for %d replicas: %w", transport.ErrUnavailable, d.minReplicas, err)
	}
	if got < int64(d.minReplicas) {
		return fmt.Errorf("%w: stored on the primary, but %d of the %d replicas PULSE_REDIS_MIN_REPLICAS asks for confirmed it within %s (PULSE_REDIS_WAIT_TIMEOUT)",
			transport.ErrUnavailable, got, d.minReplicas, d.waitTimeout)
	}
	return nil
}

// Subscribe joins group on stream as opts.Consumer. The group is created if it does not exist
// (XGROUP CREATE … 0 MKSTREAM: from the start of the retained stream, so nothing published
// before the group existed is missed; BUSYGROUP means it exists and is success).
// opts.MaxDeliveries is not enforced here: the Bus dead-letters on the last attempt.
func (d *Driver) Subscribe(ctx context.Context, stream string, opts driver.SubscribeOptions) (driver.Subscription, error) {
	if d.isClosed() {
		return nil, transport.ErrClosed
	}
	if !transport.ValidStreamName(stream) {
		return nil, fmt.Errorf("redis: invalid stream name %q (accepted: dot-separated tokens of letters, digits, '_' and '-')", stream)
	}
	if opts.Group == "" || opts.Consumer == "" {
		return nil, fmt.Errorf("redis: subscribe to %s: group and consumer names are required", stream)
	}
	s := newSubscription(d, stream, opts)
	if err := s.createGroup(ctx); err != nil {
		s.Close()
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		s.Close()
		return nil, transport.ErrClosed
	}
	d.subs[s] = struct{}{}
	return s, nil
}

func (d *Driver) forget(s *subscription) {
	d.mu.Lock()
	delete(d.subs, s)
	d.mu.Unlock()
}

// Close closes the subscriptions still open (see their Close) and the connection pool. It is
// idempotent.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	subs := slices.Collect(maps.Keys(d.subs))
	d.mu.Unlock()
	for _, s := range subs {
		s.Close()
	}
	d.gone.Store(true)
	d.nodes.close()
	if err := d.client.Close(); err != nil && !errors.Is(err, goredis.ErrClosed) {
		return fmt.Errorf("redis: close: %w", err)
	}
	return nil
}

// IdempotencyStore returns the shared record of handled ids: one key per id,
// `{ns}:idem:{key}`, written with SET NX PX ttl, so that every replica and every restart sees
// it until it expires. It lives as long as the driver.
func (d *Driver) IdempotencyStore(_ context.Context, ttl time.Duration) (driver.IdempotencyStore, error) {
	if d.isClosed() {
		return nil, transport.ErrClosed
	}
	if ttl <= 0 {
		ttl = transport.DefaultIdempotencyTTL
	}
	return &idempotencyStore{d: d, prefix: d.ns + IdempotencyKeyInfix, ttl: ttl}, nil
}

type idempotencyStore struct {
	d      *Driver
	prefix string
	ttl    time.Duration
}

// Seen implements transport.IdempotencyStore.
func (s *idempotencyStore) Seen(ctx context.Context, key string) (bool, error) {
	n, err := s.d.client.Exists(ctx, s.prefix+key).Result()
	if err != nil {
		return false, s.d.wrap("idempotency record", err)
	}
	return n == 1, nil
}

// Done implements transport.IdempotencyStore: SET key 1 NX PX ttl (an existing record is
// kept, with its expiry).
func (s *idempotencyStore) Done(ctx context.Context, key string) error {
	err := s.d.client.SetArgs(ctx, s.prefix+key, "1", goredis.SetArgs{Mode: "NX", TTL: s.ttl}).Err()
	if errors.Is(err, goredis.Nil) { // NX and already there
		err = nil
	}
	return s.d.wrap("idempotency record", err)
}

// wrap turns a go-redis error into the driver's: context errors pass through unwrapped; a
// closed driver is transport.ErrClosed; a broker that cannot be reached (connection refused
// or lost, timeouts, a Redis still loading or without a master) wraps
// transport.ErrUnavailable; anything else Redis answered is wrapped as is.
func (d *Driver) wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return err
	case (errors.Is(err, goredis.ErrClosed) || errors.Is(err, errPoolClosed)) && d.gone.Load():
		return transport.ErrClosed
	case unavailable(err):
		return fmt.Errorf("redis: %s: %w: %w", op, transport.ErrUnavailable, err)
	default:
		return fmt.Errorf("redis: %s: %w", op, err)
	}
}

// unavailable reports whether err means Redis cannot serve right now rather than that it
// refused this command.
func unavailable(err error) bool {
	var rerr goredis.Error
	if !errors.As(err, &rerr) {
		return true // dial, I/O, timeout, pool: nothing was answered
	}
	msg := rerr.Error()
	return hasPrefix(msg, transientStates...) || hasPrefix(msg, "BUSY ", "MISCONF")
}

// isNoGroup reports a missing stream or group: NOGROUP (Redis restarted without persistence,
// was flushed, or the group was destroyed), or UNBLOCKED (the stream was deleted under a
// blocked XREADGROUP).
func isNoGroup(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "NOGROUP") || strings.HasPrefix(msg, "UNBLOCKED the stream key no longer exists")
}

// retention is how streams are trimmed: by age, and optionally by length.
type retention struct {
	maxAge time.Duration // entries older than this are trimmed (MINID ~)
	maxLen int64         // 0, or the most entries a (non-dead-letter) stream keeps (MAXLEN ~)
}

// retentionFor checks the retention settings against the retry schedule: trimming by age must
// never remove an entry that is still being retried, so the age must exceed the longest
// schedule, MaxDeliveries × (AckWait + RetryBackoffMax).
func retentionFor(cfg transport.Config) (retention, error) {
	def := func(v, d time.Duration) time.Duration {
		if v == 0 {
			return d
		}
		return v
	}
	maxAge := def(cfg.StreamMaxAge, transport.DefaultStreamMaxAge)
	maxDeliveries := cfg.MaxDeliveries
	if maxDeliveries == 0 {
		maxDeliveries = transport.DefaultMaxDeliveries
	}
	schedule := time.Duration(maxDeliveries) * (def(cfg.AckWait, transport.DefaultAckWait) + def(cfg.RetryBackoffMax, transport.DefaultRetryBackoffMax))
	if maxAge < schedule {
		return retention{}, &envconf.Error{Var: "PULSE_STREAM_MAX_AGE", Value: maxAge.String(),
			Accepted: "a duration of at least PULSE_MAX_DELIVERIES × (PULSE_ACK_WAIT + the longest retry backoff) = " + schedule.String() +
				", so that trimming never removes a message that is still being retried"}
	}
	if cfg.StreamMaxLen < 0 {
		return retention{}, &envconf.Error{Var: "PULSE_STREAM_MAX_LEN", Value: strconv.FormatInt(cfg.StreamMaxLen, 10), Accepted: "0 (unlimited) or a positive number of messages"}
	}
	return retention{maxAge: maxAge, maxLen: cfg.StreamMaxLen}, nil
}

// limits returns the MINID threshold for an XADD at now and the MAXLEN to trim to (0: none).
// Dead-letter streams are trimmed by age only: a burst of failures must not push dead letters
// out before an operator has seen them.
func (r retention) limits(stream string, now time.Time) (minID string, maxLen int64) {
	minID = strconv.FormatInt(now.Add(-r.maxAge).UnixMilli(), 10)
	if !strings.HasSuffix(stream, transport.DLQSuffix) {
		maxLen = r.maxLen
	}
	return minID, maxLen
}

// How often a publish also trims its stream. Trimming is housekeeping, and a round trip's
// last command: once per batch it cost ~10% of publishing throughput at a few hundred
// thousand messages a second (measured with 4 batches of 256 in flight), for a precision
// nobody needs — a max age is at least the retry schedule, minutes to days. So a stream is
// trimmed by its first publish through the driver, then at most once per trimEvery, and, when
// it has a max length, also once a maxLenSlack-th of that length has been published since
// the last trim: the stream overshoots its max length by at most about that much (plus what
// `~` leaves), whatever the rate.
const (
	trimEvery   = time.Second
	maxLenSlack = 8
)

// trimSchedule decides which publishes trim their stream. It keeps one small record per
// stream key the driver has published to.
type trimSchedule struct {
	mu   sync.Mutex
	keys map[string]*trimState
}

type trimState struct {
	last  time.Time // the last trim
	since int64     // entries published since
}

// due records that n entries are published to key at now and reports whether this publish
// trims the stream (maxLen > 0: the stream is also trimmed by length).
func (t *trimSchedule) due(key string, now time.Time, n int, maxLen int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.keys[key]
	if st == nil {
		st = &trimState{}
		t.keys[key] = st
	}
	st.since += int64(n)
	byLength := maxLen > 0 && st.since >= max(maxLen/maxLenSlack, 1)
	if !byLength && now.Sub(st.last) < trimEvery {
		return false
	}
	st.last, st.since = now, 0
	return true
}
