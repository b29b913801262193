package inmem

import "github.com/pulse-bus/pulse/transport/driver"

var _ driver.Describer = (*Driver)(nil)

// MessagingSystem is "inmem", the messaging.system of the driver's spans.
func (d *Driver) MessagingSystem() string { return Name }

// Destination is the logical stream name itself: the in-process broker has no other.
func (d *Driver) Destination(stream string) string { return stream }
