package feedback

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/pulse-bus/pulse/envconf"
)

// Policy defaults (docs/contract.md §5), defined once.
const (
	DefaultProvider  = "ibkr"
	DefaultScaleOK   = 1.0
	DefaultScaleSoft = 0.5
	DefaultScaleHard = 0.0
	// DefaultBaseRate is a provider's unthrottled rate, messages per second.
	DefaultBaseRate = 60.0
	// DefaultMinRate is the floor under a throttled rate, messages per second: `hard` slows
	// a provider to one message a second, it never stops it (a stopped provider would also
	// stop producing the data that lets the Store recover its view of the market).
	DefaultMinRate = 1.0
	// DefaultBurst is the token bucket's depth: 1 paces requests evenly at the rate.
	DefaultBurst = 1
	// DefaultCoordinatorTTL is how long a coordinator's last applied event keeps counting
	// toward its provider's minimum: 0, for ever, as in the Python core. It is the safe
	// default because Stores signal on edges only: a live Store that stays hard sends nothing
	// more, and expiring it would lift the rate while its queue is still full.
	DefaultCoordinatorTTL time.Duration = 0
	// DefaultMaxClockSkew is how far ahead of the consumer's clock an event's ts may be
	// before the event is refused (dead-lettered clock_skew): more than NTP ever leaves
	// between two hosts, far less than the time such an event would pin its coordinator.
	DefaultMaxClockSkew = 5 * time.Minute
	// DefaultMaxCoordinators bounds the coordinators a handler tracks (its memory, /state
	// and the state store): far more Stores than a pipeline has, few enough that a flood of
	// invented coordinator ids costs a few megabytes.
	DefaultMaxCoordinators = 10_000
)

// The environment variables read by PolicyFromEnv.
const (
	EnvProvider  = "MDP_FB_PROVIDER_NAME"
	EnvScaleOK   = "MDP_FB_SCALE_OK"
	EnvScaleSoft = "MDP_FB_SCALE_SOFT"
	EnvScaleHard = "MDP_FB_SCALE_HARD"
	EnvBaseRate  = "MDP_FB_BASE_RATE"
	EnvMinRate   = "MDP_FB_MIN_RATE"
	EnvBurst     = "MDP_FB_BURST"
	// EnvCoordinatorTTL is a Go duration (30s, 5m); 0 means never expire.
	EnvCoordinatorTTL = "MDP_FB_COORDINATOR_TTL"
	// EnvMaxClockSkew is a Go duration > 0.
	EnvMaxClockSkew = "MDP_FB_MAX_CLOCK_SKEW"
	// EnvMaxCoordinators is an integer ≥ 1.
	EnvMaxCoordinators = "MDP_FB_MAX_COORDINATORS"
)

// Policy turns a backpressure level into a provider's rate: rate = max(MinRate, BaseRate ×
// scale(level)), as the Python RateCoordinator did. The zero Policy means every default; a
// level missing from Scales takes its default scale. A Policy is a value: do not change its
// Scales map once it is in use.
type Policy struct {
	// Provider is the provider whose rate feedback scales (MDP_FB_PROVIDER_NAME); "" means
	// DefaultProvider.
	Provider string
	// Scales maps a level to its scale in [0, 1] (MDP_FB_SCALE_OK/_SOFT/_HARD).
	Scales map[Level]float64
	// BaseRate is the unthrottled rate in messages per second (MDP_FB_BASE_RATE); 0 means
	// DefaultBaseRate.
	BaseRate float64
	// MinRate is the floor in messages per second (MDP_FB_MIN_RATE), 0 < MinRate ≤ BaseRate;
	// 0 means DefaultMinRate (capped at BaseRate).
	MinRate float64
	// Burst is the token bucket's depth (MDP_FB_BURST); 0 means DefaultBurst.
	Burst int
	// CoordinatorTTL (MDP_FB_COORDINATOR_TTL), when > 0, expires a coordinator whose last
	// event the Handler applied longer ago than this: it no longer counts toward the
	// provider's minimum, so a Store that died after saying hard does not hold the provider
	// at its floor for ever (see Handler.Expire). 0 (DefaultCoordinatorTTL) never expires,
	// as in the Python core. Stores signal on edges only, so set it well above the longest
	// time a live Store may hold a level without a new event (or let the Stores repeat their
	// level more often than that); a live Store expired while hard gets its provider back at
	// the full rate.
	CoordinatorTTL time.Duration
	// MaxClockSkew (MDP_FB_MAX_CLOCK_SKEW) is how far an event's ts may be ahead of the
	// handler's clock; an event further ahead is poison (ReasonClockSkew) and changes
	// nothing. 0 means DefaultMaxClockSkew.
	MaxClockSkew time.Duration
	// MaxCoordinators (MDP_FB_MAX_COORDINATORS) bounds the tracked coordinators; a new one
	// beyond it makes the handler forget one (see Handler). 0 means DefaultMaxCoordinators.
	MaxCoordinators int
}

