package jetstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// Name is the name the driver registers under (EVENT_BUS_BACKEND=jetstream).
const Name = "jetstream"

// Defaults, defined once.
const (
	// DefaultURL is where the driver connects when Config.NATSURL is empty: the embedded
	// server's default address (embedded.DefaultListen).
	DefaultURL = "nats://127.0.0.1:4223"
	// DefaultReconnectWait is the pause between reconnect attempts (the client reconnects
	// forever).
	DefaultReconnectWait = 250 * time.Millisecond
	// DefaultDuplicateWindow is the stream's de-duplication window for Nats-Msg-Id, capped at
	// the stream's max age.
	DefaultDuplicateWindow = 2 * time.Minute
	// DefaultPublishMaxPending bounds asynchronous publishes awaiting their PubAck, across
	// every Publish call of one driver.
	DefaultPublishMaxPending = 4096
	// DefaultPubAckTimeout is how long a batch waits for its PubAcks once its last message
	// is sent; messages still without one count as failed (and are sent again, see Publish).
	DefaultPubAckTimeout = 2 * time.Second
	// DefaultPublishRetryFor bounds how long Publish keeps re-sending messages the broker did
	// not acknowledge (disconnection, leader election) before it gives up.
	DefaultPublishRetryFor = 15 * time.Second
	// DefaultAPITimeout bounds one JetStream API request (stream and consumer management,
	// key-value access) whose context has no deadline.
	DefaultAPITimeout = 5 * time.Second
	// DefaultPingTimeout bounds Ping.
	DefaultPingTimeout = 2 * time.Second
	// DefaultFlushTimeout bounds flushing acks at Close.
	DefaultFlushTimeout = 5 * time.Second
)

func init() {
	transport.Register(Name, func(ctx context.Context, cfg transport.Config) (driver.Driver, error) {
		return Open(ctx, cfg)
	}, CheckConfig)
}

// Driver is the JetStream driver.Driver. It also implements driver.Pinger,
// driver.StreamAdmin and driver.IdempotencyProvider. It is safe for concurrent use;
// after Close every method returns transport.ErrClosed.
type Driver struct {
	cfg transport.Config
	nc  *nats.Conn
	js  jetstream.JetStream
	log *slog.Logger

	conn connState

	streamsMu sync.Mutex
	streams   map[string]jetstream.Stream // logical name → ensured stream

	subsMu sync.Mutex
	subs   map[*subscription]struct{}

	// inflight maps each asynchronously published *nats.Msg to its batch (see settlePub).
	inflight pubTable
	// lanes are the fast-batch lanes of Send (fastbatch.go); endLife ends their lifetime.
	laneSet
	endLife context.CancelFunc
	// pubAckTimeout is DefaultPubAckTimeout (shorter in tests).
	pubAckTimeout time.Duration

	// borrowed is the status listener of a connection the program gave (Options.Conn),
	// which Close leaves open; nil when the connection is the driver's own.
	borrowed chan nats.Status

	closed    atomic.Bool
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	closeErr  error
}

// Options tune a driver beyond transport.Config.
type Options struct {
	// InProcess, when set, connects to a server hosted by this process (an
	// *embedded.Server) through an in-process pipe instead of TCP: the same server, fewer
	// system calls (~10% more async publish throughput here). The URLs still name the server
	// in logs. A driver whose in-process server stops reconnects only to that server.
	InProcess nats.InProcessConnProvider
	// Conn, when set, is a connection the program already has: the driver uses it instead of
	// connecting (cfg's URLs and credentials are then unused), follows its state without
	// replacing its handlers, and leaves it open on Close (flushing what it sent). Its
	// reconnect policy is the program's; the driver's own connections reconnect for ever.
	Conn *nats.Conn
}

