package inmem

import (
	"context"
	"slices"
	"sync"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// KeyValue implements driver.KeyValueProvider: buckets live in the broker, so every
// driver of the broker (every Bus of the process, for the shared broker) sees them, and
// nothing outlives the process.
func (d *Driver) KeyValue(_ context.Context, name string) (driver.KeyValue, error) {
	if d.isClosed() {
		return nil, transport.ErrClosed
	}
	return d.b.bucket(name), nil
}

// bucket returns the broker's bucket name, creating it on first use.
func (b *Broker) bucket(name string) *kvBucket {
	b.kvMu.Lock()
	defer b.kvMu.Unlock()
	if b.kv == nil {
		b.kv = map[string]*kvBucket{}
	}
	kb, ok := b.kv[name]
	if !ok {
		kb = &kvBucket{entries: map[string]kvValue{}}
		b.kv[name] = kb
	}
	return kb
}

// kvBucket is one KeyValue bucket. Values are copied in and out, so callers never share
// memory with it.
type kvBucket struct {
	mu      sync.Mutex
	rev     uint64 // the bucket's last revision
	entries map[string]kvValue
}

type kvValue struct {
	value []byte
	rev   uint64
}

func (kb *kvBucket) Get(ctx context.Context, key string) (driver.KVEntry, error) {
	if err := kvCheck(ctx, key); err != nil {
		return driver.KVEntry{}, err
	}
	kb.mu.Lock()
	defer kb.mu.Unlock()
	v, ok := kb.entries[key]
	if !ok {
		return driver.KVEntry{}, transport.ErrKeyNotFound
	}
	return driver.KVEntry{Key: key, Value: slices.Clone(v.value), Revision: v.rev}, nil
}

// write stores value under key if cond(the current value, whether there is one) holds.
func (kb *kvBucket) write(ctx context.Context, key string, value []byte, cond func(kvValue, bool) bool) (uint64, error) {
	if err := kvCheck(ctx, key); err != nil {
		return 0, err
	}
	kb.mu.Lock()
	defer kb.mu.Unlock()
	cur, ok := kb.entries[key]
	if !cond(cur, ok) {
		return 0, transport.ErrConflict
	}
	kb.rev++
	kb.entries[key] = kvValue{value: slices.Clone(value), rev: kb.rev}
	return kb.rev, nil
}

func (kb *kvBucket) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return kb.write(ctx, key, value, func(kvValue, bool) bool { return true })
}

func (kb *kvBucket) Create(ctx context.Context, key string, value []byte) (uint64, error) {
	return kb.write(ctx, key, value, func(_ kvValue, exists bool) bool { return !exists })
}

func (kb *kvBucket) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	return kb.write(ctx, key, value, func(cur kvValue, exists bool) bool { return exists && cur.rev == revision })
}

func (kb *kvBucket) Delete(ctx context.Context, key string, revision uint64) error {
	if err := kvCheck(ctx, key); err != nil {
		return err
	}
	kb.mu.Lock()
	defer kb.mu.Unlock()
	cur, ok := kb.entries[key]
	if revision != 0 && (!ok || cur.rev != revision) {
		return transport.ErrConflict
	}
	delete(kb.entries, key)
	return nil
}

func (kb *kvBucket) Range(ctx context.Context, fn func(driver.KVEntry) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	kb.mu.Lock()
	all := make([]driver.KVEntry, 0, len(kb.entries))
	for k, v := range kb.entries {
		all = append(all, driver.KVEntry{Key: k, Value: slices.Clone(v.value), Revision: v.rev})
	}
	kb.mu.Unlock()
	for _, e := range all {
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

func kvCheck(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return driver.CheckKey(key)
}
