package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/pulse-bus/pulse/transport"
)

// Tuning of a subscription, defined once.
const (
	// maxBlock is the longest one XREADGROUP blocks. A read blocks less when a delayed
	// redelivery or an idle-entry scan falls due sooner; cancellation does not wait for it
	// (the blocked connection is closed).
	maxBlock = time.Second
	// minClaimEvery and maxClaimEvery bound how often idle entries of other members are
	// looked for (AckWait/4 in between): an entry is redelivered between AckWait and AckWait
	// plus this after its last delivery.
	minClaimEvery = 10 * time.Millisecond
	maxClaimEvery = 2 * time.Second
	// maxDelayed bounds the redeliveries a subscription keeps waiting locally; while that
	// many wait, it reads no new entries.
	maxDelayed = 10_000
	// regroupEvery is the least time between two re-creations of a missing group: a group
	// that keeps vanishing makes Receive return errors (which the Bus backs off on) instead
	// of looping.
	regroupEvery = time.Second
	// touchFraction: an entry waiting for a delayed redelivery is touched (its idle time
	// reset) once idle for AckWait/touchFraction. A quarter leaves room for Redis overshooting
	// a blocking read's timeout (it checks them about every 100 ms at the default hz 10).
	touchFraction = 4
	// releaseTimeout bounds handing delayed entries back to the group on Close.
	releaseTimeout = 2 * time.Second
)

// subscription is one consumer of a group. Receive is called from one goroutine; Ack, Nak,
// Term and Close from any.
type subscription struct {
	d          *Driver
	stream     string
	key        string
	group      string
	consumer   string
	ackWait    time.Duration
	claimEvery time.Duration
	log        *slog.Logger

	readerMu sync.Mutex
	reader   *goredis.Client // blocking reads only; nil until needed and after an interrupt
	closed   bool

	delayMu sync.Mutex
	delayed delayQueue
	wake    chan struct{} // signalled (never blocking) when a redelivery is scheduled

	// Used by the Receive goroutine only.
	nextClaim   time.Time
	claimCursor string
	lastRegroup time.Time
}

// batchInfo is the Handle of every delivery of one Receive: when it was handed out (the start
// of its AckWait as far as this member knows) and by whom.
type batchInfo struct {
	sub *subscription
	at  time.Time
}

func newSubscription(d *Driver, stream string, o transport.DriverSubscribeOptions) *subscription {
	ackWait := o.AckWait
	if ackWait <= 0 {
		ackWait = transport.DefaultAckWait
	}
	return &subscription{
		d:           d,
		stream:      stream,
		key:         d.key(stream),
		group:       o.Group,
		consumer:    o.Consumer,
		ackWait:     ackWait,
		claimEvery:  min(max(ackWait/4, minClaimEvery), maxClaimEvery),
		log:         d.log.With("stream", stream, "group", o.Group, "consumer", o.Consumer),
		delayed:     newDelayQueue(ackWait / touchFraction),
		wake:        make(chan struct{}, 1),
		claimCursor: "0-0",
	}
}

// createGroup creates the group from the start of the stream (and the stream if missing);
// BUSYGROUP, the group exists, is success.
func (s *subscription) createGroup(ctx context.Context) error {
	err := s.d.client.XGroupCreateMkStream(ctx, s.key, s.group, "0").Err()
	if err != nil && strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return nil
	}
	return s.d.wrap(fmt.Sprintf("create group %s on %s", s.group, s.key), err)
}

// regroup recreates a group that vanished (NOGROUP). It reports whether the caller may go on;
// otherwise it returns the error to hand to the Bus, which backs off.
func (s *subscription) regroup(ctx context.Context, cause error) error {
	if time.Since(s.lastRegroup) < regroupEvery {
		return s.d.wrap("read "+s.key, cause)
	}
	s.lastRegroup = time.Now()
	s.log.Warn("consumer group missing (Redis restarted without persistence, was flushed, or the group was destroyed); recreating it from the start of the stream", "err", cause)
	return s.createGroup(ctx)
}

