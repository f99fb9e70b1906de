package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/hearth-vm/hearth/uffd"
)

// uffdCmd is `hearth _uffd`: the userfaultfd page-fault server of one
// VM restored with memory backend "uffd". The runtime starts it with
// uffd.Launch as its own process (so it outlives daemon restarts) and
// points Firecracker's snapshot/load at its socket. Its flags are parsed by
// uffd.Main, the inverse of uffd.Options.Args, which is how Launch builds
// them; the exit code tells how it ended (see uffd.ExitCode). SIGTERM
// makes it populate the rest of guest memory and detach, leaving the VM
// running without it.
func uffdCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "_uffd --socket PATH --mem FILE [--status FILE] [--trace FILE] [--prefetch=BOOL] [--vmm-pid N] [--fault-around N] [--accept-timeout D] [--status-interval D] [--trace-window D]",
		Short:              "Serve a restored VM's page faults from its snapshot (internal)",
		Hidden:             true,
		DisableFlagParsing: true, // uffd.Main owns the flags
		SilenceUsage:       true,
		Run: func(cmd *cobra.Command, args []string) {
			os.Exit(uffd.Main(cmd.Context(), args, cmd.ErrOrStderr()))
		},
	}
}
