package transport_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
)

// gatedDriver holds every Publish until a token arrives on gate, so tests control how many
// batches are in flight.
type gatedDriver struct {
	*fakeDriver
	gate    chan struct{}
	started chan struct{}
}

func (d *gatedDriver) Publish(ctx context.Context, stream string, msgs []transport.RawMessage) ([]string, error) {
	d.started <- struct{}{}
	select {
	case <-d.gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return d.fakeDriver.Publish(ctx, stream, msgs)
}

// retainingDriver keeps the message slices of every Publish it fails, without copying, as an
// asynchronous client may while it still resends them.
type retainingDriver struct {
	*fakeDriver
	mu     sync.Mutex
	failed [][]transport.RawMessage
}

func (d *retainingDriver) Publish(ctx context.Context, stream string, msgs []transport.RawMessage) ([]string, error) {
	ids, err := d.fakeDriver.Publish(ctx, stream, msgs)
	if err != nil {
		d.mu.Lock()
		d.failed = append(d.failed, msgs)
		d.mu.Unlock()
	}
	return ids, err
}

// TestPublishNeverReusesBodiesOfAFailedBatch proves the Bus's reuse of encoding buffers is
// safe: bodies a driver still holds after a failed publish stay intact however many batches
// are published after it, through Publish and an AsyncPublisher.
func TestPublishNeverReusesBodiesOfAFailedBatch(t *testing.T) {
	drv := &retainingDriver{fakeDriver: newFakeDriver()}
	bus, err := transport.New(drv, transport.Config{Track: envelope.TrackV2})
	require.NoError(t, err)
	t.Cleanup(func() { _ = bus.Close() })

	drv.setPublishErr(transport.ErrUnavailable)
	require.ErrorIs(t, bus.Publish(t.Context(), stream, envs(5)...), transport.ErrUnavailable)
	drv.setPublishErr(nil)
	for range 20 {
		require.NoError(t, bus.Publish(t.Context(), stream, envs(5)...))
		drv.next(t)
	}
	p, err := bus.NewAsyncPublisher(stream, 4)
	require.NoError(t, err)
	for range 20 {
		require.NoError(t, p.Publish(t.Context(), envs(5)...))
	}
	require.NoError(t, p.Close(t.Context()))

	require.Len(t, drv.failed, 1)
	codec := envelope.Codec{}
	for i, m := range drv.failed[0] {
		e, err := codec.Decode(m.Body)
		require.NoError(t, err, "body %d of the failed batch was overwritten", i)
		require.JSONEq(t, fmt.Sprintf(`{"n":%d}`, i), string(e.Payload))
	}
}

func envs(n int) []*envelope.Envelope {
	out := make([]*envelope.Envelope, n)
	for i := range out {
		out[i] = &envelope.Envelope{Meta: envelope.Meta{SchemaID: "s"}, Payload: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))}
	}
	return out
}

// TestAsyncPublisherBoundsInFlightAndFlushes proves that at most maxInFlight batches await the
// broker (the next Publish blocks until one is confirmed, or its ctx ends), that every batch is
// encoded at once (ids assigned before Publish returns, v2), and that Flush returns only once
// every batch handed over is stored.
func TestAsyncPublisherBoundsInFlightAndFlushes(t *testing.T) {
	drv := &gatedDriver{fakeDriver: newFakeDriver(), gate: make(chan struct{}), started: make(chan struct{}, 10)}
	bus, err := transport.New(drv, transport.Config{Track: envelope.TrackV2})
	require.NoError(t, err)
	t.Cleanup(func() { _ = bus.Close() })
	p, err := bus.NewAsyncPublisher(stream, 2)
	require.NoError(t, err)

	batches := [][]*envelope.Envelope{envs(3), envs(2), envs(1)}
	require.NoError(t, p.Publish(t.Context(), batches[0]...))
	require.NoError(t, p.Publish(t.Context(), batches[1]...))
	for _, e := range append(batches[0], batches[1]...) {
		require.NotEmpty(t, e.ID, "encoded before Publish returns")
	}
	<-drv.started
	<-drv.started

	short, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, p.Publish(short, batches[2]...), context.DeadlineExceeded, "a third batch waits for a slot")

	drv.gate <- struct{}{} // confirm one batch: a slot frees
	require.NoError(t, p.Publish(t.Context(), batches[2]...))
	<-drv.started

	flushed := make(chan error, 1)
	go func() { flushed <- p.Flush(t.Context()) }()
	drv.gate <- struct{}{}
	select {
	case err := <-flushed:
		t.Fatalf("Flush returned with a batch in flight: %v", err)
	default:
	}
	drv.gate <- struct{}{}
	require.NoError(t, <-flushed)

	stored := 0
	for range 3 {
		c := drv.next(t)
		require.Equal(t, "publish", c.kind)
		stored += len(c.msgs)
	}
	require.Equal(t, 6, stored)
	require.NoError(t, p.Close(t.Context()))
	require.ErrorIs(t, p.Publish(t.Context(), envs(1)...), transport.ErrClosed)
}

// TestAsyncPublisherReportsFailedBatches proves a batch the broker refused comes back from
// Flush as a *PublishError holding exactly its envelopes (with their v2 ids, so publishing them
// again is safe), that an encoding error is returned by Publish itself, and that a later Flush
// starts clean.
func TestAsyncPublisherReportsFailedBatches(t *testing.T) {
	bus, drv, rec := newBus(t)
	p, err := bus.NewAsyncPublisher(stream, 4)
	require.NoError(t, err)

	down := errors.New("down")
	drv.setPublishErr(down)
	failed := envs(2)
	require.NoError(t, p.Publish(t.Context(), failed...))
	err = p.Flush(t.Context())
	var pe *transport.PublishError
	require.ErrorAs(t, err, &pe)
	require.ErrorIs(t, err, down)
	require.Equal(t, failed, pe.Envelopes)
	ids := []string{failed[0].ID, failed[1].ID}
	require.Equal(t, 2, rec.PublishedCount(stream, false))

	drv.setPublishErr(nil)
	require.NoError(t, p.Publish(t.Context(), pe.Envelopes...))
	require.NoError(t, p.Flush(t.Context()))
	c := drv.next(t)
	require.Equal(t, ids, []string{c.msgs[0].ID, c.msgs[1].ID}, "the retry re-sends the same ids")

	require.ErrorContains(t, p.Publish(t.Context(), &envelope.Envelope{Payload: json.RawMessage(`{}`)}), "schema_id")
	_, err = bus.NewAsyncPublisher("bad stream", 1)
	require.Error(t, err)
	require.NoError(t, p.Close(t.Context()))
}
