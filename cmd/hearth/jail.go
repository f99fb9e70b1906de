package main

import (
	"github.com/spf13/cobra"

	"github.com/hearth-vm/hearth/jail"
)

// jailCmd is `hearth _jail`: hearth's own jailer for VMMs other than
// Firecracker (which has its own). The runtime starts it as the VMM's
// process; it confines itself (rlimits, cgroup, chroot with the VMM and
// its libraries staged, device nodes, netns, uid/gid drop,
// no_new_privs) and execs the VMM in place, so the pid the runtime
// recorded is the VMM's. Its flags are parsed by jail.ParseExecArgs, the
// inverse of jail.ExecSpec.Args, which is how the runtime builds them.
func jailCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "_jail --chroot DIR --uid N --gid N [--id ID --cgroup-parent P [--cgroup FILE=VALUE]...] [--netns PATH] [--rlimit RES=N]... [--dev PATH]... -- /path/to/vmm [ARGS...]",
		Short:  "Confine this process and exec a VMM (internal)",
		Hidden: true,
		// The VMM's own arguments follow "--" and must reach it
		// untouched; jail.ParseExecArgs handles everything.
		DisableFlagParsing: true,
		SilenceUsage:       true,
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := jail.ParseExecArgs(args)
			if err != nil {
				return err
			}
			return jail.Exec(spec) // returns only on failure
		},
	}
}
