package redis

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"time"
	"unsafe"

	goredis "github.com/redis/go-redis/v9"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// respConn is a connection to Redis that speaks just enough RESP2 for the driver's hot paths:
// the connection handshake (AUTH, SELECT, CLIENT SETNAME), XREADGROUP (a subscription's
// reading connection), and pipelined XADD, XTRIM and XACK (the publishing and acking
// connections of the driver's pool). Replies are read straight into what the driver hands out.
//
// Why not go-redis here, as everywhere else in the driver: go-redis parses any reply into
// interface values and wraps every command in an object — for an XREADGROUP entry a slice, a
// boxed string and its bytes for the id, another slice, and a boxed string for each field and
// value, about nine allocations per consumed message (go-redis's own XReadGroup adds a map);
// for a pipelined XADD a command object, a boxed argument list and the reply. That was a third
// of the driver's CPU time per consumed message and half of it per published one. Here a
// message costs no allocation of its own: a read's ids share one buffer and its bodies
// another, and a batch of XADDs is written as one buffer. Dialing (TLS, timeouts) is still
// go-redis's, from the driver's options.
//
// A respConn is used by one goroutine at a time; Close may be called from any, and
// interrupts a blocked read.
type respConn struct {
	conn     net.Conn
	br       *bufio.Reader
	cmd      []byte // the commands being written, reused
	readTO   time.Duration
	writeTO  time.Duration
	meanBody int // the mean body size of the last read
}

// Buffer sizes and limits of a connection.
const (
	readBufSize = 32 << 10
	// maxChunk bounds one buffer of a read's ids or bodies (a larger body gets its own).
	maxChunk = 64 << 10
	// idBytes is room for a typical stream id (`1764211200000-0`; at most 41 bytes).
	idBytes = 20
	// maxBulk is Redis's largest bulk string (proto-max-bulk-len): a longer one is a corrupt
	// reply, not something to allocate for.
	maxBulk = 512 << 20
	// minMeanBody is the least body size assumed when sizing a read's body buffer.
	minMeanBody = 64
	// readSlack is how long a read may take beyond the BLOCK it asked for before the
	// connection counts as broken, when the options set no read timeout.
	readSlack = 5 * time.Second
	// maxCmdBuf bounds the write buffer a connection keeps between uses.
	maxCmdBuf = 1 << 20
)

// respError is an error reply from Redis (`-NOGROUP …`); the connection stays usable. Like
// go-redis's replies it is a goredis.Error, so the driver classifies it the same way.
type respError string

func (e respError) Error() string { return string(e) }

// RedisError marks e as a reply from Redis (goredis.Error).
func (e respError) RedisError() {}

// errProtocol marks a reply the reader could not make sense of; the connection is dropped.
var errProtocol = errors.New("redis: protocol error")

// dialResp connects with opts (its dialer, address, timeouts, credentials and database, as
// go-redis's NewClient completed them) and gives the connection name (CLIENT SETNAME), so that
// CLIENT LIST shows whose it is.
func dialResp(ctx context.Context, opts *goredis.Options, name string) (*respConn, error) {
	dialer := opts.Dialer
	if dialer == nil {
		dialer = goredis.NewDialer(opts)
	}
	conn, err := dialer(ctx, opts.Network, opts.Addr)
	if err != nil {
		return nil, err
	}
	rc := &respConn{conn: conn, br: bufio.NewReaderSize(conn, readBufSize), readTO: opts.ReadTimeout, writeTO: opts.WriteTimeout}
	if rc.readTO <= 0 {
		rc.readTO = readSlack
	}
	if rc.writeTO <= 0 {
		rc.writeTO = readSlack
	}
	if err := rc.handshake(opts, name); err != nil {
		conn.Close()
		return nil, err
	}
	return rc, nil
}

// handshake authenticates, selects the database and names the connection, in one round trip.
func (rc *respConn) handshake(opts *goredis.Options, name string) error {
	var steps []string
	switch {
	case opts.Password != "" && opts.Username != "":
		rc.appendCommand("auth", opts.Username, opts.Password)
		steps = append(steps, "AUTH")
	case opts.Password != "":
		rc.appendCommand("auth", opts.Password)
		steps = append(steps, "AUTH")
	}
	if opts.DB != 0 {
		rc.appendCommand("select", strconv.Itoa(opts.DB))
		steps = append(steps, "SELECT "+strconv.Itoa(opts.DB))
	}
	rc.appendCommand("client", "setname", name)
	steps = append(steps, "CLIENT SETNAME")
	if err := rc.flush(time.Now().Add(rc.writeTO)); err != nil {
		return err
	}
	rc.conn.SetReadDeadline(time.Now().Add(rc.readTO))
	for _, step := range steps {
		if _, err := rc.reply(nil); err != nil {
			return fmt.Errorf("redis: %s: %w", step, err)
		}
	}
	return nil
}

