package testutil

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLockedBufferBoundedAndConcurrent proves writes from several goroutines are all kept up
// to the limit, then accepted and dropped.
func TestLockedBufferBoundedAndConcurrent(t *testing.T) {
	b := &LockedBuffer{Limit: 100}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for range 5 {
				n, err := fmt.Fprintf(b, "%d", i)
				require.NoError(t, err)
				require.Equal(t, 1, n)
			}
		})
	}
	wg.Wait()
	require.Len(t, b.String(), 20)
	n, err := b.Write(make([]byte, 200))
	require.NoError(t, err)
	require.Equal(t, 200, n)
	require.Len(t, b.String(), 100)
}

type fakeRunner struct{ ran *bool }

func (f fakeRunner) Run() int { *f.ran = true; return 3 }

// TestAfterRunStopsAfterTheTests proves stop runs after the tests, whose exit code is kept
// even when stop fails.
func TestAfterRunStopsAfterTheTests(t *testing.T) {
	var ran, stoppedAfter bool
	r := AfterRun(fakeRunner{ran: &ran}, "test", func() error {
		stoppedAfter = ran
		return fmt.Errorf("stop failed")
	})
	require.Equal(t, 3, r.Run())
	require.True(t, stoppedAfter)
}
