package jetstream_test

import (
	"testing"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/transporttest"
)

// BenchmarkTracing is what tracing costs on JetStream (the package's embedded server):
// publish and consume+ack through a Bus with tracing off, and on at 1 trace in 100.
//
//	go test -run '^$' -bench Tracing -benchmem -count 5 -benchtime 20000x ./transport/jetstream/
func BenchmarkTracing(b *testing.B) {
	url := natsSrv.Server(b).ClientURL()
	transporttest.BenchTracing(b, transport.Config{}, func(b *testing.B, cfg transport.Config) *transport.Bus {
		c := config(url, benchNS("tr")) // a stream of its own per trial
		c.TracerProvider = cfg.TracerProvider
		return openBus(b, c)
	})
}
