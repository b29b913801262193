package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/internal/natstest"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// blackHole subscribes to subject on url with a plain NATS subscriber that never answers: a
// publish to it has interest (no "no responders") but never gets its PubAck, as when a stream
// leader dies with the request. It returns the subscription, to answer late by hand.
func blackHole(t *testing.T, url, subject string) *nats.Subscription {
	t.Helper()
	nc, err := nats.Connect(url)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	sub, err := nc.SubscribeSync(subject)
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	return sub
}

func lostAckDriver(t *testing.T) (*Driver, string) {
	t.Helper()
	srv := natstest.Start(t, nil)
	d, err := Open(context.Background(), transport.Config{Backend: Name, NATSURL: srv.ClientURL(), Namespace: "lost"})
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	d.pubAckTimeout = 100 * time.Millisecond
	return d, srv.ClientURL()
}

func natsMsgs(subject string, n int) ([]*nats.Msg, []int) {
	msgs := make([]*nats.Msg, n)
	idx := make([]int, n)
	for i := range msgs {
		msgs[i] = &nats.Msg{Subject: subject, Data: []byte(fmt.Sprintf(`{"n":%d}`, i))}
		idx[i] = i
	}
	return msgs, idx
}

// TestLostPubAcksGivenUp proves that a batch whose PubAcks never come gives its messages up
// after the PubAck timeout as failed and retryable (ErrUnavailable), with nothing left in the
// driver's table, and that a PubAck arriving after that is ignored.
func TestLostPubAcksGivenUp(t *testing.T) {
	d, url := lostAckDriver(t)
	hole := blackHole(t, url, "lost.nowhere")
	msgs, idx := natsMsgs("lost.nowhere", 3)
	ids := make([]string, len(msgs))

	failed, err := d.publishOnce(context.Background(), msgs, idx, ids)
	require.ErrorIs(t, err, transport.ErrUnavailable)
	require.ErrorIs(t, err, jetstream.ErrAsyncPublishTimeout)
	require.Equal(t, idx, failed)
	require.Zero(t, d.inflight.len())
	require.Equal(t, 3, d.js.PublishAsyncPending(), "nats.go still waits for them")

	// The first PubAck comes late: nats.go resolves it, the driver ignores it.
	late, err := hole.NextMsg(5 * time.Second)
	require.NoError(t, err)
	require.NoError(t, late.Respond([]byte(`{"stream":"X","seq":1}`)))
	require.Eventually(t, func() bool { return d.js.PublishAsyncPending() == 2 }, 5*time.Second, 5*time.Millisecond)
	require.Zero(t, d.inflight.len())
}

// TestLostPubAcksReclaimed proves that once given-up publishes take a quarter of the in-flight
// window, the driver resets nats.go's publisher so they cannot fill it, and that publishing
// to a real stream works afterwards.
func TestLostPubAcksReclaimed(t *testing.T) {
	d, url := lostAckDriver(t)
	blackHole(t, url, "lost.nowhere")
	msgs, idx := natsMsgs("lost.nowhere", DefaultPublishMaxPending/4)

	_, err := d.publishOnce(context.Background(), msgs, idx, make([]string, len(msgs)))
	require.True(t, errors.Is(err, jetstream.ErrAsyncPublishTimeout), "%v", err)
	require.Zero(t, d.js.PublishAsyncPending(), "the lost publishes were reclaimed")

	ids, err := d.Publish(context.Background(), "after", []driver.Message{{Body: []byte(`{"ok":1}`)}})
	require.NoError(t, err)
	require.Equal(t, []string{"1"}, ids)
}

