package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/api"
	"github.com/hearth-vm/hearth/api/client"
	"github.com/spf13/cobra"
)

// daemon connects to the daemon's socket and checks it answers.
func daemon(ctx context.Context, g *globals) (*client.Client, error) {
	c := client.New(g.socket)
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.Ping(pctx); err != nil {
		return nil, &hearth.Error{Kind: hearth.KindStatePoisoned, Op: "connect",
			Err: fmt.Errorf("no hearth daemon answers on %s (start one with `hearth serve`, or set --socket/$HEARTH_SOCKET)", g.socket)}
	}
	return c, nil
}

func (g *globals) print(w io.Writer, v any, table func(io.Writer)) error {
	if g.output == "json" {
		return writeJSON(w, v)
	}
	table(w)
	return nil
}

func printView(w io.Writer, v hearth.View) {
	fmt.Fprintf(w, "%s %s\n", v.ID, v.Status)
}

// vmVerb builds start/pause/resume/stop, which all take VM ids and print
// the resulting views.
func vmVerb(g *globals, use, short, long string, call func(*client.Client, context.Context, string) (hearth.View, error)) *cobra.Command {
	return &cobra.Command{
		Use:     use + " VM...",
		Short:   short,
		Long:    long + "\n\nEach VM is tried in turn; the exit code is that of the first failure (3 not found, 4 wrong state).",
		Example: "  hearth " + use + " web1\n  hearth " + use + " web1 web2 -o json",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := daemon(cmd.Context(), g)
			if err != nil {
				return err
			}
			var errs []error
			for _, id := range args {
				v, err := call(c, cmd.Context(), id)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				g.print(cmd.OutOrStdout(), v, func(w io.Writer) { printView(w, v) })
			}
			return errors.Join(errs...)
		},
	}
}

func lifecycleCmds(g *globals) []*cobra.Command {
	return []*cobra.Command{
		createCmd(g),
		vmVerb(g, "start", "Boot VMs", "Boot created VMs, or cold-boot stopped or crashed ones (fresh VMM, same disk).", (*client.Client).Start),
		vmVerb(g, "pause", "Pause VMs", "Freeze running VMs' vCPUs; memory stays allocated.", (*client.Client).Pause),
		vmVerb(g, "resume", "Resume paused VMs", "Continue paused VMs.", (*client.Client).Resume),
		vmVerb(g, "stop", "Shut VMs down", "Ask each guest to power off, then signal its VMM after the stop timeout. Disk and resources stay; start boots it again.", (*client.Client).Stop),
		rmCmd(g), renameCmd(g), snapshotCmd(g), restoreCmd(g), eventsCmd(g), logsCmd(g), statsCmd(g),
		execCmd(g), egressCmd(g), updateCmd(g), cpCmd(g), gcCmd(g), runCmd(g),
	}
}