func (s *subscription) isClosed() bool {
	s.readerMu.Lock()
	defer s.readerMu.Unlock()
	return s.closed
}

// Receive returns up to max deliveries, trying in this order: this member's own delayed
// redeliveries that are due (claimed again with XCLAIM, which counts a delivery); entries idle
// longer than AckWait on any member of the group, dead or stuck (XAUTOCLAIM, at most every
// AckWait/4); new entries (XREADGROUP >, blocking at most a second, less when a redelivery or
// a scan falls due sooner). It blocks until it has at least one delivery, ctx is done (then it
// returns ctx.Err() at once: a blocked read is interrupted), the subscription is closed
// (transport.ErrClosed) or Redis fails (an error wrapping transport.ErrUnavailable while it is
// away). A missing group (NOGROUP: Redis restarted empty) is recreated, at most once a second.
//
// Attempt is Redis's delivery count of the entry in the group's pending entries list right
// after this delivery: 1 for a first read, and one more for every XCLAIM/XAUTOCLAIM since.
func (s *subscription) Receive(ctx context.Context, limit int) ([]*transport.RawDelivery, error) {
	limit = min(max(limit, 1), maxDelayed)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if s.isClosed() {
			return nil, transport.ErrClosed
		}
		now := time.Now()
		if err := s.touchDelayed(ctx, now); err != nil {
			return nil, err
		}
		ds, err := s.redeliverDue(ctx, now, limit)
		if err != nil || len(ds) > 0 {
			return ds, err
		}
		if !now.Before(s.nextClaim) {
			ds, err := s.claimIdle(ctx, now, limit)
			if isNoGroup(err) {
				if err = s.regroup(ctx, err); err == nil {
					continue
				}
			}
			if err != nil || len(ds) > 0 {
				return ds, err
			}
		}
		wait := s.untilNext(now)
		if s.delayedLen() >= maxDelayed {
			// Enough is waiting for redelivery: take no new entries until some are settled.
			if !s.sleep(ctx, wait) {
				return nil, ctx.Err()
			}
			continue
		}
		ds, err = s.readNew(ctx, limit, wait)
		if isNoGroup(err) {
			if err = s.regroup(ctx, err); err == nil {
				continue
			}
		}
		if err != nil || len(ds) > 0 {
			return ds, err
		}
	}
}

// untilNext is how long Receive may wait for new entries before it has other work: a delayed
// redelivery falling due or needing a touch, or the next scan for idle entries.
func (s *subscription) untilNext(now time.Time) time.Duration {
	wait := min(maxBlock, s.nextClaim.Sub(now))
	s.delayMu.Lock()
	if due, touch, ok := s.delayed.next(); ok {
		wait = min(wait, due.Sub(now), touch.Sub(now))
	}
	s.delayMu.Unlock()
	return max(wait, time.Millisecond)
}

// sleep waits for d, a newly scheduled redelivery, or ctx; it reports whether ctx is live.
func (s *subscription) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.wake:
	case <-ctx.Done():
		return false
	}
	return true
}

// readerClient returns the subscription's reading client, creating it if needed.
func (s *subscription) readerClient() (*goredis.Client, error) {
	s.readerMu.Lock()
	defer s.readerMu.Unlock()
	if s.closed {
		return nil, transport.ErrClosed
	}
	if s.reader == nil {
		o := *s.d.opts
		o.PoolSize = 1
		o.MinIdleConns = 0
		o.MaxIdleConns = 1
		o.MaxRetries = -1 // a failed read goes back to the Bus, which backs off
		s.reader = goredis.NewClient(&o)
	}
	return s.reader, nil
}

// dropReader closes c, if it is still the reading client, so that a read blocked on it
// returns at once; the next read connects again.
func (s *subscription) dropReader(c *goredis.Client) {
	s.readerMu.Lock()
	if s.reader == c {
		s.reader = nil
	}
	s.readerMu.Unlock()
	c.Close()
}

