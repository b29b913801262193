package redis

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// sub subscribes on d and closes the subscription at cleanup.
func sub(t *testing.T, d *Driver, stream, group, consumer string, ackWait time.Duration) driver.Subscription {
	t.Helper()
	s, err := d.Subscribe(context.Background(), stream, driver.SubscribeOptions{
		Group: group, Consumer: consumer, AckWait: ackWait, MaxDeliveries: 5, BatchSize: 16,
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

// receive calls Receive with a deadline and fails the test on error.
func receive(t *testing.T, s driver.Subscription, limit int) []*driver.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ds, err := s.Receive(ctx, limit)
	require.NoError(t, err)
	require.NotEmpty(t, ds)
	return ds
}

// receiveN receives until it has n deliveries.
func receiveN(t *testing.T, s driver.Subscription, n int) []*driver.Delivery {
	t.Helper()
	var all []*driver.Delivery
	for len(all) < n {
		all = append(all, receive(t, s, n-len(all))...)
	}
	return all
}

// pendingCount is Redis's delivery count of id in group (0 if not pending).
func pendingCount(t *testing.T, c *goredis.Client, key, group, id string) int64 {
	t.Helper()
	p, err := pendingEntry(context.Background(), c, key, group, id)
	require.NoError(t, err)
	if len(p) == 0 {
		return 0
	}
	return p[0].RetryCount
}

// publish publishes msgs to stream on d and returns their entry ids; an error fails the test.
func publish(t *testing.T, d *Driver, stream string, msgs []driver.Message) []string {
	t.Helper()
	ids, err := d.Publish(context.Background(), stream, msgs)
	require.NoError(t, err)
	return ids
}

// pendingEntry is Redis's pending-list entry for id in group (none if id is not pending).
func pendingEntry(ctx context.Context, c *goredis.Client, key, group, id string) ([]goredis.XPendingExt, error) {
	return c.XPendingExt(ctx, &goredis.XPendingExtArgs{Stream: key, Group: group, Start: id, End: id, Count: 1}).Result()
}

// storedIDs is the entry ids Range visits on stream with limit; an error fails the test.
func storedIDs(t *testing.T, d *Driver, stream string, limit int) []string {
	t.Helper()
	var ids []string
	require.NoError(t, d.Range(context.Background(), stream, limit, func(m driver.StoredMessage) error {
		ids = append(ids, m.TransportID)
		return nil
	}))
	return ids
}

func bodies(n int) []driver.Message {
	msgs := make([]driver.Message, n)
	for i := range msgs {
		msgs[i] = driver.Message{Body: []byte(fmt.Sprintf(`{"n":%d}`, i))}
	}
	return msgs
}

// TestPublishLayoutAndReceive proves the wire layout of docs/contract.md §1–2 (key `{ns}:{S}`, one
// field `data` holding the bytes), that Publish returns the entry ids in order, and that a
// group created after the publish still reads every entry from the start, each as attempt 1,
// and that one Ack clears them all from the pending list.
func TestPublishLayoutAndReceive(t *testing.T) {
	cfg, d, c := driverAndClient(t)
	ctx := context.Background()

	ids := publish(t, d, "telemetry.feedback", bodies(3))
	require.Len(t, ids, 3)

	key := cfg.Namespace + ":telemetry.feedback"
	entries, err := c.XRange(ctx, key, "-", "+").Result()
	require.NoError(t, err)
	require.Len(t, entries, 3)
	for i, e := range entries {
		require.Equal(t, ids[i], e.ID)
		require.Equal(t, map[string]any{"data": fmt.Sprintf(`{"n":%d}`, i)}, e.Values)
	}

	s := sub(t, d, "telemetry.feedback", "g", "c1", time.Minute)
	ds := receiveN(t, s, 3)
	for i, dl := range ds {
		require.Equal(t, ids[i], dl.TransportID)
		require.Equal(t, fmt.Sprintf(`{"n":%d}`, i), string(dl.Body))
		require.Equal(t, 1, dl.Attempt)
		require.False(t, dl.HasHeaders(), "%v", dl.HeaderMap())
		require.EqualValues(t, 1, pendingCount(t, c, key, "g", dl.TransportID))
	}
	require.NoError(t, s.Ack(ctx, ds))
	info, err := d.Info(ctx, "telemetry.feedback", "g")
	require.NoError(t, err)
	require.Equal(t, driver.StreamInfo{Length: 3, Pending: 0, Unread: 0}, info)
}

// TestDeadLetterLayout proves that headers travel as extra entry fields beside `data` (how
// dead letters carry original_id, reason, … on Redis) and come back as Headers, with the body
// unchanged.
func TestDeadLetterLayout(t *testing.T) {
	cfg, d, c := driverAndClient(t)
	ctx := context.Background()
	body := []byte(`{"not": "an envelope"}`)
	hdr := map[string]string{"original_id": "1-1", "reason": "malformed", "attempts": "1", "failed_at": "2025-01-01T00:00:00Z", "stream": "telemetry.feedback", "error": "boom"}
	publish(t, d, "telemetry.feedback.dlq", []driver.Message{{Body: body, Headers: hdr}})

	entries, err := c.XRange(ctx, cfg.Namespace+":telemetry.feedback.dlq", "-", "+").Result()
	require.NoError(t, err)
	require.Len(t, entries, 1)
	want := map[string]any{"data": string(body)}
	for k, v := range hdr {
		want[k] = v
	}
	require.Equal(t, want, entries[0].Values)

	var got []driver.StoredMessage
	require.NoError(t, d.Range(ctx, "telemetry.feedback.dlq", 0, func(m driver.StoredMessage) error {
		got = append(got, m)
		return nil
	}))
	require.Len(t, got, 1)
	require.Equal(t, body, got[0].Body)
	require.Equal(t, hdr, got[0].Headers)
}

// TestNakWaitsItsDelayAndCountsOneAttempt proves that Nak neither spins nor spends attempts:
// the entry is not handed out again before its delay, comes back once afterwards as attempt 2,
// and Redis's delivery count says 2 as well.
func TestNakWaitsItsDelayAndCountsOneAttempt(t *testing.T) {
	cfg, d, c := driverAndClient(t)
	ctx := context.Background()
	publish(t, d, "s", bodies(1))
	s := sub(t, d, "s", "g", "c1", time.Minute)

	first := receive(t, s, 10)
	require.Len(t, first, 1)
	const delay = 400 * time.Millisecond
	naked := time.Now()
	require.NoError(t, s.Nak(ctx, first[0], delay))

	again := receive(t, s, 10)
	require.GreaterOrEqual(t, time.Since(naked), delay, "redelivered before its delay")
	require.Len(t, again, 1)
	require.Equal(t, first[0].TransportID, again[0].TransportID)
	require.Equal(t, 2, again[0].Attempt)
	require.EqualValues(t, 2, pendingCount(t, c, cfg.Namespace+":s", "g", again[0].TransportID))
	require.Equal(t, first[0].Body, again[0].Body)
	require.NoError(t, s.Ack(ctx, again))
	require.EqualValues(t, 0, pendingCount(t, c, cfg.Namespace+":s", "g", again[0].TransportID))
}

// TestNakLongerThanAckWait proves that a delay longer than AckWait is honoured: while it
// waits, another member scanning for idle entries does not take it (the waiting member keeps
// it fresh without counting attempts), and it comes back to its member as attempt 2.
func TestNakLongerThanAckWait(t *testing.T) {
	cfg := testConfig(t)
	d1 := openDriver(t, cfg)
	d2 := openDriver(t, cfg)
	ctx := context.Background()
	publish(t, d1, "s", bodies(1))
	const ackWait = 200 * time.Millisecond
	s1 := sub(t, d1, "s", "g", "c1", ackWait)
	s2 := sub(t, d2, "s", "g", "c2", ackWait)

	first := receive(t, s1, 10)
	const delay = 5 * ackWait
	naked := time.Now()
	require.NoError(t, s1.Nak(ctx, first[0], delay))

	// c2 keeps scanning for idle entries until well after the delay; it must get nothing.
	stolen := make(chan []*driver.Delivery, 1)
	rctx, cancel := context.WithTimeout(ctx, delay+2*ackWait)
	defer cancel()
	go func() {
		ds, _ := s2.Receive(rctx, 10)
		stolen <- ds
	}()
	again := receive(t, s1, 10)
	require.GreaterOrEqual(t, time.Since(naked), delay)
	require.Equal(t, first[0].TransportID, again[0].TransportID)
	require.Equal(t, 2, again[0].Attempt)
	require.NoError(t, s1.Ack(ctx, again))
	require.Empty(t, <-stolen, "another member took an entry whose delay had not passed")
}

// TestIdleEntriesClaimedFromDeadMember proves that entries a member received and never
// settled (it went away) are claimed by another member once idle for AckWait, each counted as
// a further attempt, and that unrelated new entries are not held up meanwhile.
func TestIdleEntriesClaimedFromDeadMember(t *testing.T) {
	cfg := testConfig(t)
	dead := openDriver(t, cfg)
	ctx := context.Background()
	publish(t, dead, "s", bodies(3))
	const ackWait = 300 * time.Millisecond
	s1 := sub(t, dead, "s", "g", "dead", ackWait)
	lost := receiveN(t, s1, 3)
	require.NoError(t, dead.Close()) // dies without settling

	live := openDriver(t, cfg)
	s2 := sub(t, live, "s", "g", "live", ackWait)
	took := time.Now()
	got := receiveN(t, s2, 3)
	require.GreaterOrEqual(t, time.Since(took)+50*time.Millisecond, ackWait/2, "claimed long before AckWait")
	for i, dl := range got {
		require.Equal(t, lost[i].TransportID, dl.TransportID)
		require.Equal(t, 2, dl.Attempt)
	}
	require.NoError(t, s2.Ack(ctx, got))
	info, err := live.Info(ctx, "s", "g")
	require.NoError(t, err)
	require.Zero(t, info.Pending)
}

// TestCloseHandsDelayedEntriesBack proves that a member closing with entries waiting for a
// long delayed redelivery hands them back to the group: another member gets them after its
// next scan rather than after the delay, as the next attempt.
func TestCloseHandsDelayedEntriesBack(t *testing.T) {
	cfg := testConfig(t)
	d := openDriver(t, cfg)
	ctx := context.Background()
	publish(t, d, "s", bodies(1))
	const ackWait = 300 * time.Millisecond
	s1, err := d.Subscribe(ctx, "s", driver.SubscribeOptions{Group: "g", Consumer: "c1", AckWait: ackWait})
	require.NoError(t, err)
	first := receive(t, s1, 10)
	require.NoError(t, s1.Nak(ctx, first[0], time.Hour))
	require.NoError(t, s1.Close())
	require.NoError(t, s1.Close(), "Close is idempotent")

	s2 := sub(t, d, "s", "g", "c2", ackWait)
	got := receive(t, s2, 10)
	require.Equal(t, first[0].TransportID, got[0].TransportID)
	require.Equal(t, 2, got[0].Attempt)
}

// TestReceiveCancelIsPrompt proves that cancelling a Receive blocked on an empty stream
// returns ctx's error without waiting for the blocking read to time out, and that the
// subscription reads normally afterwards.
func TestReceiveCancelIsPrompt(t *testing.T) {
	cfg := testConfig(t)
	d := openDriver(t, cfg)
	s := sub(t, d, "s", "g", "c1", time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := s.Receive(ctx, 10)
		done <- err
	}()
	// Let it block in XREADGROUP (CLIENT LIST shows the blocked read on the reader's connection).
	require.Eventually(t, func() bool {
		list, _ := d.client.ClientList(context.Background()).Result()
		for _, line := range strings.Split(list, "\n") {
			if strings.Contains(line, "name="+readerName(cfg.Namespace+":s", "g", "c1")+" ") && strings.Contains(line, "cmd=xreadgroup") {
				return true
			}
		}
		return false
	}, waitFor, 5*time.Millisecond)
	cancelled := time.Now()
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
		require.Less(t, time.Since(cancelled), maxBlock/2, "Receive waited for the blocking read")
	case <-time.After(waitFor):
		t.Fatal("Receive did not return after cancellation")
	}
	publish(t, d, "s", bodies(1))
	require.Len(t, receive(t, s, 10), 1)
}

// TestGroupRecreatedOnNoGroup proves that a stream deleted under a live subscription (as after
// a Redis flush) is recovered: the group is recreated from the start and later entries are
// read, with a warning logged.
func TestGroupRecreatedOnNoGroup(t *testing.T) {
	cfg, d, c, logs := loggedDriverAndClient(t)
	ctx := context.Background()
	s := sub(t, d, "s", "g", "c1", time.Minute)
	publish(t, d, "s", bodies(1))
	require.NoError(t, s.Ack(ctx, receive(t, s, 10)))

	require.NoError(t, c.Del(ctx, cfg.Namespace+":s").Err())
	require.NoError(t, c.XAdd(ctx, &goredis.XAddArgs{Stream: cfg.Namespace + ":s", Values: []any{"data", "after"}}).Err())
	got := receive(t, s, 10)
	require.Equal(t, "after", string(got[0].Body))
	require.True(t, logs.contains("consumer group missing"))
}

// TestPendingTrimmedIsReported proves that an entry trimmed away while still pending (what
// MAXLEN trimming can do) is not lost silently: the claim that finds it gone logs it.
func TestPendingTrimmedIsReported(t *testing.T) {
	cfg, d, c, logs := loggedDriverAndClient(t)
	ctx := context.Background()
	ids := publish(t, d, "s", bodies(1))
	s := sub(t, d, "s", "g", "c1", 100*time.Millisecond)
	receive(t, s, 10)
	require.NoError(t, c.XDel(ctx, cfg.Namespace+":s", ids[0]).Err())

	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go s.Receive(rctx, 10) //nolint:errcheck // only its log matters
	require.Eventually(t, func() bool { return logs.contains("trimmed or deleted before they were acknowledged") }, waitFor, 10*time.Millisecond)
	// The condition runs on another goroutine, where require must not fail the test: an
	// error reading the pending list just means "not yet".
	require.Eventually(t, func() bool {
		p, err := pendingEntry(context.Background(), c, cfg.Namespace+":s", "g", ids[0])
		return err == nil && len(p) == 0
	}, waitFor, 10*time.Millisecond)
}

// TestRetention proves both trimming policies: MINID by age removes entries older than
// StreamMaxAge on the next publish, and MAXLEN keeps a main stream near StreamMaxLen while a
// dead-letter stream is not cut by length.
func TestRetention(t *testing.T) {
	ctx := context.Background()
	t.Run("age", func(t *testing.T) {
		cfg := testConfig(t)
		d := openDriver(t, cfg)
		c := rawClient(t, cfg.RedisURL)
		key := cfg.Namespace + ":s"
		old := time.Now().Add(-8 * 24 * time.Hour).UnixMilli() // older than the 7-day default
		pipe := c.Pipeline()
		for i := range 250 {
			pipe.XAdd(ctx, &goredis.XAddArgs{Stream: key, ID: fmt.Sprintf("%d-%d", old, i+1), Values: []any{"data", "old"}})
		}
		_, err := pipe.Exec(ctx)
		require.NoError(t, err)
		publish(t, d, "s", bodies(1))
		n, err := c.XLen(ctx, key).Result()
		require.NoError(t, err)
		require.Less(t, n, int64(100), "entries older than the max age were not trimmed")
	})
	t.Run("length", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.StreamMaxLen = 50
		d := openDriver(t, cfg)
		for range 10 {
			publish(t, d, "s", bodies(100))
			publish(t, d, "s.dlq", bodies(100))
		}
		main, err := d.Info(ctx, "s", "")
		require.NoError(t, err)
		require.LessOrEqual(t, main.Length, int64(50+100), "MAXLEN ~ keeps at most one node over the limit")
		dlq, err := d.Info(ctx, "s.dlq", "")
		require.NoError(t, err)
		require.EqualValues(t, 1000, dlq.Length, "dead letters are trimmed by age only")
	})
}

