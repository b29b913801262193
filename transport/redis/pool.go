package redis

import (
	"context"
	"errors"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// connPool is the driver's pool of respConns for the commands on the message path that never
// block: publishing (pipelined XADD and XTRIM) and acknowledging (XACK). It holds at most
// opts.PoolSize connections (go-redis's default, 10 per CPU), dialed when needed and kept
// idle for reuse for up to maxIdleTime. A connection that failed other than with an error
// reply is closed, never reused. Safe for concurrent use.
type connPool struct {
	opts  *goredis.Options
	name  string        // CLIENT SETNAME of its connections
	slots chan struct{} // a token per open connection
	idle  chan idleConn // capacity: as many as there can be connections
	done  chan struct{} // closed by close
	once  sync.Once
}

type idleConn struct {
	c     *respConn
	since time.Time
}

// maxIdleTime is how long an unused connection is kept (go-redis's ConnMaxIdleTime default).
const maxIdleTime = 30 * time.Minute

// errPoolClosed is what the pool answers once the driver is closed.
var errPoolClosed = errors.New("redis: connection pool closed")

func newConnPool(opts *goredis.Options, name string) *connPool {
	size := max(opts.PoolSize, 1)
	return &connPool{
		opts:  opts,
		name:  name,
		slots: make(chan struct{}, size),
		idle:  make(chan idleConn, size),
		done:  make(chan struct{}),
	}
}

// get returns an idle connection (reused true) or dials one, waiting while the pool is full.
func (p *connPool) get(ctx context.Context) (c *respConn, reused bool, err error) {
	for {
		select {
		case <-p.done:
			return nil, false, errPoolClosed
		default:
		}
		var ic idleConn
		select { // an idle connection first
		case ic = <-p.idle:
		default:
			select {
			case ic = <-p.idle:
			case p.slots <- struct{}{}:
				c, err := dialResp(ctx, p.opts, p.name)
				if err != nil {
					<-p.slots
					return nil, false, err
				}
				return c, false, nil
			case <-ctx.Done():
				return nil, false, ctx.Err()
			case <-p.done:
				return nil, false, errPoolClosed
			}
		}
		if time.Since(ic.since) < maxIdleTime {
			return ic.c, true, nil
		}
		p.discard(ic.c)
	}
}

// put returns a healthy connection for reuse.
func (p *connPool) put(c *respConn) {
	p.idle <- idleConn{c: c, since: time.Now()} // never blocks: idle has room for every slot
	select {
	case <-p.done: // closed meanwhile: close may have drained idle before c arrived
		p.drain()
	default:
	}
}

// discard closes a connection and frees its slot.
func (p *connPool) discard(c *respConn) {
	c.Close()
	<-p.slots
}

func (p *connPool) drain() {
	for {
		select {
		case ic := <-p.idle:
			p.discard(ic.c)
		default:
			return
		}
	}
}

// close closes the idle connections and makes get fail; connections in use are closed when
// they are returned. It is idempotent.
func (p *connPool) close() {
	p.once.Do(func() { close(p.done) })
	p.drain()
}

// roundTrip sends the commands write buffers on a pooled connection and reads their replies
// with read, which reports how many replies it read and the first error: an error reply
// (respError) once it has read every reply, which leaves the connection usable, or the I/O or
// protocol error that stopped it. ctx bounds the whole exchange; the options' timeouts bound
// the write and each wait for a reply.
//
// A reused connection that fails before any reply arrived is taken to have been closed by the
// server while idle, and the commands are sent once more on a fresh one, as go-redis retries a
// command on a bad connection. (Should the server instead have run them and died before
// answering, they are then stored twice: publishing is at least once.)
func (p *connPool) roundTrip(ctx context.Context, extraRead time.Duration, write func(*respConn), read func(*respConn) (int, error)) error {
	if err := ctx.Err(); err != nil {
		return err // before taking a connection that the cancellation would cost
	}
	for attempt := 0; ; attempt++ {
		c, reused, err := p.get(ctx)
		if err != nil {
			return err
		}
		// Cancelling ctx interrupts the exchange; the connection is then not reused.
		stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
		write(c)
		n := 0
		err = c.flush(earliest(ctx, c.writeTO))
		if err == nil {
			c.conn.SetReadDeadline(earliest(ctx, c.readTO+extraRead))
			n, err = read(c)
		}
		interrupted := !stop()
		var reply respError
		answered := err == nil || errors.As(err, &reply)
		if answered && !interrupted && !isMoved(err) { // a demoted primary's connections go
			p.put(c)
			return err
		}
		p.discard(c) // interrupted, its deadline may still be changing: never reused
		switch {
		case answered:
			return err
		case interrupted && ctx.Err() != nil:
			return ctx.Err()
		case reused && n == 0 && attempt == 0:
			continue
		}
		return err
	}
}

// earliest is now+d, or ctx's deadline if that comes first.
func earliest(ctx context.Context, d time.Duration) time.Time {
	t := time.Now().Add(d)
	if dl, ok := ctx.Deadline(); ok && dl.Before(t) {
		return dl
	}
	return t
}
