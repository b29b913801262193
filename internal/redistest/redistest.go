// Package redistest runs real redis-server processes for tests: each on a free loopback port,
// without persistence (`--save "" --appendonly no`), in its own temporary directory. Tests
// own their servers; the machine's own Redis on 6379 is never used.
//
// A test package normally shares one server, started on first use and stopped after the last
// test:
//
//	var redisSrv redistest.Shared
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(redisSrv.Main(m)) }
//
//	func TestX(t *testing.T) { url := redisSrv.Server(t).URL() … }
//
// Tests that stop, kill or restart Redis start a server of their own with Start, so that they
// do not disturb the others.
//
// A missing redis-server binary fails the test with an install hint; it never skips.
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pulse-bus/pulse/internal/testutil"
)

// BinaryEnv names an environment variable that may point at the redis-server binary; unset,
// the binary is looked up in PATH (and at /usr/bin/redis-server).
const BinaryEnv = "REDIS_SERVER_BIN"

// Timeouts of the server's life cycle.
const (
	readyTimeout = 10 * time.Second // from exec to the first PONG
	stopTimeout  = 5 * time.Second  // from SIGTERM to exit, before SIGKILL
	maxPortTries = 5                // fresh ports tried when another process takes ours
)

// InstallHint tells how to get redis-server; it ends every "binary not found" error.
const InstallHint = "install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) or set " + BinaryEnv

// ErrNotFound is returned (wrapped) when no redis-server binary can be found.
var ErrNotFound = errors.New("redistest: redis-server binary not found")

// Server is one redis-server process. Its methods are safe for concurrent use.
type Server struct {
	bin  string
	port int
	dir  string
	tls  *tlsListener // nil: plain TCP only
	// role shapes the command line: extra arguments for a cluster node or a replica, or a
	// sentinel's configuration file (see cluster.go).
	role role

	mu   sync.Mutex
	cmd  *exec.Cmd
	out  *testutil.LockedBuffer
	done chan struct{} // closed when the current process has exited (its Wait returned)
}

// Binary returns the path of the redis-server binary, or an error wrapping ErrNotFound that
// says how to install it.
func Binary() (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: %s=%q: %v; %s", ErrNotFound, BinaryEnv, p, err, InstallHint)
		}
		return p, nil
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/bin/redis-server"); err == nil {
		return "/usr/bin/redis-server", nil
	}
	return "", fmt.Errorf("%w in PATH: %s", ErrNotFound, InstallHint)
}

// tlsListener is a server's TLS port and its certificate.
type tlsListener struct {
	port              int
	certFile, keyFile string
}

// Start starts a redis-server on a free loopback port and returns once it answers PING.
// The caller must Stop it.
func Start() (*Server, error) { return start(nil, role{}) }

// StartTLS is Start with a second, TLS, listener on another free loopback port (TLSAddr),
// serving the PEM certificate and key in certFile and keyFile (a self-signed certificate
// will do); clients are not asked for a certificate. The plain port stays open for the test's own checks.
func StartTLS(certFile, keyFile string) (*Server, error) {
	return start(&tlsListener{certFile: certFile, keyFile: keyFile}, role{})
}

func start(tls *tlsListener, r role) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		return nil, fmt.Errorf("redistest: temp dir: %w", err)
	}
	s := &Server{bin: bin, dir: dir, tls: tls, role: r}
	for try := 1; ; try++ {
		// Below the ephemeral range, so that a server killed and restarted finds its port
		// again (an outgoing connection could have been given it meanwhile).
		if r.clusterBus {
			s.port, err = freeClusterPort()
		} else {
			s.port, err = portBelowEphemeral(0)
		}
		if err == nil && tls != nil {
			if tls.port, err = freePort(); err == nil && tls.port == s.port {
				err = errors.New("redistest: the same free port twice: Address already in use")
			}
		}
		if err == nil {
			err = s.start()
		}
		if err == nil {
			return s, nil
		}
		// Another process may have taken the port between freePort and the bind.
		if try == maxPortTries || !strings.Contains(err.Error(), "Address already in use") {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

// StartT starts a server for one test and stops it at the test's cleanup. A missing binary
// or a server that does not come up fails the test.
func StartT(t testing.TB) *Server {
	t.Helper()
	s, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stopping redis-server: %v", err)
		}
	})
	return s
}

// TLSAddr is the host:port of the TLS listener of a server started with StartTLS ("" for
// one started with Start).
func (s *Server) TLSAddr() string {
	if s.tls == nil {
		return ""
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.tls.port))
}