// TestRetentionMustCoverRetries proves that a max age shorter than the retry schedule, which
// would trim messages still being retried, is refused at start-up by name.
func TestRetentionMustCoverRetries(t *testing.T) {
	cfg := testConfig(t)
	cfg.StreamMaxAge = time.Minute
	cfg.AckWait = 30 * time.Second
	_, err := Open(context.Background(), cfg)
	var ce *envconf.Error
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "PULSE_STREAM_MAX_AGE", ce.Var)
	require.Contains(t, ce.Accepted, "5m0s")
}

// TestParseURL proves the accepted REDIS_URL forms and that anything else is an *envconf.Error
// naming REDIS_URL, with the password masked.
func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		url, addr, user, pass string
		db                    int
		tls                   bool
	}{
		{url: "redis://localhost:6379/0", addr: "localhost:6379"},
		{url: "redis://127.0.0.1", addr: "127.0.0.1:6379"},
		{url: "redis://:secret@h:7000/3", addr: "h:7000", pass: "secret", db: 3},
		{url: "redis://app:secret@h/2", addr: "h:6379", user: "app", pass: "secret", db: 2},
		{url: "rediss://app:secret@h:6380/1", addr: "h:6380", user: "app", pass: "secret", db: 1, tls: true},
	} {
		o, err := ParseURL(tc.url)
		require.NoError(t, err, tc.url)
		require.Equal(t, tc.addr, o.Addr, tc.url)
		require.Equal(t, tc.user, o.Username, tc.url)
		require.Equal(t, tc.pass, o.Password, tc.url)
		require.Equal(t, tc.db, o.DB, tc.url)
		require.Equal(t, tc.tls, o.TLSConfig != nil, tc.url)
	}
	for _, bad := range []string{"localhost:6379", "http://h:6379", "redis://", "redis://h/notanumber", "unix:///tmp/r.sock", "redis://u:topsecret@h/x/y", "redis://h:port"} {
		_, err := ParseURL(bad)
		var ce *envconf.Error
		require.ErrorAs(t, err, &ce, bad)
		require.Equal(t, "REDIS_URL", ce.Var)
		require.Contains(t, err.Error(), "redis://[user[:password]@]host[:port][/db]")
		require.NotContains(t, err.Error(), "topsecret")
	}
}