// Open connects to the NATS servers of cfg.NATSURL (comma-separated nats:// or tls:// URLs)
// or, when it is empty, to DefaultURL, where `pulse run` hosts its embedded server by default. It signs in
// with one of: the credentials in the URL, cfg.NATSToken, cfg.NATSCredsFile (JWT and nkey
// seed) or cfg.NATSNKeyFile (an nkey seed), and trusts cfg.NATSTLSCA's CAs and presents
// cfg.NATSTLSCert for TLS (see CheckConfig). The connection reconnects forever. Open fails if
// no server answers or the server has no JetStream.
func Open(ctx context.Context, cfg transport.Config) (*Driver, error) {
	return OpenWith(ctx, cfg, Options{})
}

// OpenWith is Open with driver options.
func OpenWith(ctx context.Context, cfg transport.Config, o Options) (*Driver, error) {
	cfg = withDefaults(cfg)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if o.Conn != nil {
		return borrow(ctx, cfg, o.Conn)
	}
	servers, err := serverURLs(cfg)
	if err != nil {
		return nil, err
	}
	d := newDriver(cfg)
	opts := []nats.Option{
		nats.Name("pulse"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(DefaultReconnectWait),
		nats.PingInterval(20 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			d.conn.set(false)
			if !d.closed.Load() {
				d.log.Warn("disconnected from NATS; reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			d.conn.set(true)
			d.log.Info("reconnected to NATS", "server", transport.RedactURLs(nc.ConnectedUrl()))
		}),
		nats.ClosedHandler(func(*nats.Conn) { d.conn.set(false) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			d.log.Warn("NATS asynchronous error", "subject", subj, "err", err)
		}),
	}
	auth, err := authOptions(cfg, servers)
	if err != nil {
		return nil, err
	}
	opts = append(opts, auth...)
	if o.InProcess != nil {
		opts = append(opts, nats.InProcessServer(o.InProcess))
	}
	nc, err := nats.Connect(strings.Join(servers, ","), opts...)
	if err != nil {
		return nil, connectError(cfg, servers, err)
	}
	if err := d.start(ctx, nc, redactList(servers)); err != nil {
		return nil, err
	}
	return d, nil
}

func withDefaults(c transport.Config) transport.Config {
	c = c.WithDefaults()
	if c.StreamMaxAge <= 0 {
		c.StreamMaxAge = transport.DefaultStreamMaxAge
	}
	if c.Replicas <= 0 {
		c.Replicas = transport.DefaultStreamReplicas
	}
	return c
}

var acceptedSchemes = []string{"nats", "tls", "ws", "wss"}

// serverURLs splits and checks NATS_URL, or derives the embedded server's URL.
func serverURLs(cfg transport.Config) ([]string, error) {
	if cfg.NATSURL == "" {
		return []string{DefaultURL}, nil
	}
	var out []string
	for _, part := range strings.Split(cfg.NATSURL, ",") {
		part = strings.TrimSpace(part)
		u, err := url.Parse(part)
		if err != nil || u.Host == "" || !slices.Contains(acceptedSchemes, u.Scheme) {
			return nil, &envconf.Error{
				Var:      "NATS_URL",
				Value:    transport.RedactURLs(cfg.NATSURL),
				Accepted: "one or more comma-separated URLs nats://[user:password@|token@]host:port or tls://… (also ws://, wss://)",
			}
		}
		out = append(out, part)
	}
	return out, nil
}

func redactList(urls []string) string { return transport.RedactURLs(strings.Join(urls, ",")) }

// Conn is the driver's NATS connection (tests, benchmarks, diagnostics). Do not close it.
func (d *Driver) Conn() *nats.Conn { return d.nc }

// JetStream is the driver's JetStream context (tests, benchmarks, diagnostics).
func (d *Driver) JetStream() jetstream.JetStream { return d.js }

// Config is the driver's configuration, defaults filled in.
func (d *Driver) Config() transport.Config { return d.cfg }

// Ping reports whether the server answers: the connection must be up and a JetStream account
// info request must succeed within DefaultPingTimeout. Errors while the server is away wrap
// transport.ErrUnavailable.
func (d *Driver) Ping(ctx context.Context) error {
	if d.closed.Load() {
		return transport.ErrClosed
	}
	if st := d.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("jetstream: ping: %w: connection %s", transport.ErrUnavailable, strings.ToLower(st.String()))
	}
	pctx, cancel := context.WithTimeout(ctx, DefaultPingTimeout)
	defer cancel()
	if _, err := d.js.AccountInfo(pctx); err != nil {
		return d.wrap(ctx, "ping", err)
	}
	return nil
}

// Close closes every subscription still open (buffered deliveries are handed back), flushes
// pending acks and closes the connection; publishes still waiting fail with ErrClosed. It is
// idempotent.
func (d *Driver) Close() error {
	d.closeOnce.Do(func() {
		// Set first: a Subscribe that registers after the snapshot below sees it and closes
		// its own subscription.
		d.closed.Store(true)
		d.subsMu.Lock()
		var subs []*subscription
		for s := range d.subs {
			subs = append(subs, s)
		}
		d.subsMu.Unlock()
		var errs []error
		for _, s := range subs {
			errs = append(errs, s.Close())
		}
		close(d.done)
		if d.nc.IsConnected() {
			if err := d.nc.FlushTimeout(DefaultFlushTimeout); err != nil {
				errs = append(errs, fmt.Errorf("jetstream: flush at close: %w", err))
			}
		}
		// No CleanupPublisher: publishes in flight end with d.done, and closing the connection
		// stops nats.go's publisher goroutine (it hears CLOSED). Cleaning up can race with
		// that goroutine's start, which then waits for ever on a nil channel (seen by goleak).
		// A borrowed connection stays open: its publisher goroutine is the program's to end.
		d.endLife()
		d.release()
		d.lanesWG.Wait() // each ends its batch: the connection is closed, or the commit cancelled
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

func (d *Driver) forget(s *subscription) {
	d.subsMu.Lock()
	delete(d.subs, s)
	d.subsMu.Unlock()
}

// apiCtx bounds an API request whose context has no deadline.
func apiCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, DefaultAPITimeout)
}

// wrap turns a NATS error into the driver's: the caller's context errors pass through as
// they are, ErrClosed after Close, errors that mean the broker is away wrap
// transport.ErrUnavailable.
func (d *Driver) wrap(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return cerr
	}
	if d.closed.Load() || errors.Is(err, jetstream.ErrJetStreamPublisherClosed) {
		return fmt.Errorf("jetstream: %s: %w", op, transport.ErrClosed)
	}
	if unavailable(err) {
		return fmt.Errorf("jetstream: %s: %w: %w", op, transport.ErrUnavailable, err)
	}
	if errors.Is(err, nats.ErrMaxPayload) {
		return fmt.Errorf("jetstream: %s: %w (the server takes at most %d bytes with headers): %w", op, transport.ErrTooLarge, d.nc.MaxPayload(), err)
	}
	return fmt.Errorf("jetstream: %s: %w", op, err)
}

// unavailable reports whether err means the broker cannot be reached or cannot serve right
// now (disconnected, timed out, no stream leader, cluster not ready).
func unavailable(err error) bool {
	switch {
	case errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrDisconnected),
		errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, nats.ErrNoServers),
		errors.Is(err, nats.ErrStaleConnection),
		errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, jetstream.ErrAsyncPublishTimeout),
		errors.Is(err, jetstream.ErrTooManyStalledMsgs),
		errors.Is(err, jetstream.ErrConnectionClosed),
		errors.Is(err, jetstream.ErrServerShutdown):
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 503: JetStream temporarily unavailable, no leader, cluster not ready.
		return apiErr.Code == 503 && apiErr.ErrorCode != jetstream.JSErrCodeJetStreamNotEnabled &&
			apiErr.ErrorCode != jetstream.JSErrCodeJetStreamNotEnabledForAccount
	}
	return false
}

