package transport_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// fakeProvider is a driver whose shared idempotency record cannot be had.
type fakeProvider struct{ *fakeDriver }

func (fakeProvider) IdempotencyStore(context.Context, time.Duration) (transport.IdempotencyStore, error) {
	return nil, errors.New("no record")
}

func init() {
	transport.Register("unit-fake", func(context.Context, transport.Config) (driver.Driver, error) {
		return newFakeDriver(), nil
	}, nil)
	transport.Register("unit-failing", func(context.Context, transport.Config) (driver.Driver, error) {
		return nil, errors.New("cannot connect")
	}, nil)
	transport.Register("unit-provider", func(context.Context, transport.Config) (driver.Driver, error) {
		return lastProvider.set(fakeProvider{newFakeDriver()}), nil
	}, nil)
}

// lastProvider remembers the driver the unit-provider backend opened last.
var lastProvider providerBox

type providerBox struct{ p fakeProvider }

func (b *providerBox) set(p fakeProvider) fakeProvider { b.p = p; return p }

// TestRegistryUnknownBackend proves that opening an unregistered name fails with
// ErrUnknownBackend, lists the registered names and hints at the missing import.
func TestRegistryUnknownBackend(t *testing.T) {
	_, err := transport.Open(t.Context(), transport.Config{Backend: "nosuch"})
	require.ErrorIs(t, err, transport.ErrUnknownBackend)
	require.ErrorContains(t, err, `"nosuch"`)
	require.ErrorContains(t, err, "unit-failing, unit-fake, unit-provider")
	require.ErrorContains(t, err, `_ "github.com/pulse-bus/pulse/transport/nosuch"`)
	_, err = transport.OpenDriver(t.Context(), transport.Config{Backend: "nosuch"})
	require.ErrorIs(t, err, transport.ErrUnknownBackend)
}

// TestRegistryBackendsSorted proves Backends lists every registered name in order.
func TestRegistryBackendsSorted(t *testing.T) {
	require.Equal(t, []string{"inmem", "unit-failing", "unit-fake", "unit-provider"}, transport.Backends(), "inmem: the examples import it")
}

// TestRegisterPanicsOnMisuse proves that an empty name, a nil OpenFunc and a name registered
// twice are caught at start-up.
func TestRegisterPanicsOnMisuse(t *testing.T) {
	open := func(context.Context, transport.Config) (driver.Driver, error) { return nil, nil }
	require.Panics(t, func() { transport.Register("", open, nil) })
	require.Panics(t, func() { transport.Register("unit-nil", nil, nil) })
	require.Panics(t, func() { transport.Register("unit-fake", open, nil) })
}

// TestOpen proves that Open validates the configuration before opening anything, returns the
// opener's error, and returns a Bus over the registered driver with defaults filled in.
func TestOpen(t *testing.T) {
	_, err := transport.Open(t.Context(), transport.Config{Backend: "unit-fake", Namespace: "Bad"})
	var ce *envconf.Error
	require.ErrorAs(t, err, &ce)

	_, err = transport.Open(t.Context(), transport.Config{Backend: "unit-failing"})
	require.ErrorContains(t, err, "cannot connect")

	bus, err := transport.Open(t.Context(), transport.Config{Backend: "unit-fake"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = bus.Close() })
	require.IsType(t, &fakeDriver{}, bus.Driver())
	require.Equal(t, transport.DefaultGroup, bus.Config().Group)
}

// TestOpenClosesDriverWhenBusFails proves that when the Bus cannot be built over a driver
// (its shared idempotency record is unavailable) Open closes the driver it opened.
func TestOpenClosesDriverWhenBusFails(t *testing.T) {
	_, err := transport.Open(t.Context(), transport.Config{Backend: "unit-provider", SharedIdempotency: true})
	require.ErrorContains(t, err, "no record")
	require.Equal(t, "close", lastProvider.p.next(t).kind)
}
