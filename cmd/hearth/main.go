package main

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	// ran is set once arguments and flags are accepted and the command
	// is about to run: an error before that is a usage error (exit 2).
	ran bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root, g := newRootG()
	cmd, err := root.ExecuteContextC(ctx)
	stop()
	if err != nil {
		err = asUsage(err, g, cmd)
		var ec exitCodeError
		if !errors.As(err, &ec) {
			fmt.Fprintln(os.Stderr, "hearth:", err)
		}
		var ue usageError
		if errors.As(err, &ue) && cmd != nil {
			fmt.Fprintf(os.Stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		}
		os.Exit(exitCode(err))
	}
}

// usageError is a command line cobra refused (unknown command or flag,
// wrong number of arguments): exit code 2, like bad input.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

// asUsage marks errors raised before the command ran (by cobra's own
// argument and flag checks) as usage errors.
func asUsage(err error, g *globals, cmd *cobra.Command) error {
	var he *hearth.Error
	if g.ran || errors.As(err, &he) {
		return err
	}
	return usageError{err}
}

// exitCode maps error kinds to distinct exit codes so scripts can react.
func exitCode(err error) int {
	var ec exitCodeError
	if errors.As(err, &ec) {
		return ec.code // the guest command's own exit code
	}
	var ue usageError
	if errors.As(err, &ue) {
		return 2
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
	root, _ := newRootG()
	return root
}

func newRootG() (*cobra.Command, *globals) {
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
			g.ran = true
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
	root.AddCommand(versionCmd(g), psCmd(g), inspectCmd(g), demoCmd(g), serveCmd(g), imageCmd(g))
	root.AddCommand(lifecycleCmds(g)...)
	root.AddCommand(jailCmd())
	root.AddCommand(uffdCmd())
	// Cobra adds "completion" when it executes; adding it now puts it in
	// the tree that help and the tests walk.
	root.InitDefaultCompletionCmd()
	if comp, _, err := root.Find([]string{"completion"}); err == nil && comp != root {
		comp.Example = `  source <(hearth completion bash)
  hearth completion zsh > "${fpath[1]}/_hearth"
  hearth completion fish > ~/.config/fish/completions/hearth.fish`
	}
	groupsRefuseUnknown(root)
	return root, g
}

// groupsRefuseUnknown makes a command group ("image", "snapshot") given an
// unknown subcommand fail with a usage error instead of printing its help
// and exiting 0.
func groupsRefuseUnknown(c *cobra.Command) {
	for _, sub := range c.Commands() {
		if sub.HasSubCommands() && !sub.Runnable() {
			sub.Args = cobra.ArbitraryArgs
			sub.RunE = func(cmd *cobra.Command, args []string) error {
				if len(args) > 0 {
					return usageError{fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())}
				}
				return cmd.Help()
			}
		}
		groupsRefuseUnknown(sub)
	}
}

func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print hearth's version",
		Long:    "Print the version this binary was built as (set with -ldflags \"-X main.version=…\").",
		Example: "  hearth version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.print(cmd.OutOrStdout(), map[string]string{"version": version}, func(w io.Writer) {
				fmt.Fprintf(w, "hearth %s\n", version)
			})
		},
	}
}
