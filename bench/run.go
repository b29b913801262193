package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/internal/redistest"
)

// Section names, as accepted by Options.Only.
const (
	SectionInmem        = "inmem"
	SectionRedis        = "redis"
	SectionRedisCluster = "redis-cluster"
	SectionJetStream    = "jetstream"
	// SectionJetStreamExternal is JetStream on a nats-server process, beside `nats bench`.
	SectionJetStreamExternal = "jetstream-external"
)

// Sections lists every section in the order they run.
var Sections = []string{SectionInmem, SectionRedis, SectionRedisCluster, SectionJetStream, SectionJetStreamExternal}

// Defaults of Options.
const (
	DefaultReps        = 9
	DefaultWarmups     = 1
	DefaultWarmN       = 10_000
	DefaultBatch       = 256
	DefaultInmemN      = 300_000
	DefaultBrokerN     = 100_000
	DefaultLatencyRate = 1000
	DefaultLatencyN    = 3000
	DefaultLatencyWarm = 300
	// phaseTimeoutBase plus phaseTimeoutPerMsg per message bounds one publish or consume phase.
	phaseTimeoutBase   = 30 * time.Second
	phaseTimeoutPerMsg = time.Millisecond
)

// Options select and size a run. The zero value runs everything with the defaults.
type Options struct {
	// Only lists the sections to run (SectionInmem, …); empty means all.
	Only []string
	// N is the message count of every trial; 0 means DefaultInmemN for inmem and
	// DefaultBrokerN for the brokers.
	N int
	// Reps is how many measured repetitions each contender runs (median reported).
	Reps int
	// Warmups is how many unmeasured repetitions of WarmN messages run first (-1: none).
	Warmups int
	WarmN   int
	// Batch is the publish batch and fetch size of every batching contender.
	Batch int
	// Publishers is how many goroutines publish at once in the broker trials, each a
	// contiguous share of the n messages, the same for every contender (default 1).
	Publishers int
	// Track is the schema track Pulse writes and the raw contenders' bytes are in.
	Track envelope.Track
	// Size is the target envelope size in bytes.
	Size int
	// LatencyRate, LatencyN and LatencyWarm shape the latency trials (JetStream).
	LatencyRate float64
	LatencyN    int
	LatencyWarm int
	// Match, if set, selects contenders by name.
	Match *regexp.Regexp
	// ProfileDir, if set, receives a CPU profile of every measured phase of every contender
	// (<contender>-<phase>-r<rep>.pprof), for finding where the time goes.
	ProfileDir string
	// Log receives progress; nil discards it.
	Log *slog.Logger
}

