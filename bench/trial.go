package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// ErrUnavailable marks a contender that cannot run in this build or on this machine (for
// example a Pulse driver that is not registered yet). The report shows the reason.
var ErrUnavailable = errors.New("bench: contender unavailable")

// Env is what every trial of one run shares.
type Env struct {
	Work *Workload
	// Batch is the publish batch size and the most messages one fetch returns, for every
	// contender that batches.
	Batch int
	// RedisAddr and NATSURL are the bench's own servers ("" when the section does not run).
	RedisAddr string
	NATSURL   string
	// RedisCluster is the Redis Cluster section's cluster (nil when it does not run).
	RedisCluster *RedisCluster
	// Tools builds the external programs of a run (nats-server, natscli).
	Tools *Tools
	// ServerPIDs are the broker's processes, whose CPU time each phase reports (none: the
	// broker's CPU is not read).
	ServerPIDs []int
	// Log receives progress; nil discards it.
	Log *slog.Logger

	bodiesMu sync.Mutex
	bodies   [][]byte
}

// Bodies returns n pre-encoded messages with sequence numbers 0..n-1 (the same slices on every
// call; callers must not modify them). The contenders that send bytes send these.
func (e *Env) Bodies(n int) ([][]byte, error) {
	e.bodiesMu.Lock()
	defer e.bodiesMu.Unlock()
	for len(e.bodies) < n {
		b, err := e.Work.Encode(len(e.bodies))
		if err != nil {
			return nil, err
		}
		e.bodies = append(e.bodies, b)
	}
	return e.bodies[:n], nil
}

func (e *Env) log() *slog.Logger {
	if e.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Log
}

// A Pipe is one in-process trial: n messages published in batches while a subscriber handles
// and acks them. Run returns once all n are handled and acked.
type Pipe interface {
	Run(ctx context.Context, n int) error
	Close() error
}

// A Trial is one contender on a fresh stream and group: Publish stores the messages with
// sequence numbers lo..hi-1 (the harness calls it once for [0, n), or concurrently for
// disjoint ranges with several publishers) and returns once the broker has them all; then
// Consume handles and acks those n, returning once the broker has every ack (nothing
// pending). Close deletes what the trial created on the broker.
type Trial interface {
	Publish(ctx context.Context, lo, hi int) error
	Consume(ctx context.Context, n int) error
	Close() error
}

// A LatencyTrial measures publish→handle latency on a fresh stream: a subscriber runs while
// messages are published one at a time at rate per second; warm messages are sent first and
// not counted. It returns the latency of each of the n counted messages.
type LatencyTrial interface {
	Latency(ctx context.Context, warm, n int, rate float64) (Latencies, error)
	Close() error
}

// Contender is one implementation under test.
type Contender struct {
	// Name is shown in the report.
	Name string
	// Pulse marks Pulse itself (the numerator of every ratio).
	Pulse bool
	// NewPipe, NewTrial and NewLatency start one trial named id (unique within the run); nil
	// when the contender does not take part in that kind of trial.
	NewPipe    func(ctx context.Context, env *Env, id string) (Pipe, error)
	NewTrial   func(ctx context.Context, env *Env, id string) (Trial, error)
	NewLatency func(ctx context.Context, env *Env, id string) (LatencyTrial, error)
}

// tally records which of n sequence numbers were handled, so that a trial ends exactly when
// every message was seen and loss or duplication is visible. Safe for concurrent use.
type tally struct {
	seen   []atomic.Uint32
	unique atomic.Int64
	dups   atomic.Int64
	bad    atomic.Int64
	n      int64
	done   chan struct{}
	once   sync.Once
	first  atomic.Int64 // when the first message was handled, unix nanoseconds; 0 before
}

func newTally(n int) *tally {
	return &tally{seen: make([]atomic.Uint32, n), n: int64(n), done: make(chan struct{})}
}

// add records the message body or payload b.
func (t *tally) add(b []byte) {
	seq, ok := SeqOf(b)
	if !ok || seq < 0 || seq >= len(t.seen) {
		t.bad.Add(1)
		return
	}
	if t.seen[seq].Add(1) > 1 {
		t.dups.Add(1)
		return
	}
	u := t.unique.Add(1)
	if u == 1 {
		t.first.Store(time.Now().UnixNano())
	}
	if u == t.n {
		t.once.Do(func() { close(t.done) })
	}
}

