package redis

import (
	"context"
	"errors"
	"fmt"
	"strings"

	goredis "github.com/redis/go-redis/v9"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// rangePage is how many entries Range reads per XRANGE.
const rangePage = 256

// Range calls fn for each retained entry of stream, oldest first (XRANGE in pages), without
// consuming anything: the `data` field is the body, every other field a header (a dead
// letter's original_id, reason, …). limit ≤ 0 means all. fn's error is returned as is.
func (d *Driver) Range(ctx context.Context, stream string, limit int, fn func(driver.StoredMessage) error) error {
	if d.isClosed() {
		return transport.ErrClosed
	}
	key := d.key(stream)
	start, seen := "-", 0
	for limit <= 0 || seen < limit {
		page := rangePage
		if limit > 0 {
			page = min(page, limit-seen)
		}
		msgs, err := d.client.XRangeN(ctx, key, start, "+", int64(page)).Result()
		if err != nil {
			return d.wrap("range "+key, err)
		}
		for _, m := range msgs {
			if err := fn(driver.StoredMessage{Message: fromValues(m.Values), TransportID: m.ID}); err != nil {
				return err
			}
		}
		seen += len(msgs)
		if len(msgs) < page {
			return nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
	return nil
}

// Delete removes entries by id (XDEL); missing ids are not an error. Groups that still hold a
// deleted entry as pending drop it when they next claim it.
func (d *Driver) Delete(ctx context.Context, stream string, transportIDs ...string) error {
	if d.isClosed() {
		return transport.ErrClosed
	}
	if len(transportIDs) == 0 {
		return nil
	}
	key := d.key(stream)
	return d.wrap("delete from "+key, d.client.XDel(ctx, key, transportIDs...).Err())
}

// Purge removes every entry of stream (XTRIM MAXLEN 0) and returns how many there were. The
// key and its consumer groups stay, so subscribers go on without re-creating anything.
func (d *Driver) Purge(ctx context.Context, stream string) (int64, error) {
	if d.isClosed() {
		return 0, transport.ErrClosed
	}
	key := d.key(stream)
	n, err := d.client.XTrimMaxLen(ctx, key, 0).Result()
	return n, d.wrap("purge "+key, err)
}

// Info describes stream (XLEN) and, if group is not empty, the group (XINFO GROUPS): its
// pending count and its lag, the entries it has not been given yet (-1 when Redis cannot tell,
// e.g. after entries were deleted). A stream that does not exist has length 0; a group that
// does not exist has nothing pending and, as it would be created from the start of the stream,
// every retained entry unread.
func (d *Driver) Info(ctx context.Context, stream, group string) (driver.StreamInfo, error) {
	if d.isClosed() {
		return driver.StreamInfo{}, transport.ErrClosed
	}
	key := d.key(stream)
	n, err := d.client.XLen(ctx, key).Result()
	if err != nil {
		return driver.StreamInfo{}, d.wrap("info "+key, err)
	}
	info := driver.StreamInfo{Length: n, Unread: -1}
	if group == "" {
		return info, nil
	}
	groups, err := d.client.XInfoGroups(ctx, key).Result()
	if err != nil && !errors.Is(err, goredis.Nil) && !strings.Contains(err.Error(), "no such key") {
		return driver.StreamInfo{}, d.wrap("info "+key, err)
	}
	info.Unread = n
	for _, g := range groups {
		if g.Name == group {
			info.Pending, info.Unread = g.Pending, g.Lag
		}
	}
	return info, nil
}

// Get implements driver.StreamAdmin: XRANGE key id id.
func (d *Driver) Get(ctx context.Context, stream, transportID string) (driver.StoredMessage, error) {
	if d.isClosed() {
		return driver.StoredMessage{}, transport.ErrClosed
	}
	key := d.key(stream)
	msgs, err := d.client.XRangeN(ctx, key, transportID, transportID, 1).Result()
	if err != nil {
		return driver.StoredMessage{}, d.wrap("read "+key, err)
	}
	if len(msgs) == 0 {
		return driver.StoredMessage{}, fmt.Errorf("redis: %s has no entry %s: %w", key, transportID, transport.ErrMessageNotFound)
	}
	return driver.StoredMessage{Message: fromValues(msgs[0].Values), TransportID: msgs[0].ID}, nil
}