func (o Options) withDefaults() Options {
	if len(o.Only) == 0 {
		o.Only = Sections
	}
	if o.Reps <= 0 {
		o.Reps = DefaultReps
	}
	switch {
	case o.Warmups == 0:
		o.Warmups = DefaultWarmups
	case o.Warmups < 0:
		o.Warmups = 0
	}
	if o.WarmN <= 0 {
		o.WarmN = DefaultWarmN
	}
	if o.Batch <= 0 {
		o.Batch = DefaultBatch
	}
	if o.Publishers <= 0 {
		o.Publishers = 1
	}
	if o.Track == "" {
		o.Track = envelope.DefaultTrack
	}
	if o.Size <= 0 {
		o.Size = DefaultMessageSize
	}
	if o.LatencyRate <= 0 {
		o.LatencyRate = DefaultLatencyRate
	}
	if o.LatencyN <= 0 {
		o.LatencyN = DefaultLatencyN
	}
	if o.LatencyWarm <= 0 {
		o.LatencyWarm = DefaultLatencyWarm
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

func (o Options) validate() error {
	for _, s := range o.Only {
		if !slices.Contains(Sections, s) {
			return fmt.Errorf("bench: unknown section %q (accepted: %s)", s, strings.Join(Sections, ", "))
		}
	}
	if o.N < 0 {
		return fmt.Errorf("bench: message count %d (accepted: a positive integer, or 0 for the defaults)", o.N)
	}
	if o.N >= maxMessages || o.LatencyN+o.LatencyWarm >= maxMessages {
		return fmt.Errorf("bench: message count %d (accepted: at most %d, the width of the sequence numbers)", max(o.N, o.LatencyN+o.LatencyWarm), maxMessages-1)
	}
	return nil
}

// Metric names a measured quantity of a Row.
type Metric string

// The metrics.
const (
	MetricE2E     Metric = "publish→handle→ack"
	MetricPublish Metric = "publish"
	MetricConsume Metric = "consume+ack"
	MetricP99     Metric = "p99"
)

// Row is one contender's results in a section.
type Row struct {
	Name  string
	Pulse bool
	// Err is why the contender has no (or incomplete) results.
	Err string
	// E2E, Publish and Consume are msgs/s, one per measured repetition.
	E2E, Publish, Consume Rate
	// Lat are the latencies of the latency trial.
	Lat Latencies
	// Dups counts duplicate deliveries seen (at-least-once redeliveries).
	Dups int64
	// PublishCPU and ConsumeCPU are the phases' CPU per message, one per measured repetition.
	PublishCPU, ConsumeCPU []CPUCost
}

func (r *Row) rate(m Metric) Rate {
	switch m {
	case MetricE2E:
		return r.E2E
	case MetricPublish:
		return r.Publish
	case MetricConsume:
		return r.Consume
	}
	return nil
}

// Goal is a target from the issues: Pulse's Metric at least MinRatio × Versus's, or (for
// MetricP99) Pulse's p99 latency under MaxLatency.
type Goal struct {
	Metric     Metric
	Versus     string
	MinRatio   float64
	MaxLatency time.Duration
}

// Section is one group of contenders sharing a server and a workload.
type Section struct {
	Name   string
	Title  string
	Server string
	N      int
	// Latency is set when the section ran latency trials.
	LatencyRate float64
	Rows        []*Row
	Goals       []Goal
	Err         string
}

// Row returns the row of the named contender, or nil.
func (s *Section) Row(name string) *Row {
	for _, r := range s.Rows {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// Pulse returns Pulse's row, or nil.
func (s *Section) Pulse() *Row {
	for _, r := range s.Rows {
		if r.Pulse {
			return r
		}
	}
	return nil
}

// Report is the result of one run.
type Report struct {
	Start    time.Time
	Elapsed  time.Duration
	Go       string
	Platform string
	CPUs     int
	MaxProcs int
	MsgSize  int
	// LoadStart and LoadEnd are the 1-minute load averages when the run started and ended
	// ("" where unknown): a busy machine makes the figures noisy.
	LoadStart, LoadEnd string
	Opts               Options
	Sections           []*Section
}

// Run measures the selected sections, one after another, and returns the report. A contender
// that fails is reported with its error and the run goes on; Run fails only on bad options,
// a server that will not start, or ctx.
func Run(ctx context.Context, opts Options) (*Report, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	work, err := NewWorkload(opts.Track, opts.Size)
	if err != nil {
		return nil, err
	}
	rep := &Report{
		Start: time.Now(), Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH,
		CPUs: runtime.NumCPU(), MaxProcs: runtime.GOMAXPROCS(0), MsgSize: work.Size, Opts: opts,
		LoadStart: loadAverage(),
	}
	tools := &Tools{}
	defer tools.Close()
	for _, name := range Sections {
		if !slices.Contains(opts.Only, name) {
			continue
		}
		env := &Env{Work: work, Batch: opts.Batch, Log: opts.Log, Tools: tools}
		sec, err := runSection(ctx, name, env, opts)
		if err != nil {
			return nil, err
		}
		rep.Sections = append(rep.Sections, sec)
	}
	rep.Elapsed = time.Since(rep.Start)
	rep.LoadEnd = loadAverage()
	return rep, nil
}

// loadAverage is the 1-minute load average from /proc/loadavg, or "" where there is none.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return ""
}

func runSection(ctx context.Context, name string, env *Env, opts Options) (*Section, error) {
	var (
		sec  *Section
		cs   []*Contender
		stop func()
	)
	switch name {
	case SectionInmem:
		sec, cs = inmemSection()
		sec.N = pick(opts.N, DefaultInmemN)
	case SectionRedis:
		srv, err := redistest.Start()
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		stop = func() { srv.Close() }
		env.RedisAddr = srv.Addr()
		version, _ := srv.Version() // only shown in the report
		sec, cs = redisSection()
		sec.Server = fmt.Sprintf("redis-server %s, own process on %s, no persistence", version, srv.Addr())
		sec.N = pick(opts.N, DefaultBrokerN)
	case SectionRedisCluster:
		rc, err := StartRedisCluster()
		if err != nil {
			return nil, err
		}
		stop = func() { rc.Stop() }
		env.RedisCluster = rc
		sec, cs = redisClusterSection()
		sec.Server = fmt.Sprintf("redis-server %s, %d masters in own processes, no persistence, seed %s", rc.Version, len(rc.Masters), rc.Masters[0])
		sec.N = pick(opts.N, DefaultBrokerN)
	case SectionJetStream:
		srv, err := StartNATS(ctx)
		if err != nil {
			return nil, err
		}
		stop = func() { srv.Stop() }
		env.NATSURL = srv.URL
		sec, cs = jetstreamSection()
		sec.Server = fmt.Sprintf("embedded nats-server %s, file store, %s", srv.Version, srv.URL)
		sec.N = pick(opts.N, DefaultBrokerN)
		sec.LatencyRate = opts.LatencyRate
	case SectionJetStreamExternal:
		srv, err := StartNATSProcess(ctx, env.Tools)
		if err != nil {
			return nil, err
		}
		stop = func() { srv.Stop() }
		env.NATSURL = srv.URL
		env.ServerPIDs = []int{srv.PID()}
		sec, cs = jetstreamExternalSection()
		sec.Server = fmt.Sprintf("nats-server %s process (built from the module graph), file store, %s; nats bench from natscli %s", srv.Version, srv.URL, NATSCLIVersion)
		sec.N = pick(opts.N, DefaultBrokerN)
		sec.LatencyRate = opts.LatencyRate
	}
	if stop != nil {
		defer stop()
	}
	if opts.Match != nil {
		cs = slices.DeleteFunc(cs, func(c *Contender) bool { return !opts.Match.MatchString(c.Name) })
	}
	for _, c := range cs {
		sec.Rows = append(sec.Rows, &Row{Name: c.Name, Pulse: c.Pulse})
	}
	log := env.log().With("section", name)
	log.Info("section start", "n", sec.N, "contenders", len(cs), "server", sec.Server)

	// Encode the byte-sending contenders' messages once, before anything is timed.
	if _, err := env.Bodies(max(sec.N, opts.LatencyWarm+opts.LatencyN)); err != nil {
		return nil, err
	}
	warmN := min(opts.WarmN, sec.N)
	for rep := -opts.Warmups; rep < opts.Reps; rep++ {
		n := sec.N
		if rep < 0 {
			n = warmN
		}
		// Rotate the order each repetition so no contender always runs first (or last) on a
		// machine whose load drifts.
		for i := range cs {
			ci := (i + max(rep, 0)) % len(cs)
			c, row := cs[ci], sec.Rows[ci]
			if row.Err != "" {
				continue
			}
			id := fmt.Sprintf("%s%d%s", shortName(c.Name), rep+opts.Warmups, name[:1])
			prof := phaseProfiler{dir: opts.ProfileDir, name: shortName(c.Name), rep: rep + 1}
			if rep < 0 {
				prof.dir = ""
			}
			if err := runOne(ctx, env, c, row, id, n, rep >= 0, opts.Publishers, prof, log); err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				row.Err = err.Error()
				log.Warn("contender failed", "contender", c.Name, "err", err)
			}
		}
	}
	if sec.LatencyRate > 0 {
		for i, c := range cs {
			row := sec.Rows[i]
			if c.NewLatency == nil || (row.Err != "" && len(row.Publish) == 0) {
				continue // not taking part, or could not run at all
			}
			if err := runLatency(ctx, env, c, row, fmt.Sprintf("%slat", shortName(c.Name)), opts, log); err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				if row.Err == "" {
					row.Err = "latency: " + err.Error()
				}
				log.Warn("latency trial failed", "contender", c.Name, "err", err)
			}
		}
	}
	return sec, nil
}

func pick(n, def int) int {
	if n > 0 {
		return n
	}
	return def
}

// shortName turns a contender name into a token safe in stream, key and consumer names.
func shortName(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		}
	}
	return b.String()
}

