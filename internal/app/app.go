package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.opentelemetry.io/otel/trace"

	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/telemetry"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/jetstream"
	"github.com/pulse-bus/pulse/transport/jetstream/embedded"
)

// ErrStopTimeout is returned by Stop when its deadline passed before every component had
// stopped.
var ErrStopTimeout = errors.New("app: shutdown deadline passed")

// App is the pipeline side of the feedback loop (`pulse run`): the embedded JetStream server
// when one is wanted, the bus, the feedback handler and consumer with the provider's rate
// coordinator, and HTTP (/metrics, /healthz, /readyz, /state).
//
// Start brings the components up in that order (HTTP first, so that probes get answers while
// the rest starts); Stop takes them down last-in first-out: the consumer stops fetching and
// drains (in-flight events finish and are acked), unpublished rate adjustments are flushed,
// the bus and the embedded server close, and HTTP goes last. Stop is idempotent. The
// methods are safe for concurrent use.
type App struct {
	cfg     Config
	log     *slog.Logger
	metrics *telemetry.Metrics
	rates   *feedback.RateCoordinator
	tracing atomic.Pointer[telemetry.Tracing] // set first in Start; off unless OTEL_* ask for export

	stack    stack
	stopping atomic.Bool
	failed   chan error // first failure of a running component; buffered 1

	startOnce sync.Once
	startErr  error
	stopOnce  sync.Once
	stopErr   error

	// Set during Start, read by HTTP handlers and accessors.
	http     atomic.Pointer[httpServer]
	server   atomic.Pointer[embedded.Server]
	bus      atomic.Pointer[transport.Bus]
	handler  atomic.Pointer[feedback.Handler]
	consumer atomic.Pointer[feedback.Consumer]
	opening  atomic.Pointer[error] // why the bus could not be opened yet, while retrying
}

// New returns an App for cfg (from Load) logging to log (nil discards). Nothing starts until
// Start.
func New(cfg Config, log *slog.Logger) (*App, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	metrics, err := telemetry.New(telemetry.WithRuntimeMetrics(), telemetry.WithLogger(log))
	if err != nil {
		return nil, fmt.Errorf("app: metrics: %w", err)
	}
	rates, err := feedback.NewRateCoordinator(cfg.Policy.Limits())
	if err != nil {
		return nil, fmt.Errorf("app: rate coordinator: %w", err)
	}
	return &App{cfg: cfg, log: log, metrics: metrics, rates: rates, failed: make(chan error, 1)}, nil
}

// Start starts the components in order. If one fails, those already started are stopped
// (last-in first-out) and the error returned. Start runs once; later calls return the
// first call's result. ctx bounds starting only: the App runs until Stop.
func (a *App) Start(ctx context.Context) error {
	a.startOnce.Do(func() {
		a.startErr = a.start(ctx)
		if a.startErr != nil {
			a.stopping.Store(true)
			if err := a.stack.unwind(context.WithoutCancel(ctx)); err != nil {
				a.log.Warn("stopping after a failed start", "err", err)
			}
		}
	})
	return a.startErr
}

