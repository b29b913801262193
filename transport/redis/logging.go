package redis

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	goredis "github.com/redis/go-redis/v9"
)

// LogClientTo sends go-redis's own log lines (a pool that cannot dial, a connection found
// broken) to l at Warn, instead of the plain "redis: <date> pool.go:…" lines go-redis writes
// to standard error by default, which break a log that must be all JSON. go-redis logs
// process-wide, not per client, so this is for a program's main to call once, with its
// logger; nil discards them.
func LogClientTo(l *slog.Logger) {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	goredis.SetLogger(clientLog{l})
}

type clientLog struct{ l *slog.Logger }

func (c clientLog) Printf(ctx context.Context, format string, v ...any) {
	c.l.WarnContext(ctx, "redis client: "+strings.TrimSpace(fmt.Sprintf(format, v...)), "backend", Name)
}
