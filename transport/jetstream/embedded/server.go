// Package embedded runs a NATS server with JetStream inside the current process: the bus that
// `pulse run` hosts when NATS_URL is unset, and the server every jetstream test starts on a
// random port.
//
// The server keeps its JetStream file store under Options.DataDir (in DataDir/jetstream), caps
// the memory and disk JetStream may reserve (the nats-server default reserves 75% of the
// machine's RAM), installs no signal handlers (its owner stops it), and logs through slog.
// Several servers can be joined into a JetStream cluster with Options.Cluster.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/pulse-bus/pulse/envconf"
)

// Defaults, defined once. A zero field in Options means its default.
const (
	// DefaultListen is where the server accepts clients (PULSE_NATS_LISTEN's default; not
	// 4222, so that it never collides with a NATS server already on the machine).
	DefaultListen = "127.0.0.1:4223"
	// DefaultDataDir is the root of the file store (PULSE_DATA_DIR's default).
	DefaultDataDir = "./.pulse"
	// DefaultMaxMemory caps memory-backed JetStream storage.
	DefaultMaxMemory int64 = 256 << 20
	// DefaultMaxStore caps file-backed JetStream storage.
	DefaultMaxStore int64 = 8 << 30
	// DefaultStartTimeout bounds how long Start waits for the server to accept clients.
	DefaultStartTimeout = 15 * time.Second
)

// ErrStart wraps every reason the server could not start.
var ErrStart = errors.New("embedded: nats-server did not start")

// Options configure an embedded server. The zero value is a standalone server on
// DefaultListen with its store under DefaultDataDir.
type Options struct {
	// Listen is the client address, host:port; port 0 or -1 picks a free port (tests).
	// Anything but a loopback address (Loopback) should come with a Token: without one the
	// server lets every client that reaches it publish, consume and delete streams.
	Listen string
	// Token, when set, is required of every client (nats.Token, or nats://TOKEN@host), the
	// in-process connections of this process included. Empty accepts anyone.
	Token string
	// DataDir is the root of the JetStream file store; the server writes DataDir/jetstream.
	DataDir string
	// MaxMemory and MaxStore cap what JetStream may use in memory and on disk, in bytes.
	MaxMemory int64
	MaxStore  int64
	// ServerName names the server; required (and unique) in a cluster. Default: generated.
	ServerName string
	// Cluster joins the server to a JetStream cluster; nil runs it standalone.
	Cluster *ClusterOptions
	// StartTimeout bounds the wait for the server to accept clients.
	StartTimeout time.Duration
	// Logger receives the server's log lines: warnings and errors as such, its notices (the
	// start-up banner, "Server is ready") at Debug; its own debug and trace output is off.
	// Nil discards them.
	Logger *slog.Logger
}

// ClusterOptions join a server to a cluster of embedded or stand-alone servers.
type ClusterOptions struct {
	// Name is the cluster's name, the same on every member.
	Name string
	// Listen is this member's route address, host:port (port -1 picks a free port, which
	// only works if the other members learn it before they start).
	Listen string
	// Routes are the route URLs (nats://host:port) of the members, this one may be included;
	// JetStream clustering requires at least one.
	Routes []string
}

// Server is a running embedded nats-server. Its methods are safe for concurrent use.
type Server struct {
	ns   *server.Server
	opts Options

	shutdownOnce sync.Once
}

