package app

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/telemetry"
	"github.com/pulse-bus/pulse/transport"
)

// clientSettings are the configuration variables the client commands (publish, dlq) take
// flags for: where the bus is and how to write on it.
var clientSettings = []string{
	"EVENT_BUS_BACKEND", "NATS_URL", "PULSE_NATS_LISTEN", "PULSE_NATS_CREDS", "REDIS_URL", "PULSE_REDIS_MODE",
	"MD_NAMESPACE", "SCHEMA_TRACK", "PULSE_FEEDBACK_STREAM", "PULSE_LOG_LEVEL", "PULSE_LOG_FORMAT",
}

// openClientBus opens cfg's bus for a command that connects as a client (publish, dlq),
// validating payloads with schemas (nil: none) and making spans with tp. With the jetstream
// backend and no NATS_URL it connects to the embedded server that `pulse run` hosts on
// PULSE_NATS_LISTEN.
func openClientBus(ctx context.Context, cfg Config, log *slog.Logger, schemas *envelope.Schemas, tp trace.TracerProvider) (*transport.Bus, error) {
	bc := cfg.Bus
	bc.Logger, bc.Schemas, bc.TracerProvider = log, schemas, tp
	if cfg.EmbeddedNATS() {
		bc.NATSURL = "nats://" + cfg.Embedded.Listen
	}
	bus, err := transport.Open(ctx, bc)
	if err == nil {
		return bus, nil
	}
	if cfg.EmbeddedNATS() && errors.Is(err, transport.ErrUnavailable) {
		return nil, fmt.Errorf("open %s bus: NATS_URL is unset, so this is the embedded server of `pulse run` on PULSE_NATS_LISTEN=%s: is it up? %w",
			cfg.Bus.Backend, cfg.Embedded.Listen, err)
	}
	return nil, fmt.Errorf("open %s bus: %w", cfg.Bus.Backend, err)
}

func cmdDLQ(ctx context.Context, args []string, env Env) int {
	fs := newFlagSet(env, "dlq", "list|replay|purge [flags]",
		"Inspect, re-publish or drop the dead letters of a stream.\n"+
			"  list    shows each dead letter: when and why it failed, attempts, original id\n"+
			"  replay  re-publishes the original bytes to the source stream, deleting each\n"+
			"          dead letter only once the broker confirmed its publish\n"+
			"  purge   drops every dead letter, once confirmed: it asks when standard input is a\n"+
			"          terminal, and needs --yes when it is not")
	over := flagOverrides(fs, clientSettings...)
	stream := fs.String("stream", "", "source stream whose dead letters to handle, as S or S.dlq (default: PULSE_FEEDBACK_STREAM)")
	limit := fs.Int("limit", 0, "list or replay at most this many, oldest first (0: all)")
	yes := fs.Bool("yes", false, "purge without asking")
	if len(args) == 0 {
		return usageError(fs, "missing sub-command (list, replay or purge)")
	}
	sub := args[0]
	if sub == "-h" || sub == "-help" || sub == "--help" || sub == "help" {
		fs.SetOutput(env.Stdout)
		fs.Usage()
		return ExitOK
	}
	if code, ok := parseFlags(fs, args[1:]); !ok {
		return code
	}
	switch {
	case sub != "list" && sub != "replay" && sub != "purge":
		return usageError(fs, "unknown sub-command %q (accepted: list, replay, purge)", sub)
	case fs.NArg() > 0:
		return usageError(fs, "unexpected argument %q", fs.Arg(0))
	case *limit < 0:
		return usageError(fs, "invalid --limit=%d (accepted: 0 for all, or a positive count)", *limit)
	}
	cfg, ok := loadConfig(env, over, "dlq")
	if !ok {
		return ExitUsage
	}
	if *stream == "" {
		*stream = cfg.FeedbackStream
	}
	if !transport.ValidStreamName(*stream) {
		return usageError(fs, "invalid --stream=%q (accepted: dot-separated tokens of letters, digits, '_' and '-')", *stream)
	}
	log := newLogger(cfg, env.Stderr)
	tracing, err := startClientTracing(ctx, cfg, log)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pulse dlq: %v\n", err)
		return ExitFailure
	}
	defer tracing.flush(ctx, log)
	bus, err := openClientBus(ctx, cfg, log, nil, tracing.TracerProvider())
	if err != nil {
		fmt.Fprintf(env.Stderr, "pulse dlq: %v\n", err)
		return ExitFailure
	}
	defer bus.Close()
	q, err := NewDLQ(bus)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pulse dlq: %v\n", err)
		return ExitFailure
	}
	source, dlq := dlqOf(*stream)
	switch sub {
	case "list":
		letters, err := q.List(ctx, source, *limit)
		if err != nil {
			fmt.Fprintf(env.Stderr, "pulse dlq list: %v\n", err)
			return ExitFailure
		}
		if err := printDeadLetters(env.Stdout, letters); err != nil {
			return ExitFailure
		}
		fmt.Fprintf(env.Stderr, "%d dead letter(s) in %s\n", len(letters), dlq)
	case "replay":
		n, err := q.Replay(ctx, source, *limit)
		fmt.Fprintf(env.Stdout, "replayed %d dead letter(s) from %s\n", n, dlq)
		if err != nil {
			fmt.Fprintf(env.Stderr, "pulse dlq replay: %v\n", err)
			return ExitFailure
		}
	case "purge":
		if !*yes {
			if code, ok := confirmPurge(ctx, env, q, source, dlq); !ok {
				return code
			}
		}
		n, err := q.Purge(ctx, source)
		if err != nil {
			fmt.Fprintf(env.Stderr, "pulse dlq purge: %v\n", err)
			return ExitFailure
		}
		fmt.Fprintf(env.Stdout, "purged %d dead letter(s) from %s\n", n, dlq)
	}
	return ExitOK
}

