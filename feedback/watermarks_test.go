package feedback_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/feedback"
)

const waitFor = 5 * time.Second

func newWatermarks(t *testing.T, capacity int, pub feedback.Publisher, mutate func(*feedback.WatermarkConfig)) *feedback.Watermarks[int] {
	t.Helper()
	cfg := feedback.WatermarkConfig{
		CoordinatorID: "bars_1",
		Capacity:      capacity,
		Publisher:     pub,
		RetryMin:      time.Millisecond,
		RetryMax:      5 * time.Millisecond,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	w, err := feedback.NewWatermarks[int](cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// waitPublished waits until nothing is pending and n events went out.
func waitPublished(t *testing.T, w *feedback.Watermarks[int], pub *fakePublisher, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return w.Pending() == 0 && len(pub.published()) == n },
		waitFor, time.Millisecond, "published %d of %d", len(pub.published()), n)
}

// TestWatermarkMarks proves the marks in items follow the Python Store: high = max(1,
// ⌊0.8 × capacity⌋), low = ⌊0.5 × capacity⌋, kept below high.
func TestWatermarkMarks(t *testing.T) {
	tests := []struct {
		capacity  int
		high, low float64
		wantHigh  int
		wantLow   int
	}{
		{10, 0, 0, 8, 5},
		{100, 0, 0, 80, 50},
		{1, 0, 0, 1, 0},
		{2, 0, 0, 1, 0},
		{3, 0, 0, 2, 1},
		{10, 0.9, 0.2, 9, 2},
	}
	for _, tt := range tests {
		w := newWatermarks(t, tt.capacity, nil, func(c *feedback.WatermarkConfig) { c.High, c.Low = tt.high, tt.low })
		h, l := w.Marks()
		require.Equal(t, [2]int{tt.wantHigh, tt.wantLow}, [2]int{h, l}, "capacity %d", tt.capacity)
		require.Equal(t, tt.capacity, w.Cap())
	}
}

// TestWatermarkEdges proves the edge-triggered levels: soft once on rising past the low mark,
// hard once at the high mark and never again while above it, no soft on the way down from
// hard, ok with reason queue_recovered once at or under the low mark; each event carrying
// the depth, the reason and utilization headers, the coordinator as key, and a strictly
// increasing ts even with a frozen clock.
func TestWatermarkEdges(t *testing.T) {
	type want struct {
		level  feedback.Level
		size   int
		reason string
		util   string
	}
	steps := []struct {
		delta int // items put (+) or taken (-), one at a time
		emits []want
	}{
		{+5, nil}, // 5 = low mark: still ok
		{+1, []want{{feedback.LevelSoft, 6, "above_low_watermark", "0.600000"}}},
		{+1, nil},
		{+1, []want{{feedback.LevelHard, 8, "high_watermark", "0.800000"}}},
		{+2, nil}, // 10: full, no repeat
		{-2, nil}, // 8: still at the high mark
		{-2, nil}, // 6: between the marks, stays hard
		{+2, nil}, // back to 8: still hard, no repeat
		{-3, []want{{feedback.LevelOK, 5, "queue_recovered", "0.500000"}}},
		{-5, nil}, // empty
		{+6, []want{{feedback.LevelSoft, 6, "above_low_watermark", "0.600000"}}},
		{-1, []want{{feedback.LevelOK, 5, "queue_recovered", "0.500000"}}},
		{+3, []want{{feedback.LevelSoft, 6, "above_low_watermark", "0.600000"}, {feedback.LevelHard, 8, "high_watermark", "0.800000"}}},
	}
	pub := newFakePublisher()
	frozen := time.Unix(1760812500, 0)
	w := newWatermarks(t, 10, pub, func(c *feedback.WatermarkConfig) { c.Now = func() time.Time { return frozen } })

	var all []want
	for i, s := range steps {
		for range max(s.delta, -s.delta) {
			if s.delta > 0 {
				require.NoError(t, w.Offer(i))
			} else {
				_, ok := w.Take()
				require.True(t, ok)
			}
		}
		all = append(all, s.emits...)
		waitPublished(t, w, pub, len(all))
		envs := pub.published()
		for j, wt := range all {
			ev, err := feedback.ParseEvent(envs[j])
			require.NoError(t, err)
			got := want{ev.Level, ev.QueueSize, envs[j].Header("reason"), envs[j].Header("utilization")}
			require.Equal(t, wt, got, "step %d, event %d", i, j)
			require.Equal(t, "bars_1", envs[j].KeyOf())
			require.Equal(t, 10, ev.Capacity)
			require.Equal(t, "store", ev.Source)
			if j > 0 {
				prev, _ := feedback.ParseEvent(envs[j-1])
				require.Greater(t, float64(ev.TS), float64(prev.TS), "ts strictly increasing")
			}
		}
		if n := len(all); n > 0 {
			require.Equal(t, all[n-1].level, w.Level())
		}
	}
	require.ErrorIs(t, fillErr(w), feedback.ErrQueueFull)
}

// fillErr offers until the queue refuses.
func fillErr(w *feedback.Watermarks[int]) error {
	for {
		if err := w.Offer(0); err != nil {
			return err
		}
	}
}

// TestWatermarkCapacityOne proves the smallest queue still signals: hard at 1, ok at 0.
func TestWatermarkCapacityOne(t *testing.T) {
	pub := newFakePublisher()
	w := newWatermarks(t, 1, pub, nil)
	require.NoError(t, w.Offer(1))
	require.ErrorIs(t, w.Offer(2), feedback.ErrQueueFull)
	v, ok := w.Take()
	require.True(t, ok)
	require.Equal(t, 1, v)
	waitPublished(t, w, pub, 2)
	evs := pub.events(t)
	require.Equal(t, []feedback.Level{feedback.LevelHard, feedback.LevelOK}, []feedback.Level{evs[0].Level, evs[1].Level})
}

// TestWatermarkPublishRetried proves a failed publish is retried with backoff until it works,
// in order, and that the failure is visible meanwhile.
func TestWatermarkPublishRetried(t *testing.T) {
	pub := newFakePublisher()
	pub.setFailing(true)
	w := newWatermarks(t, 10, pub, nil)
	for i := range 8 {
		require.NoError(t, w.Offer(i))
	}
	require.Eventually(t, func() bool { return errors.Is(w.PublishErr(), errBroker) }, waitFor, time.Millisecond)
	require.Equal(t, 2, w.Pending())
	pub.setFailing(false)
	waitPublished(t, w, pub, 2)
	require.NoError(t, w.PublishErr())
	evs := pub.events(t)
	require.Equal(t, []feedback.Level{feedback.LevelSoft, feedback.LevelHard}, []feedback.Level{evs[0].Level, evs[1].Level})
	require.Zero(t, w.Dropped())
}

// TestWatermarkOutboxBounded proves the events waiting for a broker that is away are bounded:
// the oldest are dropped and counted, and the newest still go out, in order.
func TestWatermarkOutboxBounded(t *testing.T) {
	pub := newFakePublisher()
	pub.setFailing(true)
	w := newWatermarks(t, 10, pub, func(c *feedback.WatermarkConfig) { c.MaxPendingEvents = 2 })
	for i := range 8 { // soft, hard
		require.NoError(t, w.Offer(i))
	}
	for range 3 { // ok
		w.Take()
	}
	require.NoError(t, w.Offer(0)) // soft
	require.Equal(t, uint64(2), w.Dropped())
	pub.setFailing(false)
	require.Eventually(t, func() bool { return w.Pending() == 0 }, waitFor, time.Millisecond)
	evs := pub.events(t)
	require.GreaterOrEqual(t, len(evs), 2)
	last := evs[len(evs)-2:]
	require.Equal(t, []feedback.Level{feedback.LevelOK, feedback.LevelSoft}, []feedback.Level{last[0].Level, last[1].Level})
	for i := 1; i < len(evs); i++ {
		require.Greater(t, float64(evs[i].TS), float64(evs[i-1].TS))
	}
}

// TestWatermarkCloseReportsUnpublished proves Close gives up on a broker that stays away
// after CloseTimeout and says how many events were left and why.
func TestWatermarkCloseReportsUnpublished(t *testing.T) {
	pub := newFakePublisher()
	pub.setFailing(true)
	w, err := feedback.NewWatermarks[int](feedback.WatermarkConfig{
		CoordinatorID: "c", Capacity: 1, Publisher: pub,
		RetryMin: time.Millisecond, RetryMax: time.Millisecond, CloseTimeout: 20 * time.Millisecond,
	})
	require.NoError(t, err)
	require.NoError(t, w.Offer(1))
	err = w.Close()
	require.ErrorContains(t, err, "1 feedback event(s) unpublished at close")
	require.Equal(t, err, w.Close(), "idempotent")
}

// TestWatermarkCloseFlushes proves Close publishes what is pending before it returns.
func TestWatermarkCloseFlushes(t *testing.T) {
	pub := newFakePublisher()
	w, err := feedback.NewWatermarks[int](feedback.WatermarkConfig{CoordinatorID: "c", Capacity: 1, Publisher: pub})
	require.NoError(t, err)
	require.NoError(t, w.Offer(1))
	require.NoError(t, w.Close())
	require.Len(t, pub.events(t), 1)
}

// TestWatermarkBlocking proves Put waits for room and Get for an item, both give up with
// their context, and Close wakes them: Put fails, Get drains what is left, then fails.
func TestWatermarkBlocking(t *testing.T) {
	w := newWatermarks(t, 1, nil, nil)
	ctx := context.Background()
	require.NoError(t, w.Put(ctx, 1))

	put := make(chan error, 1)
	go func() { put <- w.Put(ctx, 2) }()
	v, err := w.Get(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, v)
	select {
	case err := <-put:
		require.NoError(t, err)
	case <-time.After(waitFor):
		t.Fatal("Put did not proceed after Get made room")
	}
	require.Equal(t, 1, w.Len())

	cctx, cancel := context.WithCancel(ctx)
	go func() { put <- w.Put(cctx, 3) }()
	cancel()
	select {
	case err := <-put:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(waitFor):
		t.Fatal("Put ignored its context")
	}

	go func() { put <- w.Put(ctx, 4) }() // blocks: full
	require.NoError(t, w.Close())
	select {
	case err := <-put:
		require.ErrorIs(t, err, feedback.ErrQueueClosed)
	case <-time.After(waitFor):
		t.Fatal("Close did not wake a blocked Put")
	}
	require.ErrorIs(t, w.Offer(5), feedback.ErrQueueClosed)
	v, err = w.Get(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, v, "items left at Close can still be taken")
	_, err = w.Get(ctx)
	require.ErrorIs(t, err, feedback.ErrQueueClosed)
}

// TestWatermarkGetWaits proves a blocked Get is woken by a Put and by Close, and honours its
// context.
func TestWatermarkGetWaits(t *testing.T) {
	w := newWatermarks(t, 4, nil, nil)
	ctx := context.Background()
	got := make(chan int, 1)
	go func() {
		v, err := w.Get(ctx)
		if err == nil {
			got <- v
		}
	}()
	require.NoError(t, w.Put(ctx, 42))
	select {
	case v := <-got:
		require.Equal(t, 42, v)
	case <-time.After(waitFor):
		t.Fatal("Get was not woken by Put")
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err := w.Get(cctx)
	require.ErrorIs(t, err, context.Canceled)

	errs := make(chan error, 1)
	go func() { _, err := w.Get(ctx); errs <- err }()
	require.NoError(t, w.Close())
	select {
	case err := <-errs:
		require.ErrorIs(t, err, feedback.ErrQueueClosed)
	case <-time.After(waitFor):
		t.Fatal("Close did not wake a blocked Get")
	}
}

// TestWatermarkConcurrent proves producers and consumers racing on the queue lose nothing and
// the published levels stay consistent: never the same level twice in a row, each event's
// depth inside its level's band, and ok at the end.
func TestWatermarkConcurrent(t *testing.T) {
	pub := newFakePublisher()
	// Room for every transition: a dropped event would break the sequence checked below.
	w := newWatermarks(t, 20, pub, func(c *feedback.WatermarkConfig) { c.MaxPendingEvents = 1 << 20 })
	ctx := context.Background()
	const producers, each = 4, 500
	var taken atomic.Int64
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for i := range each {
				if err := w.Put(ctx, p*each+i); err != nil {
					t.Errorf("put: %v", err)
					return
				}
			}
		})
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range 2 {
		wg.Go(func() {
			for {
				if _, err := w.Get(cctx); err != nil {
					return // cancelled once everything was taken
				}
				if taken.Add(1) == producers*each {
					cancel()
				}
			}
		})
	}
	wg.Wait()
	require.Equal(t, int64(producers*each), taken.Load())
	require.Equal(t, 0, w.Len())
	require.Eventually(t, func() bool { return w.Pending() == 0 }, waitFor, time.Millisecond)
	require.Zero(t, w.Dropped())
	high, low := w.Marks()
	evs := pub.events(t)
	require.NotEmpty(t, evs)
	prev := feedback.LevelOK
	for i, ev := range evs {
		require.NotEqual(t, prev, ev.Level, "event %d repeats its level", i)
		switch ev.Level {
		case feedback.LevelHard:
			require.GreaterOrEqual(t, ev.QueueSize, high)
		case feedback.LevelOK:
			require.LessOrEqual(t, ev.QueueSize, low)
		case feedback.LevelSoft:
			require.Greater(t, ev.QueueSize, low)
			require.Less(t, ev.QueueSize, high)
		}
		prev = ev.Level
	}
	require.Equal(t, feedback.LevelOK, prev)
	require.Equal(t, feedback.LevelOK, w.Level())
}

// TestWatermarkConfigErrors proves bad settings are refused with what is accepted.
func TestWatermarkConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  feedback.WatermarkConfig
		has  string
	}{
		{"no coordinator", feedback.WatermarkConfig{Capacity: 1}, "CoordinatorID"},
		{"zero capacity", feedback.WatermarkConfig{CoordinatorID: "c"}, "Capacity 0"},
		{"low above high", feedback.WatermarkConfig{CoordinatorID: "c", Capacity: 10, High: 0.4, Low: 0.6}, "0 < Low < High ≤ 1"},
		{"high above one", feedback.WatermarkConfig{CoordinatorID: "c", Capacity: 10, High: 1.2}, "0 < Low < High ≤ 1"},
		{"bad stream", feedback.WatermarkConfig{CoordinatorID: "c", Capacity: 10, Stream: "a..b"}, "invalid stream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := feedback.NewWatermarks[string](tt.cfg)
			require.ErrorContains(t, err, tt.has)
		})
	}
}
