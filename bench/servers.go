package bench

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/pulse-bus/pulse/transport/jetstream/embedded"
)

// The bench's Redis is internal/redistest's redis-server process (a free loopback port, no
// persistence, never the machine's own Redis); its NATS is the embedded server below.

// NATSServer is an embedded nats-server (transport/jetstream/embedded) with JetStream and a
// file store in a temporary directory, on a random loopback port. Every JetStream contender
// connects to it over TCP.
type NATSServer struct {
	// URL is the client URL.
	URL string
	// Version is the server version.
	Version string

	srv *embedded.Server
	dir string
}

// StartNATS starts the embedded server and waits until it accepts connections (or ctx is
// done). On error nothing is left running and the store directory is removed.
func StartNATS(ctx context.Context) (*NATSServer, error) {
	dir, err := os.MkdirTemp("", "pulsebench-nats-")
	if err != nil {
		return nil, fmt.Errorf("bench: temp dir for nats: %w", err)
	}
	srv, err := embedded.Start(ctx, embedded.Options{Listen: "127.0.0.1:-1", DataDir: dir})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: %w", err)
	}
	return &NATSServer{URL: srv.ClientURL(), Version: server.VERSION, srv: srv, dir: dir}, nil
}

// Stop shuts the server down and removes its store. It is idempotent.
func (n *NATSServer) Stop() error {
	n.srv.Shutdown()
	return os.RemoveAll(n.dir)
}

// NATSProcess is a nats-server process built from this module's graph (the same version as
// the embedded server), with JetStream and a file store in a temporary directory, on a free
// loopback port: the server of the external section, where the server's work does not share
// the bench's process.
type NATSProcess struct {
	URL     string
	Version string

	cmd  *exec.Cmd
	dir  string
	done chan struct{}
}

// StartNATSProcess builds nats-server into a temporary directory (tools caches the binary
// across sections of one run) and starts it, returning once it accepts connections.
func StartNATSProcess(ctx context.Context, tools *Tools) (*NATSProcess, error) {
	bin, err := tools.NATSServer(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pulsebench-nats-process-")
	if err != nil {
		return nil, fmt.Errorf("bench: temp dir for nats-server: %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: start nats-server: %w", err)
	}
	p := &NATSProcess{URL: fmt.Sprintf("nats://127.0.0.1:%d", port), Version: server.VERSION, cmd: cmd, dir: dir, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }() // owned by p: ends when the process does (Stop)
	err = waitFor(ctx, 20*time.Millisecond, func(ctx context.Context) (bool, error) {
		select {
		case <-p.done:
			return false, fmt.Errorf("bench: nats-server exited: %s", out.String())
		default:
		}
		nc, err := nats.Connect(p.URL)
		if err != nil {
			return false, nil
		}
		nc.Close()
		return true, nil
	})
	if err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// PID is the server's process id.
func (p *NATSProcess) PID() int { return p.cmd.Process.Pid }

// Stop ends the process and removes its store. It is idempotent.
func (p *NATSProcess) Stop() error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	return os.RemoveAll(p.dir)
}

// Tools builds the external programs a run needs, once each, into one temporary directory.
type Tools struct {
	mu   sync.Mutex
	dir  string
	bins map[string]string
	errs map[string]error
}

// NATSServer is the path of nats-server built from this module's graph.
func (t *Tools) NATSServer(ctx context.Context) (string, error) {
	return t.build(ctx, "nats-server", "build", "-o", "{out}", "github.com/nats-io/nats-server/v2")
}

// NATSCLI is the path of the NATS team's CLI at NATSCLIVersion (its `nats bench` is a
// contender), installed with go install: it is not in this module's graph.
func (t *Tools) NATSCLI(ctx context.Context) (string, error) {
	return t.build(ctx, "nats", "install", "github.com/nats-io/natscli/nats@"+NATSCLIVersion)
}

// NATSCLIVersion is the natscli release whose `nats bench` is measured.
const NATSCLIVersion = "v0.5.0"

func (t *Tools) build(ctx context.Context, name string, args ...string) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if bin, ok := t.bins[name]; ok {
		return bin, t.errs[name]
	}
	if t.dir == "" {
		dir, err := os.MkdirTemp("", "pulsebench-tools-")
		if err != nil {
			return "", fmt.Errorf("bench: temp dir for tools: %w", err)
		}
		t.dir, t.bins, t.errs = dir, map[string]string{}, map[string]error{}
	}
	bin := filepath.Join(t.dir, name)
	for i, a := range args {
		if a == "{out}" {
			args[i] = bin
		}
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), "GOBIN="+t.dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		err = fmt.Errorf("bench: go %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	t.bins[name], t.errs[name] = bin, err
	return bin, err
}

// Close removes what was built.
func (t *Tools) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dir == "" {
		return nil
	}
	return os.RemoveAll(t.dir)
}
