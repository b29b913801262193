package demo

import (
	"time"
)

// Sample is the loop's state at the end of one tick.
type Sample struct {
	// T is the simulated time since the start.
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
	// High and Low are the watermarks, in messages.
	High, Low int
	// Duration is the simulated time run.
	Duration time.Duration
	// Samples holds one sample per tick, in order.
	Samples []Sample
	// Events counts the FeedbackEvents the Store published, Adjustments the rate changes
	// the pipeline applied.
	Events, Adjustments int
	// Rejected counts messages the full queue refused (the loop should keep this at 0).
	Rejected int
	// MaxDepth is the deepest the queue got; AboveHigh the simulated time spent at or above
	// the high watermark.
	MaxDepth  int
	AboveHigh time.Duration
	// FirstHard is when the first hard event was applied (-1: never).
	FirstHard time.Duration
}
