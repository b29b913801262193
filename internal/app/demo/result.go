package demo

import (
	"time"
)

// Sample is the loop's state at the end of one tick.
type Sample struct {
	// T is the simulated time since the start, at the end of the tick.
	T time.Duration
	// Depth is the Store queue's depth.
	Depth int
	// Rate is the provider's rate, messages per second, as the rate coordinator set it.
	Rate float64
	// Level is the level the pipeline last applied ("ok", "soft" or "hard").
	Level string
	// Produced and Drained count the messages that entered and left the queue this tick.
	Produced, Drained int
}

// Result is a finished run.
type Result struct {
	// Params are the parameters the run used, defaults filled in.
	Params Params
	// Backend is the bus the feedback travelled on.
	Backend string
	// Provider is the paced provider; BaseRate, SoftRate and MinRate its rates at ok, at
	// soft and the floor (hard), messages per second.
	Provider                    string
	BaseRate, SoftRate, MinRate float64
	// High and Low are the watermarks, in messages.
	High, Low int
	// Duration is the simulated time run (less than Params.Duration if interrupted).
	Duration time.Duration
	// Samples holds one sample per tick, in order.
	Samples []Sample
	// Events counts the FeedbackEvents the Store published; Adjustments the RateAdjustments
	// the pipeline published (each a change of the provider's rate).
	Events, Adjustments int
	// Rejected counts messages refused because the queue was full (the loop keeps it at 0).
	Rejected int
	// LateTicks counts ticks that ended before the pipeline had applied their events.
	LateTicks int
	// MaxDepth is the deepest the queue got; AboveHigh the simulated time spent at or above
	// the high watermark.
	MaxDepth  int
	AboveHigh time.Duration
	// FirstHard is when the pipeline first applied hard; -1 if it never did.
	FirstHard time.Duration
	// MaxDepthAfterHard is the deepest the queue got after it first came back under the high
	// watermark following the first hard (-1 if that never happened). The loop holds the
	// queue below the high watermark from then on: this stays under High.
	MaxDepthAfterHard int
}

// Settled reports whether the run showed what the demo is about: the pipeline backed off
// hard, and from the queue's first recovery on it never reached the high watermark again,
// nor refused a message.
func (r *Result) Settled() bool {
	return r.FirstHard >= 0 && r.MaxDepthAfterHard >= 0 && r.MaxDepthAfterHard < r.High && r.Rejected == 0
}