func (s *subscription) closeReader() {
	s.readerMu.Lock()
	c := s.reader
	s.reader = nil
	s.closed = true
	s.readerMu.Unlock()
	if c != nil {
		c.Close()
	}
}

// readNew reads entries never delivered to the group (XREADGROUP … >), blocking up to block.
func (s *subscription) readNew(ctx context.Context, count int, block time.Duration) ([]*transport.RawDelivery, error) {
	c, err := s.readerClient()
	if err != nil {
		return nil, err
	}
	interrupted := false
	stop := context.AfterFunc(ctx, func() { s.dropReader(c) })
	res, err := c.XReadGroup(ctx, &goredis.XReadGroupArgs{
		Group:    s.group,
		Consumer: s.consumer,
		Streams:  []string{s.key, ">"},
		Count:    int64(count),
		Block:    block,
	}).Result()
	if !stop() {
		interrupted = true
	}
	switch {
	case err == nil:
	case errors.Is(err, goredis.Nil): // nothing arrived while blocked
		return nil, nil
	case interrupted:
		return nil, ctx.Err()
	case errors.Is(err, goredis.ErrClosed) && s.isClosed():
		return nil, transport.ErrClosed
	default:
		if !isNoGroup(err) {
			s.dropReader(c) // its connection may be broken; the next read dials afresh
		}
		return nil, s.d.wrap("read "+s.key, err)
	}
	var msgs []goredis.XMessage
	for _, st := range res {
		msgs = append(msgs, st.Messages...)
	}
	return s.deliveries(msgs, nil), nil
}

// deliveries turns entries into deliveries sharing one Handle. attempts gives each entry's
// delivery count (nil: first deliveries, 1).
func (s *subscription) deliveries(msgs []goredis.XMessage, attempts []int) []*transport.RawDelivery {
	if len(msgs) == 0 {
		return nil
	}
	info := &batchInfo{sub: s, at: time.Now()}
	slab := make([]transport.RawDelivery, 0, len(msgs))
	out := make([]*transport.RawDelivery, 0, len(msgs))
	for i, m := range msgs {
		attempt := 1
		if attempts != nil {
			attempt = attempts[i]
		}
		slab = append(slab, transport.RawDelivery{RawMessage: toRawMessage(m.Values), TransportID: m.ID, Attempt: attempt, Handle: info})
		out = append(out, &slab[len(slab)-1])
	}
	return out
}

// toRawMessage reads an entry's fields: `data` is the body, every other field a header (dead
// letters carry their metadata so). An entry without `data` (not written by Pulse or the
// Python core) gets an empty body, which the Bus dead-letters as malformed.
func toRawMessage(values map[string]any) transport.RawMessage {
	data, _ := values[DataField].(string)
	m := transport.RawMessage{Body: []byte(data)}
	if len(values) > 1 {
		m.Headers = make(map[string]string, len(values)-1)
		for k, v := range values {
			if k != DataField {
				m.Headers[k] = fmt.Sprint(v)
			}
		}
	}
	return m
}

// claimIdle claims up to count entries of the group idle for at least AckWait, whichever
// member holds them, with XAUTOCLAIM; the delivery counts come from XPENDING in the same
// script. The scan resumes where the last one stopped; a completed scan waits claimEvery
// before the next.
func (s *subscription) claimIdle(ctx context.Context, now time.Time, count int) ([]*transport.RawDelivery, error) {
	res, err := autoClaimScript.Run(ctx, s.d.client, []string{s.key},
		s.group, s.consumer, s.ackWait.Milliseconds(), s.claimCursor, count).Slice()
	if err != nil {
		if !isNoGroup(err) {
			s.nextClaim = now.Add(s.claimEvery)
		}
		return nil, s.d.wrap("claim idle entries of "+s.key, err)
	}
	cursor, msgs, attempts, deleted, err := parseAutoClaim(res)
	if err != nil {
		s.nextClaim = now.Add(s.claimEvery)
		return nil, fmt.Errorf("redis: claim idle entries of %s: %w", s.key, err)
	}
	s.claimCursor = cursor
	if cursor == "0-0" {
		s.nextClaim = now.Add(s.claimEvery)
	}
	if len(deleted) > 0 {
		s.log.Warn("pending entries were trimmed or deleted before they were acknowledged; they are lost (see retention in the driver documentation)", "count", len(deleted), "ids", deleted)
	}
	if len(msgs) > 0 {
		s.log.Debug("claimed idle entries", "count", len(msgs))
		ids := make([]string, len(msgs))
		for i, m := range msgs {
			ids[i] = m.ID
		}
		s.forgetDelayed(ids) // a delayed entry of ours that went idle too long is delivered now
	}
	return s.deliveries(msgs, attempts), nil
}