// confirmPurge asks the operator on a terminal to confirm dropping the dead letters of dlq;
// without a terminal there is nobody to ask, and purging needs --yes. ok is false when the
// command must stop with code.
func confirmPurge(ctx context.Context, env Env, q *DLQ, source, dlq string) (code int, ok bool) {
	if !env.Interactive {
		fmt.Fprintf(env.Stderr, "pulse dlq purge: refusing to drop the dead letters of %s without --yes (standard input is not a terminal to ask on)\n", dlq)
		return ExitUsage, false
	}
	n, err := q.Count(ctx, source)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pulse dlq purge: %v\n", err)
		return ExitFailure, false
	}
	fmt.Fprintf(env.Stderr, "Drop all %d dead letter(s) of %s? This cannot be undone. Type yes to confirm: ", n, dlq)
	answer, _ := bufio.NewReader(env.Stdin).ReadString('\n')
	if strings.TrimSpace(answer) != "yes" {
		fmt.Fprintf(env.Stderr, "pulse dlq purge: not confirmed; nothing dropped\n")
		return ExitFailure, false
	}
	return ExitOK, true
}

func cmdRun(ctx context.Context, args []string, env Env) int {
	cfg, code, ok := configCommand(env, "run",
		"The pipeline side: consume feedback events, scale the provider's rate, publish each applied\n"+
			"RateAdjustment, serve /metrics, /healthz, /readyz and /state. With the jetstream backend and\n"+
			"no NATS_URL it hosts the embedded JetStream server. SIGINT/SIGTERM drain in-flight work,\n"+
			"ack it and exit 0.", args)
	if !ok {
		return code
	}
	if err := cfg.checkExposure(); err != nil {
		fmt.Fprintf(env.Stderr, "pulse run: %v\n", err)
		return ExitUsage
	}
	log := newLogger(cfg, env.Stderr)
	a, err := New(cfg, log)
	if err != nil {
		log.Error("pulse run: cannot start", "err", err)
		return ExitFailure
	}
	if err := a.Start(ctx); err != nil {
		if ctx.Err() != nil {
			log.Info("pulse run: interrupted while starting", "err", err)
			return ExitOK
		}
		log.Error("pulse run: cannot start", "err", err)
		return ExitFailure
	}
	log.Info("pulse running",
		"version", versionString(),
		"backend", cfg.Bus.Backend,
		"bus", a.where(),
		"namespace", cfg.Bus.Namespace,
		"track", cfg.Bus.Track,
		"stream", cfg.FeedbackStream,
		"group", a.Group(),
		"consumer", cfg.Bus.Consumer,
		"consumer_enabled", cfg.Enabled,
		"provider", cfg.Policy.Provider,
		"http", a.HTTPAddr(),
		"tracing", cfg.Tracing.TracingSummary(),
	)
	code = ExitOK
	select {
	case <-ctx.Done():
		log.Info("pulse run: stopping", "cause", context.Cause(ctx), "deadline", cfg.ShutdownTimeout)
	case err := <-a.Failed():
		log.Error("pulse run: stopping after a failure", "err", err)
		code = ExitFailure
	}
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	if err := a.Stop(stopCtx); err != nil {
		log.Error("pulse run: shutdown incomplete", "err", err)
		return ExitFailure
	}
	log.Info("pulse run: stopped")
	return code
}

