// Package deploy holds no code. Beside it is the operations pack of `pulse run`:
// prometheus/alerts.yml (Prometheus alerting rules) with its unit tests
// prometheus/alerts_test.yml, and grafana/pulse.json (a Grafana dashboard). The package's
// tests check the rules with promtool and every metric name the rules and the dashboard
// query against a real scrape of `pulse run` (README.md, "Operations pack").
package deploy