func createCmd(g *globals) *cobra.Command {
	var spec hearth.Spec
	var labels, drives, allow, dns []string
	var agent, start, noNet bool
	cmd := &cobra.Command{
		Use:   "create VM",
		Short: "Create a VM",
		Long: `Create a VM: allocate its resources, launch and configure its VMM. The guest
boots on "hearth start" (or right away with --start). Unset options take the
daemon's defaults.`,
		Example: `  hearth create web1 --kernel /img/vmlinux --rootfs /img/rootfs.ext4 --cpus 2 --memory 512 --start
  hearth create job7 --image default --label tenant=acme --drive id=data,path=/srv/data.img,ro`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			bad := func(err error) error {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "create", VM: args[0], Err: err}
			}
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok || k == "" {
					return bad(fmt.Errorf("--label %q: want key=value", l))
				}
				if spec.Labels == nil {
					spec.Labels = map[string]string{}
				}
				spec.Labels[k] = v
			}
			for _, d := range drives {
				ds, err := parseDrive(d)
				if err != nil {
					return bad(err)
				}
				spec.Drives = append(spec.Drives, ds)
			}
			if cmd.Flags().Changed("agent") {
				spec.Agent = &agent
			}
			if noNet || len(allow) > 0 || len(dns) > 0 {
				spec.Network = &hearth.NetworkSpec{Disabled: noNet, Allow: allow, DNS: dns}
			}
			c, err := daemon(cmd.Context(), g)
			if err != nil {
				return err
			}
			call := c.Create
			if start {
				call = c.CreateAndStart
			}
			v, err := call(cmd.Context(), args[0], spec)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), v, func(w io.Writer) { printView(w, v) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.Backend, "backend", "", "VMM backend (default: the daemon's)")
	f.StringVar(&spec.Image, "image", "", "catalog image")
	f.StringVar(&spec.Kernel, "kernel", "", "kernel (vmlinux) path")
	f.StringVar(&spec.Initrd, "initrd", "", "initrd path")
	f.StringVar(&spec.Rootfs, "rootfs", "", "root filesystem image path")
	f.BoolVar(&spec.RootfsReadOnly, "rootfs-ro", false, "attach the rootfs read-only and shared instead of cloning it")
	f.IntVar(&spec.VCPUs, "cpus", 0, "vCPUs")
	f.IntVar(&spec.MemoryMiB, "memory", 0, "memory in MiB")
	f.BoolVar(&spec.HugePages, "huge-pages", false, "back guest memory with 2 MiB huge pages")
	f.StringVar(&spec.BootArgs, "boot-args", "", "kernel command line")
	f.BoolVar(&spec.TrackDirtyPages, "track-dirty-pages", false, "enable diff snapshots")
	f.BoolVar(&agent, "agent", false, "give the VM a vsock device for the guest agent")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	f.StringArrayVar(&drives, "drive", nil, "extra drive id=ID,path=PATH[,ro] (repeatable)")
	f.BoolVar(&start, "start", false, "boot the VM right away")
	f.StringArrayVar(&allow, "allow", nil, "egress rule proto:cidr[:ports], e.g. tcp:10.0.0.0/8:443 (repeatable; default: deny all)")
	f.StringArrayVar(&dns, "dns", nil, "resolver the VM may query (repeatable)")
	f.BoolVar(&noNet, "no-network", false, "give the VM no network interface")
	return cmd
}

func parseDrive(s string) (hearth.DriveSpec, error) {
	var d hearth.DriveSpec
	for _, part := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "id":
			d.ID = v
		case "path":
			d.Path = v
		case "ro":
			d.ReadOnly = true
		default:
			return d, fmt.Errorf("--drive %q: unknown key %q (want id=,path=,ro)", s, k)
		}
	}
	if d.ID == "" || d.Path == "" {
		return d, fmt.Errorf("--drive %q: id and path are required", s)
	}
	return d, nil
}

func rmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm VM...",
		Aliases: []string{"destroy"},
		Short:   "Destroy VMs",
		Long:    "Kill each VM's VMM, release every host resource it holds and remove its record. Snapshots taken from it are kept.",
		Example: "  hearth rm web1\n  hearth rm $(hearth ps -a -o json | jq -r '.[] | select(.status==\"crashed\") | .id')",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachArg(cmd, g, args, func(c *client.Client, id string) error {
				if err := c.Destroy(cmd.Context(), id); err != nil {
					return err
				}
				if g.output != "json" {
					fmt.Fprintln(cmd.OutOrStdout(), id)
				}
				return nil
			})
		},
	}
}

func renameCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rename VM NEW-ID",
		Short:   "Give a VM a new id",
		Long:    "Rename a VM, e.g. to hand a pre-restored pool VM to the tenant claiming it. Nothing on disk moves and the VMM is not disturbed.",
		Example: "  hearth restore warm-python pool-7 && hearth rename pool-7 tenant-acme-1",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := daemon(cmd.Context(), g)
			if err != nil {
				return err
			}
			v, err := c.Rename(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), v, func(w io.Writer) { printView(w, v) })
		},
	}
}

func snapshotCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Create, list and remove snapshots",
		Long:  "Snapshots hold a VM's memory, device state and (for VMs with their own disk) a copy of its disk. They outlive the VM and can be restored any number of times.",
		Example: `  hearth snapshot create web1 warm
  hearth snapshot ls
  hearth restore warm web1-clone
  hearth snapshot rm warm`,
	}
	create := &cobra.Command{
		Use:   "create VM NAME",
		Short: "Snapshot a VM (a running VM is paused for the write and resumed)",
		Long: `Write a snapshot of a running or paused VM: its memory, device state and a
copy of its disk. A running VM is paused for the write and resumed after it.
On a terminal a bar shows the memory written so far; otherwise one line per
second. A failed write leaves no partial snapshot.`,
		Example: "  hearth snapshot create web1 warm\n  hearth snapshot create web1 warm -o json",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := daemon(cmd.Context(), g)
			if err != nil {
				return err
			}
			var snapDir string
			var total int64
			if sys, err := c.System(cmd.Context()); err == nil {
				snapDir = filepath.Join(sys.StateDir, "snapshots")
			}
			if v, err := c.Get(cmd.Context(), args[0]); err == nil {
				total = int64(v.Spec.MemoryMiB) << 20
			}
			stop := watchSnapshot(newProgress(cmd.ErrOrStderr()), snapDir, args[1], total)
			sv, err := c.Snapshot(cmd.Context(), args[0], args[1])
			stop(err == nil)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), sv, func(w io.Writer) { fmt.Fprintf(w, "%s from %s in %s\n", sv.Name, sv.SourceVM, sv.Dir) })
		},
	}
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List snapshots",
		Long:    "List snapshots with their source VM, backend and creation time (everything recorded with -o json).",
		Example: "  hearth snapshot ls\n  hearth snapshot ls -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := daemon(cmd.Context(), g)
			if err != nil {
				return err
			}
			snaps, err := c.Snapshots(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), snaps, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tSOURCE VM\tBACKEND\tCREATED")
				for _, s := range snaps {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, s.SourceVM, s.Backend, s.CreatedAt.Format(time.RFC3339))
				}
				tw.Flush()
			})
		},
	}
	rm := &cobra.Command{
		Use:     "rm NAME...",
		Short:   "Delete snapshots",
		Long:    "Delete snapshots and their files. VMs restored from them are unaffected (they have their own disk copy).",
		Example: "  hearth snapshot rm warm old-warm",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachArg(cmd, g, args, func(c *client.Client, n string) error {
				return c.DeleteSnapshot(cmd.Context(), n)
			})
		},
	}
	verify := &cobra.Command{
		Use:     "verify NAME...",
		Short:   "Re-hash snapshots' files against their manifests",
		Long:    "Re-hash each snapshot's memory, state and disk files and compare them with the SHA-256 recorded when it was written. A mismatch exits 1 with an integrity error.",
		Example: "  hearth snapshot verify warm",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachArg(cmd, g, args, func(c *client.Client, n string) error {
				if err := c.VerifySnapshot(cmd.Context(), n); err != nil {
					return err
				}
				if g.output != "json" {
					fmt.Fprintf(cmd.OutOrStdout(), "%s ok\n", n)
				}
				return nil
			})
		},
	}
	cmd.AddCommand(create, ls, rm, verify)
	return cmd
}

func restoreCmd(g *globals) *cobra.Command {
	var rs hearth.RestoreSpec
	var labels []string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "restore SNAPSHOT VM",
		Short: "Create a VM from a snapshot",
		Long: "Restore a snapshot into a new VM (a clone with its own disk copy and vsock socket). It runs unless --paused.\n\n" +
			"With --memory-backend uffd, guest memory is served lazily by a page-fault server: the first such restore of a " +
			"snapshot records the pages the guest touches, and later ones given --prefetch copy that working set in the " +
			"background. --prefetch-wait keeps the vCPUs paused until the working set is in (at most that long), so the " +
			"guest starts without faulting on it instead of racing the copy.",
		Example: "  hearth restore warm-python sandbox-42 --label tenant=acme\n" +
			"  hearth restore warm-python sandbox-43 --memory-backend uffd --prefetch --prefetch-wait 500ms",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rs.Snapshot, rs.VM = args[0], args[1]
			if wait < 0 || (wait > 0 && wait < time.Millisecond) {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "restore", Err: fmt.Errorf("--prefetch-wait %s: want 0 or at least 1ms", wait)}
			}
			rs.PrefetchWaitMs = wait.Milliseconds()
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok || k == "" {
					return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "restore", Err: fmt.Errorf("--label %q: want key=value", l)}
				}
				if rs.Labels == nil {
					rs.Labels = map[string]string{}
				}
				rs.Labels[k] = v
			}
			c, err := daemon(cmd.Context(), g)
			if err != nil {
				return err
			}
			v, err := c.Restore(cmd.Context(), rs)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), v, func(w io.Writer) { printView(w, v) })
		},
	}
	cmd.Flags().BoolVar(&rs.Paused, "paused", false, "leave the restored VM paused")
	cmd.Flags().StringVar(&rs.MemoryBackend, "memory-backend", "", "file (default) or uffd (lazy restore)")
	cmd.Flags().BoolVar(&rs.Prefetch, "prefetch", false, "with uffd: copy the recorded working set eagerly")
	cmd.Flags().DurationVar(&wait, "prefetch-wait", 0, "with --prefetch: keep the vCPUs paused until the working set is in, at most this long (e.g. 500ms)")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "extra label key=value (repeatable)")
	return cmd
}

