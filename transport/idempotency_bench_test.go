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