// DefaultPolicy returns the defaults, spelled out.
func DefaultPolicy() Policy {
	return Policy{
		Provider:        DefaultProvider,
		Scales:          map[Level]float64{LevelOK: DefaultScaleOK, LevelSoft: DefaultScaleSoft, LevelHard: DefaultScaleHard},
		BaseRate:        DefaultBaseRate,
		MinRate:         DefaultMinRate,
		Burst:           DefaultBurst,
		CoordinatorTTL:  DefaultCoordinatorTTL,
		MaxClockSkew:    DefaultMaxClockSkew,
		MaxCoordinators: DefaultMaxCoordinators,
	}
}

// WithDefaults returns p with every zero field replaced by its default.
func (p Policy) WithDefaults() Policy {
	d := DefaultPolicy()
	if p.Provider == "" {
		p.Provider = d.Provider
	}
	scales := make(map[Level]float64, len(Levels))
	for _, l := range Levels {
		scales[l] = p.Scale(l)
	}
	p.Scales = scales
	if p.BaseRate == 0 {
		p.BaseRate = d.BaseRate
	}
	if p.MinRate == 0 {
		p.MinRate = min(d.MinRate, p.BaseRate)
	}
	if p.Burst == 0 {
		p.Burst = d.Burst
	}
	if p.MaxClockSkew == 0 {
		p.MaxClockSkew = d.MaxClockSkew
	}
	if p.MaxCoordinators == 0 {
		p.MaxCoordinators = d.MaxCoordinators
	}
	return p
}

// Scale is the scale for level l: Scales[l], else l's default. An invalid level scales like
// ok (it cannot reach here through the validators).
func (p Policy) Scale(l Level) float64 {
	if s, ok := p.Scales[l]; ok {
		return s
	}
	switch l {
	case LevelSoft:
		return DefaultScaleSoft
	case LevelHard:
		return DefaultScaleHard
	}
	return DefaultScaleOK
}

// Rate is the provider's rate in messages per second at scale: max(MinRate, BaseRate × scale).
func (p Policy) Rate(scale float64) float64 {
	p = p.WithDefaults()
	return p.Limits().Rate(scale)
}

// Limits returns the token-bucket settings of the policy's provider.
func (p Policy) Limits() Limits {
	p = p.WithDefaults()
	return Limits{BaseRate: p.BaseRate, MinRate: p.MinRate, Burst: p.Burst}
}

// Validate checks the policy (defaults filled in); errors are *envconf.Error naming the
// environment variable of the bad field.
func (p Policy) Validate() error {
	for l := range p.Scales {
		if !l.Valid() {
			return &envconf.Error{Var: "feedback.Policy.Scales", Value: string(l), Accepted: levelNames()}
		}
	}
	p = p.WithDefaults()
	for _, l := range Levels {
		if s := p.Scales[l]; !validScale(s) {
			return &envconf.Error{Var: scaleVar(l), Value: fmtFloat(s), Accepted: "a number from 0 to 1"}
		}
	}
	if p.CoordinatorTTL < 0 {
		return &envconf.Error{Var: EnvCoordinatorTTL, Value: p.CoordinatorTTL.String(), Accepted: ttlAccepted}
	}
	if p.MaxClockSkew < 0 {
		return &envconf.Error{Var: EnvMaxClockSkew, Value: p.MaxClockSkew.String(), Accepted: skewAccepted}
	}
	if p.MaxCoordinators < 0 {
		return &envconf.Error{Var: EnvMaxCoordinators, Value: strconv.Itoa(p.MaxCoordinators), Accepted: "an integer ≥ 1"}
	}
	return p.Limits().validate()
}