func (a *App) start(ctx context.Context) error {
	// First in, last out: the spans of everything stopped before it are flushed.
	tracing, err := telemetry.StartTracing(ctx, a.cfg.Tracing, versionString(), a.log)
	if err != nil {
		return fmt.Errorf("app: %w", err)
	}
	a.tracing.Store(tracing)
	a.stack.push("trace export", tracing.Shutdown)
	tp := tracing.TracerProvider()
	a.stack.push("metrics", a.metrics.Shutdown)
	// The provider's gauges show from the start, not only after the first event.
	provider := a.cfg.Policy.Provider
	a.metrics.RateScale(provider, a.rates.Scale(provider))
	a.metrics.BackpressureState(provider, telemetry.BackpressureOK)
	// pulse_ready is /readyz's answer at the time of the scrape, bounded as a probe is.
	a.metrics.ObserveReady(func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, readyTimeout)
		defer cancel()
		return a.ready(ctx)
	})

	srv, err := startHTTP(a.cfg.HTTPAddr, endpoints{
		metrics:         a.metrics.Handler(),
		ready:           a.ready,
		warnings:        a.warnings,
		state:           a.state,
		maxCoordinators: a.cfg.Policy.MaxCoordinators,
	}.mux(), a.log)
	if err != nil {
		return err
	}
	a.http.Store(srv)
	a.stack.push("http server", srv.Stop)
	a.watch("http server", srv.Done(), srv.Err)

	if !a.cfg.Enabled {
		h, err := feedback.NewHandler(feedback.HandlerConfig{Policy: a.cfg.Policy, Rates: a.rates, Observer: a.metrics, Logger: a.log, TracerProvider: tp})
		if err != nil {
			return fmt.Errorf("app: feedback handler: %w", err)
		}
		a.handler.Store(h)
		return nil
	}

	busCfg := a.cfg.Bus
	if a.cfg.EmbeddedNATS() {
		eo := a.cfg.Embedded
		eo.Token, eo.Logger = busCfg.NATSToken, a.log
		s, err := embedded.Start(ctx, eo)
		if err != nil {
			return fmt.Errorf("app: embedded JetStream server on %s (PULSE_NATS_LISTEN) with store %s (PULSE_DATA_DIR): %w",
				eo.Listen, eo.DataDir, err)
		}
		a.server.Store(s)
		a.stack.push("embedded JetStream server", func(context.Context) error { s.Shutdown(); return nil })
		busCfg.NATSURL = s.ClientURL()
	}
	busCfg.Logger = a.log
	busCfg.Observer = a.metrics
	busCfg.TracerProvider = tp
	busCfg.Schemas = feedback.Schemas()
	bus, err := a.openBusRetrying(ctx, busCfg)
	if err != nil {
		return fmt.Errorf("app: open %s bus at %s: %w", busCfg.Backend, a.where(), err)
	}
	a.bus.Store(bus)
	a.stack.push("bus", func(context.Context) error { return bus.Close() })

	store, err := feedback.OpenStateStore(ctx, bus, a.cfg.FeedbackStream)
	if err != nil {
		return fmt.Errorf("app: %w", err)
	}
	h, err := feedback.NewHandler(feedback.HandlerConfig{
		Policy:    a.cfg.Policy,
		Rates:     a.rates,
		Publisher: bus,
		Stream:    DefaultRateStream,
		Observer:  a.metrics,
		Logger:    a.log,
		State:     store,

		TracerProvider: tp,
	})
	if err != nil {
		return fmt.Errorf("app: feedback handler: %w", err)
	}
	if err := a.restoreRetrying(ctx, h); err != nil {
		return fmt.Errorf("app: restore the loop state from the %s bus at %s: %w", busCfg.Backend, a.where(), err)
	}
	a.handler.Store(h)
	// Stopped after the consumer (LIFO): what the drained events applied but could not yet
	// publish goes out before the bus closes.
	a.stack.push("rate adjustment flush", func(ctx context.Context) error {
		if err := h.Flush(ctx); err != nil {
			a.log.Warn("rate adjustments left unpublished at shutdown", "err", err)
		}
		return nil
	})

	c, err := feedback.NewConsumer(bus, h, feedback.ConsumerConfig{
		Stream:      a.cfg.FeedbackStream,
		SharedGroup: a.cfg.SharedGroup,
		Logger:      a.log,
	})
	if err != nil {
		return fmt.Errorf("app: feedback consumer: %w", err)
	}
	// The consumer lives until Stop closes it, not until ctx (which bounds starting) ends.
	if err := c.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("app: %w", err)
	}
	a.consumer.Store(c)
	a.stack.push("feedback consumer", func(context.Context) error { return c.Close() })
	a.watch("feedback consumer", c.Done(), c.Err)
	return nil
}

// Start-up retries of a broker that cannot be reached yet.
const (
	openRetryMin = 250 * time.Millisecond
	openRetryMax = 5 * time.Second
)

// openBusRetrying opens the bus, waiting for a broker that cannot be reached yet (it may be
// starting beside us; see untilAvailable). Any other error (a refused configuration, bad
// credentials) is returned at once.
func (a *App) openBusRetrying(ctx context.Context, cfg transport.Config) (*transport.Bus, error) {
	var bus *transport.Bus
	err := a.untilAvailable(ctx, "opening the bus", func() (err error) {
		bus, err = a.openBus(ctx, cfg)
		return err
	})
	return bus, err
}

// restoreRetrying reads the loop's state back (feedback.Handler.Restore) before anything is
// consumed, waiting for a broker that does not answer right now: the provider must not run
// at full rate because the state was unreachable for a moment.
func (a *App) restoreRetrying(ctx context.Context, h *feedback.Handler) error {
	return a.untilAvailable(ctx, "restoring the loop state", func() error {
		_, err := h.Restore(ctx)
		return err
	})
}