func eventsCmd(g *globals) *cobra.Command {
	var vm string
	cmd := &cobra.Command{
		Use:     "events",
		Short:   "Stream lifecycle events",
		Long:    "Print lifecycle events (created, started, paused, resumed, stopped, crashed, destroyed, renamed, snapshot, restored, updated) as they happen, until interrupted. With -o json, one JSON object per line.",
		Example: "  hearth events\n  hearth events --vm web1 -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := daemon(cmd.Context(), g)
			if err != nil {
				return err
			}
			ch, err := c.Events(cmd.Context(), vm)
			if err != nil {
				return err
			}
			for e := range ch {
				if g.output == "json" {
					writeJSONLine(cmd.OutOrStdout(), e)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %-10s %-20s %s %s\n", e.Time.Format(time.RFC3339Nano), e.Type, e.VM, e.Status, e.Detail)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&vm, "vm", "", "only this VM's events")
	return cmd
}

func logsCmd(g *globals) *cobra.Command {
	var follow bool
	var tail int
	cmd := &cobra.Command{
		Use:     "logs VM",
		Short:   "Show a VM's console (guest serial output and VMM stderr)",
		Long:    "Print the last lines of a VM's console log; with -f keep printing new output until interrupted. The log survives daemon restarts and is kept after a crash until the VM is destroyed.",
		Example: "  hearth logs web1\n  hearth logs -f -n 20 web1",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := daemon(cmd.Context(), g)
			if err != nil {
				return err
			}
			return c.Console(cmd.Context(), args[0], tail, follow, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().IntVarP(&tail, "tail", "n", 100, "lines of history to print")
	return cmd
}

func statsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "stats VM...",
		Short:   "Show VMs' resource use",
		Long:    "Print each VM's CPU time, memory, pids, block I/O, network counters and VMM counters (JSON with -o json). CPU and memory come from the VM's cgroup when it is jailed, else from its VMM process.",
		Example: "  hearth stats web1\n  hearth stats web1 -o json",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := daemon(cmd.Context(), g)
			if err != nil {
				return err
			}
			var errs []error
			for _, id := range args {
				st, err := c.Stats(cmd.Context(), id)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				g.print(cmd.OutOrStdout(), st, func(w io.Writer) {
					fmt.Fprintf(w, "%s (%s, pid %d)\n", st.VM, st.Backend, st.Pid)
					if st.CPU != nil {
						fmt.Fprintf(w, "  cpu      %s\n", compactJSON(st.CPU))
					}
					if st.Memory != nil {
						fmt.Fprintf(w, "  memory   %s\n", compactJSON(st.Memory))
					}
					if st.Pids != nil {
						fmt.Fprintf(w, "  pids     %s\n", compactJSON(st.Pids))
					}
					if st.Block != nil {
						fmt.Fprintf(w, "  block    %s\n", compactJSON(st.Block))
					}
					for _, n := range st.Net {
						fmt.Fprintf(w, "  net      %s\n", compactJSON(n))
					}
					if st.Firecracker != nil {
						fc := st.Firecracker
						fmt.Fprintf(w, "  vmm      %d counters from %d metric flushes; vcpu exits %d, block reads %d B, net tx %d B\n",
							len(fc.Counters), fc.Lines, fc.Counters["vcpu.exit_io_out"], fc.Counters["block.read_bytes"], fc.Counters["net.tx_bytes_count"])
					}
					if pf := st.PageFaults; pf != nil {
						fmt.Fprintf(w, "  uffd     %s: %d faults (mean %.0f µs, max %.0f µs); %d MiB on demand, %d MiB in the background, %d MiB prefetched (trace %s)\n",
							pf.State, pf.Faults, pf.MeanFaultLatencyUS, pf.MaxFaultLatencyUS, pf.FaultBytes>>20, pf.BackgroundBytes>>20, pf.PrefetchedBytes>>20, pf.Trace)
					}
					for _, e := range st.Errors {
						fmt.Fprintf(w, "  unavailable: %s\n", e)
					}
				})
			}
			return errors.Join(errs...)
		},
	}
}

func compactJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// exitCodeError carries a guest command's exit code out of `hearth exec`.
type exitCodeError struct{ code int }

func (e exitCodeError) Error() string { return fmt.Sprintf("command exited with code %d", e.code) }

func execCmd(g *globals) *cobra.Command {
	var env []string
	var dir string
	var timeout time.Duration
	var stdin bool
	cmd := &cobra.Command{
		Use:   "exec VM -- CMD [ARG...]",
		Short: "Run a command in a VM",
		Long: `Run a command in a running VM through its guest agent, printing its output
as it comes. hearth exits with the command's exit code. With -i, standard
input is read to its end first and given to the command.`,
		Example: `  hearth exec sandbox-1 -- uname -a
  echo 'print(6*7)' | hearth exec -i sandbox-1 -- python3`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.ExecRequest{Args: args[1:], Dir: dir, TimeoutMs: timeout.Milliseconds()}
			for _, kv := range env {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "exec", Err: fmt.Errorf("--env %q: want KEY=VALUE", kv)}
				}
				if req.Env == nil {
					req.Env = map[string]string{}
				}
				req.Env[k] = v
			}
			if stdin {
				in, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 8<<20))
				if err != nil {
					return err
				}
				req.Stdin = base64.StdEncoding.EncodeToString(in)
			}
			c, err := daemon(cmd.Context(), g)
			if err != nil {
				return err
			}
			st, err := c.Exec(cmd.Context(), args[0], req, cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if st.ExitCode != 0 {
				return exitCodeError{st.ExitCode}
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&env, "env", "e", nil, "environment KEY=VALUE (repeatable)")
	cmd.Flags().StringVarP(&dir, "workdir", "w", "", "working directory in the guest")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "kill the command after this long")
	cmd.Flags().BoolVarP(&stdin, "interactive", "i", false, "pass standard input (read to its end, up to 8 MiB)")
	return cmd
}