// Close closes the connection; a read blocked on it returns an error.
func (rc *respConn) Close() error { return rc.conn.Close() }

// appendCommand adds one command, as a RESP array of bulk strings, to the write buffer.
func (rc *respConn) appendCommand(args ...string) {
	rc.appendArrayLen(len(args))
	for _, a := range args {
		rc.appendString(a)
	}
}

// appendArrayLen adds the header of an array (a command) of n elements.
func (rc *respConn) appendArrayLen(n int) {
	rc.cmd = append(rc.cmd, '*')
	rc.cmd = strconv.AppendInt(rc.cmd, int64(n), 10)
	rc.cmd = append(rc.cmd, '\r', '\n')
}

// flush writes the buffered commands, by deadline.
func (rc *respConn) flush(deadline time.Time) error {
	rc.conn.SetWriteDeadline(deadline)
	_, err := rc.conn.Write(rc.cmd)
	if cap(rc.cmd) > maxCmdBuf {
		rc.cmd = nil // one huge batch must not pin its buffer for the life of the connection
	} else {
		rc.cmd = rc.cmd[:0]
	}
	return err
}

// appendBulk adds one bulk string.
func (rc *respConn) appendBulk(b []byte) {
	rc.cmd = append(rc.cmd, '$')
	rc.cmd = strconv.AppendInt(rc.cmd, int64(len(b)), 10)
	rc.cmd = append(rc.cmd, '\r', '\n')
	rc.cmd = append(rc.cmd, b...)
	rc.cmd = append(rc.cmd, '\r', '\n')
}

// appendString adds one bulk string.
func (rc *respConn) appendString(s string) { rc.appendBulk(unsafe.Slice(unsafe.StringData(s), len(s))) }

