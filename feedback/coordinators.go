package feedback

import (
	"time"

	"github.com/pulse-bus/pulse/transport"
)

// RecentEvents is how many of a coordinator's last applied events the handler remembers (by
// their ts) to recognise a replay of one of them; see Handler.
const RecentEvents = 64

// coordState is one tracked coordinator: its last applied event, where that event stood in
// the broker's order, the ts of its recent events, and its place in the handler's lists.
type coordState struct {
	id        string
	level     Level
	queueSize int
	capacity  int
	source    string
	eventTS   float64
	appliedAt time.Time
	position  transport.Position // of the applied event; zero when unknown
	recent    []float64          // ts of the last ≤ RecentEvents applied events, oldest first
	expired   bool

	class      int // the list it is on
	prev, next *coordState

	rev   uint64 // revision of its record in the state store (0: none known)
	dirty uint64 // generation of a change not yet saved (0: saved)
}

// remember adds ts to the recent events, forgetting the oldest beyond RecentEvents.
func (c *coordState) remember(ts float64) {
	if len(c.recent) == RecentEvents {
		copy(c.recent, c.recent[1:])
		c.recent = c.recent[:RecentEvents-1]
	}
	c.recent = append(c.recent, ts)
}

// applied reports whether an event with ts is one of the recent events.
func (c *coordState) applied(ts float64) bool {
	for _, r := range c.recent {
		if r == ts {
			return true
		}
	}
	return false
}

// oldestRecent is the smallest ts among the recent events.
func (c *coordState) oldestRecent() float64 {
	m := c.eventTS
	for _, r := range c.recent {
		m = min(m, r)
	}
	return m
}

// The lists a coordinator is on: expired ones on one, the others on the list of their level.
const (
	classExpired = iota
	classOK
	classSoft
	classHard
	classes
)

func classOf(l Level) int {
	switch l {
	case LevelSoft:
		return classSoft
	case LevelHard:
		return classHard
	}
	return classOK
}

// coordList is an intrusive doubly-linked list of coordinators, least recently applied
// first.
type coordList struct {
	head, tail *coordState
	n          int
}

func (l *coordList) pushBack(c *coordState) { l.insertAfter(l.tail, c) }

// insertAfter puts c right after at, or first when at is nil.
func (l *coordList) insertAfter(at, c *coordState) {
	c.prev = at
	if at != nil {
		c.next, at.next = at.next, c
	} else {
		c.next, l.head = l.head, c
	}
	if c.next != nil {
		c.next.prev = c
	} else {
		l.tail = c
	}
	l.n++
}

func (l *coordList) remove(c *coordState) {
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		l.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		l.tail = c.prev
	}
	c.prev, c.next = nil, nil
	l.n--
}

// insertSorted puts c where its appliedAt belongs (for restoring records in any order).
func (l *coordList) insertSorted(c *coordState) {
	at := l.tail
	for at != nil && at.appliedAt.After(c.appliedAt) {
		at = at.prev
	}
	l.insertAfter(at, c)
}

// coordSet is the handler's tracked coordinators: a map by id and one list per class, so
// that the provider's minimum, expiry and eviction each cost O(1) per coordinator they touch
// instead of a walk over all of them.
type coordSet struct {
	byID  map[string]*coordState
	lists [classes]coordList
}

func newCoordSet() coordSet { return coordSet{byID: map[string]*coordState{}} }

func (s *coordSet) len() int { return len(s.byID) }

func (s *coordSet) get(id string) *coordState { return s.byID[id] }

// add tracks a new coordinator, appliedAt the most recent.
func (s *coordSet) add(c *coordState) {
	s.byID[c.id] = c
	c.class = s.classFor(c)
	s.lists[c.class].pushBack(c)
}

// restore tracks a coordinator read back from a store, in appliedAt order.
func (s *coordSet) restore(c *coordState) {
	s.byID[c.id] = c
	c.class = s.classFor(c)
	s.lists[c.class].insertSorted(c)
}

func (s *coordSet) classFor(c *coordState) int {
	if c.expired {
		return classExpired
	}
	return classOf(c.level)
}

// touched moves c, just applied (or brought back from expiry), to the end of its class.
func (s *coordSet) touched(c *coordState) {
	s.lists[c.class].remove(c)
	c.class = s.classFor(c)
	s.lists[c.class].pushBack(c)
}

func (s *coordSet) drop(c *coordState) {
	s.lists[c.class].remove(c)
	delete(s.byID, c.id)
}

// victim is the coordinator to forget when one more must fit: the longest-silent expired
// one, else the longest-silent ok one, else soft, else hard. Forgetting an expired or ok
// coordinator never changes the provider's rate; a soft or hard one is forgotten only when
// every tracked coordinator is at least soft.
func (s *coordSet) victim() *coordState {
	for class := range classes {
		if c := s.lists[class].head; c != nil {
			return c
		}
	}
	return nil
}

// expire marks as expired every unexpired coordinator applied longer than ttl before now,
// oldest first, and returns their ids.
func (s *coordSet) expire(now time.Time, ttl time.Duration) []string {
	var ids []string
	for {
		var oldest *coordState
		for class := classOK; class < classes; class++ {
			if c := s.lists[class].head; c != nil && (oldest == nil || c.appliedAt.Before(oldest.appliedAt)) {
				oldest = c
			}
		}
		if oldest == nil || now.Sub(oldest.appliedAt) <= ttl {
			return ids
		}
		oldest.expired = true
		s.touched(oldest)
		ids = append(ids, oldest.id)
	}
}

// minimum is the provider's scale under policy: the least scale among the unexpired
// coordinators' levels (1 when there are none), and the level that decided it (the most
// pressing among equal scales; ok when there are none).
func (s *coordSet) minimum(p Policy) (float64, Level) {
	scale, reason, found := 1.0, LevelOK, false
	for _, l := range Levels {
		if s.lists[classOf(l)].n == 0 {
			continue
		}
		if v := p.Scale(l); !found || v < scale || v == scale && l.State() > reason.State() {
			scale, reason, found = v, l, true
		}
	}
	return scale, reason
}

// pressing calls fn with up to max coordinators, the most pressing first: hard, soft, ok,
// then expired, the most recently applied first within each.
func (s *coordSet) pressing(max int, fn func(*coordState)) {
	n := 0
	for class := classes - 1; class >= 0; class-- {
		for c := s.lists[class].tail; c != nil && n < max; c = c.prev {
			fn(c)
			n++
		}
	}
}
