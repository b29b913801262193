package redis

import (
	"container/heap"
	"time"
)

// delayQueue holds a subscription's entries waiting for a delayed redelivery: a min-heap by
// due time with an index by entry id. It also tracks when each entry's idle clock in Redis was
// last reset (its delivery, or a touch), so that entries can be touched before the group sees
// them as abandoned. It is not safe for concurrent use (the subscription locks it).
type delayQueue struct {
	items      delayHeap
	byID       map[string]*delayItem
	touchAfter time.Duration // an entry is touched once it has been idle this long
	nextTouch  time.Time     // no entry needs a touch before then
}

type delayItem struct {
	id    string
	due   time.Time // redeliver at or after
	reset time.Time // when its idle time in Redis was last reset
	index int
}

func newDelayQueue(touchAfter time.Duration) delayQueue {
	return delayQueue{byID: map[string]*delayItem{}, touchAfter: touchAfter}
}

// Len is the number of entries waiting.
func (q *delayQueue) Len() int { return len(q.items) }

// schedule sets id to be redelivered at due; reset is when its idle time was last reset.
func (q *delayQueue) schedule(id string, due, reset time.Time) {
	if it, ok := q.byID[id]; ok {
		it.due, it.reset = due, reset
		heap.Fix(&q.items, it.index)
	} else {
		it := &delayItem{id: id, due: due, reset: reset}
		heap.Push(&q.items, it)
		q.byID[id] = it
	}
	if t := reset.Add(q.touchAfter); len(q.items) == 1 || t.Before(q.nextTouch) {
		q.nextTouch = t
	}
}

// remove forgets id; an unknown id is ignored.
func (q *delayQueue) remove(id string) {
	if it, ok := q.byID[id]; ok {
		heap.Remove(&q.items, it.index)
		delete(q.byID, id)
	}
}

// next returns, if any entry waits, the earliest due time and the earliest time an entry
// needs a touch.
func (q *delayQueue) next() (due, touch time.Time, ok bool) {
	if len(q.items) == 0 {
		return time.Time{}, time.Time{}, false
	}
	return q.items[0].due, q.nextTouch, true
}

// popDue removes and returns up to n ids due at now, earliest first.
func (q *delayQueue) popDue(now time.Time, n int) []string {
	var ids []string
	for len(q.items) > 0 && len(ids) < n && !q.items[0].due.After(now) {
		it := heap.Pop(&q.items).(*delayItem)
		delete(q.byID, it.id)
		ids = append(ids, it.id)
	}
	return ids
}

// needTouch returns the ids idle for touchAfter or longer at now. It scans only when one can
// be due, so calling it on every Receive is cheap.
func (q *delayQueue) needTouch(now time.Time) []string {
	if len(q.items) == 0 || now.Before(q.nextTouch) {
		return nil
	}
	var ids []string
	next := now.Add(q.touchAfter) // the touched ones are next due then
	for _, it := range q.items {
		t := it.reset.Add(q.touchAfter)
		if !t.After(now) {
			ids = append(ids, it.id)
		} else if t.Before(next) {
			next = t
		}
	}
	q.nextTouch = next
	return ids
}

// touched records that id's idle time was reset at now.
func (q *delayQueue) touched(id string, now time.Time) {
	if it, ok := q.byID[id]; ok {
		it.reset = now
	}
}

// touchFailed makes the next needTouch scan again.
func (q *delayQueue) touchFailed() { q.nextTouch = time.Time{} }

// all returns every waiting id.
func (q *delayQueue) all() []string {
	ids := make([]string, len(q.items))
	for i, it := range q.items {
		ids[i] = it.id
	}
	return ids
}

type delayHeap []*delayItem

func (h delayHeap) Len() int           { return len(h) }
func (h delayHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h delayHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *delayHeap) Push(x any) {
	it := x.(*delayItem)
	it.index = len(*h)
	*h = append(*h, it)
}
func (h *delayHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}
