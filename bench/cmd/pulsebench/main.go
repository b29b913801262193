// Command pulsebench measures Pulse beside the raw broker clients and Watermill, in one run on
// this machine, and prints a report table (also written to -out).
//
//	go run ./cmd/pulsebench                      # everything (make bench)
//	go run ./cmd/pulsebench -only redis -n 50000
//	go run ./cmd/pulsebench -only jetstream -match pulse -cpuprofile js.pprof
//
// It starts its own servers: a redis-server on a free loopback port (persistence off) and an
// embedded nats-server with a file store in a temporary directory. Exit status: 0 when the
// run completed (goals met or not; -strict makes a missed goal exit 3), 1 on a failed run,
// 2 on bad flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"

	"github.com/pulse-bus/pulse/bench"
	"github.com/pulse-bus/pulse/envelope"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pulsebench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		only       = fs.String("only", "", "comma-separated sections to run: "+strings.Join(bench.Sections, ", ")+" (default all)")
		n          = fs.Int("n", 0, fmt.Sprintf("messages per trial, the same for every contender (default %d inmem, %d brokers)", bench.DefaultInmemN, bench.DefaultBrokerN))
		reps       = fs.Int("reps", bench.DefaultReps, "measured repetitions per contender (the median is reported)")
		warmups    = fs.Int("warmups", bench.DefaultWarmups, "unmeasured warm-up repetitions per contender (0: none)")
		warmN      = fs.Int("warm-n", bench.DefaultWarmN, "messages per warm-up repetition (at most -n)")
		batch      = fs.Int("batch", bench.DefaultBatch, "publish batch and fetch size for every batching contender")
		publishers = fs.Int("publishers", 1, "goroutines publishing at once in the broker trials, for every contender")
		track      = fs.String("track", string(envelope.DefaultTrack), "schema track of the envelopes: v1 or v2")
		size       = fs.Int("size", bench.DefaultMessageSize, "target envelope size in bytes")
		latRate    = fs.Float64("latency-rate", bench.DefaultLatencyRate, "publish rate of the latency trials, msgs/s")
		latN       = fs.Int("latency-n", bench.DefaultLatencyN, "messages measured per latency trial")
		match      = fs.String("match", "", "regexp: run only contenders whose name matches")
		out        = fs.String("out", filepath.Join("results", "latest.txt"), "also write the report here (\"\": don't)")
		cpuprofile = fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
		profileDir = fs.String("profile-dir", "", "write a CPU profile of every measured phase of every contender to this directory (not with -cpuprofile)")
		quiet      = fs.Bool("q", false, "no progress lines on stderr")
		strict     = fs.Bool("strict", false, "exit 3 if any goal is missed or not measured")
	)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "pulsebench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	tr, err := envelope.ParseTrack(*track)
	if err != nil {
		fmt.Fprintf(stderr, "pulsebench: -track: %v\n", err)
		return 2
	}
	opts := bench.Options{
		N: *n, Reps: *reps, Warmups: *warmups, WarmN: *warmN, Batch: *batch, Publishers: *publishers, Track: tr, Size: *size,
		LatencyRate: *latRate, LatencyN: *latN,
	}
	if *cpuprofile != "" && *profileDir != "" {
		fmt.Fprintln(stderr, "pulsebench: -cpuprofile and -profile-dir cannot be combined (one CPU profile at a time)")
		return 2
	}
	opts.ProfileDir = *profileDir
	if *warmups == 0 {
		opts.Warmups = -1
	}
	if *only != "" {
		for _, s := range strings.Split(*only, ",") {
			s = strings.TrimSpace(s)
			if !slices.Contains(bench.Sections, s) {
				fmt.Fprintf(stderr, "pulsebench: -only: unknown section %q (accepted: %s)\n", s, strings.Join(bench.Sections, ", "))
				return 2
			}
			opts.Only = append(opts.Only, s)
		}
	}
	if *match != "" {
		re, err := regexp.Compile(*match)
		if err != nil {
			fmt.Fprintf(stderr, "pulsebench: -match: %v\n", err)
			return 2
		}
		opts.Match = re
	}
	if !*quiet {
		opts.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintf(stderr, "pulsebench: %v\n", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(stderr, "pulsebench: cpu profile: %v\n", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}

	rep, err := bench.Run(ctx, opts)
	if err != nil {
		fmt.Fprintf(stderr, "pulsebench: %v\n", err)
		if errors.Is(err, context.Canceled) {
			return 130
		}
		return 1
	}
	if err := rep.WriteText(stdout); err != nil {
		fmt.Fprintf(stderr, "pulsebench: %v\n", err)
		return 1
	}
	if *out != "" {
		if err := writeFile(*out, rep); err != nil {
			fmt.Fprintf(stderr, "pulsebench: %v\n", err)
			return 1
		}
		fmt.Fprintf(stderr, "pulsebench: report written to %s\n", *out)
	}
	if *strict && !rep.AllGoalsMet() {
		return 3
	}
	return 0
}

func writeFile(path string, rep *bench.Report) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := rep.WriteText(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
