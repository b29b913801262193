package jetstream_test

import (
	"context"
	"testing"
	"time"

	"github.com/pulse-bus/pulse/internal/natstest"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/jetstream"
	"github.com/pulse-bus/pulse/transport/transporttest"
)

// TestConformance runs the conformance suite against jetstream on the package's embedded
// server (random port, temporary file store): every driver the harness opens is a new
// connection to it, as another process would be.
func TestConformance(t *testing.T) {
	srv := natsSrv.Server(t)
	transporttest.Run(t, transporttest.Harness{
		Open: func(ctx context.Context, cfg transport.Config) (driver.Driver, error) {
			return jetstream.Open(ctx, cfg)
		},
		Config:      config(srv.ClientURL(), "conf"),
		AckWait:     500 * time.Millisecond,
		Caps:        transporttest.Capabilities{Persistent: true, PublishDedupesByID: true},
		LeakOptions: natstest.LeakOptions(),
	})
}
