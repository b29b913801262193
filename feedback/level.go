// Package feedback is the backpressure loop of docs/design.md "The loop's semantics", both ends:
//
//   - the payloads on the bus: Event (telemetry.FeedbackEvent, Store → pipeline) and
//     RateAdjustment (telemetry.RateAdjustment, pipeline → observers), their schema
//     validators and envelope helpers;
//   - the pipeline side: Policy (level → scale, from MDP_FB_*), RateCoordinator (a token
//     bucket per provider on golang.org/x/time/rate), Handler (the newest event per
//     coordinator wins, by the broker's order; the most backed-up coordinator decides; every
//     applied change is published as a RateAdjustment; optionally a coordinator silent for
//     longer than MDP_FB_COORDINATOR_TTL stops counting; bounded under hostile input),
//     StateStore (the loop's state kept in the bus, so that a restart or a replica started
//     later resumes where the loop is) and Consumer (the Handler subscribed to a
//     transport.Bus in a group of the replica's own, registered so that two processes reading
//     as one replica find out, and the periodic check of the TTL);
//   - the Store side: Watermarks, a bounded queue that publishes a FeedbackEvent when its
//     depth crosses the high (0.8) or low (0.5) watermark, with a hysteresis band between
//     them so that a queue hovering at a mark does not flap.
package feedback

import (
	"fmt"
	"strings"
)

// Level is a backpressure level as the Store reports it.
type Level string

// The levels, from no pressure to the most.
const (
	LevelOK   Level = "ok"
	LevelSoft Level = "soft"
	LevelHard Level = "hard"
)

// Levels lists the valid levels in order of increasing pressure.
var Levels = []Level{LevelOK, LevelSoft, LevelHard}

// ParseLevel validates a level name (exact, lower case, as on the wire).
func ParseLevel(s string) (Level, error) {
	switch l := Level(s); l {
	case LevelOK, LevelSoft, LevelHard:
		return l, nil
	}
	return "", fmt.Errorf("feedback: unknown level %q (accepted: %s)", s, levelNames())
}

// Valid reports whether l is one of ok, soft, hard.
func (l Level) Valid() bool { return l.State() >= 0 }

// State is the level's value for the pipeline_backpressure_state gauge: 0 ok, 1 soft, 2 hard,
// and -1 for an invalid level.
func (l Level) State() int {
	switch l {
	case LevelOK:
		return 0
	case LevelSoft:
		return 1
	case LevelHard:
		return 2
	}
	return -1
}

// String returns the level's wire name.
func (l Level) String() string { return string(l) }

func levelNames() string {
	names := make([]string, len(Levels))
	for i, l := range Levels {
		names[i] = string(l)
	}
	return strings.Join(names, ", ")
}