func phaseCtx(ctx context.Context, n int) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, phaseTimeoutBase+time.Duration(n)*phaseTimeoutPerMsg)
}

// runOne runs one repetition of c and, if record, appends its measurements to row.
func runOne(ctx context.Context, env *Env, c *Contender, row *Row, id string, n int, record bool, publishers int, prof phaseProfiler, log *slog.Logger) error {
	runtime.GC() // start every trial from the same heap state
	switch {
	case c.NewPipe != nil:
		return runPipe(ctx, env, c, row, id, n, record, prof, log)
	case c.NewTrial != nil:
		return runTrial(ctx, env, c, row, id, n, record, publishers, prof, log)
	}
	return nil
}

func runPipe(ctx context.Context, env *Env, c *Contender, row *Row, id string, n int, record bool, prof phaseProfiler, log *slog.Logger) (err error) {
	p, err := c.NewPipe(ctx, env, id)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, p.Close()) }()
	if err := prepare(ctx, p, n); err != nil {
		return err
	}
	pctx, cancel := phaseCtx(ctx, n)
	defer cancel()
	stopProf := prof.start("e2e")
	start := time.Now()
	err = p.Run(pctx, n)
	d := time.Since(start)
	stopProf()
	if err != nil {
		return err
	}
	log.Info("trial", "contender", c.Name, "id", id, "n", n, "e2e_msgs_per_s", int(RateOf(n, d)), "measured", record)
	if record {
		row.E2E = append(row.E2E, RateOf(n, d))
		row.Dups += duplicatesOf(p)
	}
	return nil
}

