package transport

import (
	"context"
	"errors"
	"fmt"
	"regexp"
)

// Errors of a KeyValue, matched with errors.Is.
var (
	// ErrKeyNotFound is returned by KeyValue.Get for a key that has no value.
	ErrKeyNotFound = errors.New("transport: key not found")
	// ErrConflict is returned by KeyValue.Create for a key that has a value, and by Update
	// and Delete when the key's revision is no longer the one given: someone else wrote it.
	ErrConflict = errors.New("transport: key changed concurrently")
	// ErrNotSupported is returned for an optional capability the backend does not have.
	ErrNotSupported = errors.New("transport: not supported by this backend")
)

// KeyValue is a small map of records kept by the broker, shared by every process on the bus
// and outliving each of them (inmem: by every Bus of the process). It holds the state that
// must survive a restart and be seen by replicas — the feedback loop's state, replica
// registrations — not messages.
//
// Every write gives the key a new revision, greater than any the bucket gave before. Create,
// Update and Delete with a revision are compare-and-set: they fail with ErrConflict, writing
// nothing, when the key is not as the caller last saw it. Keys are any non-empty string of
// at most MaxKeyLen bytes; values are opaque bytes (a driver may bound their size).
// Implementations are safe for concurrent use; their errors wrap ErrUnavailable when the
// broker cannot be reached.
type KeyValue interface {
	// Get returns key's entry, or ErrKeyNotFound.
	Get(ctx context.Context, key string) (KVEntry, error)
	// Put stores value under key, whatever was there, and returns the new revision.
	Put(ctx context.Context, key string, value []byte) (uint64, error)
	// Create stores value under key if key has no value (ErrConflict otherwise).
	Create(ctx context.Context, key string, value []byte) (uint64, error)
	// Update stores value under key if key's revision is still revision (ErrConflict
	// otherwise, also when the key has no value).
	Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error)
	// Delete removes key's value: always when revision is 0, else only if the key's revision
	// is still revision (ErrConflict otherwise). Deleting a key that has no value is no error.
	Delete(ctx context.Context, key string, revision uint64) error
	// Range calls fn with every entry of the bucket, in no particular order, until fn returns
	// an error (returned as is). Entries written while it runs may or may not be seen.
	Range(ctx context.Context, fn func(KVEntry) error) error
}

// KVEntry is one record of a KeyValue.
type KVEntry struct {
	Key      string
	Value    []byte
	Revision uint64
}

// MaxKeyLen bounds a KeyValue key, in bytes.
const MaxKeyLen = 1024

// KeyValueProvider is implemented by drivers that can keep KeyValue buckets.
type KeyValueProvider interface {
	// KeyValue returns the bucket named name (ValidBucketName), creating it if needed.
	KeyValue(ctx context.Context, name string) (KeyValue, error)
}

var bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// ValidBucketName reports whether name can name a KeyValue bucket: 1 to 64 lower-case
// letters, digits, '_' and '-', starting with a letter or digit.
func ValidBucketName(name string) bool { return bucketRE.MatchString(name) }

// CheckKey returns an error naming what is wrong with a KeyValue key, or nil.
func CheckKey(key string) error {
	switch {
	case key == "":
		return errors.New("transport: empty key (accepted: 1 to 1024 bytes)")
	case len(key) > MaxKeyLen:
		return fmt.Errorf("transport: key of %d bytes (accepted: 1 to %d bytes)", len(key), MaxKeyLen)
	}
	return nil
}

// KeyValue returns the bus's bucket name, creating it if needed, or an error wrapping
// ErrNotSupported when the backend keeps none.
func (b *Bus) KeyValue(ctx context.Context, name string) (KeyValue, error) {
	if b.isClosed() {
		return nil, ErrClosed
	}
	if !ValidBucketName(name) {
		return nil, fmt.Errorf("transport: invalid bucket name %q (accepted: 1 to 64 of a-z, 0-9, '_' and '-', starting with a letter or digit)", name)
	}
	p, ok := b.drv.(KeyValueProvider)
	if !ok {
		return nil, fmt.Errorf("transport: key-value bucket %s: %w (%s)", name, ErrNotSupported, b.cfg.Backend)
	}
	kv, err := p.KeyValue(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("transport: key-value bucket %s: %w", name, err)
	}
	return kv, nil
}
