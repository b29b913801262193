package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/redis/go-redis/v9"
)

// redisStartTimeout bounds how long a started redis-server may take to answer PING.
const redisStartTimeout = 10 * time.Second

// RedisServer is a redis-server process owned by the bench, on a free loopback port, with
// persistence off. It is never the machine's own Redis.
type RedisServer struct {
	// Addr is host:port.
	Addr string
	// Version is what `redis-server --version` reports.
	Version string

	cmd  *exec.Cmd
	dir  string
	out  *bytes.Buffer
	done chan struct{}

	stopOnce sync.Once
}

// StartRedis starts redis-server on a free port and waits until it answers. A missing binary
// is an error with an install hint.
func StartRedis(ctx context.Context) (*RedisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("bench: redis-server not found on PATH (install it: apt-get install redis-server): %w", err)
	}
	version := ""
	if out, err := exec.CommandContext(ctx, bin, "--version").Output(); err == nil {
		version = strings.TrimSpace(string(out))
		if f := strings.Fields(version); len(f) >= 3 && strings.HasPrefix(f[2], "v=") {
			version = strings.TrimPrefix(f[2], "v=")
		}
	}
	var lastErr error
	for range 3 { // a free port can be taken between probing and binding it
		r, err := startRedisOnce(ctx, bin)
		if err == nil {
			r.Version = version
			return r, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return nil, lastErr
}

func startRedisOnce(ctx context.Context, bin string) (*RedisServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pulsebench-redis-")
	if err != nil {
		return nil, fmt.Errorf("bench: temp dir for redis: %w", err)
	}
	r := &RedisServer{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir, out: &bytes.Buffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(bin,
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no")
	r.cmd.Stdout = &lockedWriter{w: r.out}
	r.cmd.Stderr = r.cmd.Stdout
	// The server dies with the bench even if the bench is killed.
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: start redis-server: %w", err)
	}
	go func() { r.cmd.Wait(); close(r.done) }()

	c := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.NewTimer(redisStartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := c.Ping(ctx).Err(); err == nil {
			return r, nil
		}
		select {
		case <-ctx.Done():
			r.Stop()
			return nil, ctx.Err()
		case <-r.done:
			r.Stop()
			return nil, fmt.Errorf("bench: redis-server on %s exited at start: %s", r.Addr, strings.TrimSpace(r.output()))
		case <-deadline.C:
			r.Stop()
			return nil, fmt.Errorf("bench: redis-server on %s did not answer within %s", r.Addr, redisStartTimeout)
		case <-tick.C:
		}
	}
}

func (r *RedisServer) output() string {
	w := r.cmd.Stdout.(*lockedWriter)
	w.mu.Lock()
	defer w.mu.Unlock()
	return r.out.String()
}

// Stop kills the server and removes its directory. It is idempotent.
func (r *RedisServer) Stop() error {
	r.stopOnce.Do(func() {
		if r.cmd.Process != nil {
			r.cmd.Process.Kill()
		}
		<-r.done
		os.RemoveAll(r.dir)
	})
	return nil
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w.Len() > 64<<10 { // keep the head: start-up errors are there
		return len(p), nil
	}
	return l.w.Write(p)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("bench: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// NATS server limits: without them JetStream reserves 75% of RAM.
const (
	natsMaxMemory = 256 << 20
	natsMaxStore  = 8 << 30
)

// NATSServer is an embedded nats-server with JetStream and a file store in a temporary
// directory, on a random loopback port. Every JetStream contender connects to it over TCP.
type NATSServer struct {
	// URL is the client URL.
	URL string
	// Version is the server version.
	Version string

	srv *server.Server
	dir string

	stopOnce sync.Once
}

// StartNATS starts the embedded server and waits until it accepts connections.
func StartNATS() (*NATSServer, error) {
	dir, err := os.MkdirTemp("", "pulsebench-nats-")
	if err != nil {
		return nil, fmt.Errorf("bench: temp dir for nats: %w", err)
	}
	srv, err := server.NewServer(&server.Options{
		Host:               "127.0.0.1",
		Port:               -1,
		JetStream:          true,
		StoreDir:           dir,
		JetStreamMaxMemory: natsMaxMemory,
		JetStreamMaxStore:  natsMaxStore,
		NoLog:              true,
		NoSigs:             true,
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: configure nats-server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		os.RemoveAll(dir)
		return nil, errors.New("bench: nats-server not ready within 10s")
	}
	return &NATSServer{URL: srv.ClientURL(), Version: server.VERSION, srv: srv, dir: dir}, nil
}

// Stop shuts the server down and removes its store. It is idempotent.
func (n *NATSServer) Stop() error {
	n.stopOnce.Do(func() {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		os.RemoveAll(n.dir)
	})
	return nil
}