// TestOpenUnreachable proves that a Redis that does not answer at start-up is an error
// wrapping transport.ErrUnavailable.
func TestOpenUnreachable(t *testing.T) {
	cfg := testConfig(t)
	cfg.RedisURL = "redis://127.0.0.1:1/0"
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err := Open(ctx, cfg)
	require.ErrorIs(t, err, transport.ErrUnavailable)
}

// TestIdempotencyStore proves the shared record: a key is not seen until Done, Done is SET NX
// with the TTL under the namespace, and a second driver (another replica) sees it.
func TestIdempotencyStore(t *testing.T) {
	cfg := testConfig(t)
	ctx := context.Background()
	st1, err := openDriver(t, cfg).IdempotencyStore(ctx, time.Minute)
	require.NoError(t, err)
	st2, err := openDriver(t, cfg).IdempotencyStore(ctx, time.Minute)
	require.NoError(t, err)
	seen, err := st1.Seen(ctx, "s/g/1-1")
	require.NoError(t, err)
	require.False(t, seen)
	require.NoError(t, st1.Done(ctx, "s/g/1-1"))
	require.NoError(t, st1.Done(ctx, "s/g/1-1"), "recording twice is fine")
	seen, err = st2.Seen(ctx, "s/g/1-1")
	require.NoError(t, err)
	require.True(t, seen)
	ttl, err := rawClient(t, cfg.RedisURL).PTTL(ctx, cfg.Namespace+":idem:s/g/1-1").Result()
	require.NoError(t, err)
	require.Greater(t, ttl, 50*time.Second)
	require.LessOrEqual(t, ttl, time.Minute)
}

