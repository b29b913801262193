package transport

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// BenchmarkMemoryIdempotency measures one Seen+Done per message on a full record, as a
// consumer does in steady state (every Done evicts the oldest key).
func BenchmarkMemoryIdempotency(b *testing.B) {
	const size = DefaultIdempotencySize
	m := NewMemoryIdempotency(size, time.Hour)
	ctx := context.Background()
	keys := make([]string, 4*size)
	for i := range keys {
		keys[i] = "telemetry.feedback/pipeline/" + strconv.Itoa(1_000_000+i)
	}
	for _, k := range keys[:size] {
		m.Done(ctx, k)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := keys[i%len(keys)]
		if seen, _ := m.Seen(ctx, k); !seen {
			m.Done(ctx, k)
		}
	}
}

// BenchmarkMemoryIdempotencyFromEmpty measures Done of new keys on a record that starts
// empty, as a fresh consumer's does until its first generation is full.
func BenchmarkMemoryIdempotencyFromEmpty(b *testing.B) {
	const size = DefaultIdempotencySize
	ctx := context.Background()
	keys := make([]string, size)
	for i := range keys {
		keys[i] = "telemetry.feedback/pipeline/" + strconv.Itoa(1_000_000+i)
	}
	var m *MemoryIdempotency
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%size == 0 {
			m = NewMemoryIdempotency(size, time.Hour)
		}
		m.Done(ctx, keys[i%size])
	}
}

// BenchmarkHandledRecord measures recording one consumed v1 message, as the Bus does for
// every one: as a hashed key of its transport id (any driver), or as a bit of the group's
// position window (a driver with sequential positions: JetStream, inmem). Sequences come in
// order from a fresh record, as on a consumer's first pass over a stream.
func BenchmarkHandledRecord(b *testing.B) {
	const size = DefaultIdempotencySize
	const prefix = "telemetry.feedback/pipeline/"
	ids := make([]string, size)
	for i := range ids {
		ids[i] = strconv.Itoa(i + 1)
	}
	b.Run("hashed", func(b *testing.B) {
		var m *MemoryIdempotency
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if i%size == 0 {
				m = NewMemoryIdempotency(size, time.Hour)
			}
			m.done(prefix, ids[i%size])
		}
	})
	b.Run("positions", func(b *testing.B) {
		w := NewMemoryIdempotency(size, time.Hour).positions(prefix)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			w.done(Position{Epoch: 1, Seq: uint64(i + 1)})
		}
	})
}
