package jetstream

import (
	"context"
	"errors"
	"regexp"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// IdempotencyStore implements driver.IdempotencyProvider with the key-value bucket
// IdempotencyBucket(namespace), created or updated with ttl as its entries' max age and the
// configured replicas. The record is shared by every replica and survives restarts. Each Seen
// and Done is one request to the server.
func (d *Driver) IdempotencyStore(ctx context.Context, ttl time.Duration) (driver.IdempotencyStore, error) {
	if d.closed.Load() {
		return nil, transport.ErrClosed
	}
	if ttl <= 0 {
		ttl = transport.DefaultIdempotencyTTL
	}
	bucket := IdempotencyBucket(d.cfg.Namespace)
	actx, cancel := apiCtx(ctx)
	defer cancel()
	kv, err := d.js.CreateOrUpdateKeyValue(actx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "pulse: ids of handled messages, per stream and group",
		History:     1,
		TTL:         ttl,
		Storage:     jetstream.FileStorage,
		Replicas:    d.cfg.Replicas,
	})
	if err != nil {
		return nil, d.wrap(ctx, "key-value bucket "+bucket, err)
	}
	return &kvIdempotency{d: d, kv: kv}, nil
}

type kvIdempotency struct {
	d  *Driver
	kv jetstream.KeyValue
}

var kvKeyRE = regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)

// Seen implements transport.IdempotencyStore.
func (k *kvIdempotency) Seen(ctx context.Context, key string) (bool, error) {
	actx, cancel := apiCtx(ctx)
	defer cancel()
	_, err := k.kv.Get(actx, encodeKey(key))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return false, nil
	default:
		return false, k.d.wrap(ctx, "idempotency lookup", err)
	}
}

// Done implements transport.IdempotencyStore.
func (k *kvIdempotency) Done(ctx context.Context, key string) error {
	actx, cancel := apiCtx(ctx)
	defer cancel()
	if _, err := k.kv.Put(actx, encodeKey(key), []byte{'1'}); err != nil {
		return k.d.wrap(ctx, "idempotency record", err)
	}
	return nil
}
