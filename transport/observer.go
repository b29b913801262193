package transport

import "time"

// Outcome is how one delivery ended, as counted in pulse_consume_total. It is a plain string
// so that telemetry, a leaf package, implements Observer without importing transport.
type Outcome = string

// The outcomes.
const (
	OutcomeSuccess    Outcome = "success"     // handled and acked
	OutcomeError      Outcome = "error"       // handler failed; redelivered later
	OutcomeDuplicate  Outcome = "duplicate"   // already handled; acked without handling
	OutcomeDeadLetter Outcome = "dead_letter" // failed on its last attempt; dead-lettered
	OutcomeRejected   Outcome = "rejected"    // poison (undecodable, invalid, unauthenticated); dead-lettered at once
	OutcomeStale      Outcome = "stale"       // handler skipped it as older than applied state; acked
)

// Observer receives what the transport does, for metrics. Implementations must be safe for
// concurrent use and must not block. telemetry.Metrics implements it.
type Observer interface {
	// Published reports one message published (err nil) or not.
	Published(stream, track string, err error, latency time.Duration)
	// Consumed reports how one delivery ended.
	Consumed(stream, track string, outcome Outcome)
	// Redelivered reports a delivery with attempt > 1.
	Redelivered(stream string)
	// DeadLettered reports a message written to the stream's DLQ.
	DeadLettered(stream, reason string)
	// Lag reports how long a message waited between the broker storing it and a member
	// receiving it, by the broker's clock where the driver knows it (the envelope ts
	// otherwise), clamped to [0, 7 days].
	Lag(stream string, lag time.Duration)
}

type nopObserver struct{}

func (nopObserver) Published(string, string, error, time.Duration) {}
func (nopObserver) Consumed(string, string, Outcome)               {}
func (nopObserver) Redelivered(string)                             {}
func (nopObserver) DeadLettered(string, string)                    {}
func (nopObserver) Lag(string, time.Duration)                      {}
