package redis

import (
	"context"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/pulse-bus/pulse/transport/driver"
)

// claimIdle claims up to count entries of the group idle for at least AckWait, whichever
// member holds them, with XAUTOCLAIM; the delivery counts come from XPENDING in the same
// script. The scan resumes where the last one stopped; a completed scan waits claimEvery
// before the next.
func (s *subscription) claimIdle(ctx context.Context, now time.Time, count int) ([]*driver.Delivery, error) {
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
			ids[i] = m.id
		}
		s.forgetDelayed(ids) // a delayed entry of ours that went idle too long is delivered now
	}
	return s.deliveries(msgs, attempts, time.Now()), nil
}

// redeliverDue claims this member's delayed entries that are due back to itself (XCLAIM,
// counting the attempt) and returns them. Entries no longer pending under this consumer
// (taken over by another member, or settled) are dropped; entries deleted from the stream
// are logged as lost. On error the entries stay scheduled.
func (s *subscription) redeliverDue(ctx context.Context, now time.Time, count int) ([]*driver.Delivery, error) {
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
	var msgs []entry
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
	return s.deliveries(msgs, attempts, time.Now()), nil
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

// parseAutoClaim reads autoClaimScript's reply: {cursor, {{id, count, {field, value…}}…}, {deleted id…}}.
func parseAutoClaim(res []any) (cursor string, msgs []entry, attempts []int, deleted []string, err error) {
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
func parseClaimOwn(res []any) (msgs []entry, attempts []int, deleted []string, err error) {
	if len(res) != 2 {
		return nil, nil, nil, fmt.Errorf("unexpected reply of %d elements", len(res))
	}
	if msgs, attempts, err = parseEntries(res[0]); err != nil {
		return nil, nil, nil, err
	}
	deleted, err = parseStrings(res[1])
	return msgs, attempts, deleted, err
}

func parseEntries(v any) ([]entry, []int, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, nil, fmt.Errorf("unexpected entry list %T", v)
	}
	msgs := make([]entry, 0, len(list))
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
		msgs = append(msgs, entry{id: id, msg: fromFields(kv)})
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
