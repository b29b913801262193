package app

import (
	"bytes"
	"context"
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/internal/app/demo"
)

// TestDemoSettles runs the demo loop for twenty simulated seconds on each embedded bus, as
// fast as the feedback allows (each tick waits until the pipeline applied the Store's
// events), and proves what the demo claims: the queue climbs to the high watermark while the
// Store's writer is down, the pipeline backs off hard, and from the queue's first recovery
// on it stays below the high watermark with nothing refused; the provider settles at the
// drain rate.
func TestDemoSettles(t *testing.T) {
	for _, backend := range testBackends("jetstream", "inmem") {
		t.Run(backend, func(t *testing.T) {
			cfg, err := Load(envconf.Map(map[string]string{"EVENT_BUS_BACKEND": backend}), nil)
			require.NoError(t, err)
			var out bytes.Buffer
			res, err := RunDemo(context.Background(), cfg, demo.Params{
				Duration:  20 * time.Second,
				ApplyWait: waitTimeout,
			}, &out, testLogger(t))
			require.NoError(t, err, out.String())
			require.Zero(t, res.LateTicks, "every tick saw its feedback applied")
			require.Len(t, res.Samples, 200)
			require.Equal(t, 80, res.High)
			require.Equal(t, 50, res.Low)
			require.GreaterOrEqual(t, res.FirstHard, time.Duration(0), "the pipeline backed off hard")
			require.Less(t, res.FirstHard, 2500*time.Millisecond, "while the Store's writer was still down")
			require.GreaterOrEqual(t, res.MaxDepth, res.High)
			require.GreaterOrEqual(t, res.MaxDepthAfterHard, 0, "the queue recovered")
			require.Less(t, res.MaxDepthAfterHard, res.High, "after the first hard the queue stays below its high watermark")
			require.Zero(t, res.Rejected)
			require.True(t, res.Settled())
			require.Greater(t, res.Events, 3)
			require.Equal(t, res.Events, res.Adjustments, "with one Store, each level change moves the rate once")

			// The provider sent, over the last ten seconds, what the Store drained.
			sent := 0
			for _, s := range res.Samples[100:] {
				sent += s.Produced
			}
			require.InDelta(t, res.Params.DrainRate*10, sent, res.Params.DrainRate*10*0.05)

			text := out.String()
			require.Contains(t, text, "  20.0s  depth ")
			require.Contains(t, text, "the loop settled")
			require.Contains(t, text, "max queue depth")
		})
	}
}

// TestDemoCommandWritesPlot proves `pulse demo --fast --plot` runs to the end, prints a line
// per tick and a summary, and writes a well-formed SVG with the series and watermarks.
func TestDemoCommandWritesPlot(t *testing.T) {
	plot := t.TempDir() + "/demo.svg"
	code, out, errOut := runMain(t, map[string]string{"EVENT_BUS_BACKEND": "inmem"},
		"demo", "--fast", "--duration", "3s", "--tick", "50ms", "--plot", plot)
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, 60, strings.Count(out, "s  depth "), "a line per tick")
	require.Contains(t, out, "summary after 3s (inmem)")
	require.Contains(t, out, "plot written to "+plot)

	svg := readFile(t, plot)
	dec := xml.NewDecoder(strings.NewReader(svg))
	paths := 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		require.NoError(t, err, "the SVG is well-formed XML")
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "path" {
			paths++
		}
	}
	require.Equal(t, 3, paths, "queue depth, rate set and rate sent")
	require.Contains(t, svg, "high watermark (80)")
	require.Contains(t, svg, "low watermark (50)")
}

// TestDemoUsage proves bad demo parameters exit 2 with what is accepted.
func TestDemoUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"demo", "--capacity", "5"}, "capacity 5 (accepted: an integer ≥ 10)"},
		{[]string{"demo", "--duration", "10ms"}, "duration 10ms (accepted: at least one tick"},
		{[]string{"demo", "--backend", "redis"}, `accepted: jetstream, inmem`},
		{[]string{"demo", "--nats-url", "nats://x"}, "flag provided but not defined: -nats-url"},
	} {
		t.Run(strings.Join(tc.args[1:], " "), func(t *testing.T) {
			code, _, errOut := runMain(t, map[string]string{"EVENT_BUS_BACKEND": "inmem"}, tc.args...)
			require.Equal(t, ExitUsage, code, errOut)
			require.Contains(t, errOut, tc.want)
		})
	}
}
