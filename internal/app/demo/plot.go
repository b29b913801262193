package demo

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Plot geometry, in SVG user units.
const (
	plotWidth   = 960
	plotHeight  = 440
	plotLeft    = 70 // room for the depth axis labels
	plotRight   = 70 // room for the rate axis labels
	plotTop     = 50 // title and legend
	plotBottom  = 50 // time axis labels
	plotXTicks  = 10 // about this many time ticks
	plotYTicks  = 5  // depth and rate ticks
	plotFontPx  = 12 // label size
	plotTitlePx = 15 // title size
)

// Plot colours.
const (
	colourDepth = "#1f77b4"
	colourRate  = "#ff7f0e"
	colourSet   = "#f4a259"
	colourDrain = "#7f7f7f"
	colourHigh  = "#d62728"
	colourLow   = "#2ca02c"
	colourSoft  = "#fff3c4"
	colourHard  = "#fbd0d0"
	colourAxis  = "#333333"
	colourGrid  = "#e5e5e5"
)

// throughputWindow is the moving-average window of the plotted provider throughput.
const throughputWindow = time.Second

// WriteSVG draws the run as an SVG picture: queue depth (left axis) and the provider's rate
// (right axis: the rate the pipeline set, and the messages per second it actually sent,
// averaged over a second, beside the Store's drain rate) over time, the high and low
// watermarks as dashed lines, and the periods the pipeline spent at soft and hard as shaded
// bands. It uses nothing but the standard library.
func WriteSVG(w io.Writer, r *Result) error {
	bw := bufio.NewWriter(w)
	p := newPlot(r)
	p.write(bw)
	return bw.Flush()
}

type plot struct {
	r                *Result
	x0, x1, y0, y1   float64 // plot area: x0 left, x1 right, y0 top, y1 bottom
	tMax, dMax, rMax float64
}

func newPlot(r *Result) *plot {
	p := &plot{
		r:  r,
		x0: plotLeft, x1: plotWidth - plotRight,
		y0: plotTop, y1: plotHeight - plotBottom,
		tMax: r.Duration.Seconds(),
		dMax: float64(r.Params.Capacity),
		rMax: niceCeil(r.BaseRate * 1.1),
	}
	if n := len(r.Samples); n > 0 {
		p.tMax = max(p.tMax, r.Samples[n-1].T.Seconds())
	}
	if p.tMax <= 0 {
		p.tMax = 1
	}
	for _, s := range r.Samples {
		p.rMax = max(p.rMax, niceCeil(s.Rate))
	}
	return p
}

func (p *plot) x(t float64) float64 { return p.x0 + (p.x1-p.x0)*t/p.tMax }
func (p *plot) yDepth(d float64) float64 {
	return p.y1 - (p.y1-p.y0)*d/p.dMax
}
func (p *plot) yRate(v float64) float64 { return p.y1 - (p.y1-p.y0)*v/p.rMax }