func runTrial(ctx context.Context, env *Env, c *Contender, row *Row, id string, n int, record bool, publishers int, prof phaseProfiler, log *slog.Logger) (err error) {
	t, err := c.NewTrial(ctx, env, id)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, t.Close()) }()
	if err := prepare(ctx, t, n); err != nil {
		return err
	}
	pctx, cancel := phaseCtx(ctx, n)
	defer cancel()
	stopProf := prof.start("publish")
	cpu0 := sampleCPU(env.ServerPIDs)
	start := time.Now()
	err = publishAll(pctx, t, n, publishers)
	pub := selfTimed(t, time.Since(start))
	pubCPU := sampleCPU(env.ServerPIDs).costSince(cpu0, n)
	stopProf()
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	cctx, cancel2 := phaseCtx(ctx, n)
	defer cancel2()
	stopProf = prof.start("consume")
	cpu0 = sampleCPU(env.ServerPIDs)
	start = time.Now()
	err = t.Consume(cctx, n)
	con := selfTimed(t, consumeTime(t, start, time.Now()))
	conCPU := sampleCPU(env.ServerPIDs).costSince(cpu0, n)
	stopProf()
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	log.Info("trial", "contender", c.Name, "id", id, "n", n,
		"publish_msgs_per_s", int(RateOf(n, pub)), "consume_msgs_per_s", int(RateOf(n, con)), "measured", record)
	if record {
		row.Publish = append(row.Publish, RateOf(n, pub))
		row.Consume = append(row.Consume, RateOf(n, con))
		row.PublishCPU = append(row.PublishCPU, pubCPU)
		row.ConsumeCPU = append(row.ConsumeCPU, conCPU)
		row.Dups += duplicatesOf(t)
	}
	return nil
}

