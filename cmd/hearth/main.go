package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/hearth-vm/hearth"
	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

type globals struct {
	stateDir string
	socket   string
	output   string
	logLevel string
	log      *slog.Logger
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		var ec exitCodeError
		if !errors.As(err, &ec) {
			fmt.Fprintln(os.Stderr, "hearth:", err)
		}
		os.Exit(exitCode(err))
	}
}

// exitCode maps error kinds to distinct exit codes so scripts can react.
func exitCode(err error) int {
	var ec exitCodeError
	if errors.As(err, &ec) {
		return ec.code // the guest command's own exit code
	}
	switch hearth.KindOf(err) {
	case hearth.KindInvalidArgument:
		return 2
	case hearth.KindVMNotFound, hearth.KindSnapshotNotFound, hearth.KindImageNotFound:
		return 3
	case hearth.KindVMAlreadyExists, hearth.KindSnapshotAlreadyExists, hearth.KindImageAlreadyExists, hearth.KindInvalidTransition:
		return 4
	}
	return 1
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "hearth",
		Short: "Run, snapshot and restore microVMs",
		Long: `hearth boots, pauses, snapshots, restores, clones and destroys Firecracker
and QEMU microvm virtual machines on this host.

The state of every VM lives in a state dir (--state-dir, $HEARTH_STATE_DIR,
default /var/lib/hearth). The daemon ("hearth serve") owns the state dir; the
other commands talk to it over its socket (--socket, $HEARTH_SOCKET).
ps and inspect also work without a daemon, reading the state dir.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "flags", Err: fmt.Errorf("--log-level: %w", err)}
			}
			if g.output != "table" && g.output != "json" {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "flags", Err: fmt.Errorf("--output %q: want table or json", g.output)}
			}
			g.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
			return nil
		},
	}
	def := os.Getenv("HEARTH_STATE_DIR")
	if def == "" {
		def = "/var/lib/hearth"
	}
	root.PersistentFlags().StringVar(&g.stateDir, "state-dir", def, "hearth state directory ($HEARTH_STATE_DIR)")
	root.PersistentFlags().StringVar(&g.socket, "socket", socketDefault(), "daemon socket ($HEARTH_SOCKET)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	root.AddCommand(versionCmd(), psCmd(g), inspectCmd(g), demoCmd(g), serveCmd(g), imageCmd(g))
	root.AddCommand(lifecycleCmds(g)...)
	root.AddCommand(jailCmd())
	root.AddCommand(uffdCmd())
	return root
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print hearth's version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "hearth %s\n", version)
		},
	}
}
