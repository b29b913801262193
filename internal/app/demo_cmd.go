package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/internal/app/demo"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/jetstream/embedded"
)

// demoSettings are the configuration variables `pulse demo` takes flags for: the bus kind,
// the feedback policy and logging. Where the bus is, the demo decides (it is embedded).
var demoSettings = []string{
	"EVENT_BUS_BACKEND", "SCHEMA_TRACK",
	feedback.EnvProvider, feedback.EnvBaseRate, feedback.EnvMinRate, feedback.EnvBurst,
	feedback.EnvScaleOK, feedback.EnvScaleSoft, feedback.EnvScaleHard,
	"PULSE_LOG_LEVEL", "PULSE_LOG_FORMAT",
}

// demoStopTimeout bounds stopping the demo's pipeline.
const demoStopTimeout = 10 * time.Second

func cmdDemo(ctx context.Context, args []string, env Env) int {
	fs := newFlagSet(env, "demo", "[--duration 20s] [--plot FILE.svg] [flags]",
		"The whole feedback loop in one process on an embedded bus: a simulated Store queue with\n"+
			"watermarks, drained slower than the provider's base rate, publishes FeedbackEvents; the\n"+
			"pipeline's consumer scales the provider's token bucket that feeds the queue. Shown live,\n"+
			"a line per tick, with a summary at the end.")
	over := flagOverrides(fs, demoSettings...)
	duration := fs.Duration("duration", demo.DefaultDuration, "simulated time to run")
	plot := fs.String("plot", "", "also draw queue depth and rate over time into this SVG file")
	tick := fs.Duration("tick", demo.DefaultTick, "time between two lines")
	capacity := fs.Int("capacity", demo.DefaultCapacity, "the Store queue's capacity (watermarks at 80% and 50%)")
	drainRate := fs.Float64("drain-rate", 0, "messages per second the Store writes (default: midway between the provider's rates at ok and soft)")
	drainDelay := fs.Duration("drain-delay", demo.DefaultDrainDelay, "when the Store's writer starts draining (0: at once)")
	fast := fs.Bool("fast", false, "run as fast as the loop allows instead of in real time")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageError(fs, "unexpected argument %q", fs.Arg(0))
	}
	p := demo.Params{
		Capacity:   *capacity,
		DrainRate:  *drainRate,
		DrainDelay: *drainDelay,
		Tick:       *tick,
		Duration:   *duration,
		Realtime:   !*fast,
	}
	if p.DrainDelay == 0 {
		p.DrainDelay = -1 // --drain-delay 0: at once
	}
	cfg, ok := loadConfig(env, over, "demo")
	if !ok {
		return ExitUsage
	}
	if b := cfg.Bus.Backend; b != "jetstream" && b != "inmem" {
		return usageError(fs, "the demo runs on an embedded bus: EVENT_BUS_BACKEND/--backend %q (accepted: jetstream, inmem)", b)
	}
	if _, set := cfg.sources["PULSE_LOG_LEVEL"]; !set {
		cfg.LogLevel = slog.LevelWarn // the live lines are the demo's output
	}
	log := newLogger(cfg, env.Stderr)
	res, err := RunDemo(ctx, cfg, p, env.Stdout, log)
	if err != nil && res == nil {
		if errors.Is(err, demo.ErrParams) {
			return usageError(fs, "%v", err)
		}
		fmt.Fprintf(env.Stderr, "pulse demo: %v\n", err)
		return ExitFailure
	}
	if *plot != "" {
		if err := writePlot(*plot, res); err != nil {
			fmt.Fprintf(env.Stderr, "pulse demo: %v\n", err)
			return ExitFailure
		}
		fmt.Fprintf(env.Stdout, "plot written to %s\n", *plot)
	}
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(env.Stderr, "pulse demo: %v\n", err)
		return ExitFailure
	}
	return ExitOK
}

func writePlot(path string, res *demo.Result) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	if err := demo.WriteSVG(f, res); err != nil {
		f.Close()
		return fmt.Errorf("plot %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}

// RunDemo runs the demo loop with the pipeline of `pulse run` (an App, with its HTTP on a
// free loopback port) on an embedded bus of cfg's backend (jetstream: a server on a free
// loopback port with its store in a temporary directory, removed afterwards; inmem: an
// in-process broker), writing the live lines and the summary to out. It returns the result
// (also when ctx ended the run early, with ctx's error); parameters it does not accept are
// an error wrapping demo.ErrParams.
func RunDemo(ctx context.Context, cfg Config, p demo.Params, out io.Writer, log *slog.Logger) (*demo.Result, error) {
	dir, err := os.MkdirTemp("", "pulse-demo-*")
	if err != nil {
		return nil, fmt.Errorf("app: demo store directory: %w", err)
	}
	defer os.RemoveAll(dir)
	cfg.Enabled = true
	cfg.Bus.NATSURL = ""
	cfg.Embedded = embedded.Options{Listen: "127.0.0.1:0", DataDir: dir}
	cfg.Bus.PublisherToken = "" // both ends are this process
	// A namespace of its own, so that runs sharing a process (tests, inmem) never meet.
	cfg.Bus.Namespace = "demo_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.FeedbackStream = feedback.StreamFeedback

	a, err := New(cfg, log)
	if err != nil {
		return nil, err
	}
	if err := a.Start(ctx); err != nil {
		return nil, err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), demoStopTimeout)
		defer cancel()
		if err := a.Stop(stopCtx); err != nil {
			log.Warn("stopping the demo's pipeline", "err", err)
		}
	}()
	fmt.Fprintf(out, "pipeline running: /state, /metrics on http://%s\n", a.HTTPAddr())

	storeCfg := cfg.Bus
	storeCfg.NATSURL = a.NATSURL()
	storeCfg.Logger = log
	storeCfg.Schemas = feedback.Schemas()
	storeCfg.TracerProvider = a.TracerProvider()
	store, err := transport.Open(ctx, storeCfg)
	if err != nil {
		return nil, fmt.Errorf("app: demo Store's bus: %w", err)
	}
	defer store.Close()
	admin, ok := store.Driver().(driver.StreamAdmin)
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNoStreamAdmin, cfg.Bus.Backend)
	}
	return demo.Run(ctx, demo.Config{
		Params:   p,
		Store:    store,
		Stream:   cfg.FeedbackStream,
		Pipeline: a.Handler(),
		Adjustments: func(ctx context.Context) (int, error) {
			info, err := admin.Info(ctx, DefaultRateStream, "")
			return int(info.Length), err
		},
		Backend: cfg.Bus.Backend,
		Out:     out,

		TracerProvider: a.TracerProvider(),
	})
}