// untilAvailable runs op until it succeeds or fails with an error that does not wrap
// transport.ErrUnavailable, retrying with jittered backoff (openRetryMin growing to openRetryMax)
// while the broker is away: each failure is logged and /readyz reports it, as what. It
// returns early, with op's last error, once ctx is done.
func (a *App) untilAvailable(ctx context.Context, what string, op func() error) error {
	retry := backoff.NewExponentialBackOff() // ×1.5 per failure, ±50% jitter
	retry.InitialInterval, retry.MaxInterval = openRetryMin, openRetryMax
	for {
		err := op()
		if err == nil {
			a.opening.Store(nil)
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (stopped waiting: %w)", err, context.Cause(ctx))
		}
		if !errors.Is(err, transport.ErrUnavailable) {
			return err
		}
		wait := retry.NextBackOff()
		why := fmt.Errorf("%s: %w", what, err)
		a.opening.Store(&why)
		a.log.Warn("bus unavailable; retrying", "while", what, "backend", a.cfg.Bus.Backend, "bus", a.where(), "retry_in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (stopped waiting: %w)", err, context.Cause(ctx))
		}
	}
}

// openBus opens the bus of cfg; to the embedded server it connects in-process (no TCP),
// the way other processes cannot.
func (a *App) openBus(ctx context.Context, cfg transport.Config) (*transport.Bus, error) {
	s := a.server.Load()
	if s == nil {
		return transport.Open(ctx, cfg)
	}
	drv, err := jetstream.OpenWith(ctx, cfg, jetstream.Options{InProcess: s})
	if err != nil {
		return nil, err
	}
	bus, err := transport.New(drv, cfg)
	if err != nil {
		drv.Close()
		return nil, err
	}
	return bus, nil
}

// watch reports a component that stops on its own (not through Stop) on Failed. The
// goroutine ends when the component does, which Stop guarantees.
func (a *App) watch(name string, done <-chan struct{}, why func() error) {
	go func() {
		<-done
		if a.stopping.Load() {
			return
		}
		err := why()
		if err == nil {
			err = errors.New("stopped unexpectedly")
		}
		select {
		case a.failed <- fmt.Errorf("app: %s: %w", name, err):
		default:
		}
	}()
}

// Failed delivers the first failure of a component that stopped on its own while the App
// was running (the HTTP listener failed, the consumer stopped). The App should then be
// stopped.
func (a *App) Failed() <-chan error { return a.failed }

// Stop stops every started component last-in first-out and waits for them, for at most
// until ctx is done (then it returns ErrStopTimeout, leaving the rest to finish in the
// background). It is idempotent: later calls return the first call's result.
func (a *App) Stop(ctx context.Context) error {
	a.stopOnce.Do(func() {
		a.stopping.Store(true)
		done := make(chan error, 1)
		go func() { done <- a.stack.unwind(ctx) }()
		select {
		case a.stopErr = <-done:
		case <-ctx.Done():
			a.stopErr = fmt.Errorf("%w: %w", ErrStopTimeout, context.Cause(ctx))
		}
	})
	return a.stopErr
}

// HTTPAddr is the address HTTP is served on (with the port picked for port 0), "" before
// Start.
func (a *App) HTTPAddr() string {
	if s := a.http.Load(); s != nil {
		return s.Addr()
	}
	return ""
}

// NATSURL is the client URL of the embedded JetStream server, "" when none runs.
func (a *App) NATSURL() string {
	if s := a.server.Load(); s != nil {
		return s.ClientURL()
	}
	return ""
}

// TracerProvider is what the App's spans are made with: the OTLP exporter's, or a no-op one
// when export is off or before Start.
func (a *App) TracerProvider() trace.TracerProvider { return a.tracing.Load().TracerProvider() }

// Bus is the open bus, nil before Start or when the consumer is disabled.
func (a *App) Bus() *transport.Bus { return a.bus.Load() }

// Handler is the feedback handler, nil before Start.
func (a *App) Handler() *feedback.Handler { return a.handler.Load() }

// Rates is the provider's rate coordinator: what the pipeline paces its provider calls with.
func (a *App) Rates() *feedback.RateCoordinator { return a.rates }

// Group is the consumer group feedback is read in, "" when the consumer is not running.
func (a *App) Group() string {
	if c := a.consumer.Load(); c != nil {
		return c.Group()
	}
	return ""
}

