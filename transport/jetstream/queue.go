package jetstream

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// queued is one message waiting in a subscription's queue.
type queued struct {
	msg jetstream.Msg
	at  time.Duration // when it was queued, since the subscription started (monotonic)
}

// msgQueue is the bounded FIFO between the pull subscription's goroutine (push) and Receive
// (take). It hands messages over in batches under one lock and wakes the other side only on
// the transitions that matter (empty → not empty, full → not full), not once per message.
type msgQueue struct {
	mu      sync.Mutex
	buf     []queued // ring of fixed size
	head, n int
	waiting bool // the producer waits for room

	ready chan struct{} // a token when messages arrived in an empty queue
	space chan struct{} // a token when room freed while the producer waited
}

func newMsgQueue(size int) *msgQueue {
	return &msgQueue{
		buf:   make([]queued, max(size, 1)),
		ready: make(chan struct{}, 1),
		space: make(chan struct{}, 1),
	}
}

// push appends m, waiting for room while the queue is full; it returns false, without
// queuing m, if stop is closed first.
func (q *msgQueue) push(m queued, stop <-chan struct{}) bool {
	for {
		q.mu.Lock()
		if q.n < len(q.buf) {
			q.buf[(q.head+q.n)%len(q.buf)] = m
			q.n++
			wake := q.n == 1
			q.mu.Unlock()
			if wake {
				select {
				case q.ready <- struct{}{}:
				default:
				}
			}
			return true
		}
		q.waiting = true
		q.mu.Unlock()
		select {
		case <-q.space:
		case <-stop:
			return false
		}
	}
}

// take appends up to limit queued messages to dst, oldest first, without waiting.
func (q *msgQueue) take(dst []queued, limit int) []queued {
	q.mu.Lock()
	k := min(limit, q.n)
	for range k {
		dst = append(dst, q.buf[q.head])
		q.buf[q.head] = queued{}
		q.head = (q.head + 1) % len(q.buf)
	}
	q.n -= k
	wake := k > 0 && q.waiting
	if wake {
		q.waiting = false
	}
	q.mu.Unlock()
	if wake {
		select {
		case q.space <- struct{}{}:
		default:
		}
	}
	return dst
}

// len is how many messages are queued.
func (q *msgQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}