// Start starts a server and waits until it accepts clients, ctx is done or StartTimeout
// passes. On error nothing is left running.
func Start(ctx context.Context, opts Options) (*Server, error) {
	opts = opts.withDefaults()
	sopts, err := opts.serverOptions()
	if err != nil {
		return nil, err
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	logger := newLogAdapter(opts.Logger)
	ns.SetLoggerV2(logger, false, false, false)
	s := &Server{ns: ns, opts: opts}

	ns.Start()
	if err := s.waitReady(ctx, logger.fatal); err != nil {
		s.Shutdown()
		return nil, err
	}
	return s, nil
}

func (o Options) withDefaults() Options {
	if o.Listen == "" {
		o.Listen = DefaultListen
	}
	if o.DataDir == "" {
		o.DataDir = DefaultDataDir
	}
	if o.MaxMemory <= 0 {
		o.MaxMemory = DefaultMaxMemory
	}
	if o.MaxStore <= 0 {
		o.MaxStore = DefaultMaxStore
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// splitHostPort parses host:port, accepting -1 and 0 as "any free port".
func splitHostPort(what, addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err == nil {
		var port int
		port, err = strconv.Atoi(p)
		if err == nil && port >= -1 && port <= 65535 {
			if port == 0 {
				port = -1
			}
			return host, port, nil
		}
	}
	return "", 0, fmt.Errorf("%w: %s %q: accepted: host:port with a port from 1 to 65535, or -1 for any free port", ErrStart, what, addr)
}

func (o Options) serverOptions() (*server.Options, error) {
	host, port, err := splitHostPort("listen address", o.Listen)
	if err != nil {
		return nil, err
	}
	so := &server.Options{
		ServerName:         o.ServerName,
		Host:               host,
		Port:               port,
		JetStream:          true,
		StoreDir:           o.DataDir,
		JetStreamMaxMemory: o.MaxMemory,
		JetStreamMaxStore:  o.MaxStore,
		NoSigs:             true,
		// Logging goes through SetLoggerV2; NoLog keeps the server from configuring its own.
		NoLog:         true,
		Authorization: o.Token,
	}
	if c := o.Cluster; c != nil {
		if c.Name == "" || len(c.Routes) == 0 || o.ServerName == "" {
			return nil, fmt.Errorf("%w: cluster member needs ServerName, Cluster.Name and at least one route (accepted: all three set)", ErrStart)
		}
		chost, cport, err := splitHostPort("cluster listen address", c.Listen)
		if err != nil {
			return nil, err
		}
		so.Cluster = server.ClusterOpts{Name: c.Name, Host: chost, Port: cport}
		for _, r := range c.Routes {
			u, err := url.Parse(r)
			if err != nil || u.Host == "" {
				return nil, fmt.Errorf("%w: cluster route %q: accepted: nats://host:port", ErrStart, r)
			}
			so.Routes = append(so.Routes, u)
		}
	}
	return so, nil
}

// readyPoll is how long one readiness check may block.
const readyPoll = 50 * time.Millisecond

func (s *Server) waitReady(ctx context.Context, fatal <-chan string) error {
	deadline := time.NewTimer(s.opts.StartTimeout)
	defer deadline.Stop()
	for {
		if s.ns.ReadyForConnections(readyPoll) {
			return nil
		}
		select {
		case msg := <-fatal:
			return fmt.Errorf("%w: %s", ErrStart, msg)
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("%w: not ready for connections after %s", ErrStart, s.opts.StartTimeout)
		default:
		}
	}
}

// Loopback reports whether the host of listen (host:port) is a loopback address (127.0.0.0/8,
// ::1 or localhost), so that only this machine can reach the server. An empty host, 0.0.0.0
// and :: listen on every interface.
func Loopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ClientURL is the URL clients connect to, e.g. nats://127.0.0.1:4223.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Addr is the address the server accepts clients on (with the port it picked).
func (s *Server) Addr() *net.TCPAddr {
	a, _ := s.ns.Addr().(*net.TCPAddr)
	return a
}

// ClusterURL is this member's route URL (nats://host:port), "" when not clustered.
func (s *Server) ClusterURL() string {
	a := s.ns.ClusterAddr()
	if a == nil {
		return ""
	}
	return "nats://" + a.String()
}

// Name is the server's name.
func (s *Server) Name() string { return s.ns.Name() }

// InProcessConn returns a connection to the server that bypasses TCP. With
// ReadyForConnections it makes *Server a nats.InProcessConnProvider, for nats.InProcessServer.
func (s *Server) InProcessConn() (net.Conn, error) { return s.ns.InProcessConn() }

// ReadyForConnections reports, waiting up to d, whether the server accepts clients.
func (s *Server) ReadyForConnections(d time.Duration) bool { return s.ns.ReadyForConnections(d) }

// NATS is the underlying nats-server, for tests and diagnostics (cluster leadership,
// JetStream state). Stopping it directly bypasses Shutdown's bookkeeping.
func (s *Server) NATS() *server.Server { return s.ns }

// Running reports whether the server is running.
func (s *Server) Running() bool { return s.ns.Running() }

// Shutdown stops the server, closing every client connection, and waits until it has stopped
// and flushed its store. It is idempotent and safe to call concurrently.
func (s *Server) Shutdown() {
	s.shutdownOnce.Do(func() {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
	})
}

// logAdapter forwards nats-server log lines to slog and reports the first fatal one, which
// the server (unlike its own logger) survives, so that Start can fail with it.
type logAdapter struct {
	log   *slog.Logger
	fatal chan string
}

func newLogAdapter(l *slog.Logger) *logAdapter {
	return &logAdapter{log: l.With("component", "nats-server"), fatal: make(chan string, 1)}
}

func (a *logAdapter) logf(level slog.Level, format string, v []any) {
	if a.log.Enabled(context.Background(), level) {
		a.log.Log(context.Background(), level, fmt.Sprintf(format, v...))
	}
}

func (a *logAdapter) Noticef(format string, v ...any) { a.logf(slog.LevelDebug, format, v) }
func (a *logAdapter) Warnf(format string, v ...any)   { a.logf(slog.LevelWarn, format, v) }
func (a *logAdapter) Errorf(format string, v ...any)  { a.logf(slog.LevelError, format, v) }
func (a *logAdapter) Debugf(format string, v ...any)  { a.logf(slog.LevelDebug, format, v) }
func (a *logAdapter) Tracef(string, ...any)           {}

func (a *logAdapter) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	a.log.Error(msg, "fatal", true)
	select {
	case a.fatal <- msg:
	default:
	}
}

// The environment variables FromEnv reads.
const (
	EnvListen  = "PULSE_NATS_LISTEN"
	EnvDataDir = "PULSE_DATA_DIR"
)

// FromEnv reads the server's address (PULSE_NATS_LISTEN) and store (PULSE_DATA_DIR)
// through lookup; unset variables keep the defaults. A bad address is an *envconf.Error
// naming the variable. The token the server requires is the bus's, PULSE_NATS_TOKEN, read
// with the bus configuration (transport.FromEnv); set Options.Token from it.
func FromEnv(lookup func(string) (string, bool)) (Options, error) {
	o := Options{Listen: DefaultListen, DataDir: DefaultDataDir}
	r := envconf.Reader{Lookup: lookup}
	r.String(EnvListen, &o.Listen)
	r.String(EnvDataDir, &o.DataDir)
	if r.Err != nil {
		return Options{}, r.Err
	}
	if _, _, err := splitHostPort("listen address", o.Listen); err != nil {
		return Options{}, &envconf.Error{Var: EnvListen, Value: o.Listen, Accepted: "host:port, e.g. 127.0.0.1:4223 (port 0 picks a free one)"}
	}
	return o, nil
}
