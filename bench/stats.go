package bench

import (
	"fmt"
	"slices"
	"time"
)

// Rate is a set of throughput measurements (messages per second), one per repetition.
type Rate []float64

// RateOf is n messages over d, in messages per second.
func RateOf(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// Median is the middle measurement (the mean of the two middle ones for an even count), or 0.
func (r Rate) Median() float64 {
	if len(r) == 0 {
		return 0
	}
	s := slices.Clone([]float64(r))
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// Spread is (max − min) / median: how far apart the repetitions were, as a fraction.
func (r Rate) Spread() float64 {
	med := r.Median()
	if med == 0 {
		return 0
	}
	return (slices.Max(r) - slices.Min(r)) / med
}

// String formats the median and the spread, e.g. "291,400 ±3%".
func (r Rate) String() string {
	if len(r) == 0 {
		return "-"
	}
	if len(r) == 1 {
		return thousands(r.Median())
	}
	return fmt.Sprintf("%s ±%.0f%%", thousands(r.Median()), 100*r.Spread()/2)
}

// Ratio is the ratio of the medians of a and b, or 0 when either is missing.
func Ratio(a, b Rate) float64 {
	if a.Median() == 0 || b.Median() == 0 {
		return 0
	}
	return a.Median() / b.Median()
}

// Latencies are publish→handle latencies.
type Latencies []time.Duration

// Percentile returns the p-th percentile (0 < p ≤ 100, nearest rank), or 0 when empty.
func (l Latencies) Percentile(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone([]time.Duration(l))
	slices.Sort(s)
	rank := int(p/100*float64(len(s))+0.5) - 1
	rank = max(0, min(rank, len(s)-1))
	return s[rank]
}

// thousands formats v rounded to an integer with thousands separators.
func thousands(v float64) string {
	n := int64(v + 0.5)
	s := fmt.Sprint(n)
	if n < 0 {
		return s
	}
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// fmtDur formats a latency with a unit that keeps three significant digits.
func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
}