// Ack acknowledges ds with one XACK. Ids that are no longer pending (acked already, or the
// stream vanished with a Redis restart) are no error.
func (s *subscription) Ack(ctx context.Context, ds []*transport.RawDelivery) error {
	if len(ds) == 0 {
		return nil
	}
	ids := make([]string, len(ds))
	for i, d := range ds {
		ids[i] = d.TransportID
	}
	return s.ack(ctx, "ack", ids)
}

func (s *subscription) ack(ctx context.Context, op string, ids []string) error {
	if s.d.isClosed() {
		return transport.ErrClosed
	}
	s.forgetDelayed(ids)
	return s.d.wrap(op+" on "+s.key, s.d.client.XAck(ctx, s.key, s.group, ids...).Err())
}

// Nak schedules d for redelivery to this member after delay. The entry stays pending under
// this consumer and nothing is sent to Redis now: once delay has passed, Receive claims it
// again (XCLAIM, which counts the next attempt) and hands it out. While it waits longer than
// a quarter of AckWait, Receive keeps it from looking idle to the group (XCLAIM … JUSTID, which
// does not count an attempt). If this member dies meanwhile, another takes it over with
// XAUTOCLAIM once it has been idle for AckWait.
func (s *subscription) Nak(_ context.Context, d *transport.RawDelivery, delay time.Duration) error {
	if s.isClosed() {
		return transport.ErrClosed
	}
	seen := time.Now()
	if info, ok := d.Handle.(*batchInfo); ok && info.sub == s {
		seen = info.at
	}
	s.delayMu.Lock()
	s.delayed.schedule(d.TransportID, time.Now().Add(max(delay, 0)), seen)
	s.delayMu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// Term acknowledges d for good: the Bus has written its dead-letter copy.
func (s *subscription) Term(ctx context.Context, d *transport.RawDelivery) error {
	return s.ack(ctx, "terminate", []string{d.TransportID})
}

func (s *subscription) delayedLen() int {
	s.delayMu.Lock()
	defer s.delayMu.Unlock()
	return s.delayed.Len()
}

func (s *subscription) forgetDelayed(ids []string) {
	s.delayMu.Lock()
	defer s.delayMu.Unlock()
	if s.delayed.Len() == 0 {
		return
	}
	for _, id := range ids {
		s.delayed.remove(id)
	}
}

// redeliverDue claims this member's delayed entries that are due back to itself (XCLAIM,
// counting the attempt) and returns them. Entries no longer pending under this consumer
// (taken over by another member, or settled) are dropped; entries deleted from the stream
// are logged as lost. On error the entries stay scheduled.
func (s *subscription) redeliverDue(ctx context.Context, now time.Time, count int) ([]*transport.RawDelivery, error) {
	s.delayMu.Lock()
	ids := s.delayed.popDue(now, count)
	s.delayMu.Unlock()
	if len(ids) == 0 {
		return nil, nil
	}
	args := make([]any, 0, 2+len(ids))
	args = append(args, s.group, s.consumer)
	for _, id := range ids {
		args = append(args, id)
	}
	res, err := claimOwnScript.Run(ctx, s.d.client, []string{s.key}, args...).Slice()
	if isNoGroup(err) {
		return nil, nil // Redis restarted empty: the entries went with it; the next read recreates the group
	}
	var msgs []goredis.XMessage
	var attempts []int
	var deleted []string
	if err == nil {
		msgs, attempts, deleted, err = parseClaimOwn(res)
	}
	if err != nil {
		s.delayMu.Lock()
		for _, id := range ids {
			s.delayed.schedule(id, now, now)
		}
		s.delayMu.Unlock()
		return nil, s.d.wrap("redeliver on "+s.key, err)
	}
	if len(deleted) > 0 {
		s.log.Warn("entries waiting for redelivery were trimmed or deleted; they are lost (see retention in the driver documentation)", "count", len(deleted), "ids", deleted)
	}
	return s.deliveries(msgs, attempts), nil
}

// touchDelayed resets the idle time of delayed entries that have waited AckWait/4 since
// they were handed out or last touched (XCLAIM … JUSTID: no attempt is counted), so that no
// member takes them over before their delay has passed. Entries found no longer pending under
// this consumer are dropped.
func (s *subscription) touchDelayed(ctx context.Context, now time.Time) error {
	s.delayMu.Lock()
	ids := s.delayed.needTouch(now)
	s.delayMu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	lost, err := s.setIdle(ctx, ids, 0)
	s.delayMu.Lock()
	defer s.delayMu.Unlock()
	if err != nil {
		if isNoGroup(err) {
			for _, id := range ids {
				s.delayed.remove(id)
			}
			return nil // Receive's read meets the NOGROUP and recreates the group
		}
		s.delayed.touchFailed()
		return s.d.wrap("keep delayed entries of "+s.key, err)
	}
	s.log.Debug("kept delayed entries from going idle", "count", len(ids), "lost", len(lost))
	for _, id := range ids {
		s.delayed.touched(id, now)
	}
	for _, id := range lost {
		s.delayed.remove(id)
	}
	return nil
}

// setIdle sets the idle time of those of ids still pending under this consumer, without
// counting a delivery, and returns the others.
func (s *subscription) setIdle(ctx context.Context, ids []string, idle time.Duration) ([]string, error) {
	args := make([]any, 0, 3+len(ids))
	args = append(args, s.group, s.consumer, idle.Milliseconds())
	for _, id := range ids {
		args = append(args, id)
	}
	return setIdleScript.Run(ctx, s.d.client, []string{s.key}, args...).StringSlice()
}

// Close stops the subscription: a Receive in progress returns transport.ErrClosed. Entries
// still waiting for a delayed redelivery are handed back to the group at once (their idle
// time set to AckWait, no attempt counted), so that another member's next XAUTOCLAIM takes
// them; unsettled deliveries are redelivered after AckWait. The consumer stays registered in
// the group (XGROUP DELCONSUMER would drop its pending entries). Close is idempotent.
func (s *subscription) Close() error {
	s.readerMu.Lock()
	if s.closed {
		s.readerMu.Unlock()
		return nil
	}
	s.readerMu.Unlock()
	s.closeReader()
	s.d.forget(s)

	s.delayMu.Lock()
	ids := s.delayed.all()
	s.delayed = newDelayQueue(s.ackWait / touchFraction)
	s.delayMu.Unlock()
	if len(ids) == 0 || s.d.isClosed() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if _, err := s.setIdle(ctx, ids, s.ackWait); err != nil && !isNoGroup(err) {
		s.log.Warn("could not hand delayed entries back to the group; they are redelivered after AckWait", "count", len(ids), "err", err)
	}
	return nil
}

// parseAutoClaim reads autoClaimScript's reply: {cursor, {{id, count, {field, value…}}…}, {deleted id…}}.
func parseAutoClaim(res []any) (cursor string, msgs []goredis.XMessage, attempts []int, deleted []string, err error) {
	if len(res) != 3 {
		return "", nil, nil, nil, fmt.Errorf("unexpected reply of %d elements", len(res))
	}
	cursor, ok := res[0].(string)
	if !ok {
		return "", nil, nil, nil, fmt.Errorf("unexpected cursor %T", res[0])
	}
	msgs, attempts, err = parseEntries(res[1])
	if err != nil {
		return "", nil, nil, nil, err
	}
	deleted, err = parseStrings(res[2])
	return cursor, msgs, attempts, deleted, err
}

// parseClaimOwn reads claimOwnScript's reply: {{{id, count, {field, value…}}…}, {deleted id…}}.
func parseClaimOwn(res []any) (msgs []goredis.XMessage, attempts []int, deleted []string, err error) {
	if len(res) != 2 {
		return nil, nil, nil, fmt.Errorf("unexpected reply of %d elements", len(res))
	}
	if msgs, attempts, err = parseEntries(res[0]); err != nil {
		return nil, nil, nil, err
	}
	deleted, err = parseStrings(res[1])
	return msgs, attempts, deleted, err
}

func parseEntries(v any) ([]goredis.XMessage, []int, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, nil, fmt.Errorf("unexpected entry list %T", v)
	}
	msgs := make([]goredis.XMessage, 0, len(list))
	attempts := make([]int, 0, len(list))
	for _, e := range list {
		t, ok := e.([]any)
		if !ok || len(t) != 3 {
			return nil, nil, fmt.Errorf("unexpected entry %v", e)
		}
		id, _ := t[0].(string)
		n, _ := t[1].(int64)
		kv, ok := t[2].([]any)
		if id == "" || n < 1 || !ok || len(kv)%2 != 0 {
			return nil, nil, fmt.Errorf("unexpected entry %v", e)
		}
		values := make(map[string]any, len(kv)/2)
		for i := 0; i < len(kv); i += 2 {
			k, _ := kv[i].(string)
			values[k] = kv[i+1]
		}
		msgs = append(msgs, goredis.XMessage{ID: id, Values: values})
		attempts = append(attempts, int(n))
	}
	return msgs, attempts, nil
}