// duplicates is how many messages were seen more than once; 0 on a nil tally (a trial that
// has not consumed yet).
func (t *tally) duplicates() int64 {
	if t == nil {
		return 0
	}
	return t.dups.Load()
}

// firstHandled is when the first message was handled; zero before that, or on a nil tally.
func (t *tally) firstHandled() time.Time {
	if t == nil || t.first.Load() == 0 {
		return time.Time{}
	}
	return time.Unix(0, t.first.Load())
}

// tallied is embedded by the trials and pipes that count what they handle in a tally: it
// reports duplicates and the first message's time to the run (duplicatesOf, consumeTime).
type tallied struct{ tal *tally }

func (t tallied) Duplicates() int64       { return t.tal.duplicates() }
func (t tallied) FirstHandled() time.Time { return t.tal.firstHandled() }

// wait blocks until every message was seen, or ctx is done.
func (t *tally) wait(ctx context.Context) error {
	select {
	case <-t.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("bench: %d of %d messages handled (%d duplicates, %d unreadable): %w",
			t.unique.Load(), t.n, t.dups.Load(), t.bad.Load(), ctx.Err())
	}
}

// waitFor polls cond every interval until it holds, fails, or ctx is done.
func waitFor(ctx context.Context, interval time.Duration, cond func(context.Context) (bool, error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ok, err := cond(ctx)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// sleepUntil waits until at, or ctx is done.
func sleepUntil(ctx context.Context, at time.Time) error {
	d := time.Until(at)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// latencyClock records send and receive times of sequence numbers for a latency trial.
type latencyClock struct {
	base time.Time
	sent []atomic.Int64
	recv []atomic.Int64
	tal  *tally
}

func newLatencyClock(total int) *latencyClock {
	return &latencyClock{base: time.Now(), sent: make([]atomic.Int64, total), recv: make([]atomic.Int64, total), tal: newTally(total)}
}

func (c *latencyClock) markSent(seq int) { c.sent[seq].Store(int64(time.Since(c.base)) + 1) }

// received records the arrival of the message body or payload b.
func (c *latencyClock) received(b []byte) {
	now := int64(time.Since(c.base)) + 1
	if seq, ok := SeqOf(b); ok && seq >= 0 && seq < len(c.recv) {
		c.recv[seq].CompareAndSwap(0, now)
	}
	c.tal.add(b)
}

// latencies returns the latencies of messages warm.. (those sent and received).
func (c *latencyClock) latencies(warm int) Latencies {
	out := make(Latencies, 0, len(c.sent)-warm)
	for i := warm; i < len(c.sent); i++ {
		s, r := c.sent[i].Load(), c.recv[i].Load()
		if s > 0 && r > 0 {
			out = append(out, time.Duration(r-s))
		}
	}
	return out
}

// measureLatency runs a latency trial of warm+n messages (see LatencyTrial): subscribe starts
// the contender's subscriber, which must call received with every payload, and returns its
// stop, called before measureLatency returns; send publishes message seq, calling sent right
// before the publish itself (after building the message, so that only the publish is timed).
// Sends go at rate per second on paced's schedule; it returns once every message was handled.
func measureLatency(ctx context.Context, warm, n int, rate float64,
	subscribe func(received func([]byte)) (stop func(), err error),
	send func(seq int, sent func()) error) (Latencies, error) {
	total := warm + n
	clock := newLatencyClock(total)
	stop, err := subscribe(clock.received)
	if err != nil {
		return nil, err
	}
	defer stop()
	err = paced(ctx, total, rate, func(seq int) error {
		return send(seq, func() { clock.markSent(seq) })
	})
	if err != nil {
		return nil, err
	}
	if err := clock.tal.wait(ctx); err != nil {
		return nil, err
	}
	return clock.latencies(warm), nil
}

// paced calls send(seq) for seq 0..total-1 at rate per second on an absolute schedule from the
// start: after a send that ran late the next ones go at once until back on schedule, so a slow
// publisher cannot hide its own latency by sending less (no coordinated omission).
func paced(ctx context.Context, total int, rate float64, send func(seq int) error) error {
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	for i := range total {
		if err := sleepUntil(ctx, start.Add(time.Duration(i)*interval)); err != nil {
			return err
		}
		if err := send(i); err != nil {
			return fmt.Errorf("bench: publish message %d: %w", i, err)
		}
	}
	return nil
}
