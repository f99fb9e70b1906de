//go:build linux

package uffd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"
)

// Command is the hidden hearth subcommand that runs a server.
const Command = "_uffd"

// Args renders o as the command-line flags Main parses; Launch uses it.
func (o Options) Args() []string {
	a := []string{"--socket", o.Socket, "--mem", o.MemFile}
	if o.StatusFile != "" {
		a = append(a, "--status", o.StatusFile)
	}
	if o.TraceFile != "" {
		a = append(a, "--trace", o.TraceFile)
	}
	a = append(a, "--prefetch="+strconv.FormatBool(o.Prefetch))
	if o.VMMPid > 0 {
		a = append(a, "--vmm-pid", strconv.Itoa(o.VMMPid))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"accept-timeout", o.AcceptTimeout}, {"status-interval", o.StatusInterval}, {"trace-window", o.TraceWindow}} {
		if d.v > 0 {
			a = append(a, "--"+d.name, d.v.String())
		}
	}
	if o.FaultAround > 0 {
		a = append(a, "--fault-around", strconv.Itoa(o.FaultAround))
	}
	return a
}

// Main parses the server flags (see Options.Args), runs Serve with a
// logger writing to stderr, and returns the process exit code. ctx
// cancellation (SIGTERM in `hearth _uffd`) makes the server detach.
func Main(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(Command, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o Options
	var level string
	fs.StringVar(&o.Socket, "socket", "", "unix socket the VMM connects to (required)")
	fs.StringVar(&o.MemFile, "mem", "", "snapshot memory file (required)")
	fs.StringVar(&o.StatusFile, "status", "", "status file (JSON), rewritten periodically and at exit")
	fs.StringVar(&o.TraceFile, "trace", "", "working-set trace file: recorded when absent, replayed with --prefetch")
	fs.BoolVar(&o.Prefetch, "prefetch", true, "replay the trace file eagerly in the background")
	fs.IntVar(&o.VMMPid, "vmm-pid", 0, "VMM pid (default: the connecting peer, via SO_PEERCRED)")
	fs.DurationVar(&o.AcceptTimeout, "accept-timeout", defaultAcceptTimeout, "how long to wait for the VMM to connect and send its regions")
	fs.DurationVar(&o.StatusInterval, "status-interval", defaultStatusInterval, "status file rewrite interval")
	fs.DurationVar(&o.TraceWindow, "trace-window", defaultTraceWindow, "how long after the handshake faults are recorded into the trace")
	fs.IntVar(&o.FaultAround, "fault-around", defaultFaultAround, "4 KiB pages copied per on-demand fault: the aligned block around the fault (1 = only the faulting page)")
	fs.StringVar(&level, "log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitUsage
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		fmt.Fprintf(stderr, "%s: --log-level: %v\n", Command, err)
		return ExitUsage
	}
	if o.Socket == "" || o.MemFile == "" || fs.NArg() != 0 {
		fmt.Fprintf(stderr, "%s: --socket and --mem are required and no arguments are accepted\n", Command)
		return ExitUsage
	}
	o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})).With("vmm_socket", o.Socket)
	return ExitCode(Serve(ctx, o))
}
