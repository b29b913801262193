package telemetry

import (
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// labelKind names the label schema of a cached attribute set: which label names the
// (up to three) values belong to.
type labelKind uint8

const (
	kindConsume     labelKind = iota // stream, track, outcome
	kindPublish                      // stream, track, outcome
	kindStreamTrack                  // stream, track
	kindStream                       // stream
	kindDLQ                          // stream, reason
	kindFeedback                     // provider, level
	kindProvider                     // provider
	kindDLQFailure                   // stream, action
)

// Label names.
const (
	labelStream   = "stream"
	labelTrack    = "track"
	labelOutcome  = "outcome"
	labelReason   = "reason"
	labelProvider = "provider"
	labelLevel    = "level"
	labelAction   = "action"
)

type attrKey struct {
	kind    labelKind
	a, b, c string
}

// attrOpts are the measurement options for one label combination, pre-sliced so that passing
// them to Add or Record allocates nothing.
type attrOpts struct {
	add    []metric.AddOption
	record []metric.RecordOption
}

// maxCachedAttrSets bounds attrCache. Label values come from configuration and closed sets
// (streams × tracks × outcomes, providers × levels), so real use stays far below it; past it a
// measurement still records, building its attribute set each time (and allocating).
const maxCachedAttrSets = 4096

// attrCache maps label combinations to their measurement options, at most maxCachedAttrSets
// of them; it is never pruned. Safe for concurrent use.
type attrCache struct {
	mu sync.RWMutex
	m  map[attrKey]*attrOpts
}

func (c *attrCache) get(kind labelKind, a, b, cv string) *attrOpts {
	k := attrKey{kind: kind, a: a, b: b, c: cv}
	c.mu.RLock()
	o, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return o
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if o, ok := c.m[k]; ok {
		return o
	}
	opt := metric.WithAttributeSet(newSet(k))
	o = &attrOpts{add: []metric.AddOption{opt}, record: []metric.RecordOption{opt}}
	if c.m == nil {
		c.m = make(map[attrKey]*attrOpts)
	}
	if len(c.m) < maxCachedAttrSets {
		c.m[k] = o
	}
	return o
}

func newSet(k attrKey) attribute.Set {
	switch k.kind {
	case kindConsume, kindPublish:
		return attribute.NewSet(attribute.String(labelStream, k.a), attribute.String(labelTrack, k.b), attribute.String(labelOutcome, k.c))
	case kindStreamTrack:
		return attribute.NewSet(attribute.String(labelStream, k.a), attribute.String(labelTrack, k.b))
	case kindStream:
		return attribute.NewSet(attribute.String(labelStream, k.a))
	case kindDLQ:
		return attribute.NewSet(attribute.String(labelStream, k.a), attribute.String(labelReason, k.b))
	case kindFeedback:
		return attribute.NewSet(attribute.String(labelProvider, k.a), attribute.String(labelLevel, k.b))
	case kindDLQFailure:
		return attribute.NewSet(attribute.String(labelStream, k.a), attribute.String(labelAction, k.b))
	default: // kindProvider
		return attribute.NewSet(attribute.String(labelProvider, k.a))
	}
}
