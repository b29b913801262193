package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"
)

// HTTP server timeouts: generous for a scrape, small enough that a stuck client cannot hold
// a connection (or the shutdown) for long.
const (
	httpReadHeaderTimeout = 5 * time.Second
	httpReadTimeout       = 10 * time.Second
	httpWriteTimeout      = 30 * time.Second
	httpIdleTimeout       = 60 * time.Second
	// readyTimeout bounds the broker round trip of one /readyz probe.
	readyTimeout = 2 * time.Second
)

// endpoints are what the HTTP server answers from.
type endpoints struct {
	// metrics serves /metrics.
	metrics http.Handler
	// ready reports why the service is not ready (nil: ready). It must honour ctx.
	ready func(ctx context.Context) error
	// warnings are shown on /readyz whatever its answer (nil: none).
	warnings func() []string
	// state returns the /state document listing at most n coordinators, encoded as JSON.
	state func(n int) any
	// maxCoordinators bounds ?coordinators= of /state.
	maxCoordinators int
}

func (e endpoints) mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", e.metrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		var warnings []string
		if e.warnings != nil {
			warnings = e.warnings()
		}
		if err := e.ready(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v\n", err)
		} else {
			fmt.Fprintln(w, "ready")
		}
		for _, warning := range warnings {
			fmt.Fprintf(w, "warning: %s\n", warning)
		}
	})
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, r *http.Request) {
		n := DefaultStateCoordinators
		if q := r.URL.Query().Get("coordinators"); q != "" {
			v, err := strconv.Atoi(q)
			if err != nil || v < 0 || v > e.maxCoordinators {
				http.Error(w, fmt.Sprintf("state: coordinators=%q (accepted: 0 to %d)", q, e.maxCoordinators), http.StatusBadRequest)
				return
			}
			n = v
		}
		body, err := json.MarshalIndent(e.state(n), "", "  ")
		if err != nil {
			http.Error(w, "state: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(append(body, '\n'))
	})
	return mux
}

// httpServer is an http.Server on a listener bound at start, so its address (also with
// port 0) is known before anything is served.
type httpServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{} // closed when Serve returned
	err  error         // Serve's error other than ErrServerClosed; read after done
}

// startHTTP binds addr and serves h on it in a goroutine that Stop ends.
func startHTTP(addr string, h http.Handler, log *slog.Logger) (*httpServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("app: http listen on %s (PULSE_HTTP_ADDR): %w", addr, err)
	}
	s := &httpServer{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: httpReadHeaderTimeout,
			ReadTimeout:       httpReadTimeout,
			WriteTimeout:      httpWriteTimeout,
			IdleTimeout:       httpIdleTimeout,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.err = err
		}
	}()
	return s, nil
}

// Addr is the bound address, e.g. 127.0.0.1:9464.
func (s *httpServer) Addr() string { return s.ln.Addr().String() }

// Done is closed when the server stopped serving (after Stop, or on a listener failure).
func (s *httpServer) Done() <-chan struct{} { return s.done }

// Err is why the server stopped serving on its own (nil after Stop); valid after Done.
func (s *httpServer) Err() error { return s.err }

// Stop shuts the server down gracefully, letting requests in flight finish until ctx is
// done, then closes what remains. It waits for the serving goroutine.
func (s *httpServer) Stop(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	<-s.done
	return err
}
