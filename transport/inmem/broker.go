// Package inmem is Pulse's in-process driver, registered as "inmem": a real broker in memory,
// with the semantics of docs/design.md "Delivery semantics" and nothing persisted.
//
// # Model
//
// A Broker holds named streams. Each stream is an append-only log with bounded retention and a
// set of consumer groups:
//
//   - Every message gets a sequence number (1, 2, 3, … per stream), which is its transport id.
//   - A group has a read cursor, created at the start of the retained stream (so a group created
//     after messages were published still receives them), and a pending table of the deliveries
//     it has handed out and not yet settled. Members of a group compete for its messages (each
//     message to one member); every group gets every message.
//   - A delivery not settled within its subscription's AckWait, or Nak'ed with a delay that has
//     elapsed, is redelivered to whichever member of the group asks next, with Attempt counted
//     per group (1 on first delivery). Ack and Term settle it. Closing a member leaves its
//     pending deliveries to be redelivered after AckWait, which is how a crashed member looks.
//
// # Retention and back-pressure
//
// A stream retains at most MaxLen messages (DefaultMaxLen unless BrokerOptions.MaxLen, or
// transport.Config.StreamMaxLen through the registry, says otherwise). When a stream is full,
// Publish evicts the oldest message if every group has already been given it (a stream
// without groups is simply trimmed, like Redis MAXLEN); otherwise Publish waits, until a group
// reads on or ctx is done: a group that falls MaxLen messages behind slows its publishers down
// instead of losing messages. A pending delivery keeps its own reference to the message, so
// trimming never loses a message that is still being worked on. A group's pending table is
// bounded by MaxAckPending (DefaultMaxAckPending): at the bound a group is given only
// redeliveries until some of its deliveries are settled.
//
// # Sharing
//
// Drivers opened through the registry (transport.Open with EVENT_BUS_BACKEND=inmem) share one
// process-wide Broker per namespace (see SharedBroker), so two Buses opened in one process — the
// demo's Store side and pipeline side, two "replicas" in a test — see the same streams. Closing
// a driver closes its subscriptions, never the broker. Nothing crosses process boundaries:
// inmem is for tests, demos and single-process deployments.
//
// # Performance
//
// Publish, Receive and Ack each take the stream's lock once per batch; bodies and headers of
// a published batch are copied into one allocation and the batch's transport ids into one string;
// deliveries of a batch are allocated together. No goroutine or timer is started per message:
// a waiting Receive blocks on a broadcast channel and one timer for the group's next deadline.
package inmem

