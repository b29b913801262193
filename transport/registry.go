package transport

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/pulse-bus/pulse/transport/driver"
)

// backend is one registered driver.
type backend struct {
	open  func(ctx context.Context, cfg Config) (driver.Driver, error)
	check func(cfg Config) error
}

var (
	registryMu sync.RWMutex
	registry   = map[string]backend{}
)

// Register makes a driver available under name (EVENT_BUS_BACKEND), as database/sql does;
// drivers call it from an init function. open opens a driver for cfg. check, which may be
// nil, validates the settings of cfg that belong to this backend (its URLs, credential
// files) without connecting, so that Config.Validate — and so FromEnv and Open — reports a
// bad one by its variable before anything connects and other backends' settings never stop
// this one; its errors should be *envconf.Error. Register panics if name is empty, open is nil
// or name is taken: those are programming errors found at start-up.
func Register(name string, open func(ctx context.Context, cfg Config) (driver.Driver, error), check func(cfg Config) error) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if name == "" || open == nil {
		panic("transport: Register with an empty name or a nil open")
	}
	if _, dup := registry[name]; dup {
		panic("transport: Register called twice for " + name)
	}
	registry[name] = backend{open: open, check: check}
}

// checkBackend runs the registered check of cfg.Backend, if any.
func checkBackend(cfg Config) error {
	registryMu.RLock()
	b, ok := registry[cfg.Backend]
	registryMu.RUnlock()
	if !ok || b.check == nil {
		return nil
	}
	return b.check(cfg)
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
func OpenDriver(ctx context.Context, cfg Config) (driver.Driver, error) {
	registryMu.RLock()
	b, ok := registry[cfg.Backend]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w %q (registered: %s; is the driver package imported, e.g. _ \"github.com/pulse-bus/pulse/transport/%s\"?)",
			ErrUnknownBackend, cfg.Backend, strings.Join(Backends(), ", "), cfg.Backend)
	}
	return b.open(ctx, cfg)
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
