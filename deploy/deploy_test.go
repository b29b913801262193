package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"
)

// The operations pack, relative to this package.
const (
	alertsFile     = "prometheus/alerts.yml"
	alertTestsFile = "prometheus/alerts_test.yml"
	dashboardFile  = "grafana/pulse.json"
)

// Bounds of the waits in these tests.
const (
	startTimeout = 30 * time.Second
	waitTimeout  = 15 * time.Second
	exitTimeout  = 30 * time.Second
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// promtool returns the path of promtool, failing the test — not skipping it — when it is not
// installed: the alert rules are tested by no other means.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	require.NoError(t, err, "promtool is needed to test the operations pack (deploy/): install it with `apt-get install prometheus` "+
		"(Debian; .ci/run does) or from a Prometheus release, and put it on PATH")
	return p
}

// runPromtool runs promtool with args and fails the test with its output unless it exits 0.
func runPromtool(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(promtool(t), args...).CombinedOutput()
	require.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
	return string(out)
}

// TestAlertRules proves alerts.yml is a valid rules file and passes its unit tests, in which
// every alert is shown both firing and not firing.
func TestAlertRules(t *testing.T) {
	out := runPromtool(t, "check", "rules", alertsFile)
	require.Contains(t, out, "SUCCESS")
	out = runPromtool(t, "test", "rules", alertTestsFile)
	require.Contains(t, out, "SUCCESS")

	// Every alert has tests, and at least one of them expects no alert.
	tests := readAlertTests(t)
	for _, r := range readRules(t) {
		if r.Alert == "" {
			continue
		}
		firing, quiet := 0, 0
		for _, tc := range tests.Tests {
			for _, a := range tc.AlertRuleTest {
				if a.AlertName != r.Alert {
					continue
				}
				if len(a.ExpAlerts) > 0 {
					firing++
				} else {
					quiet++
				}
			}
		}
		require.Positive(t, firing, "%s: no test expects it to fire", r.Alert)
		require.Positive(t, quiet, "%s: no test expects it not to fire", r.Alert)
	}
}

// TestDashboard proves the dashboard is what the README says it is: schema 39 or later, its
// data source the variable ${datasource} on every panel and query, unique panel ids, and
// every query parsed by promtool (as a recording rule, Grafana's variables given values).
func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	require.GreaterOrEqual(t, d.SchemaVersion, 39)
	require.NotEmpty(t, d.UID)
	var dsVar bool
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Name == "datasource" {
			require.Equal(t, "prometheus", v.queryString())
			dsVar = true
		}
		if v.Type == "query" {
			require.Equal(t, "${datasource}", v.Datasource.UID, "variable %s", v.Name)
		}
	}
	require.True(t, dsVar, "a Prometheus data source variable named datasource")

	ids := map[int]string{}
	var rules []map[string]string
	for _, p := range d.allPanels() {
		prev, dup := ids[p.ID]
		require.False(t, dup, "panel id %d of %q is %q's too", p.ID, p.Title, prev)
		ids[p.ID] = p.Title
		if p.Type == "row" || p.Type == "text" {
			continue
		}
		require.Equal(t, "${datasource}", p.Datasource.UID, "panel %q", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for _, q := range p.Targets {
			require.Equal(t, "${datasource}", q.Datasource.UID, "panel %q query %s", p.Title, q.RefID)
			rules = append(rules, map[string]string{
				"record": fmt.Sprintf("dashboard:panel_%d_%s", p.ID, q.RefID),
				"expr":   grafanaVariables.Replace(q.Expr),
			})
		}
	}
	body, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	require.NoError(t, os.WriteFile(file, body, 0o644))
	runPromtool(t, "check", "rules", file)
}

// grafanaVariables gives the dashboard's variables values PromQL accepts, for promtool.
var grafanaVariables = strings.NewReplacer(
	"$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h",
	"${job}", ".*", "$job", ".*", "${instance}", ".*", "$instance", ".*", "${provider}", ".*", "$provider", ".*",
)

