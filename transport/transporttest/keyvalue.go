package transporttest

import (
	"errors"
	"strconv"
	"strings"
	"sync"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

func needsKeyValue(_ Harness, drv driver.Driver) string {
	if _, ok := drv.(driver.KeyValueProvider); !ok {
		return "the driver does not implement driver.KeyValueProvider"
	}
	return ""
}

// testKeyValue proves the KeyValue contract: compare-and-set Create, Update and Delete that
// fail with ErrConflict and write nothing, revisions that only grow, any key of up to
// MaxKeyLen bytes kept exactly, values copied, buckets apart, entries seen by another driver
// (another process), Range over what is there, and CAS that holds under concurrent writers.
func testKeyValue(e *env) {
	ctx := e.ctx()
	bucket := strings.ReplaceAll(strings.ToLower(e.name("kv")), ".", "-")
	open := func() driver.KeyValue {
		drv := e.openDriver(e.config())
		kv, err := drv.(driver.KeyValueProvider).KeyValue(ctx, bucket)
		require.NoError(e.t, err)
		return kv
	}
	kv := open()

	_, err := kv.Get(ctx, "missing")
	require.ErrorIs(e.t, err, transport.ErrKeyNotFound)
	_, err = kv.Update(ctx, "missing", []byte("x"), 1)
	require.ErrorIs(e.t, err, transport.ErrConflict, "update of a key without value")

	r1, err := kv.Create(ctx, "k", []byte("one"))
	require.NoError(e.t, err)
	_, err = kv.Create(ctx, "k", []byte("again"))
	require.ErrorIs(e.t, err, transport.ErrConflict)
	r2, err := kv.Update(ctx, "k", []byte("two"), r1)
	require.NoError(e.t, err)
	require.Greater(e.t, r2, r1)
	_, err = kv.Update(ctx, "k", []byte("stale"), r1)
	require.ErrorIs(e.t, err, transport.ErrConflict)
	got, err := kv.Get(ctx, "k")
	require.NoError(e.t, err)
	require.Equal(e.t, driver.KVEntry{Key: "k", Value: []byte("two"), Revision: r2}, got)
	got.Value[0] = 'X' // the caller's copy
	got, err = kv.Get(ctx, "k")
	require.NoError(e.t, err)
	require.Equal(e.t, "two", string(got.Value))

	require.ErrorIs(e.t, kv.Delete(ctx, "k", r1), transport.ErrConflict)
	require.NoError(e.t, kv.Delete(ctx, "k", r2))
	_, err = kv.Get(ctx, "k")
	require.ErrorIs(e.t, err, transport.ErrKeyNotFound)
	require.NoError(e.t, kv.Delete(ctx, "k", 0), "deleting a key without value")
	r3, err := kv.Create(ctx, "k", []byte("three"))
	require.NoError(e.t, err, "create after delete")
	require.Greater(e.t, r3, r2)
	r4, err := kv.Put(ctx, "k", []byte("four"))
	require.NoError(e.t, err)
	require.Greater(e.t, r4, r3)

	odd := []string{"a b/ç..", "b64.looks-encoded", ".lead", "x=y", strings.Repeat("é", driver.MaxKeyLen/2), "telemetry.feedback/c1"}
	for i, k := range odd {
		_, err := kv.Put(ctx, k, []byte(strconv.Itoa(i)))
		require.NoError(e.t, err, "key %q", k)
	}
	_, err = kv.Put(ctx, "", []byte("x"))
	require.Error(e.t, err, "empty key")
	_, err = kv.Put(ctx, strings.Repeat("k", driver.MaxKeyLen+1), []byte("x"))
	require.Error(e.t, err, "key longer than MaxKeyLen")

	other := open() // another driver, as another process
	seen := map[string]string{}
	require.NoError(e.t, other.Range(ctx, func(en driver.KVEntry) error {
		seen[en.Key] = string(en.Value)
		return nil
	}))
	want := map[string]string{"k": "four"}
	for i, k := range odd {
		want[k] = strconv.Itoa(i)
	}
	require.Equal(e.t, want, seen)
	stop := errors.New("stop")
	n := 0
	require.ErrorIs(e.t, other.Range(ctx, func(driver.KVEntry) error { n++; return stop }), stop)
	require.Equal(e.t, 1, n)

	drv := e.openDriver(e.config())
	apart, err := drv.(driver.KeyValueProvider).KeyValue(ctx, bucket+"-apart")
	require.NoError(e.t, err)
	_, err = apart.Get(ctx, "k")
	require.ErrorIs(e.t, err, transport.ErrKeyNotFound, "buckets are apart")

	// Compare-and-set under concurrent writers on two drivers: no increment is lost.
	const writers, each = 4, 10
	_, err = kv.Put(ctx, "counter", []byte("0"))
	require.NoError(e.t, err)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		target := kv
		if w%2 == 1 {
			target = other
		}
		wg.Go(func() {
			for range each {
				for {
					cur, err := target.Get(ctx, "counter")
					if err != nil {
						errs <- err
						return
					}
					v, _ := strconv.Atoi(string(cur.Value))
					_, err = target.Update(ctx, "counter", []byte(strconv.Itoa(v+1)), cur.Revision)
					if err == nil {
						break
					}
					if !errors.Is(err, transport.ErrConflict) {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(e.t, err)
	}
	final, err := kv.Get(ctx, "counter")
	require.NoError(e.t, err)
	require.Equal(e.t, strconv.Itoa(writers*each), string(final.Value))
}
