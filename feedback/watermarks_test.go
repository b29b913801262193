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
// ⌊0.8 × capacity⌋), low = ⌊0.5 × capacity⌋, kept below high; and that the soft mark is
// low + ⌊band × (high − low)⌋: the midpoint by default, the low mark with NoBand.
func TestWatermarkMarks(t *testing.T) {
	tests := []struct {
		capacity  int
		high, low float64
		band      float64
		wantHigh  int
		wantLow   int
		wantSoft  int
	}{
		{10, 0, 0, 0, 8, 5, 6},
		{100, 0, 0, 0, 80, 50, 65},
		{100, 0, 0, feedback.NoBand, 80, 50, 50},
		{100, 0, 0, 0.2, 80, 50, 56},
		{100, 0, 0, 0.99, 80, 50, 79},
		{1, 0, 0, 0, 1, 0, 0},
		{2, 0, 0, 0, 1, 0, 0},
		{3, 0, 0, 0, 2, 1, 1},
		{10, 0.9, 0.2, 0, 9, 2, 5},
	}
	for _, tt := range tests {
		w := newWatermarks(t, tt.capacity, nil, func(c *feedback.WatermarkConfig) { c.High, c.Low, c.Band = tt.high, tt.low, tt.band })
		h, l := w.Marks()
		require.Equal(t, [3]int{tt.wantHigh, tt.wantLow, tt.wantSoft}, [3]int{h, l, w.SoftMark()}, "capacity %d, band %v", tt.capacity, tt.band)
		require.Equal(t, tt.capacity, w.Cap())
	}
}

