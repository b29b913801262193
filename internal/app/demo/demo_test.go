package demo

import (
	"bytes"
	"context"
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/feedback"
)

// TestMain fails the package if a run leaves its watermark queue's publisher running.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// direct is a Store publisher that hands each event straight to the pipeline's handler, as
// a consumer would after the bus: the loop's logic without a broker (the app package runs
// it over real buses).
type direct struct{ h *feedback.Handler }

func (d direct) Publish(ctx context.Context, _ string, envs ...*envelope.Envelope) error {
	for _, e := range envs {
		ev, err := feedback.ParseEvent(e)
		if err != nil {
			return err
		}
		if err := d.h.Apply(ctx, ev); err != nil {
			return err
		}
	}
	return nil
}

func newHandler(t *testing.T, p feedback.Policy) *feedback.Handler {
	t.Helper()
	h, err := feedback.NewHandler(feedback.HandlerConfig{Policy: p})
	require.NoError(t, err)
	return h
}

// TestRunSettles proves the loop's claim with the default parameters: hard while the
// writer is down, then held below the high watermark, nothing refused, the provider sending
// what the Store drains, and no flapping: a couple of feedback events a second at most.
func TestRunSettles(t *testing.T) {
	h := newHandler(t, feedback.Policy{})
	var out bytes.Buffer
	res, err := Run(context.Background(), Config{
		Params:   Params{ApplyWait: 5 * time.Second},
		Store:    direct{h},
		Pipeline: h,
		Backend:  "direct",
		Out:      &out,
	})
	require.NoError(t, err)
	require.True(t, res.Settled(), out.String())
	require.Equal(t, 45.0, res.Params.DrainRate, "midway between 60/s at ok and 30/s at soft")
	require.Equal(t, 2*time.Second, res.Params.DrainDelay)
	require.Equal(t, 20*time.Second, res.Duration)
	require.Less(t, res.MaxDepthAfterHard, res.High)
	require.Positive(t, res.AboveHigh)
	require.Zero(t, res.LateTicks)
	require.Len(t, res.Samples, 200)
	require.Contains(t, out.String(), "over direct")
	// The watermarks' hysteresis band: in steady state the queue swings between the low and
	// the soft mark, about one level change a second (without the band it flapped at the low
	// mark, some 35 events a second).
	require.Positive(t, res.Events)
	require.LessOrEqual(t, res.Events, 2*int(res.Duration/time.Second), "at most two feedback events a second")
}

// TestRunWithoutFeedbackOverflows proves the demo is not rigged: with a policy that does not
// slow the provider at all, the same Store overflows and the run says it did not settle.
func TestRunWithoutFeedbackOverflows(t *testing.T) {
	h := newHandler(t, feedback.Policy{Scales: map[feedback.Level]float64{"ok": 1, "soft": 1, "hard": 1}})
	var out bytes.Buffer
	res, err := Run(context.Background(), Config{
		Params:   Params{DrainRate: 45, Duration: 10 * time.Second, ApplyWait: 5 * time.Second},
		Store:    direct{h},
		Pipeline: h,
		Out:      &out,
	})
	require.NoError(t, err)
	require.False(t, res.Settled())
	require.Positive(t, res.Rejected, "the queue overflowed")
	require.Equal(t, res.Params.Capacity, res.MaxDepth)
	require.Contains(t, out.String(), "did NOT settle")
}

