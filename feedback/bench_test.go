package feedback_test

import (
	"context"
	"testing"

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