// connState tracks whether the connection is up, and lets waiters learn of every change.
type connState struct {
	mu      sync.Mutex
	up      bool
	changed chan struct{} // closed and replaced on every change
}

func (c *connState) init() { c.changed = make(chan struct{}) }

func (c *connState) set(up bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.up == up {
		return
	}
	c.up = up
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *connState) get() (up bool, changed <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up, c.changed
}

// start finishes opening d over nc (its own, or a borrowed one): the JetStream context with
// the driver's PubAck handlers, and a check that the server has JetStream. where names the
// servers in errors. On error nc is released (closed if it is the driver's).
func (d *Driver) start(ctx context.Context, nc *nats.Conn, where string) error {
	d.nc = nc
	d.conn.set(nc.IsConnected())
	var err error
	d.js, err = jetstream.New(nc,
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, ack *jetstream.PubAck) { d.settlePub(m, ack, nil) }),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) { d.settlePub(m, nil, err) }),
		jetstream.WithPublishAsyncMaxPending(DefaultPublishMaxPending),
		// No WithPublishAsyncTimeout: it arms a timer per message (measured: ~6% of the CPU of
		// publishing); publishOnce times out a whole batch instead.
		jetstream.WithDefaultTimeout(DefaultAPITimeout),
	)
	if err != nil {
		d.release()
		return fmt.Errorf("jetstream: %w", err)
	}
	actx, cancel := context.WithTimeout(ctx, DefaultAPITimeout)
	_, err = d.js.AccountInfo(actx)
	cancel()
	switch {
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		d.release()
		return fmt.Errorf("jetstream: %s: %w (accepted: a NATS server started with JetStream enabled, e.g. nats-server -js)", where, err)
	case err != nil && ctx.Err() != nil:
		d.release()
		return ctx.Err()
	case err != nil:
		// A cluster electing its leaders answers later; streams are created on first use.
		d.log.Warn("JetStream account info unavailable at start; continuing", "err", err)
	}
	return nil
}