// TestWatermarkEdgesNoBand proves that with NoBand the queue signals as the Python Store's
// BoundedQueue does: soft once on rising past the low mark, hard once at the high mark and
// never again while above it, no soft on the way down from hard, ok with reason
// queue_recovered once at or under the low mark, and soft/ok again on every single message
// across the low mark; each event carrying the depth, the reason and utilization headers, the
// coordinator as key, and a strictly increasing ts even with a frozen clock.
func TestWatermarkEdgesNoBand(t *testing.T) {
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
	w := newWatermarks(t, 10, pub, func(c *feedback.WatermarkConfig) {
		c.Now = func() time.Time { return frozen }
		c.Band = feedback.NoBand
	})

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

// step is one event a watermark queue is expected to publish.
type step struct {
	level  feedback.Level
	size   int
	reason string
}

// moveTo puts or takes items one at a time until the queue holds depth.
func moveTo(t *testing.T, w *feedback.Watermarks[int], depth int) {
	t.Helper()
	for w.Len() < depth {
		require.NoError(t, w.Offer(0))
	}
	for w.Len() > depth {
		_, ok := w.Take()
		require.True(t, ok)
	}
}

// publishedSteps waits until nothing is pending and returns every event published so far.
func publishedSteps(t *testing.T, w *feedback.Watermarks[int], pub *fakePublisher) []step {
	t.Helper()
	require.Eventually(t, func() bool { return w.Pending() == 0 }, waitFor, time.Millisecond)
	var out []step // nil when nothing was published
	for _, e := range pub.published() {
		ev, err := feedback.ParseEvent(e)
		require.NoError(t, err)
		out = append(out, step{ev.Level, ev.QueueSize, e.Header(feedback.HeaderReason)})
	}
	return out
}

var (
	softAt  = func(n int) step { return step{feedback.LevelSoft, n, feedback.ReasonAboveLowMark} }
	hardAt  = func(n int) step { return step{feedback.LevelHard, n, feedback.ReasonHighWatermark} }
	okAt    = func(n int) step { return step{feedback.LevelOK, n, feedback.ReasonQueueRecovered} }
	noSteps = []step(nil)
)

// TestWatermarkHysteresisSweeps proves the default state machine on a queue of 100 (low 50,
// soft mark 65, high 80): rising from empty to full signals exactly soft at 65 and hard at
// 80; falling back to empty exactly soft at 65 and ok at 50.
func TestWatermarkHysteresisSweeps(t *testing.T) {
	pub := newFakePublisher()
	w := newWatermarks(t, 100, pub, nil)
	require.Equal(t, 65, w.SoftMark())

	moveTo(t, w, 100)
	require.Equal(t, []step{softAt(65), hardAt(80)}, publishedSteps(t, w, pub), "rising")
	require.Equal(t, feedback.LevelHard, w.Level())

	moveTo(t, w, 0)
	require.Equal(t, []step{softAt(65), hardAt(80), softAt(65), okAt(50)}, publishedSteps(t, w, pub), "falling")
	require.Equal(t, feedback.LevelOK, w.Level())
}

// TestWatermarkHysteresisNoFlap proves that a queue hovering one message either side of a
// mark signals nothing after its first transition there: around the low mark (reached from
// above after soft, or from below), around the high mark (after hard, and after a
// hard → soft → hard round trip), and around the soft mark (from ok and from hard). With
// NoBand the same hovering at the low mark flaps, one event per message, as in the Python
// Store.
func TestWatermarkHysteresisNoFlap(t *testing.T) {
	const swings = 20
	tests := []struct {
		name   string
		band   float64
		path   []int  // depths visited in order, one message at a time
		first  []step // what the path signals
		around int    // then the depth swings around..around+1, swings times
		swing  []step // what the swinging signals (nothing, unless NoBand)
	}{
		{"low mark after soft", 0, []int{65, 50}, []step{softAt(65), okAt(50)}, 50, noSteps},
		{"low mark from below", 0, []int{50}, noSteps, 50, noSteps},
		{"high mark after hard", 0, []int{80}, []step{softAt(65), hardAt(80)}, 79, noSteps},
		{"high mark after hard, soft, hard", 0, []int{80, 65, 80}, []step{softAt(65), hardAt(80), softAt(65), hardAt(80)}, 79, noSteps},
		{"soft mark from ok", 0, []int{65}, []step{softAt(65)}, 64, noSteps},
		{"soft mark from hard", 0, []int{80, 65}, []step{softAt(65), hardAt(80), softAt(65)}, 65, noSteps},
		{"low mark without band", feedback.NoBand, []int{51, 50}, []step{softAt(51), okAt(50)}, 50, func() []step {
			var s []step
			for range swings {
				s = append(s, softAt(51), okAt(50))
			}
			return s
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pub := newFakePublisher()
			w := newWatermarks(t, 100, pub, func(c *feedback.WatermarkConfig) { c.Band = tt.band })
			for _, d := range tt.path {
				moveTo(t, w, d)
			}
			require.Equal(t, tt.first, publishedSteps(t, w, pub), "the path")
			level := w.Level()
			moveTo(t, w, tt.around)
			for range swings {
				moveTo(t, w, tt.around+1)
				moveTo(t, w, tt.around)
			}
			require.Equal(t, append(tt.first, tt.swing...), publishedSteps(t, w, pub), "the swings")
			if len(tt.swing) == 0 {
				require.Equal(t, level, w.Level(), "the level held")
			}
		})
	}
}

// TestWatermarkBand proves a configured band moves the soft mark both ways: with Band 0.2 on
// a queue of 100 the level turns soft at 56 rising from ok and at 56 falling from hard, and
// nothing is signalled between 51 and 55 from ok.
func TestWatermarkBand(t *testing.T) {
	pub := newFakePublisher()
	w := newWatermarks(t, 100, pub, func(c *feedback.WatermarkConfig) { c.Band = 0.2 })
	moveTo(t, w, 55)
	require.Empty(t, publishedSteps(t, w, pub))
	moveTo(t, w, 90)
	moveTo(t, w, 57)
	require.Equal(t, []step{softAt(56), hardAt(80)}, publishedSteps(t, w, pub))
	moveTo(t, w, 0)
	require.Equal(t, []step{softAt(56), hardAt(80), softAt(56), okAt(50)}, publishedSteps(t, w, pub))
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
	for range 3 { // soft at the soft mark (6), then ok
		w.Take()
	}
	require.NoError(t, w.Offer(0)) // soft
	require.Equal(t, uint64(3), w.Dropped(), "five events, room for two")
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
// depth inside its level's band (soft reached from ok at or above the soft mark, from hard at
// or under it), and ok at the end.
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
			if prev == feedback.LevelOK {
				require.GreaterOrEqual(t, ev.QueueSize, w.SoftMark(), "event %d: soft from ok below the soft mark", i)
			} else {
				require.LessOrEqual(t, ev.QueueSize, w.SoftMark(), "event %d: soft from hard above the soft mark", i)
			}
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
		{"band of one", feedback.WatermarkConfig{CoordinatorID: "c", Capacity: 10, Band: 1}, "Band 1 (accepted: 0 < Band < 1"},
		{"band above one", feedback.WatermarkConfig{CoordinatorID: "c", Capacity: 10, Band: 1.5}, "Band 1.5"},
		{"band NaN", feedback.WatermarkConfig{CoordinatorID: "c", Capacity: 10, Band: nan()}, "Band NaN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := feedback.NewWatermarks[string](tt.cfg)
			require.ErrorContains(t, err, tt.has)
		})
	}
}
