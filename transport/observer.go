package transport

import (
	"time"

	"github.com/pulse-bus/pulse/envelope"
)

// Outcome is how one delivery ended, as counted in pulse_consume_total.
type Outcome string

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
	Published(stream string, track envelope.Track, err error, latency time.Duration)
	Consumed(stream string, track envelope.Track, outcome Outcome)
	Redelivered(stream string)
	DeadLettered(stream, reason string)
	Lag(stream string, lag time.Duration)
}

type nopObserver struct{}

func (nopObserver) Published(string, envelope.Track, error, time.Duration) {}
func (nopObserver) Consumed(string, envelope.Track, Outcome)               {}
func (nopObserver) Redelivered(string)                                     {}
func (nopObserver) DeadLettered(string, string)                            {}
func (nopObserver) Lag(string, time.Duration)                              {}