// appendXAdd adds XADD key * data body [header value …] (headers sorted by name, a header
// named data left out: it cannot shadow the body). head is xaddHead(key), the part shared by
// every entry without headers.
func (rc *respConn) appendXAdd(key string, head []byte, m *driver.Message) {
	if len(m.Headers) == 0 {
		rc.cmd = append(rc.cmd, head...)
		rc.appendBulk(m.Body)
		return
	}
	names := make([]string, 0, len(m.Headers))
	for k := range m.Headers {
		if k != DataField {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	rc.appendXAddStart(key, len(names))
	rc.appendBulk(m.Body)
	for _, k := range names {
		rc.appendString(k)
		rc.appendString(m.Headers[k])
	}
}

// appendXAddStart adds XADD key * data, up to the body, of an entry with headers more fields.
func (rc *respConn) appendXAddStart(key string, headers int) {
	rc.appendArrayLen(5 + 2*headers)
	rc.appendString("xadd")
	rc.appendString(key)
	rc.appendString("*")
	rc.appendString(DataField)
}

// xaddHead is the start of XADD key * data <body>, up to the body.
func xaddHead(key string) []byte {
	var rc respConn
	rc.appendXAddStart(key, 0)
	return rc.cmd
}

// appendXAck adds XACK key group id….
func (rc *respConn) appendXAck(key, group string, ids []string) {
	rc.appendArrayLen(3 + len(ids))
	rc.appendString("xack")
	rc.appendString(key)
	rc.appendString(group)
	for _, id := range ids {
		rc.appendString(id)
	}
}

// reply reads the reply of a command that answers with a simple string, an integer or a bulk
// string, returning its text (a bulk string's copied into a, else valid until the next read);
// an error reply is a respError.
func (rc *respConn) reply(a *arena) ([]byte, error) {
	line, err := rc.br.Peek(1)
	if err != nil {
		return nil, err
	}
	if line[0] == '$' {
		return rc.bulkInto(a)
	}
	if line, err = rc.line(); err != nil {
		return nil, err
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return nil, respError(line[1:])
	}
	return nil, fmt.Errorf("%w: unexpected reply %q", errProtocol, line)
}

// askingReply reads ASKING's reply: nil for OK, else an error (a respError for an error
// reply, which leaves the connection usable).
func (rc *respConn) askingReply() error {
	ok, err := rc.reply(nil)
	if err == nil && string(ok) != "OK" {
		err = fmt.Errorf("%w: ASKING answered %q", errProtocol, ok)
	}
	return err
}

// readGroup runs XREADGROUP GROUP group consumer COUNT count BLOCK block STREAMS key > and
// returns the entries of key: none when BLOCK passed without any. An error reply (NOGROUP) is a
// respError and leaves the connection usable; any other error means it is not.
func (rc *respConn) readGroup(key, group, consumer string, count int, block time.Duration) ([]entry, error) {
	rc.appendCommand("xreadgroup", "group", group, consumer, "count", strconv.Itoa(count),
		"block", strconv.FormatInt(block.Milliseconds(), 10), "streams", key, ">")
	if err := rc.flush(time.Now().Add(rc.writeTO)); err != nil {
		return nil, err
	}
	rc.conn.SetReadDeadline(time.Now().Add(block + rc.readTO))
	return rc.readStreams(key)
}

// readStreams reads an XREADGROUP reply: null (nothing arrived), or an array of
// [stream name, [entry…]] pairs. The entries of key are returned.
func (rc *respConn) readStreams(key string) ([]entry, error) {
	n, err := rc.arrayLen()
	if err != nil || n <= 0 {
		return nil, err
	}
	var out []entry
	for range n {
		if m, err := rc.arrayLen(); err != nil {
			return nil, err
		} else if m != 2 {
			return nil, fmt.Errorf("%w: a stream reply of %d elements", errProtocol, m)
		}
		name, err := rc.bulkInto(nil)
		if err != nil {
			return nil, err
		}
		mine := string(name) == key // before the next read reuses name's bytes
		entries, err := rc.readEntries()
		if err != nil {
			return nil, err
		}
		if mine {
			out = entries
		}
	}
	return out, nil
}

// readEntries reads an array of entries, [id, [field, value, …]] each. The ids share one
// buffer and the `data` values another, so a read of a batch allocates a few buffers rather
// than several objects per entry. An entry without fields (deleted since it was delivered)
// gets an empty body, which the Bus dead-letters as malformed.
func (rc *respConn) readEntries() ([]entry, error) {
	n, err := rc.arrayLen()
	if err != nil || n <= 0 {
		return nil, err
	}
	out := make([]entry, n)
	// Buffers sized for the read, from the mean body size of the last one, so that a read of a
	// single entry does not allocate a batch's worth.
	ids := arena{chunk: min(idBytes*n, maxChunk)}
	bodies := arena{chunk: min(max(rc.meanBody, minMeanBody)*n*9/8, maxChunk)}
	var headers []string // the entries' header pairs, one slice for the read
	total := 0
	for i := range out {
		if m, err := rc.arrayLen(); err != nil {
			return nil, err
		} else if m != 2 {
			return nil, fmt.Errorf("%w: an entry of %d elements", errProtocol, m)
		}
		id, err := rc.bulkInto(&ids)
		if err != nil {
			return nil, err
		}
		if len(id) == 0 {
			return nil, fmt.Errorf("%w: an entry without id", errProtocol)
		}
		out[i].id = unsafe.String(&id[0], len(id))
		if out[i].msg, out[i].fields, err = rc.readFields(&bodies, &headers, n-i); err != nil {
			return nil, err
		}
		total += len(out[i].msg.Body)
	}
	rc.meanBody = total / n
	return out, nil
}

// readFields reads an entry's field-value array as fromFields does: the body, and the other
// fields as name, value pairs appended to headers, of which fields is the entry's part. left
// counts the entries of the read from this one on, to size headers when its first header
// comes.
func (rc *respConn) readFields(bodies *arena, headers *[]string, left int) (msg driver.Message, fields []string, err error) {
	n, err := rc.arrayLen()
	if err != nil || n <= 0 {
		return msg, nil, err
	}
	if n%2 != 0 {
		return msg, nil, fmt.Errorf("%w: an odd field list of %d elements", errProtocol, n)
	}
	start := len(*headers)
	for range n / 2 {
		field, err := rc.bulkInto(nil)
		if err != nil {
			return msg, nil, err
		}
		if string(field) == DataField {
			if msg.Body, err = rc.bulkInto(bodies); err != nil {
				return msg, nil, err
			}
			continue
		}
		name := headerName(field)
		// The value stays in the batch's arena, like the body: no copy per header (a traced
		// message carries one to three).
		value, err := rc.bulkInto(bodies)
		if err != nil {
			return msg, nil, err
		}
		if *headers == nil {
			*headers = make([]string, 0, (n-2)*left)
		}
		*headers = append(*headers, name, unsafe.String(unsafe.SliceData(value), len(value)))
	}
	if len(*headers) == start {
		return msg, nil, nil
	}
	return msg, (*headers)[start:len(*headers):len(*headers)], nil
}

// knownHeaders are the entry fields Pulse writes beside `data`, whose names are shared
// instead of copied for every entry.
var knownHeaders = []string{
	transport.HeaderTraceParent, transport.HeaderTraceState, transport.HeaderBaggage,
	transport.DLQOriginalID, transport.DLQReason, transport.DLQError, transport.DLQAttempts,
	transport.DLQFailedAt, transport.DLQStream, transport.DLQReplayOf, transport.DLQKeptIn,
}

// headerName is field as a string: a known header's shared name, else a copy.
func headerName(field []byte) string {
	for _, k := range knownHeaders {
		if string(field) == k {
			return k
		}
	}
	return string(field)
}

// line reads one reply line, without its CRLF. The bytes are valid until the next read.
func (rc *respConn) line() ([]byte, error) {
	line, err := rc.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("%w: a reply line longer than %d bytes", errProtocol, readBufSize)
		}
		return nil, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("%w: malformed reply line %q", errProtocol, line)
	}
	return line[:len(line)-2], nil
}

