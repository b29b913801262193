// Package transporttest is the conformance suite every Pulse driver runs. It proves, through
// transport.Bus and directly against the driver, the delivery semantics of docs/design.md: at least
// once, attempts counted by the broker, retries with backoff then the dead-letter queue, poison
// straight to the DLQ, competing members within a group and fan-out across groups, groups
// created late still reading from the start of the retained stream, idempotency recorded only
// after success, graceful drain, and Close that is idempotent and leaves nothing running.
//
// A driver package runs it from a test:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
//
//	func TestConformance(t *testing.T) {
//		transporttest.Run(t, transporttest.Harness{
//			Open: func(ctx context.Context, cfg transport.Config) (driver.Driver, error) {
//				return mydriver.Open(ctx, cfg) // a NEW driver on the SAME broker, every call
//			},
//			Config:  transport.Config{Backend: "mydriver", RedisURL: srv.URL()},
//			AckWait: time.Second, // the shortest ack-wait the broker honours reliably
//			Caps:    transporttest.Capabilities{Persistent: true},
//		})
//	}
//
// # The Harness contract
//
// Open is called many times per test: every call must return a new, independent driver
// connected to the same broker, as if it were another process (another member of a group, a
// restarted replica). The suite closes every driver it opens (through Bus.Close or directly).
// Open receives the suite's Config: Harness.Config with the per-test settings (Track,
// PublisherToken, AckWait, MaxDeliveries, retry backoff, DrainTimeout, BatchSize, Observer,
// Schemas, Group, Consumer) filled in; backend settings (URLs, Namespace, stream limits) come
// from Harness.Config unchanged.
//
// Every test uses stream names unique to it (a random per-process run id and a counter, e.g.
// "ct8q2m4x.t17"), so tests never see each other's messages even on a broker shared by the
// whole package or left over from an earlier run. Tests run one after another (not in
// parallel): the redelivery tests measure ack-wait and the leak check compares goroutines
// before and after. Tests of an optional behaviour (Capabilities, or the driver implementing
// driver.StreamAdmin) are skipped, saying why, when the driver does not declare it.
//
// Outcomes are checked with Recorder, a transport.Observer double that other tests may use as
// well: it counts pulse_consume_total-style outcomes, dead-letter reasons, redeliveries and
// publishes per stream.
//
// # Goroutine leaks
//
// The close test checks, with goleak.VerifyNone and goleak.IgnoreCurrent, that opening a Bus,
// subscribing, publishing and closing everything leaves no goroutine behind; goroutines that
// the harness itself owns for longer (an embedded server's, a connection pool's janitor) are
// either started before that test or listed in Harness.LeakOptions. A driver package must also
// run goleak.VerifyTestMain in its TestMain, which checks the whole package once every broker
// the test package started has been stopped.
//
// # Timing
//
// The suite uses a short AckWait (Harness.AckWait), retry backoff of a few milliseconds and a
// short DrainTimeout, so it runs in seconds. It never sleeps to synchronise: it waits for
// conditions with a deadline (Harness.Timeout). Where it must prove that something does NOT
// happen (a dead-lettered message is not delivered again), it watches for a bounded window of a
// few ack-waits.
package transporttest

import (
	"context"
	"time"

	"go.uber.org/goleak"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// Defaults of the Harness timing knobs.
const (
	// DefaultAckWait is the ack-wait the tests use when Harness.AckWait is zero.
	DefaultAckWait = 300 * time.Millisecond
	// DefaultTimeout bounds each wait for a condition when Harness.Timeout is zero.
	DefaultTimeout = 15 * time.Second
)

// Harness is what a driver package supplies to Run. Its zero-valued optional fields mean the
// defaults above; Open is required.
type Harness struct {
	// Open opens a NEW driver connected to the same broker on every call (each call is like
	// another process: another member of a group, or a replica after a restart). cfg is
	// Harness.Config completed with the test's settings. The caller closes the driver.
	Open func(ctx context.Context, cfg transport.Config) (driver.Driver, error)

	// Config is the base configuration every test starts from: backend settings (RedisURL,
	// NATSURL, Namespace, StreamMaxAge, …) and, optionally, a Logger for debugging. The suite
	// overrides the delivery settings (Track, PublisherToken, Group, Consumer, AckWait,
	// MaxDeliveries, RetryBackoffMin/Max, DrainTimeout, BatchSize, Observer, Schemas,
	// Idempotency) per test.
	Config transport.Config

	// AckWait is the ack-wait the tests use: an unsettled delivery must be redelivered after
	// about this long. Choose the shortest the broker honours reliably (a broker that scans
	// for idle entries periodically redelivers within AckWait plus its scan interval, which is
	// fine: waits are bounded by Timeout, not by AckWait). Zero means DefaultAckWait.
	AckWait time.Duration

	// Timeout bounds every wait for a condition. Zero means DefaultTimeout.
	Timeout time.Duration

	// Caps declares what the broker can do beyond the required semantics.
	Caps Capabilities

	// LeakOptions are extra goleak options for the close test, for goroutines the harness
	// owns that may start while that test runs (for example goleak.IgnoreTopFunction of a
	// connection pool's reaper).
	LeakOptions []goleak.Option
}

// Capabilities are the optional behaviours a driver declares. Tests of a capability run only
// when it is declared; the semantics every driver must have are not listed here.
type Capabilities struct {
	// Persistent means messages, groups and pending deliveries outlive the driver that
	// created them: a driver opened after every other one was closed still sees them (Redis,
	// JetStream; inmem too, since every driver of a namespace shares one process-wide broker).
	Persistent bool

	// PublishDedupesByID means the broker stores a message whose RawMessage.ID it has already
	// stored only once (JetStream's duplicate window on Nats-Msg-Id). Without it, the
	// consumer-side idempotency record absorbs the copy, which the suite also checks.
	PublishDedupesByID bool
}

func (h Harness) ackWait() time.Duration {
	if h.AckWait > 0 {
		return h.AckWait
	}
	return DefaultAckWait
}

func (h Harness) timeout() time.Duration {
	if h.Timeout > 0 {
		return h.Timeout
	}
	return DefaultTimeout
}