func cmdPublish(ctx context.Context, args []string, env Env) int {
	fs := newFlagSet(env, "publish", "--coordinator ID --level ok|soft|hard [--queue-size N --capacity N] [flags]",
		"The Store side: publish one FeedbackEvent to PULSE_FEEDBACK_STREAM, signed when\n"+
			"PUBLISHER_TOKEN is set. With the jetstream backend and no NATS_URL it connects to the\n"+
			"embedded server of `pulse run` on PULSE_NATS_LISTEN.")
	over := flagOverrides(fs, clientSettings...)
	coordinator := fs.String("coordinator", "", "the Store coordinator (queue) reporting (required)")
	level := fs.String("level", "", "backpressure level: ok, soft or hard (required)")
	queueSize := fs.Int("queue-size", 0, "queue depth, ≥ 0 (default: derived from --level and --capacity: ok 0, soft 50%, hard 80%)")
	capacity := fs.Int("capacity", defaultPublishCapacity, "queue capacity")
	source := fs.String("source", feedback.DefaultSource, "producer kind")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	switch {
	case fs.NArg() > 0:
		return usageError(fs, "unexpected argument %q", fs.Arg(0))
	case *coordinator == "":
		return usageError(fs, "--coordinator is required")
	case *level == "":
		return usageError(fs, "--level is required (accepted: ok, soft, hard)")
	}
	lvl, err := feedback.ParseLevel(*level)
	if err != nil {
		return usageError(fs, "invalid --level=%q (accepted: ok, soft, hard)", *level)
	}
	if *capacity < 1 {
		return usageError(fs, "invalid --capacity=%d (accepted: an integer ≥ 1)", *capacity)
	}
	if given(fs, "queue-size") {
		if *queueSize < 0 {
			return usageError(fs, "invalid --queue-size=%d (accepted: an integer ≥ 0)", *queueSize)
		}
	} else {
		*queueSize = levelDepth(lvl, *capacity)
	}
	cfg, ok := loadConfig(env, over, "publish")
	if !ok {
		return ExitUsage
	}
	// A script joins the publish to its own trace with TRACEPARENT.
	pctx, err := telemetry.ContextFromEnv(ctx, env.Lookup)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pulse publish: %v\n", err)
		return ExitUsage
	}
	ev := feedback.Event{
		CoordinatorID: *coordinator,
		QueueSize:     *queueSize,
		Capacity:      *capacity,
		Level:         lvl,
		Source:        *source,
		TS:            envelope.Float(float64(time.Now().UnixNano()) / 1e9),
	}
	e, err := ev.Envelope(nil)
	if err != nil {
		return usageError(fs, "%v", err)
	}
	log := newLogger(cfg, env.Stderr)
	tracing, err := startClientTracing(ctx, cfg, log)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pulse publish: %v\n", err)
		return ExitFailure
	}
	defer tracing.flush(ctx, log)
	bus, err := openClientBus(ctx, cfg, log, feedback.Schemas(), tracing.TracerProvider())
	if err != nil {
		fmt.Fprintf(env.Stderr, "pulse publish: %v\n", err)
		return ExitFailure
	}
	defer bus.Close()
	pctx, cancel := context.WithTimeout(pctx, publishTimeout)
	defer cancel()
	if err := bus.Publish(pctx, cfg.FeedbackStream, e); err != nil {
		fmt.Fprintf(env.Stderr, "pulse publish: %v\n", err)
		return ExitFailure
	}
	id := e.ID
	if id == "" {
		id = "(v1: the transport assigns it)"
	}
	fmt.Fprintf(env.Stdout, "published FeedbackEvent coordinator=%s level=%s queue_size=%d capacity=%d to %s (%s, track %s, id %s, signed %t)\n",
		ev.CoordinatorID, ev.Level, ev.QueueSize, ev.Capacity, cfg.FeedbackStream, cfg.Bus.Backend, cfg.Bus.Track, id,
		envelope.NewSigner(cfg.Bus.PublisherToken) != nil)
	return ExitOK
}

// clientTracing is the trace export of a short-lived command (publish, dlq).
type clientTracing struct{ *telemetry.Tracing }

// startClientTracing starts the trace export cfg asks for (off unless an OTLP endpoint is set).
func startClientTracing(ctx context.Context, cfg Config, log *slog.Logger) (clientTracing, error) {
	t, err := telemetry.StartTracing(ctx, cfg.Tracing, versionString(), log)
	return clientTracing{t}, err
}

// flush sends the command's spans before it exits, for at most traceFlushTimeout.
func (t clientTracing) flush(ctx context.Context, log *slog.Logger) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), traceFlushTimeout)
	defer cancel()
	if err := t.Shutdown(fctx); err != nil {
		log.Warn("spans not exported", "err", err)
	}
}

// traceFlushTimeout bounds how long a command waits at exit for its spans to be exported.
const traceFlushTimeout = 5 * time.Second

// given reports whether the flag name was set on the command line.
func given(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// defaultPublishCapacity is `pulse publish`'s queue capacity when --capacity is not given.
const defaultPublishCapacity = 100

// publishTimeout bounds one `pulse publish`.
const publishTimeout = 30 * time.Second

// levelDepth is a queue depth typical of level at capacity: ok empty, soft at the low
// watermark (50%), hard at the high one (80%).
func levelDepth(l feedback.Level, capacity int) int {
	switch l {
	case feedback.LevelHard:
		return (capacity*8 + 9) / 10
	case feedback.LevelSoft:
		return (capacity + 1) / 2
	}
	return 0
}