func parseStrings(v any) ([]string, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("unexpected id list %T", v)
	}
	out := make([]string, 0, len(list))
	for _, e := range list {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("unexpected id %v", e)
		}
		out = append(out, s)
	}
	return out, nil
}

// The scripts run atomically on the stream's key (one key: Redis Cluster safe).
var (
	// autoClaimScript: XAUTOCLAIM, then each claimed entry's delivery count (XPENDING), which
	// the claim has just increased. Entries deleted from the stream (Redis 7 drops them from
	// the pending list and lists them third) are returned for logging.
	// KEYS[1] stream; ARGV group, consumer, min-idle ms, cursor, count.
	autoClaimScript = goredis.NewScript(`
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {}
for _, e in ipairs(r[2]) do
  if e[2] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    out[#out + 1] = {e[1], p[1][4], e[2]}
  end
end
return {r[1], out, r[3] or {}}
`)

	// claimOwnScript: for each id still pending under this consumer, XCLAIM it to itself
	// (counting one more delivery) and return it with its new delivery count; ids pending
	// under another consumer or not at all are skipped; ids whose entry was deleted are
	// acknowledged (cleared from the pending list) and returned second.
	// KEYS[1] stream; ARGV group, consumer, id…
	claimOwnScript = goredis.NewScript(`
local out, deleted = {}, {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #p == 1 then
    local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)
    if #c == 1 and c[1][2] then
      out[#out + 1] = {id, p[1][4] + 1, c[1][2]}
    else
      redis.call('XACK', KEYS[1], ARGV[1], id)
      deleted[#deleted + 1] = id
    end
  end
end
return {out, deleted}
`)

	// setIdleScript: for each id still pending under this consumer, set its idle time
	// (XCLAIM … IDLE ms JUSTID: no delivery is counted); return the ids that were not.
	// KEYS[1] stream; ARGV group, consumer, idle ms, id…
	setIdleScript = goredis.NewScript(`
local lost = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #p == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[3], 'JUSTID')
  else
    lost[#lost + 1] = id
  end
end
return lost
`)
)