// TestRunStopsWithItsContext proves a cancelled run returns what it has with ctx's error.
func TestRunStopsWithItsContext(t *testing.T) {
	h := newHandler(t, feedback.Policy{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res, err := Run(ctx, Config{Params: Params{Realtime: true}, Store: direct{h}, Pipeline: h})
	require.ErrorIs(t, err, context.Canceled)
	require.NotNil(t, res)
	require.Empty(t, res.Samples)
}

// TestParams proves the defaults and that every bad parameter is refused with ErrParams.
func TestParams(t *testing.T) {
	p := Params{DrainDelay: -1}.withDefaults(60, 30)
	require.Equal(t, Params{Capacity: 100, DrainRate: 45, DrainDelay: 0, Tick: 100 * time.Millisecond,
		Duration: 20 * time.Second, ApplyWait: 100 * time.Millisecond}, p)
	require.NoError(t, p.validate())
	for _, bad := range []Params{
		{Capacity: 9}, {DrainRate: -1}, {DrainRate: 2000}, {Tick: 5 * time.Millisecond},
		{Duration: 50 * time.Millisecond}, {ApplyWait: -1},
	} {
		err := bad.withDefaults(60, 30).validate()
		require.ErrorIs(t, err, ErrParams, "%+v", bad)
	}
	h := newHandler(t, feedback.Policy{BaseRate: 5000})
	_, err := Run(context.Background(), Config{Store: direct{h}, Pipeline: h})
	require.ErrorIs(t, err, ErrParams, "a provider faster than the simulation's resolution")
}

// TestTickLine proves the live line: time, depth, a gauge with the watermarks, level, rate.
func TestTickLine(t *testing.T) {
	line := tickLine(Sample{T: 1500 * time.Millisecond, Depth: 25, Rate: 30, Level: "soft"}, 100, 80, 50)
	require.Equal(t, "   1.5s  depth  25 ██████████··········L···········H·······  soft  rate     30/s", line)
}

// TestWriteSVG proves the plot is well-formed SVG with the axes' labels, both watermarks,
// the drain rate, the three series and a band for each stretch at soft and at hard.
func TestWriteSVG(t *testing.T) {
	res := &Result{
		Params:   Params{Capacity: 100, DrainRate: 45, Tick: time.Second},
		Backend:  "test",
		BaseRate: 60, SoftRate: 30, MinRate: 1,
		High: 80, Low: 50, Duration: 5 * time.Second,
		Samples: []Sample{
			{T: 1 * time.Second, Depth: 40, Rate: 60, Level: "ok", Produced: 60},
			{T: 2 * time.Second, Depth: 60, Rate: 30, Level: "soft", Produced: 30},
			{T: 3 * time.Second, Depth: 80, Rate: 1, Level: "hard", Produced: 1},
			{T: 4 * time.Second, Depth: 55, Rate: 1, Level: "hard", Produced: 1},
			{T: 5 * time.Second, Depth: 50, Rate: 60, Level: "ok", Produced: 60},
		},
	}
	var b bytes.Buffer
	require.NoError(t, WriteSVG(&b, res))
	svg := b.String()
	counts := map[string]int{}
	dec := xml.NewDecoder(strings.NewReader(svg))
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		if se, ok := tok.(xml.StartElement); ok {
			counts[se.Name.Local]++
			for _, a := range se.Attr {
				if a.Name.Local == "fill" && (a.Value == colourSoft || a.Value == colourHard) {
					counts[a.Value]++
				}
			}
		}
	}
	require.Equal(t, 1, counts["svg"])
	require.Equal(t, 3, counts["path"])
	require.Equal(t, 2, counts[colourSoft], "one band at soft, and the legend's box")
	require.Equal(t, 2, counts[colourHard], "one band for the two hard samples, and the legend's box")
	for _, want := range []string{"high watermark (80)", "low watermark (50)", "Store drain rate (45/s)", "time (s)", "queue depth (capacity 100)", "provider rate (msg/s)"} {
		require.Contains(t, svg, want)
	}
}

// TestTicks proves the axis ticks are round numbers covering the range.
func TestTicks(t *testing.T) {
	require.Equal(t, []float64{0, 20, 40, 60, 80, 100}, ticks(100, 5))
	require.Equal(t, []float64{0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20}, ticks(20, 10))
	require.Equal(t, 80.0, niceCeil(66), "a multiple of the step for about five ticks")
	require.Equal(t, "2.5", fmtTick(2.5))
	require.Equal(t, "45", fmtTick(45))
}
