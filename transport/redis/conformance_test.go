package redis

import (
	"context"
	"testing"
	"time"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/transporttest"
)

// TestConformance runs the conformance suite against redis on the package's redis-server:
// every driver the harness opens is a new client of it, as another process would be.
func TestConformance(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		Open: func(ctx context.Context, cfg transport.Config) (driver.Driver, error) {
			return Open(ctx, cfg)
		},
		Config:  transport.Config{Backend: Name, RedisURL: redisSrv.Server(t).URL(), Namespace: "conf"},
		AckWait: 300 * time.Millisecond,
		Caps:    transporttest.Capabilities{Persistent: true},
	})
}
