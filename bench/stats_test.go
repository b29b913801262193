package bench

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
)

// TestRateMedianAndSpread proves the report's median and spread: odd and even counts, and
// the empty case printed as "-".
func TestRateMedianAndSpread(t *testing.T) {
	tests := []struct {
		name   string
		r      Rate
		median float64
		spread float64
		text   string
	}{
		{"empty", nil, 0, 0, "-"},
		{"one", Rate{1234.4}, 1234.4, 0, "1,234"},
		{"odd", Rate{300, 100, 200}, 200, 1, "200 ±50%"},
		{"even", Rate{100, 400, 200, 300}, 250, 1.2, "250 ±60%"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.InDelta(t, tc.median, tc.r.Median(), 1e-9)
			require.InDelta(t, tc.spread, tc.r.Spread(), 1e-9)
			require.Equal(t, tc.text, tc.r.String())
		})
	}
	require.InDelta(t, 2.0, Ratio(Rate{400}, Rate{200}), 1e-9)
	require.Zero(t, Ratio(Rate{400}, nil), "a missing measurement gives no ratio")
}

// TestLatencyPercentile proves nearest-rank percentiles on an unsorted sample.
func TestLatencyPercentile(t *testing.T) {
	var l Latencies
	for i := 100; i >= 1; i-- {
		l = append(l, time.Duration(i)*time.Microsecond)
	}
	require.Equal(t, 50*time.Microsecond, l.Percentile(50))
	require.Equal(t, 99*time.Microsecond, l.Percentile(99))
	require.Equal(t, 100*time.Microsecond, l.Percentile(100))
	require.Zero(t, Latencies(nil).Percentile(99))
}

// TestThousands proves the thousands separators of the report.
func TestThousands(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.6: "1,234,568"} {
		require.Equal(t, want, thousands(in))
	}
}

// TestWorkloadSizeAndSeq proves that the envelopes decode with Pulse's codec in both tracks,
// are the size the report states (as close to the target as the format allows), and carry a
// sequence number SeqOf finds in the body and in the decoded payload.
func TestWorkloadSizeAndSeq(t *testing.T) {
	for _, tr := range []envelope.Track{envelope.TrackV1, envelope.TrackV2} {
		for _, size := range []int{200, 300} {
			w, err := NewWorkload(tr, size)
			require.NoError(t, err)
			b, err := w.Encode(4242)
			require.NoError(t, err)
			// The envelope's ts is the time of encoding, whose shortest float text varies by a
			// few digits: sizes are compared with that slack.
			require.InDelta(t, w.Size, len(b), 3, "every envelope is about the template's size")
			if size == 300 {
				require.GreaterOrEqual(t, w.Size, 300, "padding reaches the target")
				require.LessOrEqual(t, w.Size, 303)
			}
			seq, ok := SeqOf(b)
			require.True(t, ok, "seq in body %s", b)
			require.Equal(t, 4242, seq)
			env, err := (&envelope.Codec{}).Decode(b)
			require.NoError(t, err)
			seq, ok = SeqOf(env.Payload)
			require.True(t, ok)
			require.Equal(t, 4242, seq)
		}
	}
	_, ok := SeqOf([]byte(`{"x":1}`))
	require.False(t, ok)
	_, err := NewWorkload("v3", 200)
	require.Error(t, err)
}

// TestTallyCountsUniqueAndDuplicates proves that a trial ends only when every sequence number
// was seen, and that duplicates and unreadable messages are counted, not mistaken for
// progress.
func TestTallyCountsUniqueAndDuplicates(t *testing.T) {
	w, err := NewWorkload(envelope.TrackV1, 200)
	require.NoError(t, err)
	tal := newTally(3)
	for _, seq := range []int{0, 1, 1} {
		b, err := w.Encode(seq)
		require.NoError(t, err)
		tal.add(b)
	}
	tal.add([]byte("garbage"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err = tal.wait(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Contains(t, err.Error(), "2 of 3 messages handled (1 duplicates, 1 unreadable)")
	b, err := w.Encode(2)
	require.NoError(t, err)
	tal.add(b)
	require.NoError(t, tal.wait(context.Background()))
}

// TestReportGoals proves that goals are judged on the medians, that a missing contender makes
// a goal NOT MEASURED, and that AllGoalsMet needs every goal met.
func TestReportGoals(t *testing.T) {
	sec, _ := redisSection()
	sec.N = 10
	sec.Rows = []*Row{
		{Name: NamePulseRedis, Pulse: true, Publish: Rate{95, 100, 90}, Consume: Rate{100}},
		{Name: NameRawRedis, Publish: Rate{100}, Consume: Rate{120}},
	}
	rep := &Report{Opts: Options{}.withDefaults(), Sections: []*Section{sec}}
	var out strings.Builder
	require.NoError(t, rep.WriteText(&out))
	text := out.String()
	require.Contains(t, text, "pulse publish ≥ 0.9× raw go-redis: 0.95× (MET)")
	require.Contains(t, text, "pulse consume+ack ≥ 0.9× raw go-redis: 0.83× (MISSED)")
	require.Contains(t, text, "pulse consume+ack ≥ 5× watermill redisstream: NOT MEASURED")
	require.False(t, rep.AllGoalsMet())

	sec.Rows[1].Consume = Rate{100}
	sec.Rows = append(sec.Rows, &Row{Name: NameWatermillRedis, Publish: Rate{10}, Consume: Rate{10}})
	require.True(t, rep.AllGoalsMet())
}

// TestOptionsValidate proves that bad options are refused with what is accepted.
func TestOptionsValidate(t *testing.T) {
	_, err := Run(context.Background(), Options{Only: []string{"kafka"}})
	require.ErrorContains(t, err, `unknown section "kafka" (accepted: inmem, redis, redis-cluster, jetstream, jetstream-external)`)
	_, err = Run(context.Background(), Options{N: -1})
	require.ErrorContains(t, err, "accepted: a positive integer")
	_, err = Run(context.Background(), Options{N: 1e9})
	require.ErrorContains(t, err, "accepted: at most")
}

// TestUnavailableContender proves that a contender whose driver is not registered is reported
// with the reason instead of failing the run.
func TestUnavailableContender(t *testing.T) {
	w, err := NewWorkload(envelope.TrackV1, 200)
	require.NoError(t, err)
	_, err = openPulse(context.Background(), &Env{Work: w, Batch: 8}, transport.Config{Backend: "no-such-backend"})
	require.True(t, errors.Is(err, ErrUnavailable), "got %v", err)
}

// TestConsumeTimeFromFirstHandled proves a consume phase is timed from the trial's first
// handled message when it can tell, and from the call otherwise.
func TestConsumeTimeFromFirstHandled(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	end := start.Add(time.Second)
	tr := &rawNATSTrial{tallied: tallied{tal: newTally(2)}}
	require.Equal(t, time.Second, consumeTime(tr, start, end), "nothing handled yet: the whole call")
	tr.tal.first.Store(start.Add(40 * time.Millisecond).UnixNano())
	require.Equal(t, 960*time.Millisecond, consumeTime(tr, start, end), "set-up before the first message left out")
	require.Equal(t, time.Second, consumeTime(&natsBenchCLI{}, start, end), "a trial without a tally")
}