func scaleVar(l Level) string {
	switch l {
	case LevelSoft:
		return EnvScaleSoft
	case LevelHard:
		return EnvScaleHard
	}
	return EnvScaleOK
}

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// PolicyFromEnv reads the policy from MDP_FB_PROVIDER_NAME, MDP_FB_SCALE_OK/_SOFT/_HARD,
// MDP_FB_BASE_RATE, MDP_FB_MIN_RATE, MDP_FB_BURST, MDP_FB_COORDINATOR_TTL,
// MDP_FB_MAX_CLOCK_SKEW and MDP_FB_MAX_COORDINATORS through lookup
// (os.LookupEnv in production). Unset or blank variables keep their defaults. A bad value is returned as a
// *envconf.Error naming the variable, the value and what is accepted.
func PolicyFromEnv(lookup func(string) (string, bool)) (Policy, error) {
	p := DefaultPolicy()
	p.MinRate = 0 // the default floor, capped at a (low) configured base rate
	r := envconf.Reader{Lookup: lookup}
	r.String(EnvProvider, &p.Provider)
	ok, soft, hard := p.Scales[LevelOK], p.Scales[LevelSoft], p.Scales[LevelHard]
	r.Float(EnvScaleOK, &ok, 0, 1)
	r.Float(EnvScaleSoft, &soft, 0, 1)
	r.Float(EnvScaleHard, &hard, 0, 1)
	positiveFloat(&r, EnvBaseRate, &p.BaseRate)
	positiveFloat(&r, EnvMinRate, &p.MinRate)
	r.PositiveInt(EnvBurst, &p.Burst)
	ttl(&r, EnvCoordinatorTTL, &p.CoordinatorTTL)
	r.Duration(EnvMaxClockSkew, &p.MaxClockSkew)
	r.PositiveInt(EnvMaxCoordinators, &p.MaxCoordinators)
	if r.Err != nil {
		return Policy{}, r.Err
	}
	p.Scales = map[Level]float64{LevelOK: ok, LevelSoft: soft, LevelHard: hard}
	p = p.WithDefaults()
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

// positiveFloat reads a finite number > 0 into dst.
func positiveFloat(r *envconf.Reader, name string, dst *float64) {
	var s string
	r.String(name, &s)
	if r.Err != nil || s == "" {
		return
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !(f > 0) || math.IsInf(f, 0) {
		r.Err = &envconf.Error{Var: name, Value: s, Accepted: "a number > 0 (messages per second)"}
		return
	}
	*dst = f
}

const ttlAccepted = "a duration ≥ 0 such as 30s, 5m or 1h (0 = never expire)"

// ttl reads a Go duration ≥ 0 into dst; "0" (no unit) is accepted.
func ttl(r *envconf.Reader, name string, dst *time.Duration) {
	var s string
	r.String(name, &s)
	if r.Err != nil || s == "" {
		return
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		r.Err = &envconf.Error{Var: name, Value: s, Accepted: ttlAccepted}
		return
	}
	*dst = d
}

const skewAccepted = "a positive duration such as 30s, 5m or 1h"

// Limits are one provider's token-bucket settings. The zero Limits means the defaults.
type Limits struct {
	// BaseRate is the unthrottled rate, messages per second; 0 means DefaultBaseRate.
	BaseRate float64
	// MinRate is the floor, messages per second, 0 < MinRate ≤ BaseRate; 0 means
	// DefaultMinRate, capped at BaseRate.
	MinRate float64
	// Burst is the bucket depth; 0 means DefaultBurst.
	Burst int
}

func (l Limits) withDefaults() Limits {
	if l.BaseRate == 0 {
		l.BaseRate = DefaultBaseRate
	}
	if l.MinRate == 0 {
		l.MinRate = min(DefaultMinRate, l.BaseRate)
	}
	if l.Burst == 0 {
		l.Burst = DefaultBurst
	}
	return l
}

func (l Limits) validate() error {
	l = l.withDefaults()
	switch {
	case !(l.BaseRate > 0) || math.IsInf(l.BaseRate, 0):
		return &envconf.Error{Var: EnvBaseRate, Value: fmtFloat(l.BaseRate), Accepted: "a number > 0 (messages per second)"}
	case !(l.MinRate > 0) || l.MinRate > l.BaseRate:
		return &envconf.Error{Var: EnvMinRate, Value: fmtFloat(l.MinRate),
			Accepted: fmt.Sprintf("a number > 0 and ≤ %s=%s (messages per second)", EnvBaseRate, fmtFloat(l.BaseRate))}
	case l.Burst < 1:
		return &envconf.Error{Var: EnvBurst, Value: strconv.Itoa(l.Burst), Accepted: "an integer ≥ 1"}
	}
	return nil
}

// Rate is the rate at scale: max(MinRate, BaseRate × scale), defaults filled in.
func (l Limits) Rate(scale float64) float64 {
	l = l.withDefaults()
	return max(l.MinRate, l.BaseRate*scale)
}