func egressCmd(g *globals) *cobra.Command {
	var allow, dns []string
	cmd := &cobra.Command{
		Use:     "egress VM",
		Short:   "Replace a VM's egress policy",
		Long:    "Replace a running VM's egress firewall policy atomically: there is no moment without a policy. Egress is denied except what --allow and --dns open.",
		Example: "  hearth egress sandbox-1 --allow tcp:0.0.0.0/0:443 --dns 1.1.1.1",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := daemon(cmd.Context(), g)
			if err != nil {
				return err
			}
			return c.SetEgress(cmd.Context(), args[0], allow, dns)
		},
	}
	cmd.Flags().StringArrayVar(&allow, "allow", nil, "egress rule proto:cidr[:ports] (repeatable)")
	cmd.Flags().StringArrayVar(&dns, "dns", nil, "resolver the VM may query (repeatable)")
	return cmd
}

// splitRemote parses "VM:PATH"; a plain host path has no VM.
func splitRemote(s string) (vm, path string) {
	if i := strings.IndexByte(s, ':'); i > 0 && !strings.ContainsRune(s[:i], '/') {
		return s[:i], s[i+1:]
	}
	return "", s
}

func cpCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy a file into or out of a VM",
		Long: `Copy a file between the host and a running VM through its guest agent.
One side is VM:PATH (an absolute path in the guest), the other a host path or
"-" for standard input or output. Files go in atomically and keep the host
file's permission bits; a host directory as destination receives the file
under its guest name.`,
		Example: `  hearth cp ./job.py sandbox-1:/work/job.py
  hearth cp sandbox-1:/work/out.json ./out.json`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcVM, src := splitRemote(args[0])
			dstVM, dst := splitRemote(args[1])
			bad := func(f string, a ...any) error {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "cp", Err: fmt.Errorf(f, a...)}
			}
			if (srcVM == "") == (dstVM == "") {
				return bad("exactly one side must be VM:PATH")
			}
			// Both sides are checked before the daemon is asked anything:
			// bad input is reported as such (exit 2) and leaves nothing
			// behind, daemon or not.
			vm, guest := dstVM, dst
			if srcVM != "" {
				vm, guest = srcVM, src
			}
			if err := hearth.ValidateID(vm); err != nil {
				return bad("%v", err)
			}
			abs, _, err := agent.CleanPath(guest)
			if err != nil {
				return bad("guest path: %v", err)
			}
			var in *os.File
			if dstVM != "" && src != "-" {
				if in, err = os.Open(src); err != nil {
					return bad("%v", err)
				}
				defer in.Close()
				if fi, err := in.Stat(); err != nil {
					return bad("%v", err)
				} else if fi.IsDir() {
					return bad("%s is a directory", src)
				}
			}
			if srcVM != "" && dst != "-" {
				// Like cp, a directory receives the file under the guest
				// file's name. That name is one clean path element (no
				// "/", no ".."), so it cannot lead out of the directory.
				if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
					base := path.Base(abs)
					if base == "/" {
						return bad("the guest path %s names no file", guest)
					}
					dst = filepath.Join(dst, base)
				}
				if fi, err := os.Stat(filepath.Dir(dst)); err != nil || !fi.IsDir() {
					return bad("%s: the host directory does not exist", filepath.Dir(dst))
				}
			}
			c, err := daemon(cmd.Context(), g)
			if err != nil {
				return err
			}
			if dstVM != "" {
				r, size, perm := io.Reader(cmd.InOrStdin()), int64(-1), os.FileMode(0o644)
				if in != nil {
					fi, err := in.Stat()
					if err != nil {
						return bad("%v", err)
					}
					r, size, perm = in, fi.Size(), fi.Mode().Perm()
				}
				_, err := c.PutFile(cmd.Context(), dstVM, dst, r, size, perm)
				return err
			}
			if dst == "-" {
				_, err := c.GetFile(cmd.Context(), srcVM, src, cmd.OutOrStdout())
				return err
			}
			// Into a temporary file renamed into place: a failed copy
			// leaves no half-written file behind.
			tmp, err := os.CreateTemp(filepath.Dir(dst), ".hearth-cp-*")
			if err != nil {
				return bad("%v", err)
			}
			defer os.Remove(tmp.Name())
			if _, err := c.GetFile(cmd.Context(), srcVM, src, tmp); err != nil {
				tmp.Close()
				return err
			}
			if err := tmp.Close(); err != nil {
				return err
			}
			return os.Rename(tmp.Name(), dst)
		},
	}
}

