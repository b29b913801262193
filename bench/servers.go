package bench

import (
	"context"
	"fmt"
	"os"

	"github.com/nats-io/nats-server/v2/server"

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