func (p *plot) write(w *bufio.Writer) {
	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="%d">`+"\n",
		plotWidth, plotHeight, plotWidth, plotHeight, plotFontPx)
	fmt.Fprintln(w, `<style>.halo{paint-order:stroke;stroke:white;stroke-width:4px;stroke-linejoin:round}</style>`)
	fmt.Fprintf(w, `<rect width="%d" height="%d" fill="white"/>`+"\n", plotWidth, plotHeight)
	p.bands(w)
	p.grid(w)
	p.series(w)
	p.watermarks(w)
	p.axes(w)
	p.legend(w)
	fmt.Fprintln(w, `</svg>`)
}

// bands shades the periods spent at soft and hard (the level the pipeline applied).
func (p *plot) bands(w *bufio.Writer) {
	s := p.r.Samples
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1].Level == s[i].Level {
			j++
		}
		colour := ""
		switch s[i].Level {
		case "soft":
			colour = colourSoft
		case "hard":
			colour = colourHard
		}
		if colour != "" {
			start := s[i].T.Seconds()
			end := p.tMax
			if j+1 < len(s) {
				end = s[j+1].T.Seconds()
			}
			fmt.Fprintf(w, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n",
				p.x(start), p.y0, p.x(end)-p.x(start), p.y1-p.y0, colour)
		}
		i = j + 1
	}
}

func (p *plot) grid(w *bufio.Writer) {
	for _, v := range ticks(p.dMax, plotYTicks) {
		fmt.Fprintf(w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", p.x0, p.yDepth(v), p.x1, p.yDepth(v), colourGrid)
	}
}

// watermarks draws the watermarks and the drain rate, with their labels, over the series.
func (p *plot) watermarks(w *bufio.Writer) {
	// The drain rate, for comparison with what the provider sends.
	y := p.yRate(p.r.Params.DrainRate)
	fmt.Fprintf(w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="2 3"/>`+"\n", p.x0, y, p.x1, y, colourDrain)
	fmt.Fprintf(w, `<text class="halo" x="%.1f" y="%.1f" fill="%s">Store drain rate (%s/s)</text>`+"\n", p.x0+4, y-4, colourDrain, fmtTick(p.r.Params.DrainRate))
	for _, m := range []struct {
		v      float64
		colour string
		label  string
	}{
		{float64(p.r.High), colourHigh, fmt.Sprintf("high watermark (%d)", p.r.High)},
		{float64(p.r.Low), colourLow, fmt.Sprintf("low watermark (%d)", p.r.Low)},
	} {
		y := p.yDepth(m.v)
		fmt.Fprintf(w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5" stroke-dasharray="6 4"/>`+"\n", p.x0, y, p.x1, y, m.colour)
		fmt.Fprintf(w, `<text class="halo" x="%.1f" y="%.1f" fill="%s" text-anchor="end">%s</text>`+"\n", p.x1-4, y-4, m.colour, escape(m.label))
	}
}

