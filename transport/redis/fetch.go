package redis

import (
	"context"
	"errors"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// fetcher reads new entries (XREADGROUP … >) for one subscription, on a connection of its own
// (a respConn), so that a blocked read never holds a connection a publisher needs. It reads
// ahead: Receive keeps readAhead reads asked for, so while the Bus handles one batch the next
// is ready and the one after is being read. Redis then always has the next XREADGROUP to
// work on; with a single read ahead it sat idle while the request for the next one travelled
// (measured: the Bus waited for reads ~40% of the time on loopback).
//
// Results are buffered until Receive takes them, so the fetcher holds at most readAhead
// batches that were delivered to this consumer but not yet handed out. The goroutine is owned
// by the subscription: stop ends it.
type fetcher struct {
	dialOpts func(ctx context.Context) (*goredis.Options, error) // how to dial the key's node
	group    string
	consumer string
	key      string

	req  chan int         // a read of up to n entries; capacity readAhead
	res  chan fetchResult // results; capacity readAhead, so the loop never blocks on them
	quit chan struct{}
	done chan struct{}

	dialCtx    context.Context // cancelled by stop, to abandon a dial in progress
	cancelDial context.CancelFunc

	mu      sync.Mutex
	conn    *respConn // nil until the first read and after a broken one
	stopped bool

	// Receive goroutine only: requests out whose results were not yet taken, and how many
	// were ever asked and taken (results come back in the order asked).
	asked, issued, taken int
}

// readAhead is how many reads a subscription keeps asked for.
const readAhead = 2

// fetchResult is one read: the entries, or the error, and when the read returned (the entries'
// idle time in Redis counts from about then).
type fetchResult struct {
	msgs []entry
	err  error
	at   time.Time
}

func newFetcher(dialOpts func(ctx context.Context) (*goredis.Options, error), key, group, consumer string) *fetcher {
	f := &fetcher{
		dialOpts: dialOpts,
		key:      key,
		group:    group,
		consumer: consumer,
		req:      make(chan int, readAhead),
		res:      make(chan fetchResult, readAhead),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	f.dialCtx, f.cancelDial = context.WithCancel(context.Background())
	go f.loop()
	return f
}

// ask requests reads of up to n entries until readAhead are out. Receive goroutine only.
func (f *fetcher) ask(n int) {
	for f.asked < readAhead {
		f.asked++
		f.issued++
		f.req <- n // never blocks: requests plus results never exceed readAhead
	}
}

// took records that Receive took the result of a request.
func (f *fetcher) took() { f.asked--; f.taken++ }

func (f *fetcher) loop() {
	defer close(f.done)
	for {
		select {
		case n := <-f.req:
			msgs, err := f.read(n)
			f.res <- fetchResult{msgs: msgs, err: err, at: time.Now()}
		case <-f.quit:
			return
		}
	}
}

// read blocks until entries arrive, Redis fails, or stop. An empty BLOCK timeout (maxBlock,
// never 0: that would wait forever) is retried here. A failed read goes back to Receive and the
// Bus, which backs off; an error reply (NOGROUP) keeps the connection, any other failure drops
// it so that the next read dials afresh.
func (f *fetcher) read(n int) ([]entry, error) {
	for {
		c, err := f.connection()
		if err != nil {
			return nil, err
		}
		msgs, err := c.readGroup(f.key, f.group, f.consumer, n, maxBlock)
		var reply respError
		switch {
		case err == nil:
			if len(msgs) > 0 {
				return msgs, nil
			}
		case f.isStopped():
			return nil, errFetcherStopped
		case isMoved(err): // the key is elsewhere now: the next read dials where it is
			f.drop(c)
			return nil, err
		case errors.As(err, &reply):
			return nil, err
		default:
			f.drop(c)
			return nil, err
		}
	}
}

var errFetcherStopped = errors.New("redis: fetcher stopped")

// connection returns the reading connection, dialing it if there is none.
func (f *fetcher) connection() (*respConn, error) {
	f.mu.Lock()
	c, stopped := f.conn, f.stopped
	f.mu.Unlock()
	switch {
	case stopped:
		return nil, errFetcherStopped
	case c != nil:
		return c, nil
	}
	opts, err := f.dialOpts(f.dialCtx)
	if err != nil {
		return nil, err
	}
	c, err = dialResp(f.dialCtx, opts, readerName(f.key, f.group, f.consumer))
	if err != nil {
		if f.isStopped() {
			return nil, errFetcherStopped
		}
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		c.Close()
		return nil, errFetcherStopped
	}
	f.conn = c
	return c, nil
}

func (f *fetcher) drop(c *respConn) {
	f.mu.Lock()
	if f.conn == c {
		f.conn = nil
	}
	f.mu.Unlock()
	c.Close()
}

func (f *fetcher) isStopped() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stopped
}

// stop ends the goroutine, interrupting a blocked read by closing its connection (or a dial by
// cancelling it), and returns the entries of the reads that completed but were never taken
// (the caller hands them back). It is idempotent.
func (f *fetcher) stop() []entry {
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		return nil
	}
	f.stopped = true
	c := f.conn
	f.conn = nil
	f.mu.Unlock()
	f.cancelDial()
	close(f.quit)
	if c != nil {
		c.Close()
	}
	<-f.done
	var unread []entry
	for {
		select {
		case r := <-f.res:
			unread = append(unread, r.msgs...)
		default:
			return unread
		}
	}
}

// readerName is the CLIENT SETNAME of a subscription's reading connection.
func readerName(key, group, consumer string) string {
	return "pulse-reader:" + key + ":" + group + ":" + consumer
}