// where tells where the bus is, secrets masked.
func (a *App) where() string {
	switch b := a.cfg.Bus; {
	case !a.cfg.Enabled:
		return "none: PULSE_ENABLED=false, so no consumer and no embedded server"
	case b.Backend == "inmem":
		return "in-process"
	case b.Backend == "redis":
		return transport.RedactURLs(b.RedisURL)
	case a.cfg.EmbeddedNATS():
		if u := a.NATSURL(); u != "" {
			return "embedded " + u + " (store " + a.cfg.Embedded.DataDir + ")"
		}
		return "embedded on " + a.cfg.Embedded.Listen + " (store " + a.cfg.Embedded.DataDir + ")"
	default:
		return transport.RedactURLs(b.NATSURL)
	}
}

// ready is /readyz: subscribed, fetching works and the broker answers.
func (a *App) ready(ctx context.Context) error {
	if a.stopping.Load() {
		return errors.New("shutting down")
	}
	if !a.cfg.Enabled {
		if a.handler.Load() == nil {
			return errors.New("starting")
		}
		return nil // the consumer is off (PULSE_ENABLED=false): nothing to wait for
	}
	c := a.consumer.Load()
	if c == nil {
		if err := a.opening.Load(); err != nil {
			return fmt.Errorf("starting: waiting for the %s bus at %s: %w", a.cfg.Bus.Backend, a.where(), *err)
		}
		return errors.New("starting: not subscribed yet")
	}
	if err := c.Ready(); err != nil {
		return err
	}
	if err := a.bus.Load().Ping(ctx); err != nil {
		return fmt.Errorf("%s bus at %s does not answer: %w", a.cfg.Bus.Backend, a.where(), err)
	}
	return nil
}

// warnings are what /readyz reports beside readiness: a replica collision, dead letters
// that could not be written.
func (a *App) warnings() []string {
	c := a.consumer.Load()
	if c == nil {
		return nil
	}
	var out []string
	if err := c.Collision(); err != nil {
		out = append(out, err.Error())
	}
	if n, last := c.DeadLetterFailures(); n > 0 {
		out = append(out, fmt.Sprintf("%d dead letter(s) could not be written (retried, or settled with the original left in its stream); last: %v", n, last))
	}
	return out
}

// stateDoc is the /state document: the handler's state (providers and coordinators) and
// what the consumer reads.
type stateDoc struct {
	feedback.State
	Consumer consumerDoc `json:"consumer"`
}

type consumerDoc struct {
	Enabled bool   `json:"enabled"`
	Backend string `json:"backend"`
	Stream  string `json:"stream"`
	Group   string `json:"group,omitempty"`
	Name    string `json:"name"`
	// Restored is true once the loop's state was read back from the bus at start.
	Restored bool `json:"restored"`
	// Collision says why another live process reads as this replica (splitting the
	// events between them), when one does.
	Collision string `json:"collision,omitempty"`
	// DeadLetterFailures counts dead letters that could not be written, and
	// LastDeadLetterFailure says why the last one was not.
	DeadLetterFailures    uint64 `json:"dead_letter_failures"`
	LastDeadLetterFailure string `json:"last_dead_letter_failure,omitempty"`
}

// DefaultStateCoordinators is how many coordinators /state lists when not asked for
// another number (?coordinators=N): the most pressing ones; coordinators_tracked counts all.
const DefaultStateCoordinators = 1000

func (a *App) state(coordinators int) any {
	doc := stateDoc{Consumer: consumerDoc{
		Enabled: a.cfg.Enabled,
		Backend: a.cfg.Bus.Backend,
		Stream:  a.cfg.FeedbackStream,
		Group:   a.Group(),
		Name:    a.cfg.Bus.Consumer,
	}}
	if c := a.consumer.Load(); c != nil {
		if err := c.Collision(); err != nil {
			doc.Consumer.Collision = err.Error()
		}
		var last error
		if doc.Consumer.DeadLetterFailures, last = c.DeadLetterFailures(); last != nil {
			doc.Consumer.LastDeadLetterFailure = last.Error()
		}
	}
	if h := a.handler.Load(); h != nil {
		doc.State = h.StateN(coordinators)
		doc.Consumer.Restored = h.Restored()
	} else {
		doc.Providers = a.rates.Snapshot()
		doc.Coordinators = map[string]feedback.CoordinatorState{}
	}
	return doc
}