// TestStreamAdmin proves Range (paged, limited), Delete, Purge (groups survive) and Info.
func TestStreamAdmin(t *testing.T) {
	cfg := testConfig(t)
	d := openDriver(t, cfg)
	ctx := context.Background()
	ids := publish(t, d, "s", bodies(600))

	require.Equal(t, ids, storedIDs(t, d, "s", 0))
	require.Equal(t, ids[:300], storedIDs(t, d, "s", 300))
	stop := errors.New("stop")
	require.ErrorIs(t, d.Range(ctx, "s", 0, func(driver.StoredMessage) error { return stop }), stop)

	info, err := d.Info(ctx, "s", "g")
	require.NoError(t, err)
	require.Equal(t, driver.StreamInfo{Length: 600, Pending: 0, Unread: 600}, info, "no group yet: everything unread")
	s := sub(t, d, "s", "g", "c1", time.Minute)
	receiveN(t, s, 10)
	held := int64(10 * (1 + readAhead)) // the 10 handed out and the reads of 10 ahead
	require.Eventually(t, func() bool {
		info, err = d.Info(ctx, "s", "g")
		return err == nil && info == driver.StreamInfo{Length: 600, Pending: held, Unread: 600 - held}
	}, waitFor, 5*time.Millisecond)

	require.NoError(t, d.Delete(ctx, "s", ids[590:]...))
	n, err := d.Purge(ctx, "s")
	require.NoError(t, err)
	require.EqualValues(t, 590, n)
	after := publish(t, d, "s", bodies(1))
	purged := map[string]bool{}
	for _, id := range ids[:590] {
		purged[id] = true
	}
	for got := false; !got; { // first what was read ahead before the purge, then the new entry
		for _, dl := range receive(t, s, 100) {
			require.True(t, purged[dl.TransportID] || dl.TransportID == after[0], dl.TransportID)
			got = dl.TransportID == after[0]
		}
	}

	info, err = d.Info(ctx, "missing", "g")
	require.NoError(t, err)
	require.Equal(t, driver.StreamInfo{}, info)
}

