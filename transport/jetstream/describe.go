package jetstream

import "github.com/pulse-bus/pulse/transport/driver"

var _ driver.Describer = (*Driver)(nil)

// MessagingSystem is "nats", the messaging.system of the driver's spans.
func (d *Driver) MessagingSystem() string { return "nats" }

// Destination is the NATS subject of stream (Subject).
func (d *Driver) Destination(stream string) string { return Subject(d.cfg.Namespace, stream) }
