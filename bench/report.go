package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText writes the report as readable tables: per section one row per contender, Pulse's
// ratio to each other contender, and every goal of the issues as met, missed or not measured.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	o := r.Opts
	fmt.Fprintf(&b, "Pulse benchmark — %s, %s %s, %d CPUs (GOMAXPROCS %d), took %s\n",
		r.Start.UTC().Format("2006-01-02 15:04 UTC"), r.Go, r.Platform, r.CPUs, r.MaxProcs, r.Elapsed.Round(time.Second))
	fmt.Fprintf(&b, "messages: %d-byte envelopes (track %s), batch %d, %d publisher(s); %d measured repetitions after %d warm-up(s) of ≤%s messages;\n",
		r.MsgSize, o.Track, o.Batch, o.Publishers, o.Reps, o.Warmups, thousands(float64(o.WarmN)))
	b.WriteString("figures are the median msgs/s ± half the spread (max−min) across repetitions; every trial on a fresh stream and group;\n")
	b.WriteString("consume+ack is timed from the first message handled until every message is handled and acked (the consumer's set-up left out, as nats bench leaves it out).\n")
	if r.LoadStart != "" {
		fmt.Fprintf(&b, "load average (1 min) at start %s, at end %s: figures from a machine busy with other work are noisy.\n", r.LoadStart, r.LoadEnd)
	}

	var goals []string
	width := 0
	for _, s := range r.Sections {
		width = max(width, len(s.Name))
	}
	for _, s := range r.Sections {
		b.WriteString("\n")
		writeSection(&b, s)
		for _, g := range s.Goals {
			goals = append(goals, fmt.Sprintf("%-*s %s", width, s.Name, goalLine(s, g)))
		}
	}
	if len(goals) > 0 {
		b.WriteString("\ngoals\n")
		for _, g := range goals {
			b.WriteString("  " + g + "\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeSection(b *strings.Builder, s *Section) {
	fmt.Fprintf(b, "== %s — %s, %s messages per trial\n", s.Name, s.Title, thousands(float64(s.N)))
	if s.Server != "" {
		fmt.Fprintf(b, "   server: %s\n", s.Server)
	}
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	cols := sectionMetrics(s)
	head := []string{"   contender"}
	for _, m := range cols {
		head = append(head, string(m)+" msgs/s")
	}
	if s.LatencyRate > 0 {
		head = append(head, fmt.Sprintf("p50 @%s/s", thousands(s.LatencyRate)), fmt.Sprintf("p99 @%s/s", thousands(s.LatencyRate)))
	}
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	for _, row := range s.Rows {
		cells := []string{"   " + row.Name}
		for _, m := range cols {
			cells = append(cells, row.rate(m).String())
		}
		if s.LatencyRate > 0 {
			cells = append(cells, fmtDur(row.Lat.Percentile(50)), fmtDur(row.Lat.Percentile(99)))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	tw.Flush()
	for _, row := range s.Rows {
		if row.Err != "" {
			fmt.Fprintf(b, "   ! %s: %s\n", row.Name, row.Err)
		}
		if row.Dups > 0 {
			fmt.Fprintf(b, "   note: %s saw %d duplicate deliveries (at-least-once redeliveries)\n", row.Name, row.Dups)
		}
	}
	writeCPU(b, s)
	p := s.Pulse()
	if p == nil {
		return
	}
	for _, row := range s.Rows {
		if row.Pulse {
			continue
		}
		var parts []string
		for _, m := range cols {
			ratio := Ratio(p.rate(m), row.rate(m))
			if ratio == 0 {
				continue
			}
			part := fmt.Sprintf("%s %s", m, fmtRatio(ratio))
			for _, g := range s.Goals {
				if g.Metric == m && g.Versus == row.Name {
					part += fmt.Sprintf(" (goal ≥ %g×: %s)", g.MinRatio, metWord(ratio >= g.MinRatio))
				}
			}
			parts = append(parts, part)
		}
		if len(parts) > 0 {
			fmt.Fprintf(b, "   %s ÷ %s: %s\n", p.Name, row.Name, strings.Join(parts, ", "))
		}
	}
}

func sectionMetrics(s *Section) []Metric {
	var ms []Metric
	for _, m := range []Metric{MetricE2E, MetricPublish, MetricConsume} {
		for _, row := range s.Rows {
			if len(row.rate(m)) > 0 {
				ms = append(ms, m)
				break
			}
		}
	}
	if len(ms) == 0 { // nothing measured: still show the columns the section is about
		if s.Name == SectionInmem {
			return []Metric{MetricE2E}
		}
		return []Metric{MetricPublish, MetricConsume}
	}
	return ms
}

// goalLine states one goal and whether this run met it.
func goalLine(s *Section, g Goal) string {
	line, _ := goalStatus(s, g)
	return line
}

// goalStatus states one goal and reports whether this run met it (false when not measured).
func goalStatus(s *Section, g Goal) (string, bool) {
	p := s.Pulse()
	if g.Metric == MetricP99 {
		want := fmt.Sprintf("pulse p99 publish→handle at %s msgs/s < %s", thousands(s.LatencyRate), fmtDur(g.MaxLatency))
		if p == nil || len(p.Lat) == 0 {
			return want + ": NOT MEASURED", false
		}
		got := p.Lat.Percentile(99)
		return fmt.Sprintf("%s: %s (%s)", want, fmtDur(got), metWord(got < g.MaxLatency)), got < g.MaxLatency
	}
	want := fmt.Sprintf("pulse %s ≥ %g× %s", g.Metric, g.MinRatio, g.Versus)
	other := s.Row(g.Versus)
	if p == nil || other == nil {
		return want + ": NOT MEASURED", false
	}
	ratio := Ratio(p.rate(g.Metric), other.rate(g.Metric))
	if ratio == 0 {
		return want + ": NOT MEASURED", false
	}
	return fmt.Sprintf("%s: %s (%s)", want, fmtRatio(ratio), metWord(ratio >= g.MinRatio)), ratio >= g.MinRatio
}

// AllGoalsMet reports whether every goal of every section that ran was measured and met.
func (r *Report) AllGoalsMet() bool {
	for _, s := range r.Sections {
		for _, g := range s.Goals {
			if _, ok := goalStatus(s, g); !ok {
				return false
			}
		}
	}
	return true
}

func metWord(ok bool) string {
	if ok {
		return "MET"
	}
	return "MISSED"
}

func fmtRatio(r float64) string {
	if r >= 10 {
		return fmt.Sprintf("%.0f×", r)
	}
	return fmt.Sprintf("%.2f×", r)
}

// writeCPU writes the medians of the trials' CPU per message, when the section measured any:
// this process's (with the child programs it ran) and the server's, for publish and consume.
func writeCPU(b *strings.Builder, s *Section) {
	if !slices.ContainsFunc(s.Rows, func(r *Row) bool { return len(r.PublishCPU) > 0 }) {
		return
	}
	fmt.Fprintln(b, "   CPU per message, median µs: this process's (with nats bench when that is the contender) / the server's (-: not read, or it runs in this process):")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "     contender\tpublish\tconsume+ack\t")
	for _, row := range s.Rows {
		if len(row.PublishCPU) == 0 {
			continue
		}
		fmt.Fprintf(tw, "     %s\t%s\t%s\t\n", row.Name, fmtCPU(row.PublishCPU), fmtCPU(row.ConsumeCPU))
	}
	tw.Flush()
}

// fmtCPU is the medians of costs as "client / server", the server "-" where it was not read.
func fmtCPU(costs []CPUCost) string {
	client, server := make(Rate, 0, len(costs)), make(Rate, 0, len(costs))
	for _, c := range costs {
		client = append(client, c.Client)
		if !math.IsNaN(c.Server) {
			server = append(server, c.Server)
		}
	}
	if len(server) < len(costs) {
		return fmt.Sprintf("%.2f / -", client.Median())
	}
	return fmt.Sprintf("%.2f / %.2f", client.Median(), server.Median())
}
