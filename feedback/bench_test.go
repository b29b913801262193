package feedback_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pulse-bus/pulse/feedback"
)

// BenchmarkWatermarksOfferTake measures the Store's hot path: one Offer and one Take on a
// queue that stays between empty and one item (no level change, so nothing is published).
func BenchmarkWatermarksOfferTake(b *testing.B) {
	w, err := feedback.NewWatermarks[int](feedback.WatermarkConfig{CoordinatorID: "c", Capacity: 1024, Publisher: newFakePublisher()})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := w.Offer(i); err != nil {
			b.Fatal(err)
		}
		w.Take()
	}
}

// BenchmarkRateCoordinatorAllow measures the pipeline's pacing check on an unthrottled
// provider, in parallel.
func BenchmarkRateCoordinatorAllow(b *testing.B) {
	rc, err := feedback.NewRateCoordinator(feedback.Limits{BaseRate: 1e12, Burst: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rc.Allow("ibkr")
		}
	})
}

// BenchmarkHandlerApply measures applying one event that alternates the level (a scale
// change and a RateAdjustment every time) with a publisher that accepts at once.
func BenchmarkHandlerApply(b *testing.B) {
	h, err := feedback.NewHandler(feedback.HandlerConfig{Publisher: newFakeDiscard()})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	levels := []feedback.Level{feedback.LevelSoft, feedback.LevelOK}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := h.Apply(ctx, event("c", levels[i%2], float64(i+1))); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandlerCoordinators measures applying one event with 1 and with 10,000 live
// coordinators, under a TTL so that expiry is checked on every event: the cost per event
// must not grow with their number. "steady" events repeat each coordinator's level (no
// rescale; the coordinators are a third each ok, soft and hard); "rescaling" events flip one
// coordinator between ok and hard while the others are ok (a rescale and a RateAdjustment
// every time).
func BenchmarkHandlerCoordinators(b *testing.B) {
	for _, mode := range []string{"steady", "rescaling"} {
		for _, n := range []int{1, 10_000} {
			b.Run(fmt.Sprintf("%s/coordinators=%d", mode, n), func(b *testing.B) {
				h, err := feedback.NewHandler(feedback.HandlerConfig{
					Publisher: newFakeDiscard(),
					Policy:    feedback.Policy{CoordinatorTTL: time.Hour},
				})
				if err != nil {
					b.Fatal(err)
				}
				// level is coordinator j's level in steady mode, and the others' in rescaling.
				level := func(j int) feedback.Level {
					if mode == "steady" {
						return feedback.Levels[j%3]
					}
					return feedback.LevelOK
				}
				flip := []feedback.Level{feedback.LevelHard, feedback.LevelOK}
				ctx := context.Background()
				ids := make([]string, n)
				ts := float64(time.Now().Unix()) - 2*float64(n) - 3600 // every ts in the past
				for i := range ids {
					ids[i] = fmt.Sprintf("store-%05d", i)
					ts++
					if err := h.Apply(ctx, event(ids[i], level(i), ts)); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					ts += 1e-6
					ev := event(ids[i%n], level(i%n), ts)
					if mode == "rescaling" {
						ev = event(ids[0], flip[i%2], ts)
					}
					if err := h.Apply(ctx, ev); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
