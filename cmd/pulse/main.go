// Command pulse is the Pulse service: the pipeline side of the backpressure loop (run), the
// Store side for operators and tests (publish), dead-letter tooling (dlq), a self-contained
// demonstration (demo), and config and version. See `pulse help` and docs/contract.md §6.
//
// Exit status: 0 done, 1 failed at run time, 2 bad usage or configuration.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"github.com/pulse-bus/pulse/internal/app"
)

func main() { os.Exit(run()) }

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal the command drains; a second one gets the default behaviour
	// (the process ends at once).
	context.AfterFunc(ctx, stop)
	return app.Main(ctx, os.Args[1:], app.Env{
		Stdout: os.Stdout, Stderr: os.Stderr, Lookup: os.LookupEnv,
		Stdin: os.Stdin, Interactive: term.IsTerminal(int(os.Stdin.Fd())),
	})
}