func (p *plot) series(w *bufio.Writer) {
	samples := p.r.Samples
	if len(samples) == 0 {
		return
	}
	var set, sent, depth strings.Builder
	window := max(1, int(throughputWindow/p.r.Params.Tick))
	produced := 0
	for i, s := range samples {
		cmd := "L"
		if i == 0 {
			cmd = "M"
		}
		t := s.T.Seconds()
		produced += s.Produced
		if i >= window {
			produced -= samples[i-window].Produced
		}
		n := min(i+1, window)
		throughput := float64(produced) / (float64(n) * p.r.Params.Tick.Seconds())
		fmt.Fprintf(&set, "%s%.1f %.1f ", cmd, p.x(t), p.yRate(s.Rate))
		fmt.Fprintf(&sent, "%s%.1f %.1f ", cmd, p.x(t), p.yRate(throughput))
		fmt.Fprintf(&depth, "%s%.1f %.1f ", cmd, p.x(t), p.yDepth(float64(s.Depth)))
	}
	fmt.Fprintf(w, `<path d="%s" fill="none" stroke="%s" stroke-width="1" stroke-opacity="0.7"/>`+"\n", strings.TrimSpace(set.String()), colourSet)
	fmt.Fprintf(w, `<path d="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.TrimSpace(sent.String()), colourRate)
	fmt.Fprintf(w, `<path d="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.TrimSpace(depth.String()), colourDepth)
}

func (p *plot) axes(w *bufio.Writer) {
	// Frame and axis lines.
	fmt.Fprintf(w, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="%s"/>`+"\n", p.x0, p.y0, p.x1-p.x0, p.y1-p.y0, colourAxis)
	// Time ticks.
	for _, t := range ticks(p.tMax, plotXTicks) {
		x := p.x(t)
		fmt.Fprintf(w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", x, p.y1, x, p.y1+5, colourAxis)
		fmt.Fprintf(w, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, p.y1+18, fmtTick(t))
	}
	fmt.Fprintf(w, `<text x="%.1f" y="%.1f" text-anchor="middle">time (s)</text>`+"\n", (p.x0+p.x1)/2, p.y1+38)
	// Depth axis (left).
	for _, v := range ticks(p.dMax, plotYTicks) {
		y := p.yDepth(v)
		fmt.Fprintf(w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", p.x0-5, y, p.x0, y, colourAxis)
		fmt.Fprintf(w, `<text x="%.1f" y="%.1f" text-anchor="end" fill="%s">%s</text>`+"\n", p.x0-8, y+4, colourDepth, fmtTick(v))
	}
	fmt.Fprintf(w, `<text transform="translate(%d %.1f) rotate(-90)" text-anchor="middle" fill="%s">queue depth (capacity %d)</text>`+"\n",
		18, (p.y0+p.y1)/2, colourDepth, p.r.Params.Capacity)
	// Rate axis (right).
	for _, v := range ticks(p.rMax, plotYTicks) {
		y := p.yRate(v)
		fmt.Fprintf(w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", p.x1, y, p.x1+5, y, colourAxis)
		fmt.Fprintf(w, `<text x="%.1f" y="%.1f" fill="%s">%s</text>`+"\n", p.x1+8, y+4, colourRate, fmtTick(v))
	}
	fmt.Fprintf(w, `<text transform="translate(%d %.1f) rotate(90)" text-anchor="middle" fill="%s">provider rate (msg/s)</text>`+"\n",
		plotWidth-18, (p.y0+p.y1)/2, colourRate)
}

func (p *plot) legend(w *bufio.Writer) {
	title := fmt.Sprintf("pulse demo — %s bus; provider %s/s at ok, %s/s at soft, %s/s at hard; Store drains %s/s", p.r.Backend,
		fmtTick(p.r.BaseRate), fmtTick(p.r.SoftRate), fmtTick(p.r.MinRate), fmtTick(p.r.Params.DrainRate))
	fmt.Fprintf(w, `<text x="%.1f" y="20" font-size="%d" font-weight="bold">%s</text>`+"\n", p.x0, plotTitlePx, escape(title))
	items := []struct{ colour, label, kind string }{
		{colourDepth, "queue depth", "line"},
		{colourSet, "provider rate (set)", "line"},
		{colourRate, "provider sent (1 s average)", "line"},
		{colourSoft, "soft", "box"},
		{colourHard, "hard", "box"},
	}
	x := p.x0
	for _, it := range items {
		if it.kind == "line" {
			fmt.Fprintf(w, `<line x1="%.1f" y1="36" x2="%.1f" y2="36" stroke="%s" stroke-width="2"/>`+"\n", x, x+20, it.colour)
		} else {
			fmt.Fprintf(w, `<rect x="%.1f" y="30" width="20" height="12" fill="%s" stroke="%s"/>`+"\n", x, it.colour, colourGrid)
		}
		fmt.Fprintf(w, `<text x="%.1f" y="40">%s</text>`+"\n", x+26, escape(it.label))
		x += 40 + float64(len(it.label))*7
	}
}

// ticks returns about n round values from 0 to maxV.
func ticks(maxV float64, n int) []float64 {
	if maxV <= 0 {
		return []float64{0}
	}
	step := niceStep(maxV / float64(n))
	var out []float64
	for v := 0.0; v <= maxV*(1+1e-9); v += step {
		out = append(out, v)
	}
	return out
}

// niceStep rounds v up to 1, 2, 2.5 or 5 times a power of ten.
func niceStep(v float64) float64 {
	if v <= 0 {
		return 1
	}
	exp := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if v <= m*exp {
			return m * exp
		}
	}
	return 10 * exp
}

// niceCeil rounds v up to a multiple of a nice step (for an axis maximum).
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	step := niceStep(v / plotYTicks)
	return math.Ceil(v/step) * step
}

func fmtTick(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")
}

func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}