// TestClosed proves that everything after Close returns transport.ErrClosed, and that Close
// is idempotent.
func TestClosed(t *testing.T) {
	cfg := testConfig(t)
	d, err := Open(context.Background(), cfg)
	require.NoError(t, err)
	s, err := d.Subscribe(context.Background(), "s", driver.SubscribeOptions{Group: "g", Consumer: "c"})
	require.NoError(t, err)
	require.NoError(t, d.Close())
	require.NoError(t, d.Close())
	ctx := context.Background()
	_, err = d.Publish(ctx, "s", bodies(1))
	require.ErrorIs(t, err, transport.ErrClosed)
	require.ErrorIs(t, d.Ping(ctx), transport.ErrClosed)
	_, err = s.Receive(ctx, 1)
	require.ErrorIs(t, err, transport.ErrClosed, "the driver's Close closes its subscriptions")
	_, err = d.Subscribe(ctx, "s", driver.SubscribeOptions{Group: "g", Consumer: "c"})
	require.ErrorIs(t, err, transport.ErrClosed)
}

// TestInvalidNames proves that bad stream names are refused before anything reaches Redis.
func TestInvalidNames(t *testing.T) {
	d := openDriver(t, testConfig(t))
	_, err := d.Publish(context.Background(), "a:b", bodies(1))
	require.ErrorContains(t, err, "invalid stream name")
	_, err = d.Subscribe(context.Background(), "", driver.SubscribeOptions{Group: "g", Consumer: "c"})
	require.True(t, err != nil && strings.Contains(err.Error(), "invalid stream name"))
}

