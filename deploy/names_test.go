package deploy_test

import (
	"regexp"
	"strings"
	"testing"
	"unicode"

	"github.com/stretchr/testify/require"
)

// metricNames returns the metric names a PromQL expression selects, each once, in order of
// first use.
//
// It is a tokeniser, not the PromQL parser: github.com/prometheus/prometheus/promql/parser
// would bring the Prometheus server's module graph into the go.mod of a library that
// pipelines link, for one test. (That the expressions parse is promtool's to say:
// TestAlertRules and TestDashboardQueriesParse.) It follows PromQL's lexical rules far enough
// for the queries of the operations pack: strings, comments, label matchers {…}, ranges and
// subqueries […], Grafana variables ($x, ${x}), numbers and durations are skipped; an
// identifier followed by "(" is a function or an aggregation; the label lists after by,
// without, on, ignoring, group_left and group_right are skipped; keywords (in any case) are
// not names. It does not see a name given only as {__name__="…"}; TestMetricNames pins what
// it does.
func metricNames(expr string) []string {
	var names []string
	seen := map[string]bool{}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			i = skipString(expr, i)
		case c == '#':
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c == '{':
			i = skipGroup(expr, i, '{', '}')
		case c == '[':
			i = skipGroup(expr, i, '[', ']')
		case c == '$':
			i++
			if i < len(expr) && expr[i] == '{' {
				i = skipGroup(expr, i, '{', '}')
			} else {
				i = skipIdent(expr, i)
			}
		case isDigit(c) || (c == '.' && i+1 < len(expr) && isDigit(expr[i+1])):
			for i < len(expr) && (isIdentChar(expr[i]) || expr[i] == '.') {
				i++
			}
		case isIdentStart(c):
			end := skipIdent(expr, i)
			word := expr[i:end]
			next := skipSpace(expr, end)
			i = end
			switch lower := strings.ToLower(word); {
			case labelListKeywords[lower]:
				if next < len(expr) && expr[next] == '(' {
					i = skipGroup(expr, next, '(', ')')
				}
			case promqlKeywords[lower]:
			case next < len(expr) && expr[next] == '(': // a function
			default:
				if !seen[word] {
					seen[word] = true
					names = append(names, word)
				}
			}
		default:
			i++
		}
	}
	return names
}

// labelListKeywords are followed by a parenthesised list of label names.
var labelListKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// promqlKeywords are PromQL's other keywords: operators, modifiers, aggregations (which may be
// followed by "by (…)" before their "("), and the number words.
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "atan2": true, "bool": true, "offset": true,
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true,
	"stdvar": true, "count": true, "count_values": true, "bottomk": true, "topk": true,
	"quantile": true, "limitk": true, "limit_ratio": true, "inf": true, "nan": true,
}

// skipString returns the index just past the string literal that starts at i.
func skipString(s string, i int) int {
	quote := s[i]
	for i++; i < len(s); i++ {
		switch {
		case s[i] == '\\' && quote != '`':
			i++
		case s[i] == quote:
			return i + 1
		}
	}
	return len(s)
}

// skipGroup returns the index just past the group that opens at i, nested groups and strings
// included.
func skipGroup(s string, i int, open, closing byte) int {
	depth := 0
	for i < len(s) {
		switch c := s[i]; {
		case c == '"' || c == '\'' || c == '`':
			i = skipString(s, i)
			continue
		case c == open:
			depth++
		case c == closing:
			depth--
			if depth == 0 {
				return i + 1
			}
		}
		i++
	}
	return len(s)
}

func skipIdent(s string, i int) int {
	for i < len(s) && isIdentChar(s[i]) {
		i++
	}
	return i
}

func skipSpace(s string, i int) int {
	for i < len(s) && unicode.IsSpace(rune(s[i])) {
		i++
	}
	return i
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}
func isIdentChar(c byte) bool { return isIdentStart(c) || isDigit(c) }

// labelValues matches Grafana's label_values(selector, label) variable query.
var labelValues = regexp.MustCompile(`(?s)^\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$`)

// variableMetricNames returns the metric names of a Grafana Prometheus variable query:
// label_values(selector, label), query_result(expr), or an expression. label_values(label)
// and metrics(regex) name none.
func variableMetricNames(query string) []string {
	q := strings.TrimSpace(query)
	switch {
	case labelValues.MatchString(q):
		return metricNames(labelValues.FindStringSubmatch(q)[1])
	case strings.HasPrefix(q, "label_values("), strings.HasPrefix(q, "metrics("):
		return nil
	case strings.HasPrefix(q, "query_result(") && strings.HasSuffix(q, ")"):
		return metricNames(q[len("query_result(") : len(q)-1])
	}
	return metricNames(q)
}

