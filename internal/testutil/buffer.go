// Package testutil holds small helpers shared by the tests of several packages.
package testutil

import (
	"bytes"
	"sync"
)

// DefaultBufferLimit is how much a zero LockedBuffer keeps.
const DefaultBufferLimit = 1 << 20

// LockedBuffer collects output written by one goroutine (a logger, a child process's copier)
// while a test reads it from another. It is bounded: past Limit bytes (DefaultBufferLimit when
// zero) further writes are accepted and dropped, so a chatty process cannot grow it without
// end. The zero value is ready to use.
type LockedBuffer struct {
	Limit int

	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer.
func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	limit := b.Limit
	if limit <= 0 {
		limit = DefaultBufferLimit
	}
	if room := limit - b.buf.Len(); room < len(p) {
		b.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return b.buf.Write(p)
}

// String returns what was kept.
func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