// newDriver is a driver of cfg before it has a connection.
func newDriver(cfg transport.Config) *Driver {
	d := &Driver{
		cfg:     cfg,
		log:     cfg.Logger.With("backend", Name),
		streams: map[string]jetstream.Stream{},
		subs:    map[*subscription]struct{}{},
		done:    make(chan struct{}),

		pubAckTimeout: DefaultPubAckTimeout,
	}
	d.lanes = map[string]*fastLane{}
	d.lifetime, d.endLife = context.WithCancel(context.Background())
	d.conn.init()
	return d
}

// borrow opens a driver over a connection the program owns (Options.Conn).
func borrow(ctx context.Context, cfg transport.Config, nc *nats.Conn) (*Driver, error) {
	if nc.IsClosed() {
		return nil, fmt.Errorf("jetstream: the connection given in Options.Conn is closed: %w", transport.ErrClosed)
	}
	d := newDriver(cfg)
	d.borrowed = nc.StatusChanged()
	go d.followStatus(d.borrowed)
	if err := d.start(ctx, nc, transport.RedactURLs(nc.ConnectedUrlRedacted())); err != nil {
		return nil, err
	}
	d.conn.set(nc.IsConnected()) // a change before followStatus listened
	return d, nil
}

// followStatus keeps d.conn in step with a borrowed connection until release removes the
// listener (which closes ch).
func (d *Driver) followStatus(ch chan nats.Status) {
	for st := range ch {
		d.conn.set(st == nats.CONNECTED)
	}
}

// release lets go of the connection: it closes the driver's own, and only stops following
// a borrowed one.
func (d *Driver) release() {
	if d.borrowed != nil {
		d.nc.RemoveStatusListener(d.borrowed)
		return
	}
	d.nc.Close()
}
