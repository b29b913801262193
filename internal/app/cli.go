// Package app is the pulse service: configuration (environment and flags), the commands of
// docs/contract.md §6, and the App that wires the bus, the feedback consumer, the rate coordinator
// and HTTP, starting them in order and stopping them last-in first-out.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strings"

	"github.com/pulse-bus/pulse/transport/redis"
)

// Exit statuses of the pulse command (docs/contract.md §6).
const (
	ExitOK      = 0 // done
	ExitFailure = 1 // failed at run time
	ExitUsage   = 2 // bad usage or configuration
)

// Version is the pulse version, set at build time with
// -ldflags "-X github.com/pulse-bus/pulse/internal/app.Version=v1.2.3"; empty means the
// module version from the build information.
var Version string

// Env is what a command needs from its process: where to write, and how to read the
// environment (os.LookupEnv in production, a map in tests) and the operator's answers.
type Env struct {
	Stdout io.Writer
	Stderr io.Writer
	Lookup func(string) (string, bool)
	// Stdin is where a command reads a confirmation; nil reads nothing.
	Stdin io.Reader
	// Interactive is true when Stdin is a terminal: an operator is there to answer.
	Interactive bool
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, env Env) int
}

func commands() []command {
	return []command{
		{"run", "the pipeline side: consume feedback, scale the provider's rate, serve HTTP", cmdRun},
		{"publish", "the Store side: publish one FeedbackEvent", cmdPublish},
		{"dlq", "list, replay or purge dead letters", cmdDLQ},
		{"demo", "the whole feedback loop in one process, live in the terminal", cmdDemo},
		{"config", "print the effective configuration (secrets masked)", cmdConfig},
		{"version", "print the version", cmdVersion},
	}
}

// Main runs the pulse command line args (without the program name) and returns its exit
// status. ctx is cancelled on SIGINT/SIGTERM by the caller; long-running commands drain and
// return when it is done.
func Main(ctx context.Context, args []string, env Env) int {
	if env.Stdout == nil {
		env.Stdout = io.Discard
	}
	if env.Stderr == nil {
		env.Stderr = io.Discard
	}
	if env.Lookup == nil {
		env.Lookup = func(string) (string, bool) { return "", false }
	}
	if env.Stdin == nil {
		env.Stdin = strings.NewReader("")
	}
	if len(args) == 0 {
		usage(env.Stderr)
		return ExitUsage
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		usage(env.Stdout)
		return ExitOK
	case "-version", "--version":
		name = "version"
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(ctx, args[1:], env)
		}
	}
	fmt.Fprintf(env.Stderr, "pulse: unknown command %q\n\n", name)
	usage(env.Stderr)
	return ExitUsage
}

func usage(w io.Writer) {
	fmt.Fprint(w, "Usage: pulse <command> [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "\nEvery command reads the environment of docs/contract.md §5; flags of the same meaning\n"+
		"override it. 'pulse <command> -h' lists a command's flags.\n"+
		"Exit status: 0 done, 1 failed at run time, 2 bad usage or configuration.\n")
}

// newFlagSet returns a flag set that reports errors instead of exiting, with usage text
// naming the command.
func newFlagSet(env Env, name, args, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet("pulse "+name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: pulse %s %s\n\n%s\n\nFlags:\n", name, args, summary)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args; it returns (exit status, false) when the command must stop: 0
// after -h, 2 after a usage error (the flag package has already printed it and the usage).
func parseFlags(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK, false
		}
		return ExitUsage, false
	}
	return 0, true
}

// usageError prints msg and the command's usage and returns ExitUsage.
func usageError(fs *flag.FlagSet, format string, a ...any) int {
	fmt.Fprintf(fs.Output(), "%s: %s\n\n", fs.Name(), fmt.Sprintf(format, a...))
	fs.Usage()
	return ExitUsage
}

// loadConfig loads the configuration with the flag overrides, printing a configuration
// error and returning ok=false (exit ExitUsage) when a value is invalid.
func loadConfig(env Env, over overrides, cmd string) (Config, bool) {
	cfg, err := Load(env.Lookup, over)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pulse %s: %v\n", cmd, err)
		return Config{}, false
	}
	return cfg, true
}

// newLogger returns the slog logger the configuration asks for, writing to w. The Redis
// client's own process-wide log goes through it too, so that a JSON log stays all JSON.
func newLogger(cfg Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var log *slog.Logger
	if cfg.LogFormat == "json" {
		log = slog.New(slog.NewJSONHandler(w, opts))
	} else {
		log = slog.New(slog.NewTextHandler(w, opts))
	}
	redis.LogClientTo(log)
	return log
}

// configCommand parses the arguments of a command that takes the configuration flags and
// nothing else, and loads the configuration. When ok is false the command exits with code.
func configCommand(env Env, name, summary string, args []string) (cfg Config, code int, ok bool) {
	fs := newFlagSet(env, name, "[flags]", summary)
	over := flagOverrides(fs)
	if code, ok := parseFlags(fs, args); !ok {
		return Config{}, code, false
	}
	if fs.NArg() > 0 {
		return Config{}, usageError(fs, "unexpected argument %q", fs.Arg(0)), false
	}
	if cfg, ok = loadConfig(env, over, name); !ok {
		return Config{}, ExitUsage, false
	}
	return cfg, ExitOK, true
}

func cmdConfig(_ context.Context, args []string, env Env) int {
	cfg, code, ok := configCommand(env, "config", "Print the effective configuration (environment overridden by flags), secrets masked.\nExit status 2 if any value is invalid.", args)
	if !ok {
		return code
	}
	if err := cfg.Print(env.Stdout); err != nil {
		fmt.Fprintf(env.Stderr, "pulse config: %v\n", err)
		return ExitFailure
	}
	return ExitOK
}

// versionString is Version, else the main module's version from the build information.
func versionString() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "-dirty"
				}
			}
		}
		if (v == "" || v == "(devel)") && rev != "" {
			return "devel-" + rev[:min(12, len(rev))] + dirty
		}
		if v != "" && v != "(devel)" {
			return v
		}
	}
	return "devel"
}

func cmdVersion(_ context.Context, args []string, env Env) int {
	fs := newFlagSet(env, "version", "", "Print the version.")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageError(fs, "unexpected argument %q", fs.Arg(0))
	}
	bi, _ := debug.ReadBuildInfo()
	goVersion := ""
	if bi != nil {
		goVersion = " " + strings.TrimSpace(bi.GoVersion)
	}
	fmt.Fprintf(env.Stdout, "pulse %s%s\n", versionString(), goVersion)
	return ExitOK
}