// TestReadAheadHandedOutOnce proves that a batch read ahead while the caller was busy for
// longer than AckWait is handed out once, as attempt 1, with its idle time reset — not also
// claimed back as abandoned by the member's own scan for idle entries.
func TestReadAheadHandedOutOnce(t *testing.T) {
	cfg, d, c := driverAndClient(t)
	ctx := context.Background()
	ids := publish(t, d, "s", bodies(2))
	const ackWait = 200 * time.Millisecond
	s := sub(t, d, "s", "g", "c1", ackWait)
	first := receive(t, s, 1)
	require.Equal(t, ids[0], first[0].TransportID)
	require.NoError(t, s.Ack(ctx, first))

	// The caller is busy: the entry read ahead goes idle for longer than AckWait.
	key := cfg.Namespace + ":s"
	require.Eventually(t, func() bool {
		p, err := pendingEntry(ctx, c, key, "g", ids[1])
		return err == nil && len(p) == 1 && p[0].Idle > ackWait
	}, waitFor, 10*time.Millisecond, "the second entry was not read ahead")

	second := receive(t, s, 10)
	require.Len(t, second, 1)
	require.Equal(t, ids[1], second[0].TransportID)
	require.Equal(t, 1, second[0].Attempt)
	p, err := pendingEntry(ctx, c, key, "g", ids[1])
	require.NoError(t, err)
	require.EqualValues(t, 1, p[0].RetryCount)
	require.Less(t, p[0].Idle, ackWait, "its AckWait runs from the hand-out")

	rctx, cancel := context.WithTimeout(ctx, ackWait/2)
	defer cancel()
	again, err := s.Receive(rctx, 10)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Empty(t, again, "handed out twice")
}

