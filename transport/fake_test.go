package transport_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// call is one thing a fakeDriver was asked to do.
type call struct {
	kind   string // "publish", "ack", "nak", "term", "close"
	stream string
	tids   []string
	delay  time.Duration
	msgs   []transport.RawMessage
}

// fakeDriver is a scripted driver: tests feed deliveries to its subscriptions and read back,
// in order, every publish and settlement the Bus made. Safe for concurrent use.
type fakeDriver struct {
	calls chan call

	mu         sync.Mutex
	subs       []*fakeSub
	subscribed chan *fakeSub
	publishErr error
	maxBody    int // > 0: a larger body fails with ErrTooLarge
	closed     bool
	// sequential is what its subscriptions' PositionsAreSequential reports.
	sequential bool
}

func newFakeDriver() *fakeDriver {
	return &fakeDriver{calls: make(chan call, 1000), subscribed: make(chan *fakeSub, 10)}
}

func (d *fakeDriver) Publish(_ context.Context, stream string, msgs []transport.RawMessage) ([]string, error) {
	d.mu.Lock()
	err, closed, maxBody := d.publishErr, d.closed, d.maxBody
	d.mu.Unlock()
	if closed {
		return nil, transport.ErrClosed
	}
	if err != nil {
		return nil, err
	}
	for _, m := range msgs {
		if maxBody > 0 && len(m.Body) > maxBody {
			return nil, fmt.Errorf("fake: %d bytes: %w", len(m.Body), transport.ErrTooLarge)
		}
	}
	ids := make([]string, len(msgs))
	for i := range ids {
		ids[i] = fmt.Sprintf("p%d", i)
	}
	// Keep copies, as a driver that keeps messages must: the Bus reuses the bodies' memory.
	kept := slices.Clone(msgs)
	for i := range kept {
		kept[i].Body = slices.Clone(kept[i].Body)
	}
	d.calls <- call{kind: "publish", stream: stream, msgs: kept}
	return ids, nil
}

func (d *fakeDriver) Subscribe(_ context.Context, stream string, opts driver.SubscribeOptions) (driver.Subscription, error) {
	s := &fakeSub{d: d, stream: stream, opts: opts, batches: make(chan []*driver.Delivery, 10),
		recvErr: make(chan error, 10), done: make(chan struct{})}
	d.mu.Lock()
	d.subs = append(d.subs, s)
	d.mu.Unlock()
	d.subscribed <- s
	return s, nil
}

func (d *fakeDriver) Close() error {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.calls <- call{kind: "close"}
	return nil
}

func (d *fakeDriver) setPublishErr(err error) {
	d.mu.Lock()
	d.publishErr = err
	d.mu.Unlock()
}

// next returns the next call, failing the test if none comes.
func (d *fakeDriver) next(t *testing.T) call {
	t.Helper()
	select {
	case c := <-d.calls:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no call to the driver")
		return call{}
	}
}

// nextSub returns the next subscription made.
func (d *fakeDriver) nextSub(t *testing.T) *fakeSub {
	t.Helper()
	select {
	case s := <-d.subscribed:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("no subscription")
		return nil
	}
}

type fakeSub struct {
	d         *fakeDriver
	stream    string
	opts      driver.SubscribeOptions
	batches   chan []*driver.Delivery
	recvErr   chan error
	done      chan struct{}
	closeOnce sync.Once
	// ackGate, when set before the first delivery, holds every Ack (once recorded) until a
	// token arrives.
	ackGate chan struct{}
}

func (s *fakeSub) Receive(ctx context.Context, _ int) ([]*driver.Delivery, error) {
	select {
	case b := <-s.batches:
		return b, nil
	case err := <-s.recvErr:
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.done:
		return nil, transport.ErrClosed
	}
}

func tidsOf(ds []*driver.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.TransportID
	}
	return out
}

func (s *fakeSub) Ack(_ context.Context, ds []*driver.Delivery) error {
	s.d.calls <- call{kind: "ack", stream: s.stream, tids: tidsOf(ds)}
	if s.ackGate != nil {
		<-s.ackGate
	}
	return nil
}

func (s *fakeSub) Nak(_ context.Context, d *driver.Delivery, delay time.Duration) error {
	s.d.calls <- call{kind: "nak", stream: s.stream, tids: []string{d.TransportID}, delay: delay}
	return nil
}

func (s *fakeSub) Term(_ context.Context, d *driver.Delivery) error {
	s.d.calls <- call{kind: "term", stream: s.stream, tids: []string{d.TransportID}}
	return nil
}

func (s *fakeSub) Close() error {
	s.closeOnce.Do(func() { close(s.done) })
	return nil
}

// PositionsAreSequential implements driver.SequentialPositioner as the driver was set up.
func (s *fakeSub) PositionsAreSequential() bool {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	return s.d.sequential
}

// deliver hands one batch to the subscription.
func (s *fakeSub) deliver(ds ...*driver.Delivery) { s.batches <- ds }

func raw(tid string, attempt int, body []byte) *driver.Delivery {
	return &driver.Delivery{Message: transport.RawMessage{Body: body}, TransportID: tid, Attempt: attempt}
}

// errIdem is an idempotency store that always fails.
type errIdem struct{}

func (errIdem) Seen(context.Context, string) (bool, error) { return false, errors.New("idem down") }
func (errIdem) Done(context.Context, string) error         { return errors.New("idem down") }
