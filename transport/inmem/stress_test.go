package inmem_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/inmem"
)

// TestStressRandomSettlement proves the broker's bookkeeping under a random mix of everything
// members do, concurrently: several members in each of two groups ack, Nak with random
// delays, terminate, or drop deliveries (left to ack-wait), while publishers publish in
// random batches into a stream small enough to exercise back-pressure. Every message is
// eventually settled once per group, no delivery of a message repeats an attempt number, and
// nothing stays pending.
func TestStressRandomSettlement(t *testing.T) {
	const (
		total      = 18000 // a multiple of publishers
		publishers = 3
		members    = 3
		ackWait    = 20 * time.Millisecond
	)
	br := inmem.NewBroker(inmem.BrokerOptions{MaxLen: 500, MaxAckPending: 200})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	type key struct{ group, tid string }
	var mu sync.Mutex
	settled := map[key]int{}
	attempts := map[key]map[int]bool{}
	allSettled := make(chan struct{})
	groups := []string{"g1", "g2"}
	markSettled := func(ks ...key) { // under mu
		for _, k := range ks {
			settled[k]++
		}
		if len(settled) == total*len(groups) {
			select {
			case <-allSettled:
			default:
				close(allSettled)
			}
		}
	}

	var wg sync.WaitGroup
	for _, g := range groups {
		for m := range members {
			d := newDriver(t, br)
			s := sub(t, d, "stress", g, ackWait)
			rng := rand.New(rand.NewPCG(uint64(m), uint64(len(g))))
			wg.Go(func() {
				for {
					ds, err := s.Receive(ctx, 1+rng.IntN(32))
					if err != nil {
						return
					}
					var acks []*driver.Delivery
					for _, dl := range ds {
						k := key{g, dl.TransportID}
						mu.Lock()
						if attempts[k] == nil {
							attempts[k] = map[int]bool{}
						}
						if attempts[k][dl.Attempt] {
							mu.Unlock()
							t.Errorf("%v delivered twice with attempt %d", k, dl.Attempt)
							return
						}
						attempts[k][dl.Attempt] = true
						mu.Unlock()
						switch r := rng.IntN(100); {
						case r < 60:
							acks = append(acks, dl)
						case r < 75:
							if err := s.Nak(ctx, dl, time.Duration(rng.IntN(15))*time.Millisecond); err != nil {
								return
							}
						case r < 85:
							if err := s.Term(ctx, dl); err != nil {
								return
							}
							mu.Lock()
							markSettled(k)
							mu.Unlock()
						default: // dropped: redelivered after ack-wait
						}
					}
					if len(acks) > 0 {
						if err := s.Ack(ctx, acks); err != nil {
							return
						}
						mu.Lock()
						for _, dl := range acks {
							markSettled(key{g, dl.TransportID})
						}
						mu.Unlock()
					}
				}
			})
		}
	}
	var pubs sync.WaitGroup
	for p := range publishers {
		d := newDriver(t, br)
		rng := rand.New(rand.NewPCG(uint64(p), 99))
		pubs.Go(func() {
			for left := total / publishers; left > 0; {
				n := min(left, 1+rng.IntN(50))
				if _, err := d.Publish(ctx, "stress", msgs(0, n)); err != nil {
					t.Errorf("publish: %v", err)
					return
				}
				left -= n
			}
		})
	}
	pubs.Wait()
	select {
	case <-allSettled:
	case <-ctx.Done():
		mu.Lock()
		n := len(settled)
		mu.Unlock()
		t.Fatalf("only %d of %d messages settled", n, total*len(groups))
	}
	// A settlement can race with a redelivery to another member, which may then settle it
	// too; the second one must be a no-op and the message must not come back after that.
	d := newDriver(t, br)
	for _, g := range groups {
		require.Eventually(t, func() bool {
			info, err := d.Info(t.Context(), "stress", g)
			return err == nil && info.Pending == 0 && info.Unread == 0
		}, 10*time.Second, time.Millisecond, "group %s: nothing pending or unread", g)
	}
	cancel()
	wg.Wait()
}
