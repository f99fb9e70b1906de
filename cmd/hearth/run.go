package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/api"
	"github.com/hearth-vm/hearth/api/client"
	"github.com/hearth-vm/hearth/jail"
	"github.com/spf13/cobra"
)

func runCmd(g *globals) *cobra.Command {
	var bf backendFlags
	var spec hearth.Spec
	var allow []string
	var keep bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARG...]",
		Short: "Boot a VM, run a command in it, and remove it",
		Long: `The sandbox in one command: boot a VM from an image (default: the "default"
image, see "hearth image build default"), run CMD in it through the guest
agent with its output streamed, remove the VM, and exit with CMD's exit
code.

With a daemon listening on --socket the daemon runs the VM; without one the
runtime runs in this process on --state-dir (with --backend, default auto:
Firecracker when installed, else QEMU).`,
		Example: `  hearth run -- uname -a
  hearth run --memory 512 --allow tcp:0.0.0.0/0:443 -- sh -c 'echo hello from the guest'`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if spec.Image == "" && spec.Kernel == "" {
				spec.Image = "default"
			}
			on := true
			spec.Agent = &on
			if len(allow) > 0 {
				spec.Network = &hearth.NetworkSpec{Allow: allow}
			}
			id := "run-" + randomSuffix()
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			if c, err := daemon(ctx, g); err == nil {
				return runViaDaemon(ctx, cmd, c, id, spec, args, keep)
			}
			return runInProcess(ctx, cmd, g, &bf, id, spec, args, keep)
		},
	}
	bf.register(cmd.Flags(), "auto")
	f := cmd.Flags()
	f.StringVar(&spec.Image, "image", "", "catalog image (default: default)")
	f.StringVar(&spec.Kernel, "kernel", "", "kernel path instead of an image")
	f.StringVar(&spec.Rootfs, "rootfs", "", "rootfs path instead of an image")
	f.IntVar(&spec.VCPUs, "cpus", 0, "vCPUs")
	f.IntVar(&spec.MemoryMiB, "memory", 0, "memory in MiB")
	f.StringArrayVar(&allow, "allow", nil, "egress rule proto:cidr[:ports] (needs --network)")
	f.BoolVar(&keep, "keep", false, "keep the VM after the command (for inspection)")
	f.DurationVar(&timeout, "timeout", 0, "give up after this long")
	return cmd
}

func randomSuffix() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func runViaDaemon(ctx context.Context, cmd *cobra.Command, c *client.Client, id string, spec hearth.Spec, args []string, keep bool) error {
	if _, err := c.CreateAndStart(ctx, id, spec); err != nil {
		return err
	}
	if !keep {
		defer c.Destroy(context.WithoutCancel(ctx), id)
	}
	st, err := c.Exec(ctx, id, api.ExecRequest{Args: args}, cmd.OutOrStdout(), cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	if st.ExitCode != 0 {
		return exitCodeError{st.ExitCode}
	}
	return nil
}

func runInProcess(ctx context.Context, cmd *cobra.Command, g *globals, bf *backendFlags, id string, spec hearth.Spec, args []string, keep bool) error {
	backends, def, err := bf.build(g.log)
	if err != nil {
		return err
	}
	netCfg, err := bf.network()
	if err != nil {
		return err
	}
	rt, err := hearth.Open(ctx, hearth.Config{StateDir: g.stateDir, Backends: backends, DefaultBackend: def,
		Logger: g.log, JailCgroupParent: jail.DefaultCgroupParent, Network: netCfg})
	if err != nil {
		return err
	}
	defer rt.Close()
	if _, err := rt.Create(ctx, id, spec); err != nil {
		if hearth.KindOf(err) == hearth.KindInvalidArgument && spec.Image == "default" {
			return fmt.Errorf("%w (build the default image first: hearth image build default)", err)
		}
		return err
	}
	if !keep {
		defer rt.Destroy(context.WithoutCancel(ctx), id)
	}
	if _, err := rt.Start(ctx, id); err != nil {
		return err
	}
	st, err := rt.Exec(ctx, id, &agent.Cmd{Args: args, Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr()})
	if err != nil {
		return err
	}
	if st.ExitCode != 0 {
		return exitCodeError{st.ExitCode}
	}
	return nil
}
