package redis

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// fetcher reads new entries (XREADGROUP … >) for one subscription, on a client of its own
// holding one connection, so that a blocked read never holds a connection a publisher needs.
// It reads one batch ahead: Receive asks for the next batch as soon as it hands one out, so
// Redis and the network work while the Bus handles the current batch.
//
// At most one request is outstanding and its result is buffered until Receive takes it, so
// the fetcher holds at most one batch that was delivered to this consumer but not yet handed
// out. The goroutine is owned by the subscription: stop ends it.
type fetcher struct {
	opts     goredis.Options // the driver's, for one connection
	group    string
	consumer string
	key      string

	req  chan int         // a read of up to n entries; capacity 1
	res  chan fetchResult // its result; capacity 1, so the loop never blocks on it
	quit chan struct{}
	done chan struct{}

	mu      sync.Mutex
	client  *goredis.Client // nil until the first read and after a failed one
	stopped bool

	asked bool // a request is out and its result not yet taken; Receive goroutine only
}

// fetchResult is one read: the entries, or the error, and when the read returned (the entries'
// idle time in Redis counts from about then).
type fetchResult struct {
	msgs []entry
	err  error
	at   time.Time
}

func newFetcher(opts *goredis.Options, key, group, consumer string) *fetcher {
	f := &fetcher{
		opts:     *opts,
		key:      key,
		group:    group,
		consumer: consumer,
		req:      make(chan int, 1),
		res:      make(chan fetchResult, 1),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	f.opts.PoolSize = 1
	f.opts.MinIdleConns = 0
	f.opts.MaxIdleConns = 1
	f.opts.MaxRetries = -1 // a failed read goes back to Receive and the Bus, which backs off
	// CLIENT LIST shows which member a blocked reader belongs to.
	f.opts.ClientName = readerName(key, group, consumer)
	go f.loop()
	return f
}

// ask requests a read of up to n entries unless one is already out. Receive goroutine only.
func (f *fetcher) ask(n int) {
	if !f.asked {
		f.asked = true
		f.req <- n // never blocks: nothing else is in the channel while asked was false
	}
}

// took records that Receive took the result of the outstanding request.
func (f *fetcher) took() { f.asked = false }

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
// never 0: that would wait forever) is retried here.
func (f *fetcher) read(n int) ([]entry, error) {
	for {
		c := f.connection()
		if c == nil {
			return nil, errFetcherStopped
		}
		// XREADGROUP by hand rather than go-redis's XReadGroup, which builds a map per entry
		// (measured: a third of the driver's CPU per consumed message).
		res, err := c.Do(context.Background(), "xreadgroup", "group", f.group, f.consumer,
			"count", n, "block", maxBlock.Milliseconds(), "streams", f.key, ">").Result()
		switch {
		case err == nil:
			msgs, err := parseRead(res, f.key)
			if err != nil || len(msgs) > 0 {
				return msgs, err
			}
		case errors.Is(err, goredis.Nil): // nothing arrived while blocked
		case f.isStopped():
			return nil, errFetcherStopped
		default:
			if !isNoGroup(err) {
				f.drop(c) // its connection may be broken: the next read dials afresh
			}
			return nil, err
		}
	}
}

var errFetcherStopped = errors.New("redis: fetcher stopped")

func (f *fetcher) connection() *goredis.Client {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return nil
	}
	if f.client == nil {
		f.client = goredis.NewClient(&f.opts)
	}
	return f.client
}

func (f *fetcher) drop(c *goredis.Client) {
	f.mu.Lock()
	if f.client == c {
		f.client = nil
	}
	f.mu.Unlock()
	c.Close()
}

func (f *fetcher) isStopped() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stopped
}

// stop ends the goroutine, interrupting a blocked read by closing its connection, and returns
// the entries of a read that completed but was never taken (the caller hands them back). It
// is idempotent.
func (f *fetcher) stop() []entry {
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		return nil
	}
	f.stopped = true
	c := f.client
	f.client = nil
	f.mu.Unlock()
	close(f.quit)
	if c != nil {
		c.Close()
	}
	<-f.done
	select {
	case r := <-f.res:
		return r.msgs
	default:
		return nil
	}
}

// readerName is the CLIENT SETNAME of a subscription's reading connection.
func readerName(key, group, consumer string) string {
	return "pulse-reader:" + key + ":" + group + ":" + consumer
}

// parseRead reads an XREADGROUP reply for key: under RESP2 a list of [stream, entries] pairs,
// under RESP3 a map from stream to entries; each entry is [id, [field, value, …]].
func parseRead(res any, key string) ([]entry, error) {
	var list any
	switch r := res.(type) {
	case []any:
		for _, sv := range r {
			pair, ok := sv.([]any)
			if !ok || len(pair) != 2 {
				return nil, fmt.Errorf("redis: unexpected XREADGROUP stream %v", sv)
			}
			if name, _ := pair[0].(string); name == key {
				list = pair[1]
			}
		}
	case map[any]any:
		list = r[key]
	default:
		return nil, fmt.Errorf("redis: unexpected XREADGROUP reply %T", res)
	}
	entries, ok := list.([]any)
	if !ok {
		return nil, nil // no entries for key
	}
	out := make([]entry, 0, len(entries))
	for _, ev := range entries {
		e, ok := ev.([]any)
		if !ok || len(e) != 2 {
			return nil, fmt.Errorf("redis: unexpected XREADGROUP entry %v", ev)
		}
		id, _ := e[0].(string)
		kv, _ := e[1].([]any) // nil for an entry deleted since: it reads as malformed
		if id == "" {
			return nil, fmt.Errorf("redis: unexpected XREADGROUP entry %v", ev)
		}
		out = append(out, entry{id: id, msg: fromFields(kv)})
	}
	return out, nil
}
