package inmem

import (
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/transport/driver"
)

// TestTracedMessagesStoredWithoutAMapEach: a published batch's headers (a traceparent on
// every traced message) are kept as pairs in the batch's own allocations, so storing 200
// traced messages allocates as often as storing 20 — not a map per message, which the
// garbage collector then had to mark for as long as the stream kept them — and they read
// back whole, through the admin API as a map and through a delivery as pairs.
func TestTracedMessagesStoredWithoutAMapEach(t *testing.T) {
	msgs := func(n int) []driver.Message {
		out := make([]driver.Message, n)
		for i := range out {
			out[i] = driver.Message{Body: []byte(`{"n":` + strconv.Itoa(i) + `}`), Headers: map[string]string{
				"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "n": strconv.Itoa(i),
			}}
		}
		return out
	}
	allocs := func(n int) float64 {
		in := msgs(n)
		return testing.AllocsPerRun(20, func() {
			if got := copyMessages(in); len(got) != n {
				t.Fatalf("stored %d of %d", len(got), n)
			}
		})
	}
	few, many := allocs(20), allocs(200)
	require.Equal(t, few, many, "allocations storing 20 traced messages: %v, 200: %v", few, many)

	in := msgs(3)
	stored := copyMessages(in)
	for i, m := range stored {
		require.Equal(t, in[i].Body, m.msg.Body)
		require.Equal(t, in[i].Headers, m.message().Headers)
		d := driver.Delivery{Message: m.msg, HeaderFields: m.fields}
		require.Equal(t, in[i].Headers, d.HeaderMap())
		require.Len(t, m.msg.Body, cap(m.msg.Body), "a body's capacity ends where it does")
	}
	require.Nil(t, copyMessages([]driver.Message{{Body: []byte("x")}})[0].fields, "no headers, no pairs")
}
