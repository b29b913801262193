package jetstream

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// KeyValueBucket is the JetStream key-value bucket of the KeyValue bucket name in namespace
// ns: `{NS}_PULSE_KV_{NAME}`, upper-cased, e.g. MDP_PULSE_KV_FEEDBACK-STATE (stored in the
// stream KV_MDP_PULSE_KV_FEEDBACK-STATE).
func KeyValueBucket(ns, name string) string {
	return strings.ToUpper(ns + "_PULSE_KV_" + name)
}

// KeyValue implements driver.KeyValueProvider with a JetStream key-value bucket
// (KeyValueBucket), created or updated with one revision per key, file storage and the
// configured replicas. Revisions are the bucket stream's sequences; compare-and-set is the
// server's own (expected last subject sequence).
func (d *Driver) KeyValue(ctx context.Context, name string) (driver.KeyValue, error) {
	if d.closed.Load() {
		return nil, transport.ErrClosed
	}
	bucket := KeyValueBucket(d.cfg.Namespace, name)
	actx, cancel := apiCtx(ctx)
	defer cancel()
	kv, err := d.js.CreateOrUpdateKeyValue(actx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "pulse: " + name,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    d.cfg.Replicas,
	})
	if err != nil {
		return nil, d.wrap(ctx, "key-value bucket "+bucket, err)
	}
	return &kvBucket{d: d, kv: kv, name: bucket}, nil
}

type kvBucket struct {
	d    *Driver
	kv   jetstream.KeyValue
	name string
}

// kvPlain matches the keys JetStream takes as they are (see encodeKey).
func kvPlain(key string) bool {
	return kvKeyRE.MatchString(key) && !strings.HasPrefix(key, ".") && !strings.HasSuffix(key, ".") &&
		!strings.Contains(key, "..") && !strings.HasPrefix(key, kvEncodedPrefix)
}

// kvEncodedPrefix starts a key that was written base64-encoded.
const kvEncodedPrefix = "b64."

// encodeKey maps any key to a valid bucket key, one to one: as it is when JetStream accepts
// it (letters, digits and -/_=. with no empty token) and it does not start with "b64.",
// else "b64." and its unpadded URL-safe base64.
func encodeKey(key string) string {
	if kvPlain(key) {
		return key
	}
	return kvEncodedPrefix + base64.RawURLEncoding.EncodeToString([]byte(key))
}

// decodeKey is the inverse of encodeKey.
func decodeKey(k string) (string, error) {
	enc, ok := strings.CutPrefix(k, kvEncodedPrefix)
	if !ok {
		return k, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return "", errors.New("jetstream: key-value key " + k + " is not valid base64")
	}
	return string(b), nil
}

func (b *kvBucket) check(ctx context.Context, key string) error {
	if b.d.closed.Load() {
		return transport.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return driver.CheckKey(key)
}

// err maps the client's key-value errors to transport's.
func (b *kvBucket) err(ctx context.Context, op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return transport.ErrKeyNotFound
	case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch):
		return transport.ErrConflict
	}
	return b.d.wrap(ctx, op+" "+b.name, err)
}

func (b *kvBucket) Get(ctx context.Context, key string) (driver.KVEntry, error) {
	if err := b.check(ctx, key); err != nil {
		return driver.KVEntry{}, err
	}
	actx, cancel := apiCtx(ctx)
	defer cancel()
	e, err := b.kv.Get(actx, encodeKey(key))
	if err != nil {
		return driver.KVEntry{}, b.err(ctx, "get from", err)
	}
	return driver.KVEntry{Key: key, Value: e.Value(), Revision: e.Revision()}, nil
}

func (b *kvBucket) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	if err := b.check(ctx, key); err != nil {
		return 0, err
	}
	actx, cancel := apiCtx(ctx)
	defer cancel()
	rev, err := b.kv.Put(actx, encodeKey(key), value)
	return rev, b.err(ctx, "put to", err)
}

func (b *kvBucket) Create(ctx context.Context, key string, value []byte) (uint64, error) {
	if err := b.check(ctx, key); err != nil {
		return 0, err
	}
	actx, cancel := apiCtx(ctx)
	defer cancel()
	rev, err := b.kv.Create(actx, encodeKey(key), value)
	return rev, b.err(ctx, "create in", err)
}

func (b *kvBucket) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	if err := b.check(ctx, key); err != nil {
		return 0, err
	}
	if revision == 0 {
		return 0, transport.ErrConflict // no key has revision 0; JetStream would create it
	}
	actx, cancel := apiCtx(ctx)
	defer cancel()
	rev, err := b.kv.Update(actx, encodeKey(key), value, revision)
	return rev, b.err(ctx, "update in", err)
}

// Delete purges the key (its delete marker is the only trace left).
func (b *kvBucket) Delete(ctx context.Context, key string, revision uint64) error {
	if err := b.check(ctx, key); err != nil {
		return err
	}
	actx, cancel := apiCtx(ctx)
	defer cancel()
	var opts []jetstream.KVDeleteOpt
	if revision != 0 {
		opts = append(opts, jetstream.LastRevision(revision))
	}
	err := b.kv.Purge(actx, encodeKey(key), opts...)
	if errors.Is(err, jetstream.ErrKeyNotFound) && revision == 0 {
		return nil
	}
	return b.err(ctx, "delete from", err)
}

// Range reads every key's latest value through one watcher (one ordered consumer), not a
// request per key.
func (b *kvBucket) Range(ctx context.Context, fn func(driver.KVEntry) error) error {
	if b.d.closed.Load() {
		return transport.ErrClosed
	}
	w, err := b.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return b.err(ctx, "read", err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return b.err(ctx, "read", errors.New("watcher closed"))
			}
			if e == nil { // every current value delivered
				return nil
			}
			key, err := decodeKey(e.Key())
			if err != nil {
				return err
			}
			if err := fn(driver.KVEntry{Key: key, Value: e.Value(), Revision: e.Revision()}); err != nil {
				return err
			}
		}
	}
}

var _ driver.KeyValueProvider = (*Driver)(nil)