// seriesNames are the series names a Prometheus text exposition makes queryable: a
// histogram's _bucket, _sum and _count (not its family name), a summary's family name
// (its quantiles), _sum and _count, and every other family's name.
func seriesNames(families map[string]string) map[string]bool {
	out := map[string]bool{}
	for name, typ := range families {
		switch typ {
		case "histogram":
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case "summary":
			out[name], out[name+"_sum"], out[name+"_count"] = true, true, true
		default:
			out[name] = true
		}
	}
	return out
}

// TestMetricNames pins what metricNames finds, and what it deliberately does not.
func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		name, expr string
		want       []string
	}{
		{"a bare name", `pulse_ready`, []string{"pulse_ready"}},
		{"matchers and a range", `increase(pulse_dlq_total{stream="a", reason=~"b|c"}[15m])`, []string{"pulse_dlq_total"}},
		{"aggregation, by before", `sum by (job, instance, stream) (rate(pulse_consume_total[5m])) > 0`, []string{"pulse_consume_total"}},
		{"aggregation, by after", `sum(rate(a_total[5m])) by (le) / max without (instance) (b)`, []string{"a_total", "b"}},
		{"keywords in any case", `SUM BY (le) (x) AND ON (job) y OR Z UNLESS w`, []string{"x", "y", "Z", "w"}},
		{"vector matching", `a * on (job, instance) group_left (version) b + ignoring (x) group_right c`, []string{"a", "b", "c"}},
		{"group_left without labels", `a * on (job) group_left b`, []string{"a", "b"}},
		{"offset, time(), comparison", `pulse_ready offset 15m or time() - process_start_time_seconds < 900`, []string{"pulse_ready", "process_start_time_seconds"}},
		{"bool and numbers", `m == bool 1e3 + 0x1F * .5 - Inf + NaN`, []string{"m"}},
		{"histogram quantile", `histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval])))`, []string{"h_bucket"}},
		{"Grafana variables", `rate(c_total{job=~"$job", instance=~"${instance}"}[$__rate_interval]) * $scale`, []string{"c_total"}},
		{"subquery", `max_over_time(rate(c_total[1m])[1h:5m])`, []string{"c_total"}},
		{"strings are not names", `count_values("not_a_metric", m) + label_replace(n, "dst", "$1", "src", "(.*)")`, []string{"m", "n"}},
		{"escaped quote", `m{a="x\"} y"} + n`, []string{"m", "n"}},
		{"a comment", "m # not_a_metric\n+ n", []string{"m", "n"}},
		{"repeated once", `a / a + b`, []string{"a", "b"}},
		{"recording rule names have colons", `job:pulse_dlq:rate5m`, []string{"job:pulse_dlq:rate5m"}},
		{"vector(0) names nothing", `vector(0)`, nil},
		{"__name__ alone is not seen", `{__name__="hidden"}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, metricNames(tc.expr))
		})
	}
}

// TestVariableMetricNames pins the Grafana variable queries variableMetricNames reads.
func TestVariableMetricNames(t *testing.T) {
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{`label_values(pulse_ready, job)`, []string{"pulse_ready"}},
		{`label_values(pulse_ready{job=~"$job"}, instance)`, []string{"pulse_ready"}},
		{`label_values(job)`, nil},
		{`metrics(pulse_.*)`, nil},
		{`query_result(topk(5, sum by (stream) (rate(pulse_consume_total[5m]))))`, []string{"pulse_consume_total"}},
		{`up{job="pulse"}`, []string{"up"}},
	} {
		t.Run(tc.query, func(t *testing.T) {
			require.Equal(t, tc.want, variableMetricNames(tc.query))
		})
	}
}

// TestMissingNames proves the scrape check catches a wrong name: a misspelling, a
// histogram's family name (no series has it), a name only a Prometheus server makes (up).
func TestMissingNames(t *testing.T) {
	exported := seriesNames(map[string]string{
		"pulse_dlq_total":          "counter",
		"pulse_publish_latency_ms": "histogram",
		"pulse_ready":              "gauge",
		"rpc_ms":                   "summary",
	})
	for _, tc := range []struct {
		name string
		uses []use
		want []string
	}{
		{"all exported", []use{{"pulse_dlq_total", "a"}, {"pulse_publish_latency_ms_bucket", "b"}, {"pulse_publish_latency_ms_sum", "b"},
			{"pulse_publish_latency_ms_count", "b"}, {"pulse_ready", "c"}, {"rpc_ms", "d"}, {"rpc_ms_count", "d"}}, nil},
		{"misspelt", []use{{"pulse_dlq", "alert X"}, {"pulse_ready", "alert Y"}}, []string{"pulse_dlq (alert X)"}},
		{"a histogram's family name", []use{{"pulse_publish_latency_ms", "panel P"}}, []string{"pulse_publish_latency_ms (panel P)"}},
		{"a server's own series", []use{{"up", "alert Z"}}, []string{"up (alert Z)"}},
		{"sorted, each once", []use{{"b", "w"}, {"a", "w"}, {"b", "w"}}, []string{"a (w)", "b (w)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, missingNames(tc.uses, exported))
		})
	}
}
