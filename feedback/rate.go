package feedback

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"

	"golang.org/x/time/rate"
)

// RateCoordinator paces calls to providers: one token bucket (golang.org/x/time/rate) per
// provider, refilled at max(MinRate, BaseRate × scale) with depth Burst. A provider appears on
// first use with the default Limits and scale 1. It is safe for concurrent use.
type RateCoordinator struct {
	def Limits

	mu        sync.RWMutex
	providers map[string]*providerRate
}

type providerRate struct {
	limits  Limits // defaults filled in
	scale   float64
	limiter *rate.Limiter
}

// ProviderState is one provider's pacing, as /state shows it.
type ProviderState struct {
	// BaseRate, MinRate and Burst are the provider's Limits (messages per second, tokens).
	BaseRate float64 `json:"base_rate"`
	MinRate  float64 `json:"min_rate"`
	Burst    int     `json:"burst"`
	// Scale is the current scale of BaseRate, in [0, 1].
	Scale float64 `json:"scale"`
	// Rate is the current rate, messages per second: max(MinRate, BaseRate × Scale).
	Rate float64 `json:"rate"`
}

// NewRateCoordinator returns a coordinator whose providers get def (zero fields = defaults)
// unless Configure says otherwise. An invalid def is a *envconf.Error.
func NewRateCoordinator(def Limits) (*RateCoordinator, error) {
	if err := def.validate(); err != nil {
		return nil, err
	}
	return &RateCoordinator{def: def.withDefaults(), providers: map[string]*providerRate{}}, nil
}

// get returns provider's state, creating it with the default limits.
func (c *RateCoordinator) get(provider string) *providerRate {
	c.mu.RLock()
	p := c.providers[provider]
	c.mu.RUnlock()
	if p != nil {
		return p
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p = c.providers[provider]; p == nil {
		p = &providerRate{limits: c.def, scale: 1}
		p.limiter = rate.NewLimiter(rate.Limit(p.limits.Rate(1)), p.limits.Burst)
		c.providers[provider] = p
	}
	return p
}

// Configure sets provider's limits (zero fields = defaults), keeping its current scale; the
// provider's limiter is adjusted in place. An invalid l is a *envconf.Error.
func (c *RateCoordinator) Configure(provider string, l Limits) error {
	if err := l.validate(); err != nil {
		return err
	}
	l = l.withDefaults()
	p := c.get(provider)
	c.mu.Lock()
	defer c.mu.Unlock()
	p.limits = l
	p.limiter.SetBurst(l.Burst)
	p.limiter.SetLimit(rate.Limit(l.Rate(p.scale)))
	return nil
}

// SetScale sets provider's scale, in [0, 1], and its limiter's rate to
// max(MinRate, BaseRate × scale). Tokens already in the bucket stay; waiters see the new rate.
func (c *RateCoordinator) SetScale(provider string, scale float64) error {
	if !validScale(scale) {
		return fmt.Errorf("feedback: scale %v for provider %q (accepted: a number from 0 to 1)", scale, provider)
	}
	p := c.get(provider)
	c.mu.Lock()
	defer c.mu.Unlock()
	p.scale = scale
	p.limiter.SetLimit(rate.Limit(p.limits.Rate(scale)))
	return nil
}

// Scale is provider's current scale (1 for a provider never scaled).
func (c *RateCoordinator) Scale(provider string) float64 {
	p := c.get(provider)
	c.mu.RLock()
	defer c.mu.RUnlock()
	return p.scale
}

// Rate is provider's current rate, messages per second.
func (c *RateCoordinator) Rate(provider string) float64 {
	p := c.get(provider)
	c.mu.RLock()
	defer c.mu.RUnlock()
	return p.limits.Rate(p.scale)
}

// Limiter returns provider's token bucket. It is the same *rate.Limiter for the
// coordinator's lifetime (SetScale and Configure adjust it in place), so callers may keep it.
// Callers must not change its limit or burst themselves.
func (c *RateCoordinator) Limiter(provider string) *rate.Limiter { return c.get(provider).limiter }

// Wait blocks until provider's bucket grants one token or ctx is done. It returns ctx.Err()
// once ctx is done, or the limiter's error when ctx's deadline would pass before the token.
func (c *RateCoordinator) Wait(ctx context.Context, provider string) error {
	return c.get(provider).limiter.Wait(ctx)
}

// Allow reports whether provider's bucket grants one token now, taking it if so. It never
// blocks.
func (c *RateCoordinator) Allow(provider string) bool { return c.get(provider).limiter.Allow() }

// Snapshot returns every known provider's pacing. The map is the caller's.
func (c *RateCoordinator) Snapshot() map[string]ProviderState {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[string]ProviderState, len(c.providers))
	for name, p := range c.providers {
		out[name] = ProviderState{
			BaseRate: p.limits.BaseRate,
			MinRate:  p.limits.MinRate,
			Burst:    p.limits.Burst,
			Scale:    p.scale,
			Rate:     p.limits.Rate(p.scale),
		}
	}
	return out
}

// Providers lists the known providers, sorted.
func (c *RateCoordinator) Providers() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Sorted(maps.Keys(c.providers))
}