// consumeTime is how long a consume phase took: from the first message handled (when the
// trial can tell) until it returned, every message handled and acked. The consumer's set-up
// before its first message (creating the group, the first fetch) is left out, as nats bench
// leaves it out of its own figure: on a file store the durable's creation alone took 3 to
// 56 ms here, 0.5–8% of a 100k-message phase, and it made contenders timed from the call look
// slower than one timed by its first message. The end is stricter than nats bench's (its last
// message received): every contender here also waits until the broker has every ack.
func consumeTime(t Trial, start, end time.Time) time.Duration {
	if ft, ok := t.(interface{ FirstHandled() time.Time }); ok {
		if first := ft.FirstHandled(); first.After(start) {
			start = first
		}
	}
	return end.Sub(start)
}

// selfTimed is the duration a trial measured of its last phase itself (a contender that is
// another program, which leaves out its start), or else measured.
func selfTimed(t Trial, measured time.Duration) time.Duration {
	if st, ok := t.(interface{ Took() time.Duration }); ok && st.Took() > 0 {
		return st.Took()
	}
	return measured
}

// publishAll publishes [0, n) with t from the given number of goroutines, each a contiguous
// share.
func publishAll(ctx context.Context, t Trial, n, publishers int) error {
	if publishers <= 1 {
		return t.Publish(ctx, 0, n)
	}
	g, gctx := errgroup.WithContext(ctx)
	share := (n + publishers - 1) / publishers
	for lo := 0; lo < n; lo += share {
		g.Go(func() error { return t.Publish(gctx, lo, min(n, lo+share)) })
	}
	return g.Wait()
}

// Preparer is implemented by trials that build their n messages before the timed phase (the
// application's own work of making a message is not the transport's cost).
type Preparer interface {
	Prepare(ctx context.Context, n int) error
}

func prepare(ctx context.Context, t any, n int) error {
	if p, ok := t.(Preparer); ok {
		return p.Prepare(ctx, n)
	}
	return nil
}

// duplicatesOf is how many duplicate deliveries a trial saw, if it counts them.
func duplicatesOf(t any) int64 {
	if d, ok := t.(interface{ Duplicates() int64 }); ok {
		return d.Duplicates()
	}
	return 0
}

func runLatency(ctx context.Context, env *Env, c *Contender, row *Row, id string, opts Options, log *slog.Logger) (err error) {
	runtime.GC()
	lt, err := c.NewLatency(ctx, env, id)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, lt.Close()) }()
	total := opts.LatencyWarm + opts.LatencyN
	lctx, cancel := context.WithTimeout(ctx, phaseTimeoutBase+time.Duration(float64(total)/opts.LatencyRate*float64(time.Second)))
	defer cancel()
	lats, err := lt.Latency(lctx, opts.LatencyWarm, opts.LatencyN, opts.LatencyRate)
	if err != nil {
		return err
	}
	row.Lat = lats
	log.Info("latency", "contender", c.Name, "n", len(lats), "p50", lats.Percentile(50), "p99", lats.Percentile(99))
	return nil
}

// phaseProfiler writes a CPU profile of one phase when dir is set.
type phaseProfiler struct {
	dir  string
	name string
	rep  int
}

// start begins profiling phase and returns the function that ends it. Profiling problems are
// reported on stderr and do not fail the trial.
func (p phaseProfiler) start(phase string) (stop func()) {
	if p.dir == "" {
		return func() {}
	}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "bench: profile dir: %v\n", err)
		return func() {}
	}
	f, err := os.Create(filepath.Join(p.dir, fmt.Sprintf("%s-%s-r%d.pprof", p.name, phase, p.rep)))
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: profile: %v\n", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintf(os.Stderr, "bench: profile: %v\n", err)
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
