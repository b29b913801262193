package transport

import (
	"context"
	"fmt"
	"regexp"

	"github.com/pulse-bus/pulse/transport/driver"
)

var bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// ValidBucketName reports whether name can name a KeyValue bucket: 1 to 64 lower-case
// letters, digits, '_' and '-', starting with a letter or digit.
func ValidBucketName(name string) bool { return bucketRE.MatchString(name) }

// KeyValue returns the bus's bucket name, creating it if needed, or an error wrapping
// ErrNotSupported when the backend keeps none.
func (b *Bus) KeyValue(ctx context.Context, name string) (KeyValue, error) {
	if b.isClosed() {
		return nil, ErrClosed
	}
	if !ValidBucketName(name) {
		return nil, fmt.Errorf("transport: invalid bucket name %q (accepted: 1 to 64 of a-z, 0-9, '_' and '-', starting with a letter or digit)", name)
	}
	p, ok := b.drv.(driver.KeyValueProvider)
	if !ok {
		return nil, fmt.Errorf("transport: key-value bucket %s: %w (%s)", name, ErrNotSupported, b.cfg.Backend)
	}
	kv, err := p.KeyValue(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("transport: key-value bucket %s: %w", name, err)
	}
	return kv, nil
}