func gcCmd(g *globals) *cobra.Command {
	var p hearth.GCPolicy
	cmd := &cobra.Command{
		Use:     "gc",
		Short:   "Delete old snapshots",
		Long:    "Delete the snapshots a policy does not keep: the newest --keep-per-vm of each source VM and, oldest first, whatever exceeds --max-bytes. A snapshot a kept diff depends on is never deleted.",
		Example: "  hearth gc --keep-per-vm 3 --max-bytes 50000000000",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if p.KeepPerVM == 0 && p.MaxBytes == 0 {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "gc", Err: errors.New("give --keep-per-vm and/or --max-bytes")}
			}
			c, err := daemon(cmd.Context(), g)
			if err != nil {
				return err
			}
			removed, err := c.GCSnapshots(cmd.Context(), p)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), removed, func(w io.Writer) {
				for _, n := range removed {
					fmt.Fprintln(w, n)
				}
			})
		},
	}
	cmd.Flags().IntVar(&p.KeepPerVM, "keep-per-vm", 0, "snapshots to keep per source VM")
	cmd.Flags().Int64Var(&p.MaxBytes, "max-bytes", 0, "disk space all snapshots may use")
	return cmd
}

// eachArg connects to the daemon and runs fn for every argument, going on
// past failures and returning them all. With -o json it prints the
// arguments that succeeded as a JSON array (failures go to stderr and the
// exit code).
func eachArg(cmd *cobra.Command, g *globals, args []string, fn func(c *client.Client, arg string) error) error {
	c, err := daemon(cmd.Context(), g)
	if err != nil {
		return err
	}
	var errs []error
	done := []string{}
	for _, a := range args {
		err := fn(c, a)
		if err == nil {
			done = append(done, a)
		}
		errs = append(errs, err)
	}
	if g.output == "json" {
		errs = append(errs, writeJSON(cmd.OutOrStdout(), done))
	}
	return errors.Join(errs...)
}
