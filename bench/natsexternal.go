package bench

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pulse-bus/pulse/transport"
	pulsejs "github.com/pulse-bus/pulse/transport/jetstream"
)

// Contender names of the external-server JetStream section.
const (
	NameNATSBenchAsync = "nats bench js pub async + consume"
	NameNATSBenchFast  = "nats bench js pub fast + consume"
)

// natsBenchAsyncBatch is `nats bench js pub async --batch`: asynchronous publishes per batch,
// the same window as the raw client's and Pulse's.
const natsBenchAsyncBatch = rawNATSMaxInFlight

func jetstreamExternalSection() (*Section, []*Contender) {
	sec := &Section{
		Name:  SectionJetStreamExternal,
		Title: "JetStream on a nats-server process, file store: publish n, then consume+ack the n (fresh stream and durable per trial); latency trials at a steady rate",
		Goals: []Goal{
			{Metric: MetricPublish, Versus: NameNATSBenchFast, MinRatio: 0.95},
			{Metric: MetricConsume, Versus: NameNATSBenchAsync, MinRatio: 1.0},
			{Metric: MetricP99, MaxLatency: 2 * time.Millisecond},
		},
	}
	return sec, []*Contender{
		{Name: NamePulseJetStream, Pulse: true,
			NewTrial:   asTrial(newPulseJetStreamTrial),
			NewLatency: asLatency(newPulseJetStreamTrial)},
		{Name: NameRawNATS,
			NewTrial:   asTrial(newRawNATSTrial),
			NewLatency: asLatency(newRawNATSTrial)},
		{Name: NameRawNATSPulsePull, NewTrial: asTrial(newRawNATSPulsePullTrial)},
		{Name: NameNATSBenchAsync, NewTrial: natsBenchTrial("async", "--batch", strconv.Itoa(natsBenchAsyncBatch))},
		{Name: NameNATSBenchFast, NewTrial: natsBenchTrial("fast")},
	}
}

// natsBenchTrial runs the NATS team's `nats bench` (natscli NATSCLIVersion) as a contender:
// `nats bench js pub <mode>` publishes the n messages of the run's size to a stream the bench
// creates with Pulse's limits, and `nats bench js consume` consumes and acks them with its
// durable consumer. Each phase's time is the one nats bench reports (its CSV's DurationSecs),
// which leaves out the process's start.
func natsBenchTrial(mode string, flags ...string) func(context.Context, *Env, string) (Trial, error) {
	return func(ctx context.Context, env *Env, id string) (Trial, error) {
		if env.Tools == nil {
			return nil, fmt.Errorf("%w: no tools to build natscli with", ErrUnavailable)
		}
		bin, err := env.Tools.NATSCLI(ctx)
		if err != nil {
			return nil, fmt.Errorf("%w: natscli %s cannot be built here: %v", ErrUnavailable, NATSCLIVersion, err)
		}
		nc, js, err := natsAdmin(env.NATSURL)
		if err != nil {
			return nil, err
		}
		t := &natsBenchCLI{env: env, bin: bin, mode: mode, flags: flags, name: "CLI_" + strings.ToUpper(id), subject: "cli." + id, js: js, close: nc.Close}
		_, err = js.CreateStream(ctx, benchStreamConfig(t.name, t.subject))
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("bench: create stream %s: %w", t.name, err)
		}
		return t, nil
	}
}

// benchStreamConfig is the stream of a contender that creates its own: the limits of the
// stream Pulse creates (its defaults: messages kept for transport.DefaultStreamMaxAge, a
// 2-minute duplicate window, batch publishing allowed), so that every contender asks the same
// work of the server and the comparison measures the clients.
func benchStreamConfig(name, subject string) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name: name, Subjects: []string{subject}, Storage: jetstream.FileStorage,
		MaxAge: transport.DefaultStreamMaxAge, Duplicates: pulsejs.DefaultDuplicateWindow,
		AllowDirect: true, AllowBatchPublish: true,
	}
}

type natsBenchCLI struct {
	env           *Env
	bin, mode     string
	flags         []string
	name, subject string
	js            jetstream.JetStream
	close         func()
	took          time.Duration
}

func (t *natsBenchCLI) Publish(ctx context.Context, lo, hi int) error {
	args := append([]string{"bench", "js", "pub", t.mode}, t.flags...)
	return t.run(ctx, hi-lo, append(args, t.subject)...)
}

func (t *natsBenchCLI) Consume(ctx context.Context, n int) error {
	if err := t.run(ctx, n, "bench", "js", "consume"); err != nil {
		return err
	}
	return natsAllAcked(ctx, t.js, t.name)
}

// Took is the duration nats bench reported for the last phase.
func (t *natsBenchCLI) Took() time.Duration { return t.took }

// run runs nats with args for n messages and reads the phase's duration from its CSV.
func (t *natsBenchCLI) run(ctx context.Context, n int, args ...string) error {
	dir, err := os.MkdirTemp("", "pulsebench-natscli-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	report := filepath.Join(dir, "bench.csv")
	args = append([]string{"-s", t.env.NATSURL}, args...)
	args = append(args, "--stream", t.name, "--msgs", strconv.Itoa(n), "--size", strconv.Itoa(t.env.Work.Size),
		"--no-progress", "--csv", report)
	out, err := exec.CommandContext(ctx, t.bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("bench: nats %s: %w: %s", strings.Join(args, " "), err, lastLine(out))
	}
	t.took, err = csvDuration(report)
	return err
}

// csvDuration reads the DurationSecs of nats bench's CSV report (the longest, with several
// clients).
func csvDuration(path string) (time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("bench: nats bench report: %w", err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil || len(rows) < 2 {
		return 0, fmt.Errorf("bench: nats bench report %s unreadable (%v)", path, err)
	}
	col := -1
	for i, h := range rows[0] {
		if h == "DurationSecs" {
			col = i
		}
	}
	if col < 0 {
		return 0, errors.New("bench: nats bench report has no DurationSecs column")
	}
	var longest time.Duration
	for _, r := range rows[1:] {
		secs, err := strconv.ParseFloat(r[col], 64)
		if err != nil {
			return 0, fmt.Errorf("bench: nats bench report: DurationSecs %q: %w", r[col], err)
		}
		longest = max(longest, time.Duration(secs*float64(time.Second)))
	}
	return longest, nil
}

func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

func (t *natsBenchCLI) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := t.js.DeleteStream(ctx, t.name)
	t.close()
	return err
}