// Port is the TCP port the server listens on; it stays the same across Restart.
func (s *Server) Port() int { return s.port }

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is a redis:// URL for database 0.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Version is the version the server's binary reports (`redis-server --version`, its v=
// field, e.g. "7.0.15"; the whole trimmed output if it has no such field). It runs the binary
// once and does not need the server to be running.
func (s *Server) Version() (string, error) {
	out, err := exec.Command(s.bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("redistest: %s --version: %w", s.bin, err)
	}
	v := strings.TrimSpace(string(out))
	for _, f := range strings.Fields(v) {
		if after, ok := strings.CutPrefix(f, "v="); ok {
			return after, nil
		}
	}
	return v, nil
}

// Running reports whether the process is alive.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runningLocked()
}

func (s *Server) runningLocked() bool {
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Stop shuts the server down (SIGTERM, then SIGKILL after a grace period) and waits for it to
// exit. It is idempotent; Restart starts it again.
func (s *Server) Stop() error { return s.halt(syscall.SIGTERM) }

// Kill stops the server abruptly with SIGKILL, as a crash would, and waits for it to exit.
func (s *Server) Kill() error { return s.halt(syscall.SIGKILL) }

// Close stops the server and removes its directory. It is idempotent.
func (s *Server) Close() error {
	err := s.Stop()
	os.RemoveAll(s.dir)
	return err
}

// Restart stops the server if it runs and starts it again on the same port, returning once
// it answers PING. Without persistence the new server starts empty.
func (s *Server) Restart() error {
	if err := s.Stop(); err != nil {
		return err
	}
	return s.start()
}

func (s *Server) halt(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.runningLocked() {
		return nil
	}
	_ = s.cmd.Process.Signal(sig)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-s.done:
	case <-t.C:
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	return nil
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.runningLocked() {
		return fmt.Errorf("redistest: server on port %d already running", s.port)
	}
	args := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--daemonize", "no",
		"--protected-mode", "no",
		"--loglevel", "warning",
	}
	if s.role.sentinel == nil {
		args = append(args, "--save", "", "--appendonly", "no")
	} else {
		conf, err := s.role.sentinel(s)
		if err != nil {
			return err
		}
		args = append([]string{conf, "--sentinel"}, args...)
	}
	args = append(args, s.role.args...)
	if s.tls != nil {
		args = append(args,
			"--tls-port", strconv.Itoa(s.tls.port),
			"--tls-cert-file", s.tls.certFile,
			"--tls-key-file", s.tls.keyFile,
			"--tls-ca-cert-file", s.tls.certFile, // required by Redis even when clients need none
			"--tls-auth-clients", "no",
		)
	}
	cmd := exec.Command(s.bin, args...)
	out := &testutil.LockedBuffer{Limit: 64 << 10} // keep the start-up messages
	cmd.Stdout, cmd.Stderr = out, out
	// The server dies with the test binary even when the binary is killed (a -timeout panic
	// skips every cleanup).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redistest: start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() { // owned by the Server: ends when the process exits
		_ = cmd.Wait()
		close(done)
	}()
	s.cmd, s.out, s.done = cmd, out, done

	deadline := time.Now().Add(readyTimeout)
	for {
		err := ping(s.Addr())
		if err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("redistest: redis-server on port %d exited at start-up: %s", s.port, strings.TrimSpace(out.String()))
		case <-time.After(10 * time.Millisecond): // polling the port for readiness
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("redistest: redis-server on port %d did not answer PING within %s (last: %v): %s", s.port, readyTimeout, err, strings.TrimSpace(out.String()))
		}
	}
}

// ping sends PING over a fresh connection and expects +PONG.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("unexpected reply %q", strings.TrimSpace(line))
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("redistest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Shared is a test package's server, started on first use by Server and stopped by the
// TestMain wrapper Main. The zero value is ready to use.
type Shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Server returns the shared server, starting it on first use. If it cannot be started (for
// example the binary is missing) the test fails with the reason and an install hint.
func (sh *Shared) Server(t testing.TB) *Server {
	t.Helper()
	sh.once.Do(func() { sh.srv, sh.err = Start() })
	if sh.err != nil {
		t.Fatal(sh.err)
	}
	return sh.srv
}

// Stop stops the shared server if it was started and removes its directory.
func (sh *Shared) Stop() error {
	sh.once.Do(func() {}) // a later Server call must not start a new one
	if sh.srv == nil {
		return nil
	}
	return sh.srv.Close()
}

// Main wraps m so that the shared server is stopped right after the tests ran, before a leak
// check looks at what is left: goleak.VerifyTestMain(shared.Main(m)).
func (sh *Shared) Main(m testutil.Runner) testutil.Runner {
	return testutil.AfterRun(m, "redistest: stopping the shared redis-server", sh.Stop)
}
