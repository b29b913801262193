// Package natstest runs embedded JetStream servers (transport/jetstream/embedded) for tests:
// each on a random loopback port, with its file store in a temporary directory. Tests own
// their servers; a NATS server already on the machine (4222) is never used.
//
// A test package normally shares one server, started on first use and stopped after the last
// test:
//
//	var natsSrv natstest.Shared
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(natsSrv.Main(m)) }
//
//	func TestX(t *testing.T) { url := natsSrv.Server(t).ClientURL() … }
//
// Tests that stop or restart the server, or form a cluster, start servers of their own with
// Start or StartCluster, which stop them at the end of the test.
package natstest

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pulse-bus/pulse/internal/testutil"
	"github.com/pulse-bus/pulse/transport/jetstream/embedded"
)

// Test limits: small, so that tests never reserve much of the machine.
const (
	MaxMemory int64 = 64 << 20
	MaxStore  int64 = 1 << 30
	// StartTimeout bounds starting one server.
	StartTimeout = 20 * time.Second
	// ClusterReadyTimeout bounds the wait for a cluster's JetStream meta leader: the first
	// elections usually settle in under a second but, with split votes, sometimes take 15 s.
	ClusterReadyTimeout = 45 * time.Second
)

// Options returns the options of a test server on a random loopback port storing in dir.
func Options(dir string) embedded.Options {
	return embedded.Options{
		Listen:       "127.0.0.1:-1",
		DataDir:      dir,
		MaxMemory:    MaxMemory,
		MaxStore:     MaxStore,
		StartTimeout: StartTimeout,
	}
}

// Start starts a server for t with its store in t.TempDir(), changed by edit if not nil, and
// stops it when t ends.
func Start(t testing.TB, edit func(*embedded.Options)) *embedded.Server {
	t.Helper()
	opts := Options(t.TempDir())
	if edit != nil {
		edit(&opts)
	}
	s, err := embedded.Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("natstest: start embedded server: %v", err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// Cluster is a JetStream cluster of embedded servers in this process.
type Cluster struct {
	Name    string
	Servers []*embedded.Server
	// Options are each member's options, to restart one with Restart.
	Options []embedded.Options
}

// StartCluster starts n servers (n ≥ 3 for JetStream clustering) as one JetStream cluster,
// each with its own t.TempDir() store and every member in every member's routes, and waits
// until all accept clients and JetStream has a meta leader that every member follows. It
// stops them when t ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	ports, err := FreePorts(n)
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	routes := make([]string, n)
	for i, p := range ports {
		routes[i] = "nats://127.0.0.1:" + strconv.Itoa(p)
	}
	c := &Cluster{Name: "pulse-test"}
	for i := range n {
		o := Options(t.TempDir())
		o.ServerName = fmt.Sprintf("n%d", i+1)
		o.Cluster = &embedded.ClusterOptions{
			Name:   c.Name,
			Listen: "127.0.0.1:" + strconv.Itoa(ports[i]),
			Routes: routes,
		}
		c.Options = append(c.Options, o)
	}
	// Start them together: a member waits for its peers' routes before it is ready.
	servers := make([]*embedded.Server, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, o := range c.Options {
		wg.Go(func() { servers[i], errs[i] = embedded.Start(context.Background(), o) })
	}
	wg.Wait()
	for i, s := range servers {
		if s != nil {
			t.Cleanup(s.Shutdown)
		}
		if errs[i] != nil {
			t.Fatalf("natstest: start cluster member %d: %v", i+1, errs[i])
		}
	}
	c.Servers = servers
	// Accepting clients is not enough: JetStream requests hang until the members have elected
	// a meta leader and caught up with it.
	// The servers publish no event for it, so their state is polled, with a deadline.
	deadline := time.NewTimer(ClusterReadyTimeout)
	defer deadline.Stop()
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for !c.jetStreamReady() {
		select {
		case <-deadline.C:
			t.Fatalf("natstest: the cluster's JetStream was not ready after %s", ClusterReadyTimeout)
		case <-poll.C:
		}
	}
	return c
}

// jetStreamReady reports whether one member leads the JetStream meta group and every member
// is current with it.
func (c *Cluster) jetStreamReady() bool {
	leaders := 0
	for _, s := range c.Servers {
		ns := s.NATS()
		if !ns.JetStreamIsCurrent() {
			return false
		}
		if ns.JetStreamIsLeader() {
			leaders++
		}
	}
	return leaders == 1
}

// ClientURLs is every member's client URL, comma-separated (a NATS_URL for the cluster).
func (c *Cluster) ClientURLs() string {
	var s string
	for i, srv := range c.Servers {
		if i > 0 {
			s += ","
		}
		s += srv.ClientURL()
	}
	return s
}

// FreePorts returns n distinct loopback ports that were free a moment ago (another process
// may still take one before it is used; cluster routes need their ports before start).
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Shared is a test package's server, started on first use by Server and stopped by the
// TestMain wrapper Main. The zero value is ready to use.
type Shared struct {
	once sync.Once
	srv  *embedded.Server
	dir  string
	err  error
}

// Server returns the shared server, starting it on first use.
func (sh *Shared) Server(t testing.TB) *embedded.Server {
	t.Helper()
	sh.once.Do(func() {
		sh.dir, sh.err = os.MkdirTemp("", "natstest-")
		if sh.err != nil {
			return
		}
		sh.srv, sh.err = embedded.Start(context.Background(), Options(sh.dir))
	})
	if sh.err != nil {
		t.Fatalf("natstest: start the shared embedded server: %v", sh.err)
	}
	return sh.srv
}

// Stop stops the shared server if it was started and removes its store.
func (sh *Shared) Stop() error {
	sh.once.Do(func() {}) // a later Server call must not start a new one
	if sh.srv != nil {
		sh.srv.Shutdown()
	}
	if sh.dir != "" {
		return os.RemoveAll(sh.dir)
	}
	return nil
}

// Main wraps m so that the shared server is stopped right after the tests ran, before a leak
// check looks at what is left: goleak.VerifyTestMain(shared.Main(m)).
func (sh *Shared) Main(m testutil.Runner) testutil.Runner {
	return testutil.AfterRun(m, "natstest: stopping the shared server", sh.Stop)
}

// LeakOptions ignore the goroutines an embedded server keeps for every stream and consumer
// it stores (they live as long as the server, which outlives the test that created them);
// for goleak checks made while a server is still running.
func LeakOptions() []goleak.Option {
	var opts []goleak.Option
	for _, f := range []string{
		"(*consumer).loopAndGatherMsgs",
		"(*consumer).processInboundAcks",
		"(*consumer).processInboundNextMsgReqs",
		"(*consumerFileStore).flushLoop",
		"(*fileStore).flushStreamStateLoop",
		"(*stream).internalLoop",
		"(*stream).signalConsumersLoop",
	} {
		opts = append(opts, goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server."+f))
	}
	return opts
}
