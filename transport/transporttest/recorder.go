package transporttest

import (
	"maps"
	"sync"
	"time"

	"github.com/pulse-bus/pulse/transport"
)

// Recorder is a transport.Observer that records what the transport reports, so that tests
// can assert pulse_consume_total-style outcomes (success, error, duplicate, dead_letter,
// rejected, stale), dead-letter reasons, redeliveries and publishes. The zero value is not
// usable; use NewRecorder. It is safe for concurrent use and never blocks.
type Recorder struct {
	mu          sync.Mutex
	consumed    map[[3]string]int // stream, track, outcome
	deadLetters map[[2]string]int // stream, reason
	published   map[[2]string]int // stream, "success"|"error"
	redelivered map[string]int
	lags        map[string]int
}

var _ transport.Observer = (*Recorder)(nil)

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder {
	return &Recorder{
		consumed:    map[[3]string]int{},
		deadLetters: map[[2]string]int{},
		published:   map[[2]string]int{},
		redelivered: map[string]int{},
		lags:        map[string]int{},
	}
}

// Published implements transport.Observer.
func (r *Recorder) Published(stream, _ string, err error, _ time.Duration) {
	outcome := transport.OutcomeSuccess
	if err != nil {
		outcome = transport.OutcomeError
	}
	r.mu.Lock()
	r.published[[2]string{stream, outcome}]++
	r.mu.Unlock()
}

// Consumed implements transport.Observer.
func (r *Recorder) Consumed(stream, track string, outcome transport.Outcome) {
	r.mu.Lock()
	r.consumed[[3]string{stream, track, outcome}]++
	r.mu.Unlock()
}

// Redelivered implements transport.Observer.
func (r *Recorder) Redelivered(stream string) {
	r.mu.Lock()
	r.redelivered[stream]++
	r.mu.Unlock()
}

// DeadLettered implements transport.Observer.
func (r *Recorder) DeadLettered(stream, reason string) {
	r.mu.Lock()
	r.deadLetters[[2]string{stream, reason}]++
	r.mu.Unlock()
}

// Lag implements transport.Observer.
func (r *Recorder) Lag(stream string, _ time.Duration) {
	r.mu.Lock()
	r.lags[stream]++
	r.mu.Unlock()
}

// Outcome is how many deliveries on stream ended with outcome, over every track.
func (r *Recorder) Outcome(stream string, outcome transport.Outcome) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for k, v := range r.consumed {
		if k[0] == stream && k[2] == outcome {
			n += v
		}
	}
	return n
}

// OutcomeTrack is how many deliveries of track on stream ended with outcome.
func (r *Recorder) OutcomeTrack(stream, track string, outcome transport.Outcome) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.consumed[[3]string{stream, track, outcome}]
}

// Outcomes returns the outcome counts of stream, over every track.
func (r *Recorder) Outcomes(stream string) map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.consumed {
		if k[0] == stream {
			out[k[2]] += v
		}
	}
	return out
}

// DeadLetters is how many messages of stream were dead-lettered with reason.
func (r *Recorder) DeadLetters(stream, reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.deadLetters[[2]string{stream, reason}]
}

// DeadLetterReasons returns the dead-letter counts of stream by reason.
func (r *Recorder) DeadLetterReasons(stream string) map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.deadLetters {
		if k[0] == stream {
			out[k[1]] += v
		}
	}
	return out
}

// Redeliveries is how many deliveries on stream had attempt > 1.
func (r *Recorder) Redeliveries(stream string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.redelivered[stream]
}

// PublishedCount is how many messages were reported published to stream, successfully (ok)
// or not.
func (r *Recorder) PublishedCount(stream string, ok bool) int {
	outcome := transport.OutcomeSuccess
	if !ok {
		outcome = transport.OutcomeError
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.published[[2]string{stream, outcome}]
}

// Lags is how many lag samples were reported for stream.
func (r *Recorder) Lags(stream string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lags[stream]
}

// snapshot is for failure messages.
func (r *Recorder) snapshot(stream string) map[string]any {
	return map[string]any{
		"outcomes":     r.Outcomes(stream),
		"dead_letters": maps.Clone(r.DeadLetterReasons(stream)),
		"redeliveries": r.Redeliveries(stream),
	}
}
