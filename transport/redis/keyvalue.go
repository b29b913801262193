package redis

import (
	"context"
	"errors"
	"strconv"
	"strings"

	goredis "github.com/redis/go-redis/v9"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// KeyValueInfix names a KeyValue bucket's hash: `{ns}:pulse:kv:{bucket}`.
const KeyValueInfix = ":pulse:kv:"

// kvRevisionField is the hash field that counts the bucket's revisions; no key can be empty,
// so it never collides with one.
const kvRevisionField = ""

// KeyValue implements driver.KeyValueProvider: bucket name is one hash,
// `{ns}:pulse:kv:{name}`, whose fields are the keys and whose values are "<revision> <value>".
// Every write is one Lua script (compare-and-set included), so it is atomic; the bucket's
// revision counter is the hash's empty field. One key, so one slot on a cluster.
func (d *Driver) KeyValue(_ context.Context, name string) (driver.KeyValue, error) {
	if d.isClosed() {
		return nil, transport.ErrClosed
	}
	return &kvBucket{d: d, key: d.ns + KeyValueInfix + name}, nil
}

type kvBucket struct {
	d   *Driver
	key string
}

// kvWriteScript stores ARGV[4] under field ARGV[1] if mode ARGV[2] allows it: p(ut) always,
// c(reate) if the field is absent, u(pdate) if its revision is ARGV[3]. It returns the new
// revision, or 0 when the condition failed.
var kvWriteScript = goredis.NewScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local mode = ARGV[2]
if mode == 'c' and cur then return 0 end
if mode == 'u' then
  if not cur then return 0 end
  if string.match(cur, '^(%d+) ') ~= ARGV[3] then return 0 end
end
local n = redis.call('HINCRBY', KEYS[1], '', 1)
redis.call('HSET', KEYS[1], ARGV[1], n .. ' ' .. ARGV[4])
return n
`)

// kvDeleteScript deletes field ARGV[1] if ARGV[2] is "0" or its revision; 0 when not.
var kvDeleteScript = goredis.NewScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] ~= '0' then
  if not cur then return 0 end
  if string.match(cur, '^(%d+) ') ~= ARGV[2] then return 0 end
end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
`)

func (b *kvBucket) op(ctx context.Context, key string) error {
	if b.d.isClosed() {
		return transport.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return driver.CheckKey(key)
}

func (b *kvBucket) Get(ctx context.Context, key string) (driver.KVEntry, error) {
	if err := b.op(ctx, key); err != nil {
		return driver.KVEntry{}, err
	}
	raw, err := b.d.client.HGet(ctx, b.key, key).Result()
	if errors.Is(err, goredis.Nil) {
		return driver.KVEntry{}, transport.ErrKeyNotFound
	}
	if err != nil {
		return driver.KVEntry{}, b.d.wrap("get "+b.key, err)
	}
	return parseKV(key, raw)
}

// parseKV reads a stored "<revision> <value>".
func parseKV(key, raw string) (driver.KVEntry, error) {
	rev, value, ok := strings.Cut(raw, " ")
	n, err := strconv.ParseUint(rev, 10, 64)
	if !ok || err != nil {
		return driver.KVEntry{}, errors.New("redis: key-value record " + strconv.Quote(key) + " is not \"<revision> <value>\"")
	}
	return driver.KVEntry{Key: key, Value: []byte(value), Revision: n}, nil
}

func (b *kvBucket) write(ctx context.Context, key string, value []byte, mode string, revision uint64) (uint64, error) {
	if err := b.op(ctx, key); err != nil {
		return 0, err
	}
	n, err := b.d.replicated(ctx, b.key, func(c goredis.Scripter) *goredis.Cmd {
		return kvWriteScript.Run(ctx, c, []string{b.key}, key, mode, strconv.FormatUint(revision, 10), value)
	}).Uint64()
	if err != nil {
		return 0, b.d.wrap("write "+b.key, err)
	}
	if n == 0 {
		return 0, transport.ErrConflict
	}
	return n, nil
}

func (b *kvBucket) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return b.write(ctx, key, value, "p", 0)
}

func (b *kvBucket) Create(ctx context.Context, key string, value []byte) (uint64, error) {
	return b.write(ctx, key, value, "c", 0)
}

func (b *kvBucket) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	return b.write(ctx, key, value, "u", revision)
}

func (b *kvBucket) Delete(ctx context.Context, key string, revision uint64) error {
	if err := b.op(ctx, key); err != nil {
		return err
	}
	n, err := b.d.replicated(ctx, b.key, func(c goredis.Scripter) *goredis.Cmd {
		return kvDeleteScript.Run(ctx, c, []string{b.key}, key, strconv.FormatUint(revision, 10))
	}).Int64()
	if err != nil {
		return b.d.wrap("delete from "+b.key, err)
	}
	if n == 0 {
		return transport.ErrConflict
	}
	return nil
}

// Range reads the hash with HSCAN, a few hundred fields per round trip.
func (b *kvBucket) Range(ctx context.Context, fn func(driver.KVEntry) error) error {
	if b.d.isClosed() {
		return transport.ErrClosed
	}
	var cursor uint64
	for {
		kvs, next, err := b.d.client.HScan(ctx, b.key, cursor, "*", 256).Result()
		if err != nil {
			return b.d.wrap("scan "+b.key, err)
		}
		for i := 0; i+1 < len(kvs); i += 2 {
			if kvs[i] == kvRevisionField {
				continue
			}
			e, err := parseKV(kvs[i], kvs[i+1])
			if err != nil {
				return err
			}
			if err := fn(e); err != nil {
				return err
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}