// arrayLen reads an array header: its length, -1 for a null array (or RESP3 null). An error
// reply is returned as a respError.
func (rc *respConn) arrayLen() (int, error) {
	line, err := rc.line()
	if err != nil {
		return 0, err
	}
	switch line[0] {
	case '*':
		return rc.length(line)
	case '_':
		return -1, nil
	case '-':
		return 0, respError(line[1:])
	}
	return 0, fmt.Errorf("%w: expected an array, got %q", errProtocol, line)
}

// length parses the length of an array or bulk header line.
func (rc *respConn) length(line []byte) (int, error) {
	if len(line) < 2 {
		return 0, fmt.Errorf("%w: no length in %q", errProtocol, line)
	}
	n, err := strconv.Atoi(unsafe.String(&line[1], len(line)-1))
	if err != nil || n < -1 {
		return 0, fmt.Errorf("%w: bad length in %q", errProtocol, line)
	}
	return n, nil
}

// bulkInto reads a bulk string. With an arena its bytes are copied there and stay valid; with
// none they are valid only until the next read (in the read buffer when they fit, else a
// fresh slice). A null bulk string reads as empty.
func (rc *respConn) bulkInto(a *arena) ([]byte, error) {
	line, err := rc.line()
	if err != nil {
		return nil, err
	}
	if line[0] != '$' {
		if line[0] == '-' {
			return nil, respError(line[1:])
		}
		return nil, fmt.Errorf("%w: expected a bulk string, got %q", errProtocol, line)
	}
	n, err := rc.length(line)
	switch {
	case err != nil:
		return nil, err
	case n < 0:
		return nil, nil // a null bulk string reads as empty
	case n > maxBulk:
		return nil, fmt.Errorf("%w: a bulk string of %d bytes (Redis allows at most %d)", errProtocol, n, maxBulk)
	}
	var b []byte
	switch {
	case a != nil:
		b = a.take(n)
		if _, err := io.ReadFull(rc.br, b); err != nil {
			return nil, err
		}
	case n+2 <= readBufSize:
		// Peeked together with its CRLF: a later Peek could refill the buffer and move them.
		p, err := rc.br.Peek(n + 2)
		if err != nil {
			return nil, err
		}
		rc.br.Discard(n + 2)
		if p[n] != '\r' || p[n+1] != '\n' {
			return nil, fmt.Errorf("%w: a bulk string of %d bytes not followed by CRLF", errProtocol, n)
		}
		return p[:n], nil
	default:
		b = make([]byte, n)
		if _, err := io.ReadFull(rc.br, b); err != nil {
			return nil, err
		}
	}
	ok, err := rc.crlf()
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: a bulk string of %d bytes not followed by CRLF", errProtocol, n)
	}
	return b, nil
}

// crlf consumes the CRLF that ends a bulk string.
func (rc *respConn) crlf() (bool, error) {
	end, err := rc.br.Peek(2)
	if err != nil {
		return false, err
	}
	ok := bytes.Equal(end, []byte("\r\n"))
	rc.br.Discard(2)
	return ok, nil
}

// arena hands out byte slices carved from shared chunks. A chunk is never written again once
// a slice of it is handed out (a full one is replaced, not grown), and each slice's capacity
// ends where it does, so appending to one cannot reach another.
type arena struct {
	buf   []byte
	chunk int
}

func (a *arena) take(n int) []byte {
	if cap(a.buf)-len(a.buf) < n {
		a.buf = make([]byte, 0, max(a.chunk, n))
	}
	start := len(a.buf)
	a.buf = a.buf[:start+n]
	return a.buf[start : start+n : start+n]
}