import (
	"context"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// Defaults of a Broker.
const (
	// DefaultMaxLen is how many messages a stream retains when nothing else is configured:
	// about 30 MB of 200-byte envelopes.
	DefaultMaxLen = 100_000
	// DefaultMaxAckPending bounds each group's unsettled deliveries.
	DefaultMaxAckPending = 65_536
)

// BrokerOptions configure a Broker. The zero value means the defaults.
type BrokerOptions struct {
	// MaxLen is how many messages a stream retains (default DefaultMaxLen). A Driver may set
	// another value for the streams it creates (Options.StreamMaxLen).
	MaxLen int
	// MaxAckPending bounds the unsettled deliveries of one group (default
	// DefaultMaxAckPending).
	MaxAckPending int
}

// Broker holds named streams in memory. It is safe for concurrent use and has no goroutines
// of its own, so it needs no Close: it lives as long as something references it.
type Broker struct {
	opts BrokerOptions
	base time.Time // monotonic origin of deadlines

	mu      sync.RWMutex
	streams map[string]*stream

	idemMu sync.Mutex
	idem   map[time.Duration]*transport.MemoryIdempotency

	kvMu sync.Mutex
	kv   map[string]*kvBucket
}

// NewBroker returns an empty broker.
func NewBroker(opts BrokerOptions) *Broker {
	if opts.MaxLen <= 0 {
		opts.MaxLen = DefaultMaxLen
	}
	if opts.MaxAckPending <= 0 {
		opts.MaxAckPending = DefaultMaxAckPending
	}
	return &Broker{opts: opts, base: time.Now(), streams: map[string]*stream{}}
}

var (
	sharedMu sync.Mutex
	shared   = map[string]*Broker{}
)

// SharedBroker returns the process-wide broker of namespace, creating it with the default
// options on first use. Every driver opened through the registry for that namespace uses it.
// Shared brokers live until the process exits; use StreamAdmin.Purge to empty a stream.
func SharedBroker(namespace string) *Broker {
	if namespace == "" {
		namespace = transport.DefaultNamespace
	}
	sharedMu.Lock()
	defer sharedMu.Unlock()
	b, ok := shared[namespace]
	if !ok {
		b = NewBroker(BrokerOptions{})
		shared[namespace] = b
	}
	return b
}

// now is the broker's monotonic clock in nanoseconds.
func (b *Broker) now() int64 { return int64(time.Since(b.base)) }

// lookup returns the named stream, or nil.
func (b *Broker) lookup(name string) *stream {
	b.mu.RLock()
	st := b.streams[name]
	b.mu.RUnlock()
	return st
}

// stream returns the named stream, creating it with maxLen (0 = the broker's) if needed.
func (b *Broker) stream(name string, maxLen int) *stream {
	if st := b.lookup(name); st != nil {
		return st
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if st, ok := b.streams[name]; ok {
		return st
	}
	if maxLen <= 0 {
		maxLen = b.opts.MaxLen
	}
	st := &stream{
		b:             b,
		name:          name,
		maxLen:        maxLen,
		maxAckPending: b.opts.MaxAckPending,
		first:         1,
		next:          1,
		groups:        map[string]*group{},
		signal:        make(chan struct{}),
		space:         make(chan struct{}),
	}
	b.streams[name] = st
	return st
}

// idempotency returns the broker-wide record of handled ids for ttl.
func (b *Broker) idempotency(ttl time.Duration) *transport.MemoryIdempotency {
	b.idemMu.Lock()
	defer b.idemMu.Unlock()
	if b.idem == nil {
		b.idem = map[time.Duration]*transport.MemoryIdempotency{}
	}
	m, ok := b.idem[ttl]
	if !ok {
		m = transport.NewMemoryIdempotency(transport.DefaultIdempotencySize, ttl)
		b.idem[ttl] = m
	}
	return m
}

// stream is one log with its groups. Every field below mu is guarded by it.
type stream struct {
	b             *Broker
	name          string
	maxLen        int
	maxAckPending int

	mu sync.Mutex
	// buf[head:] holds the retained entries; buf[head] has sequence first, and sequences are
	// dense (deleted entries stay as tombstones until they reach the head).
	buf        []entry
	head       int
	first      uint64 // sequence of the oldest retained entry (== next when empty)
	next       uint64 // sequence of the next published entry
	tombstones int    // deleted entries still in buf
	groups     map[string]*group
	groupList  []*group

	waiters    int           // Receives blocked on signal
	signal     chan struct{} // closed (and replaced) when deliveries may have become available
	pubWaiters int           // Publishes blocked on space
	space      chan struct{} // closed (and replaced) when retention may have room
}

type entry struct {
	storedMsg
	tid     string
	seq     uint64
	stored  int64 // unix nanoseconds
	deleted bool
}

func (st *stream) length() int { return int(st.next - st.first) }

func (st *stream) at(seq uint64) *entry { return &st.buf[st.head+int(seq-st.first)] }

// wake wakes blocked Receives. st.mu is held.
func (st *stream) wake() {
	if st.waiters > 0 {
		close(st.signal)
		st.signal = make(chan struct{})
	}
}

// wakePublishers wakes Publishes blocked on retention. st.mu is held.
func (st *stream) wakePublishers() {
	if st.pubWaiters > 0 {
		close(st.space)
		st.space = make(chan struct{})
	}
}

// floor is the lowest sequence some group has not yet been given; entries below it may be
// evicted (all of them when there is no group). st.mu is held.
func (st *stream) floor() uint64 {
	f := uint64(math.MaxUint64)
	for _, g := range st.groupList {
		f = min(f, g.cursor)
	}
	return f
}

// evictHead drops the oldest entry. st.mu is held.
func (st *stream) evictHead() {
	if st.buf[st.head].deleted {
		st.tombstones--
	}
	st.buf[st.head] = entry{}
	st.head++
	st.first++
	if st.first == st.next {
		st.buf, st.head = st.buf[:0], 0
	}
}

// dropHeadTombstones evicts deleted entries at the head. st.mu is held.
func (st *stream) dropHeadTombstones() {
	for st.first < st.next && st.buf[st.head].deleted {
		st.evictHead()
	}
}

// appendEntry adds e at sequence next, compacting buf when its dead prefix is large. st.mu is
// held.
func (st *stream) appendEntry(e entry) {
	if len(st.buf) == cap(st.buf) && st.head > 0 && st.head >= len(st.buf)/2 {
		n := copy(st.buf, st.buf[st.head:])
		clear(st.buf[n:])
		st.buf, st.head = st.buf[:n], 0
	}
	st.buf = append(st.buf, e)
	st.next++
}

// group returns the named group, creating it at the start of the retained stream. st.mu is
// held.
func (st *stream) group(name string) *group {
	g, ok := st.groups[name]
	if !ok {
		g = &group{name: name, st: st, cursor: st.first}
		st.groups[name] = g
		st.groupList = append(st.groupList, g)
	}
	return g
}

// publish appends msgs, whose bodies are already copied, waiting for retention room as
// needed. It returns the ids of the messages stored, and ctx.Err() or ErrClosed if it gave up
// waiting.
func (st *stream) publish(ctx context.Context, msgs []storedMsg, closed <-chan struct{}) ([]string, error) {
	ids := make([]string, 0, len(msgs))
	var sb strings.Builder
	st.mu.Lock()
	defer st.mu.Unlock()
	for len(msgs) > 0 {
		// Append as many as retention allows in this run, under ids named in advance.
		floor := st.floor()
		base := len(ids)
		ids = appendIDs(ids, &sb, st.next, len(msgs))
		n := 0
		stored := time.Now().UnixNano()
		for _, m := range msgs {
			if st.length() >= st.maxLen {
				st.dropHeadTombstones()
			}
			if st.length() >= st.maxLen {
				if st.first >= floor {
					break // the oldest is still needed by a group
				}
				st.evictHead()
			}
			st.appendEntry(entry{storedMsg: m, tid: ids[base+n], seq: st.next, stored: stored})
			n++
		}
		ids = ids[:base+n]
		if n > 0 {
			msgs = msgs[n:]
			st.wake()
		}
		if len(msgs) == 0 {
			break
		}
		// Full, and the oldest entry is still needed: wait for a group to read on.
		st.pubWaiters++
		space := st.space
		st.mu.Unlock()
		var err error
		select {
		case <-space:
		case <-ctx.Done():
			err = ctx.Err()
		case <-closed:
			err = transport.ErrClosed
		}
		st.mu.Lock()
		st.pubWaiters--
		if err != nil {
			return ids, err
		}
	}
	return ids, nil
}

// appendIDs appends the decimal ids of sequences first … first+n-1, all backed by one string.
func appendIDs(ids []string, sb *strings.Builder, first uint64, n int) []string {
	var num [20]byte
	sb.Reset()
	sb.Grow(n * digits(first+uint64(n)))
	for seq := first; seq < first+uint64(n); seq++ {
		sb.Write(strconv.AppendUint(num[:0], seq, 10))
	}
	all, off := sb.String(), 0
	for seq := first; seq < first+uint64(n); seq++ {
		l := digits(seq)
		ids = append(ids, all[off:off+l])
		off += l
	}
	return ids
}

func digits(v uint64) int {
	n := 1
	for v >= 10 {
		v /= 10
		n++
	}
	return n
}

// storedMsg is a message as the broker keeps it: its headers as name, value pairs
// (driver.Delivery.HeaderFields) rather than a map, so that a stream of traced messages holds
// no map per message for the garbage collector to mark (with a map each, consume+ack traced
// at 1/100 ran at 0.77× of off: transport/tracing_bench_test.go).
type storedMsg struct {
	msg    driver.Message // Headers nil
	fields []string
}

// message is m with its headers as a map again, for the admin API (nil when it has none).
func (m storedMsg) message() driver.Message {
	out := m.msg
	if len(m.fields) > 0 {
		d := driver.Delivery{HeaderFields: m.fields}
		out.Headers = d.HeaderMap()
	}
	return out
}

// copyMessages copies the caller's bodies, then their header names and values, into one
// allocation (each body sub-slice capped, so an append by a reader cannot spill into its
// neighbour), and their headers' pairs into one slice. The bodies come first and together, as
// without headers, so that reading them runs through as little memory as before.
func copyMessages(msgs []driver.Message) []storedMsg {
	bodies, total, pairs := 0, 0, 0
	for i := range msgs {
		bodies += len(msgs[i].Body)
		for k, v := range msgs[i].Headers {
			total += len(k) + len(v)
			pairs += 2
		}
	}
	block := make([]byte, 0, bodies+total)
	out := make([]storedMsg, len(msgs))
	for i, m := range msgs {
		start := len(block)
		block = append(block, m.Body...)
		out[i].msg = driver.Message{Body: block[start:len(block):len(block)], ID: m.ID}
	}
	if pairs == 0 {
		return out
	}
	str := func(s string) string {
		if s == "" {
			return ""
		}
		start := len(block)
		block = append(block, s...) // within block's capacity: the strings stay where they are
		return unsafe.String(&block[start], len(s))
	}
	fields := make([]string, 0, pairs)
	for i, m := range msgs {
		if len(m.Headers) > 0 {
			from := len(fields)
			for k, v := range m.Headers {
				fields = append(fields, str(k), str(v))
			}
			out[i].fields = fields[from:len(fields):len(fields)]
		}
	}
	return out
}

// group is one consumer group of a stream; guarded by its stream's mu.
type group struct {
	name    string
	st      *stream
	cursor  uint64          // next sequence never given to this group
	pending int             // unsettled deliveries
	heap    []*pendingEntry // unsettled deliveries by deadline
}

// pendingEntry is one unsettled message of a group. It holds the message itself, so trimming
// the log never loses it.
type pendingEntry struct {
	g *group
	storedMsg
	tid      string
	seq      uint64
	stored   int64 // unix nanoseconds
	attempts int
	deadline int64 // broker clock: redeliver at or after this
	idx      int   // position in g.heap; -1 once settled
}

func (g *group) less(i, j int) bool { return g.heap[i].deadline < g.heap[j].deadline }

func (g *group) swap(i, j int) {
	g.heap[i], g.heap[j] = g.heap[j], g.heap[i]
	g.heap[i].idx = i
	g.heap[j].idx = j
}

func (g *group) up(j int) {
	for j > 0 {
		i := (j - 1) / 2
		if !g.less(j, i) {
			break
		}
		g.swap(i, j)
		j = i
	}
}

func (g *group) down(i int) bool {
	i0, n := i, len(g.heap)
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		j := l
		if r := l + 1; r < n && g.less(r, l) {
			j = r
		}
		if !g.less(j, i) {
			break
		}
		g.swap(i, j)
		i = j
	}
	return i > i0
}

func (g *group) push(pe *pendingEntry) {
	pe.idx = len(g.heap)
	g.heap = append(g.heap, pe)
	g.up(pe.idx)
}

// remove takes pe out of the heap.
func (g *group) remove(pe *pendingEntry) {
	i, n := pe.idx, len(g.heap)-1
	if i != n {
		g.swap(i, n)
	}
	g.heap[n] = nil
	g.heap = g.heap[:n]
	if i != n {
		if !g.down(i) {
			g.up(i)
		}
	}
	pe.idx = -1
}

// fix restores heap order after pe's deadline changed.
func (g *group) fix(pe *pendingEntry) {
	if !g.down(pe.idx) {
		g.up(pe.idx)
	}
}

// settle removes pe from the pending table. st.mu is held.
func (g *group) settle(pe *pendingEntry) {
	if pe.idx < 0 {
		return
	}
	g.remove(pe)
	g.pending--
	if g.pending == g.st.maxAckPending-1 {
		g.st.wake() // room for new deliveries again
	}
}

// unread counts retained, undeleted entries the group has not been given. st.mu is held.
func (g *group) unread() int64 {
	st := g.st
	from := max(g.cursor, st.first)
	n := int64(st.next - from)
	if st.tombstones > 0 {
		for seq := from; seq < st.next; seq++ {
			if st.at(seq).deleted {
				n--
			}
		}
	}
	return n
}

// durationNanos converts d for the broker clock, saturating.
func durationNanos(d time.Duration) int64 {
	if d < 0 {
		return 0
	}
	return min(int64(d), math.MaxInt64/2)
}