// TestAckFields proves the ack-subject reader on both forms the server sends, and that it
// declines anything else (the driver then asks nats.go).
func TestAckFields(t *testing.T) {
	for _, tc := range []struct {
		reply           string
		delivered, sseq uint64
		ok              bool
	}{
		{"$JS.ACK.MDP_TELEMETRY_FEEDBACK.pipeline.2.41.40.1764201600000000000.7", 2, 41, true},
		{"$JS.ACK._.ACCHASH.MDP_TELEMETRY_FEEDBACK.pipeline.1.9.9.1764201600000000000.0.rnd", 1, 9, true},
		{"$JS.ACK.hub.ACCHASH.S.c.3.12.10.1764201600000000000.5", 3, 12, true},
		{"$JS.ACK.S.c.x.12.10.1764201600000000000.5", 0, 0, false},
		{"$JS.ACK.S.c.0.12.10.1764201600000000000.5", 0, 0, false},
		{"$JS.ACK.S.c.1.12", 0, 0, false},
		{"$JS.ACK.S.c.1.012.10.1764201600000000000.5", 1, 12, true}, // spelt unusually: formatted anew
		{"_INBOX.abc", 0, 0, false},
		{"", 0, 0, false},
		{"$JS.ACK.S.c..12.10.1764201600000000000.5", 0, 0, false},                     // an empty token
		{"$JS.ACK.S.c.1.12.10.17642016000000000000.5", 0, 0, false},                   // 20 digits
		{"$JS.ACK.S.c.1.12.10.9999999999999999999.5", 0, 0, false},                    // past int64
		{"$JS.ACK.S.c.1.12.10.176420160000000000x.5", 0, 0, false},                    // not a number
		{"$JS.ACK.S.c.1.-12.10.1764201600000000000.5", 0, 0, false},                   // signed
		{"$JS.ACK.a.b.c.d.e.S.c.1.12.10.1764201600000000000.5", 0, 0, false},          // too many tokens
		{"$JS.ACK.S.c.18446744073709551615.12.10.1764201600000000000.5", 0, 0, false}, // 20 digits
	} {
		m, ok := ackFields(tc.reply)
		require.Equal(t, tc.ok, ok, tc.reply)
		require.Equal(t, tc.delivered, m.delivered, tc.reply)
		require.Equal(t, tc.sseq, m.streamSeq, tc.reply)
		if ok {
			require.Equal(t, int64(1764201600000000000), m.stored, tc.reply)
			if want := strconv.FormatUint(tc.sseq, 10); strings.Contains(tc.reply, "."+want+".") {
				require.Equal(t, want, m.seqText, "the transport id is the subject's own text")
			} else {
				require.Empty(t, m.seqText, "spelt otherwise than FormatUint would: not reused")
			}
		}
	}
}

// TestAckFieldsMatchMetadata proves the reader agrees with nats.go's Metadata on what a real
// server sends, first and redelivered.
func TestAckFieldsMatchMetadata(t *testing.T) {
	srv := natstest.Start(t, nil)
	nc, err := nats.Connect(srv.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := context.Background()
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "META", Subjects: []string{"meta.>"}})
	require.NoError(t, err)
	for i := range 3 {
		_, err := js.Publish(ctx, "meta.x", []byte{byte('a' + i)})
		require.NoError(t, err)
	}
	cons, err := js.CreateConsumer(ctx, "META", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy})
	require.NoError(t, err)
	for round := range 2 { // the second round is a redelivery (Nak)
		batch, err := cons.Fetch(3, jetstream.FetchMaxWait(5*time.Second))
		require.NoError(t, err)
		n := 0
		for m := range batch.Messages() {
			meta, err := m.Metadata()
			require.NoError(t, err)
			am, ok := ackFields(m.Reply())
			require.True(t, ok, m.Reply())
			require.Equal(t, meta.NumDelivered, am.delivered)
			require.Equal(t, meta.Sequence.Stream, am.streamSeq)
			require.Equal(t, meta.Timestamp.UnixNano(), am.stored)
			require.EqualValues(t, round+1, am.delivered)
			require.NoError(t, m.Nak())
			n++
		}
		require.Equal(t, 3, n)
	}
}

// TestShortCommitConfirmsOnlyWhatItStored proves how a fast batch's commit settles the Send
// calls in it: a full commit confirms them all; a commit storing fewer than were sent (the
// server's answer after a leader change mid-batch, see TestClusterLeaderFailover) confirms
// only the calls it covers, and ends the others with errShortCommit and the count of their
// leading messages that are stored, which Send publishes again after.
func TestShortCommitConfirmsOnlyWhatItStored(t *testing.T) {
	calls := func() []*laneReq { // two calls of 5 messages: batch sequences 1..5 and 6..10
		var out []*laneReq
		for first := uint64(1); first <= 10; first += 5 {
			out = append(out, &laneReq{msgs: make([]*nats.Msg, 5), first: first, last: first + 4, done: make(chan laneResult, 1)})
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		count  uint64
		stored [2]int
		short  [2]bool
	}{
		{"all stored", 10, [2]int{5, 5}, [2]bool{false, false}},
		{"first call stored", 5, [2]int{5, 0}, [2]bool{false, true}},
		{"only the start stored", 1, [2]int{1, 0}, [2]bool{true, true}},
		{"none stored", 0, [2]int{0, 0}, [2]bool{true, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &fastLane{d: &Driver{}, stream: "s"}
			open := calls()
			l.committed(open, 10, tc.count)
			for i, r := range open {
				res := <-r.done
				require.Equal(t, tc.stored[i], res.stored, "call %d", i)
				require.Equal(t, tc.short[i], errors.Is(res.err, errShortCommit), "call %d: %v", i, res.err)
			}
		})
	}
}

// BenchmarkAckFields reads the fields of one ack subject as the Bus's consume path does for
// every delivery.
func BenchmarkAckFields(b *testing.B) {
	reply := "$JS.ACK.PULSE_BENCH_EVENTS.pulse_bench.1.123456.123456.1796417178298590700.87655"
	for b.Loop() {
		if _, ok := ackFields(reply); !ok {
			b.Fatal(reply)
		}
	}
}
