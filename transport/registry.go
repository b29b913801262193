package transport

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// OpenFunc opens a driver from the configuration.
type OpenFunc func(ctx context.Context, cfg Config) (Driver, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]OpenFunc{}
)

// Register makes a driver available under name, as database/sql does. Drivers call it from an
// init function. It panics if name is empty, open is nil or name is taken: those are
// programming errors found at start-up.
func Register(name string, open OpenFunc) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if name == "" || open == nil {
		panic("transport: Register with empty name or nil OpenFunc")
	}
	if _, dup := registry[name]; dup {
		panic("transport: Register called twice for " + name)
	}
	registry[name] = open
}

// Backends lists the registered driver names, sorted.
func Backends() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// OpenDriver opens the driver registered as cfg.Backend.
func OpenDriver(ctx context.Context, cfg Config) (Driver, error) {
	registryMu.RLock()
	open, ok := registry[cfg.Backend]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w %q (registered: %s; is the driver package imported, e.g. _ \"github.com/pulse-bus/pulse/transport/%s\"?)",
			ErrUnknownBackend, cfg.Backend, strings.Join(Backends(), ", "), cfg.Backend)
	}
	return open(ctx, cfg)
}

// Open validates cfg, opens the driver registered as cfg.Backend and returns a Bus over it.
func Open(ctx context.Context, cfg Config) (*Bus, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	drv, err := OpenDriver(ctx, cfg)
	if err != nil {
		return nil, err
	}
	b, err := New(drv, cfg)
	if err != nil {
		drv.Close()
		return nil, err
	}
	return b, nil
}