// TestTrimSchedule: a stream is trimmed by its first publish, then at most once a second, and
// with a max length also whenever an eighth of it was published since the last trim.
func TestTrimSchedule(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	steps := []struct {
		key    string
		at     time.Duration
		n      int
		maxLen int64
		want   bool
	}{
		{key: "a", at: 0, n: 256, want: true}, // the first publish
		{key: "a", at: 10 * time.Millisecond, n: 100_000, want: false},
		{key: "b", at: 10 * time.Millisecond, n: 1, want: true}, // each key on its own
		{key: "a", at: 999 * time.Millisecond, n: 1, want: false},
		{key: "a", at: time.Second, n: 1, want: true},
		{key: "a", at: 1100 * time.Millisecond, n: 1, want: false},
		{key: "m", at: 0, n: 1, maxLen: 800, want: true},
		{key: "m", at: 1 * time.Millisecond, n: 99, maxLen: 800, want: false},
		{key: "m", at: 2 * time.Millisecond, n: 1, maxLen: 800, want: true}, // 100 = 800/8 since
		{key: "m", at: 3 * time.Millisecond, n: 50, maxLen: 800, want: false},
		{key: "m", at: 1003 * time.Millisecond, n: 1, maxLen: 800, want: true}, // a second passed
		{key: "tiny", at: 0, n: 1, maxLen: 3, want: true},
		{key: "tiny", at: 1 * time.Millisecond, n: 1, maxLen: 3, want: true}, // max(3/8, 1) = 1
	}
	ts := trimSchedule{keys: map[string]*trimState{}}
	for i, st := range steps {
		require.Equal(t, st.want, ts.due(st.key, t0.Add(st.at), st.n, st.maxLen), "step %d: %+v", i, st)
	}
}

// TestCloseHandsReadAheadBack: a subscription reads two batches ahead of what it handed out;
// closing it hands both back at once (not after AckWait), and another member gets exactly
// those entries, each as its second delivery (Redis counted the unread read).
func TestCloseHandsReadAheadBack(t *testing.T) {
	cfg, d, c := driverAndClient(t)
	ctx := context.Background()
	ids := publish(t, d, "s", bodies(15))
	const ackWait = time.Minute // a handback that did not happen would show as a long wait
	s1, err := d.Subscribe(ctx, "s", driver.SubscribeOptions{Group: "g", Consumer: "c1", AckWait: ackWait})
	require.NoError(t, err)
	first := receive(t, s1, 5)
	require.Len(t, first, 5)
	require.NoError(t, s1.Ack(ctx, first))
	require.Eventually(t, func() bool { // the next two batches of 5 were read ahead
		p, err := c.XPending(ctx, cfg.Namespace+":s", "g").Result()
		return err == nil && p.Count == 10
	}, waitFor, 5*time.Millisecond)
	require.NoError(t, s1.Close())

	s2 := sub(t, d, "s", "g", "c2", ackWait)
	got := receiveN(t, s2, 10)
	for i, dl := range got {
		require.Equal(t, ids[5+i], dl.TransportID)
		require.Equal(t, 2, dl.Attempt)
	}
}

// TestDuplicateDataFieldLastWins proves an entry written with `data` twice — here by
// redis-cli, as an operator or another producer would — is read as redis-py (and so the
// Python core) reads it: the last `data` is the body; the fields between are headers. Both
// read paths are covered: XREADGROUP (the driver's own reply reader) and XAUTOCLAIM (go-redis).
func TestDuplicateDataFieldLastWins(t *testing.T) {
	cli, err := exec.LookPath("redis-cli")
	require.NoError(t, err, "redis-cli (from the redis-tools package, installed with redis-server) is needed")
	srv := redisSrv.Server(t)
	cfg := testConfig(t)
	d := openDriver(t, cfg)
	s := sub(t, d, "dup", "g", "c1", 200*time.Millisecond)
	key := d.key("dup")
	out, err := exec.Command(cli, "-p", strconv.Itoa(srv.Port()), "XADD", key, "*",
		"data", `{"first":1}`, "note", "between", "data", `{"last":2}`).CombinedOutput()
	require.NoError(t, err, "%s", out)
	id := strings.TrimSpace(string(out))

	got := receiveN(t, s, 1)[0]
	require.Equal(t, id, got.TransportID)
	require.Equal(t, `{"last":2}`, string(got.Body))
	require.Equal(t, map[string]string{"note": "between"}, got.HeaderMap())

	// Not acked: another member claims it once idle, through go-redis's reply parsing.
	s2 := sub(t, d, "dup", "g", "c2", 200*time.Millisecond)
	claimed := receiveN(t, s2, 1)[0]
	require.Equal(t, id, claimed.TransportID)
	require.Equal(t, `{"last":2}`, string(claimed.Body))
	require.Equal(t, "between", claimed.Header("note"))
}
