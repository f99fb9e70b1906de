package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/jail"
	"github.com/spf13/cobra"
)

func demoCmd(g *globals) *cobra.Command {
	var bf backendFlags
	var keep bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a VM through its whole lifecycle and time each step",
		Long: `Run one VM through create → start → pause → resume → snapshot → restore (a
clone) → stop → destroy, printing each step and its duration, then remove
everything it made.

Backends:
  mem          the in-memory backend: the real runtime (store, pipeline,
               state machine, snapshots, rollback) with no guest. Works on
               any machine.
  firecracker  real Firecracker processes (--firecracker-bin; the
               simulator hearth-fcsim works too).

The demo uses a fresh temporary state dir unless --state-dir is given
explicitly.`,
		Example: "  hearth demo\n  hearth demo --backend firecracker --firecracker-bin ./hearth-fcsim",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			stateDir := ""
			if cmd.Flags().Changed("state-dir") {
				stateDir = g.stateDir
			}
			return runDemo(cmd.Context(), cmd.OutOrStdout(), g, &bf, stateDir, keep)
		},
	}
	bf.register(cmd.Flags(), "mem")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the temporary state dir for inspection")
	return cmd
}

func runDemo(ctx context.Context, out io.Writer, g *globals, bf *backendFlags, stateDir string, keep bool) error {
	backends, def, err := bf.build(g.log)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "hearth-demo-")
	if err != nil {
		return err
	}
	if keep {
		fmt.Fprintf(out, "keeping %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}
	if stateDir == "" {
		stateDir = filepath.Join(work, "state")
	}
	// No guest image is part of the demo yet: the in-memory backend and
	// the simulator boot nothing, but the runtime checks that the kernel
	// and rootfs it is given exist.
	kernel, rootfs := filepath.Join(work, "vmlinux"), filepath.Join(work, "rootfs.ext4")
	for _, f := range []string{kernel, rootfs} {
		if err := os.WriteFile(f, []byte("placeholder for the in-memory backend\n"), 0o600); err != nil {
			return err
		}
	}
	rt, err := hearth.Open(ctx, hearth.Config{StateDir: stateDir, Backends: backends, DefaultBackend: def, Logger: g.log,
		JailCgroupParent: jail.DefaultCgroupParent})
	if err != nil {
		return err
	}
	defer rt.Close()
	fmt.Fprintf(out, "hearth demo: backend %s, state dir %s\n", def, stateDir)
	if def == "mem" {
		fmt.Fprintln(out, "(in-memory backend: the full runtime runs, no guest boots)")
	}
	agent := true
	spec := hearth.Spec{Kernel: kernel, Rootfs: rootfs, VCPUs: 1, MemoryMiB: 128, Agent: &agent}
	step := func(name string, f func() (string, error)) error {
		t0 := time.Now()
		detail, err := f()
		if err != nil {
			fmt.Fprintf(out, "  %-10s FAILED: %v\n", name, err)
			return err
		}
		fmt.Fprintf(out, "  %-10s %-28s %8s\n", name, detail, time.Since(t0).Round(time.Microsecond))
		return nil
	}
	view := func(v hearth.View, err error) (string, error) {
		return fmt.Sprintf("%s is %s", v.ID, v.Status), err
	}
	steps := []struct {
		name string
		f    func() (string, error)
	}{
		{"create", func() (string, error) { return view(rt.Create(ctx, "demo", spec)) }},
		{"start", func() (string, error) { return view(rt.Start(ctx, "demo")) }},
		{"pause", func() (string, error) { return view(rt.Pause(ctx, "demo")) }},
		{"resume", func() (string, error) { return view(rt.Resume(ctx, "demo")) }},
		{"snapshot", func() (string, error) {
			s, err := rt.Snapshot(ctx, "demo", "demo-snap")
			return "snapshot " + s.Name, err
		}},
		{"restore", func() (string, error) {
			return view(rt.Restore(ctx, hearth.RestoreSpec{Snapshot: "demo-snap", VM: "demo-clone"}))
		}},
		{"stop", func() (string, error) { return view(rt.Stop(ctx, "demo")) }},
		{"destroy", func() (string, error) {
			if err := rt.Destroy(ctx, "demo-clone"); err != nil {
				return "", err
			}
			return "demo, demo-clone destroyed", rt.Destroy(ctx, "demo")
		}},
		{"cleanup", func() (string, error) { return "snapshot removed", rt.DeleteSnapshot(ctx, "demo-snap") }},
	}
	for _, s := range steps {
		if err := step(s.name, s.f); err != nil {
			return err
		}
	}
	left, err := rt.List(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "done: %d VMs left\n", len(left))
	return nil
}
