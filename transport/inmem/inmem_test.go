package inmem_test

import (
	"context"
	"testing"

	"go.uber.org/goleak"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/inmem"
	"github.com/pulse-bus/pulse/transport/transporttest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestConformance runs the conformance suite against inmem: every driver the harness opens
// shares one broker, as every Bus of a process does through the registry.
func TestConformance(t *testing.T) {
	broker := inmem.NewBroker(inmem.BrokerOptions{})
	transporttest.Run(t, transporttest.Harness{
		Open: func(_ context.Context, cfg transport.Config) (driver.Driver, error) {
			return inmem.New(broker, inmem.Options{}), nil
		},
		Config: transport.Config{Backend: inmem.Name},
		Caps:   transporttest.Capabilities{Persistent: true},
	})
}
