package redis

import "github.com/pulse-bus/pulse/transport/driver"

var _ driver.Describer = (*Driver)(nil)

// MessagingSystem is "redis", the messaging.system of the driver's spans.
func (d *Driver) MessagingSystem() string { return "redis" }

// Destination is the Redis key of stream, `{ns}:{stream}`.
func (d *Driver) Destination(stream string) string { return d.key(stream) }
