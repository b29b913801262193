package demo

import (
	"fmt"
	"time"
)

// Demo defaults, tuned so that the loop settles: the Store drains slower than the provider's
// base rate (so without feedback the queue would overflow), but faster than the provider at
// soft (base × 0.5), so that once the pipeline has backed off the queue holds between the
// watermarks. The Store's writer starts DrainDelay after the provider, as after a database
// restart: the queue climbs through soft to hard, then settles.
const (
	DefaultCapacity    = 100
	DefaultBaseRate    = 60.0 // messages per second: the provider's unthrottled rate
	DefaultDrainRate   = 45.0 // messages per second the Store writes once its writer is up
	DefaultDrainDelay  = 2 * time.Second
	DefaultTick        = 100 * time.Millisecond
	DefaultDuration    = 20 * time.Second
	DefaultProvider    = "ibkr"
	DefaultCoordinator = "demo-store"
)

// Params configure a run. The zero value means every default.
type Params struct {
	// Capacity is the Store queue's bound; the watermarks are 0.8 and 0.5 of it.
	Capacity int
	// BaseRate is the provider's unthrottled rate, messages per second.
	BaseRate float64
	// DrainRate is how fast the Store empties its queue, messages per second.
	DrainRate float64
	// DrainDelay is how long after the start the Store's writer begins draining.
	DrainDelay time.Duration
	// Tick is the simulated time between two samples.
	Tick time.Duration
	// Duration is the simulated time to run.
	Duration time.Duration
	// Realtime paces ticks with the wall clock (the terminal demo); false runs them as fast
	// as the feedback loop allows (tests).
	Realtime bool
	// ApplyWait bounds how long a tick waits for the pipeline to apply the feedback event it
	// published before going on; 0 means one Tick. The event is still applied later, as in a
	// real deployment; the wait only keeps the simulation's clock honest about it.
	ApplyWait time.Duration
}

func (p Params) withDefaults() Params {
	if p.Capacity == 0 {
		p.Capacity = DefaultCapacity
	}
	if p.BaseRate == 0 {
		p.BaseRate = DefaultBaseRate
	}
	if p.DrainRate == 0 {
		p.DrainRate = DefaultDrainRate
	}
	if p.Tick == 0 {
		p.Tick = DefaultTick
	}
	if p.Duration == 0 {
		p.Duration = DefaultDuration
	}
	if p.ApplyWait == 0 {
		p.ApplyWait = p.Tick
	}
	return p
}

func (p Params) validate() error {
	switch {
	case p.Capacity < 10:
		return fmt.Errorf("demo: capacity %d (accepted: an integer ≥ 10)", p.Capacity)
	case !(p.BaseRate > 0):
		return fmt.Errorf("demo: base rate %v (accepted: a number > 0)", p.BaseRate)
	case !(p.DrainRate > 0):
		return fmt.Errorf("demo: drain rate %v (accepted: a number > 0)", p.DrainRate)
	case p.DrainDelay < 0:
		return fmt.Errorf("demo: drain delay %v (accepted: ≥ 0)", p.DrainDelay)
	case p.Tick < time.Millisecond:
		return fmt.Errorf("demo: tick %v (accepted: ≥ 1ms)", p.Tick)
	case p.Duration < p.Tick:
		return fmt.Errorf("demo: duration %v (accepted: at least one tick, %v)", p.Duration, p.Tick)
	case p.ApplyWait < 0:
		return fmt.Errorf("demo: apply wait %v (accepted: ≥ 0)", p.ApplyWait)
	}
	return nil
}