// TestMetricNamesInScrape proves every metric name an alert or the dashboard queries is
// exported by the real service: it runs `pulse run` on the embedded JetStream server, makes
// every metric appear (feedback events and a rate change, an evicted coordinator, a dead
// letter, dead letters that cannot be written and their redeliveries), scrapes /metrics and
// looks each name up (a histogram's _bucket, _sum and _count are its series).
func TestMetricNamesInScrape(t *testing.T) {
	uses := packUses(t)
	require.NotEmpty(t, uses)

	s := startPulse(t)
	s.exercise(t)

	var missing []string
	poll(waitTimeout, func() bool {
		missing = missingNames(uses, seriesNames(s.families(t)))
		return len(missing) == 0
	})
	require.Empty(t, missing, "metric names the operations pack uses that `pulse run` does not export")
	require.Equal(t, 0, s.stop(t), "pulse run exits 0 on SIGTERM")
}

// use is a metric name and where the operations pack uses it.
type use struct{ name, where string }

// packUses lists the metric names of every alert expression and every dashboard query and
// variable, but for those a recording rule of alerts.yml makes (the service does not).
func packUses(t *testing.T) []use {
	t.Helper()
	var uses []use
	add := func(where string, names []string) {
		for _, n := range names {
			uses = append(uses, use{n, where})
		}
	}
	rules := readRules(t)
	recorded := map[string]bool{}
	for _, r := range rules {
		if r.Record != "" {
			recorded[r.Record] = true
			add(alertsFile+": rule "+r.Record, metricNames(r.Expr))
		} else {
			add(alertsFile+": alert "+r.Alert, metricNames(r.Expr))
		}
	}
	d := readDashboard(t)
	for _, p := range d.allPanels() {
		for _, q := range p.Targets {
			add(fmt.Sprintf("%s: panel %q, query %s", dashboardFile, p.Title, q.RefID), metricNames(q.Expr))
		}
	}
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			add(fmt.Sprintf("%s: variable %s", dashboardFile, v.Name), variableMetricNames(v.queryString()))
		}
	}
	return slices.DeleteFunc(uses, func(u use) bool { return recorded[u.name] })
}

// missingNames returns, sorted, "name (where)" for every use whose name is not in exported.
func missingNames(uses []use, exported map[string]bool) []string {
	var out []string
	for _, u := range uses {
		if !exported[u.name] {
			out = append(out, u.name+" ("+u.where+")")
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// --- the files -----------------------------------------------------------------------------

type rule struct {
	Alert  string `yaml:"alert"`
	Record string `yaml:"record"`
	Expr   string `yaml:"expr"`
}

func readRules(t *testing.T) []rule {
	t.Helper()
	var f struct {
		Groups []struct {
			Rules []rule `yaml:"rules"`
		} `yaml:"groups"`
	}
	readYAML(t, alertsFile, &f)
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	require.NotEmpty(t, out, "%s has rules", alertsFile)
	return out
}

type alertTests struct {
	Tests []struct {
		AlertRuleTest []struct {
			AlertName string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

func readAlertTests(t *testing.T) alertTests {
	t.Helper()
	var f alertTests
	readYAML(t, alertTestsFile, &f)
	return f
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	body, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(body, v), path)
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int           `json:"id"`
	Type       string        `json:"type"`
	Title      string        `json:"title"`
	Datasource datasourceRef `json:"datasource"`
	Targets    []struct {
		RefID      string        `json:"refId"`
		Expr       string        `json:"expr"`
		Datasource datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

type variable struct {
	Type       string        `json:"type"`
	Name       string        `json:"name"`
	Datasource datasourceRef `json:"datasource"`
	Query      any           `json:"query"` // a string, or {"query": "…"}
}

// queryString is the variable's query text.
func (v variable) queryString() string {
	switch q := v.Query.(type) {
	case string:
		return q
	case map[string]any:
		s, _ := q["query"].(string)
		return s
	}
	return ""
}

type dashboard struct {
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	body, err := os.ReadFile(dashboardFile)
	require.NoError(t, err)
	var d dashboard
	require.NoError(t, json.Unmarshal(body, &d), dashboardFile)
	return d
}

// allPanels is every panel, those inside collapsed rows included.
func (d dashboard) allPanels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}
