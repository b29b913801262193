package bench

// The Pulse drivers measured here register themselves on import, as in an application. A
// driver not imported leaves its contender "unavailable" in the report.
import (
	_ "github.com/pulse-bus/pulse/transport/inmem"
	_ "github.com/pulse-bus/pulse/transport/jetstream"
	_ "github.com/pulse-bus/pulse/transport/redis"
)
