package jetstream

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestMsgQueue proves the queue's contract: FIFO, take never waits and returns at most
// limit, push waits while the queue is full until take makes room, and a closed stop ends
// that wait without queuing.
func TestMsgQueue(t *testing.T) {
	q := newMsgQueue(3)
	stop := make(chan struct{})
	at := func(i int) queued { return queued{at: time.Duration(i) * time.Second} }
	for i := range 3 {
		require.True(t, q.push(at(i), stop))
	}
	select {
	case <-q.ready:
	default:
		t.Fatal("no ready token after the first push")
	}

	pushed := make(chan bool, 1)
	go func() { pushed <- q.push(at(3), stop) }()
	select {
	case <-pushed:
		t.Fatal("push did not wait on a full queue")
	case <-time.After(50 * time.Millisecond): // proving a wait: bounded window
	}
	got := q.take(nil, 2)
	require.Equal(t, []queued{at(0), at(1)}, got)
	select {
	case ok := <-pushed:
		require.True(t, ok)
	case <-time.After(5 * time.Second):
		t.Fatal("push did not resume after take made room")
	}
	require.Equal(t, 2, q.len())
	require.Equal(t, []queued{at(2), at(3)}, q.take(nil, 10))
	require.Empty(t, q.take(nil, 10))

	for i := range 3 {
		require.True(t, q.push(at(i), stop))
	}
	go func() { pushed <- q.push(at(9), stop) }()
	close(stop)
	select {
	case ok := <-pushed:
		require.False(t, ok, "a stopped push does not queue")
	case <-time.After(5 * time.Second):
		t.Fatal("stop did not end the wait")
	}
	require.Equal(t, 3, q.len())
}

// TestBufferSizes proves the documented derivation of the client-side buffers from the batch
// size, including the cap on PullMaxMessages.
func TestBufferSizes(t *testing.T) {
	tests := []struct{ batch, pull, queue, maxAck int }{
		{0, 8, 1, 10},
		{1, 8, 1, 10},
		{16, 128, 16, 160},
		{256, 2048, 256, 2560},
		{1000, 4096, 1000, 6096},
	}
	for _, tt := range tests {
		pull, queue, maxAck := bufferSizes(tt.batch)
		require.Equal(t, []int{tt.pull, tt.queue, tt.maxAck}, []int{pull, queue, maxAck}, "batch %d", tt.batch)
	}
}
