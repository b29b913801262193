package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/pulse-bus/pulse/transport"
)

// clientBusConfig is cfg's bus configuration for a command that connects as a client
// (publish, dlq): with the jetstream backend and no NATS_URL it connects to the embedded
// server that `pulse run` hosts on PULSE_NATS_LISTEN.
func clientBusConfig(cfg Config, log *slog.Logger, obs transport.Observer) transport.Config {
	bc := cfg.Bus
	if cfg.EmbeddedNATS() {
		bc.NATSURL = "nats://" + net.JoinHostPort(splitHost(bc.NATSListen))
	}
	bc.Logger = log
	bc.Observer = obs
	return bc
}

func splitHost(addr string) (string, string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, ""
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1" // a wildcard listen address is reached on loopback
	}
	return host, port
}

func cmdDLQ(ctx context.Context, args []string, env Env) int {
	fs := newFlagSet(env, "dlq", "list|replay|purge [flags]",
		"Inspect, re-publish or drop the dead letters of a stream.\n"+
			"  list    shows each dead letter: when and why it failed, attempts, original id\n"+
			"  replay  re-publishes the original bytes to the source stream, deleting each\n"+
			"          dead letter only once the broker confirmed its publish\n"+
			"  purge   drops every dead letter")
	over := overrides{}
	over.register(fs)
	stream := fs.String("stream", "", "source stream whose dead letters to handle, as S or S.dlq (default: PULSE_FEEDBACK_STREAM)")
	limit := fs.Int("limit", 0, "list or replay at most this many, oldest first (0: all)")
	if len(args) == 0 {
		return usageError(fs, "missing sub-command (list, replay or purge)")
	}
	sub := args[0]
	if code, ok := parseFlags(fs, args[1:]); !ok {
		return code
	}
	switch {
	case sub != "list" && sub != "replay" && sub != "purge":
		return usageError(fs, "unknown sub-command %q (accepted: list, replay, purge)", sub)
	case fs.NArg() > 0:
		return usageError(fs, "unexpected argument %q", fs.Arg(0))
	case *limit < 0:
		return usageError(fs, "invalid --limit=%d (accepted: 0 for all, or a positive count)", *limit)
	}
	cfg, ok := loadConfig(env, over, "dlq")
	if !ok {
		return ExitUsage
	}
	if *stream == "" {
		*stream = cfg.FeedbackStream
	}
	if !transport.ValidStreamName(*stream) {
		return usageError(fs, "invalid --stream=%q (accepted: dot-separated tokens of letters, digits, '_' and '-')", *stream)
	}
	log := newLogger(cfg, env.Stderr)
	bus, err := transport.Open(ctx, clientBusConfig(cfg, log, nil))
	if err != nil {
		fmt.Fprintf(env.Stderr, "pulse dlq: open %s bus: %v\n", cfg.Bus.Backend, err)
		return ExitFailure
	}
	defer bus.Close()
	q, err := NewDLQ(bus)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pulse dlq: %v\n", err)
		return ExitFailure
	}
	source, dlq := dlqOf(*stream)
	switch sub {
	case "list":
		letters, err := q.List(ctx, source, *limit)
		if err != nil {
			fmt.Fprintf(env.Stderr, "pulse dlq list: %v\n", err)
			return ExitFailure
		}
		if err := printDeadLetters(env.Stdout, letters); err != nil {
			return ExitFailure
		}
		fmt.Fprintf(env.Stderr, "%d dead letter(s) in %s\n", len(letters), dlq)
	case "replay":
		n, err := q.Replay(ctx, source, *limit)
		fmt.Fprintf(env.Stdout, "replayed %d dead letter(s) from %s\n", n, dlq)
		if err != nil {
			fmt.Fprintf(env.Stderr, "pulse dlq replay: %v\n", err)
			return ExitFailure
		}
	case "purge":
		n, err := q.Purge(ctx, source)
		if err != nil {
			fmt.Fprintf(env.Stderr, "pulse dlq purge: %v\n", err)
			return ExitFailure
		}
		fmt.Fprintf(env.Stdout, "purged %d dead letter(s) from %s\n", n, dlq)
	}
	return ExitOK
}
