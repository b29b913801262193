package demo

import (
	"errors"
	"fmt"
	"time"
)

// ErrParams is wrapped by Run's error for parameters it does not accept.
var ErrParams = errors.New("demo: invalid parameters")

// Demo defaults. The Store drains slower than the provider's base rate (so that without
// feedback the queue would overflow) but faster than the provider at soft, so that once the
// pipeline has backed off the queue holds between the watermarks: the drain rate defaults to
// the middle of the provider's rates at ok and soft. The Store's writer starts DrainDelay
// after the provider, as after a database restart: the queue climbs through soft to hard,
// then settles.
const (
	DefaultCapacity    = 100
	DefaultDrainDelay  = 2 * time.Second
	DefaultTick        = 100 * time.Millisecond
	DefaultDuration    = 20 * time.Second
	DefaultCoordinator = "demo-store"
)

// step is the simulation's resolution within a tick: the provider asks its token bucket for
// a message and the Store's writer drains once per step.
const step = time.Millisecond

// Params configure a run. The zero value means every default.
type Params struct {
	// Capacity is the Store queue's bound; the watermarks are 0.8 and 0.5 of it.
	Capacity int
	// DrainRate is how fast the Store's writer empties the queue, messages per second; 0
	// means the middle of the provider's rates at ok and at soft.
	DrainRate float64
	// DrainDelay is how long after the start the Store's writer begins draining; 0 means
	// DefaultDrainDelay, a negative value starts it at once.
	DrainDelay time.Duration
	// Tick is the simulated time between two samples (and live lines).
	Tick time.Duration
	// Duration is the simulated time to run.
	Duration time.Duration
	// Realtime paces ticks with the wall clock (the terminal demo); false runs them as fast
	// as the feedback loop allows (tests).
	Realtime bool
	// ApplyWait bounds how long a tick waits, at its end, for the pipeline to apply the
	// feedback events the Store published during it; 0 means one Tick. With a healthy bus
	// this is a millisecond or two, so the pipeline reacts within a tick, as it would live;
	// the wait keeps a simulation that runs faster than the wall clock honest about it.
	ApplyWait time.Duration
}

func (p Params) withDefaults(okRate, softRate float64) Params {
	if p.Capacity == 0 {
		p.Capacity = DefaultCapacity
	}
	if p.DrainRate == 0 {
		p.DrainRate = (okRate + softRate) / 2
	}
	if p.DrainDelay == 0 {
		p.DrainDelay = DefaultDrainDelay
	}
	if p.DrainDelay < 0 {
		p.DrainDelay = 0
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
	if err := p.check(); err != nil {
		return fmt.Errorf("%w: %w", ErrParams, err)
	}
	return nil
}

func (p Params) check() error {
	switch {
	case p.Capacity < 10:
		return fmt.Errorf("demo: capacity %d (accepted: an integer ≥ 10)", p.Capacity)
	case !(p.DrainRate > 0) || p.DrainRate > 1/step.Seconds():
		return fmt.Errorf("demo: drain rate %v (accepted: a number > 0 and ≤ %v per second)", p.DrainRate, 1/step.Seconds())
	case p.Tick < 10*step:
		return fmt.Errorf("demo: tick %v (accepted: ≥ %v)", p.Tick, 10*step)
	case p.Duration < p.Tick:
		return fmt.Errorf("demo: duration %v (accepted: at least one tick, %v)", p.Duration, p.Tick)
	case p.ApplyWait < 0:
		return fmt.Errorf("demo: apply wait %v (accepted: ≥ 0)", p.ApplyWait)
	}
	return nil
}
