package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/api"
	"github.com/hearth-vm/hearth/api/client"
	"github.com/hearth-vm/hearth/image"
	"github.com/hearth-vm/hearth/rootfs"
	"github.com/spf13/cobra"
)

// imageCmd is `hearth image`: the image catalog under <state-dir>/images,
// through the daemon when one answers on --socket (the same rule as ps,
// inspect and run), else on the state dir directly: the catalog is safe
// for concurrent use by several processes.
func imageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Manage guest images (kernel, initrd, root filesystem)",
		Long: `Guest images live in <state-dir>/images/<name>/: rootfs.ext4, vmlinux, an
optional initrd and manifest.json with the SHA-256 of each file. Files are
read-only once imported and are verified against the manifest before use
when they changed on disk.

With a daemon answering on --socket the commands go through it (its state
dir, its hearth-agent); without one they work on --state-dir directly.`,
		Example: `  hearth image build default
  hearth image import alpine ./alpine-rootfs.tar --kernel-from default
  hearth image ls
  hearth image verify`,
	}
	cmd.AddCommand(imageLsCmd(g), imageBuildCmd(g), imageImportCmd(g), imageRmCmd(g), imageVerifyCmd(g))
	return cmd
}

func openCatalog(g *globals) (*rootfs.Catalog, error) {
	c, err := rootfs.OpenCatalog(filepath.Join(g.stateDir, "images"), rootfs.CatalogOptions{Logger: g.log})
	if err != nil {
		return nil, api.ImageError("open catalog", "", err)
	}
	return c, nil
}

// images returns the daemon's catalog when a daemon answers, else the
// state dir's, with the same behaviour either way (api.CatalogImages).
func images(ctx context.Context, g *globals) (api.Images, error) {
	if c, err := daemon(ctx, g); err == nil {
		return daemonImages{c}, nil
	}
	cat, err := openCatalog(g)
	if err != nil {
		return nil, err
	}
	return &api.CatalogImages{Catalog: cat, CacheDir: filepath.Join(g.stateDir, "cache", "debs"), Logger: g.log,
		FindAgent: func() (string, error) { return findAgent("") }}, nil
}

// daemonImages is api.Images through the daemon's API.
type daemonImages struct{ c *client.Client }

func (d daemonImages) List(ctx context.Context) ([]rootfs.Image, error) { return d.c.Images(ctx) }
func (d daemonImages) Get(ctx context.Context, n string) (rootfs.Image, error) {
	return d.c.GetImage(ctx, n)
}
func (d daemonImages) Remove(ctx context.Context, n string) error { return d.c.DeleteImage(ctx, n) }
func (d daemonImages) Verify(ctx context.Context, n string, cached bool) ([]rootfs.FileCheck, error) {
	return d.c.VerifyImage(ctx, n, cached)
}
func (d daemonImages) Build(ctx context.Context, r api.BuildImageRequest, p func(api.Progress)) (api.BuildImageResult, error) {
	return d.c.BuildImage(ctx, r, p)
}
func (d daemonImages) Import(ctx context.Context, r api.ImportImageRequest, p func(api.Progress)) (rootfs.Image, error) {
	return d.c.ImportImage(ctx, r, p)
}

// withTimeout bounds ctx by d unless d is 0.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// absPath makes a host path absolute (the daemon's working directory is
// not ours); empty stays empty.
func absPath(flag, p string) (string, error) {
	if p == "" {
		return "", nil
	}
	a, err := filepath.Abs(p)
	if err != nil {
		return "", &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "flags", Err: fmt.Errorf("%s %q: %w", flag, p, err)}
	}
	return a, nil
}

// agentFlag is --agent, else $HEARTH_AGENT, made absolute; empty lets
// the catalog's owner find its own.
func agentFlag(flag string) (string, error) {
	if flag == "" {
		flag = os.Getenv("HEARTH_AGENT")
	}
	return absPath("--agent", flag)
}

func imageLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List images",
		Long:    "List the catalog's images with their file sizes, source and age (the manifests with -o json).",
		Example: "  hearth image ls\n  hearth image ls -o json | jq -r '.[].name'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			imgs, err := images(cmd.Context(), g)
			if err != nil {
				return err
			}
			ims, err := imgs.List(cmd.Context())
			if err != nil {
				return err
			}
			if ims == nil {
				ims = []rootfs.Image{}
			}
			return g.print(cmd.OutOrStdout(), ims, func(w io.Writer) { printImages(w, ims, time.Now()) })
		},
	}
}

func printImages(w io.Writer, ims []rootfs.Image, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROOTFS\tKERNEL\tINITRD\tSOURCE\tAGE")
	for _, im := range ims {
		initrd := "-"
		if f, ok := im.Files[rootfs.InitrdFile]; ok {
			initrd = humanBytes(f.Size)
		}
		src := im.Source.Kind
		if v := im.Source.Detail["kernel_version"]; v != "" {
			src += " " + im.Source.Detail["kernel_package"] + " " + v
		} else if im.Source.Ref != "" {
			src += " " + im.Source.Ref
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", im.Name, humanBytes(im.Files[rootfs.RootfsFile].Size),
			humanBytes(im.Files[rootfs.KernelFile].Size), initrd, src, now.Sub(im.Created).Round(time.Second))
	}
	tw.Flush()
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fK", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

// parseSize reads sizes like 268435456, 512M, 512MiB, 1G (binary units).
func parseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	u := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(s), "B"), "I")
	mult := int64(1)
	if i := strings.IndexAny(u, "KMGT"); i >= 0 && i == len(u)-1 {
		mult = map[byte]int64{'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}[u[i]]
		u = u[:i]
	}
	n, err := strconv.ParseInt(u, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional K, M, G or T suffix", s)
	}
	return n * mult, nil
}

// findAgent returns the hearth-agent to put into images: --agent, else
// $HEARTH_AGENT, else hearth-agent next to this executable, else on $PATH.
func findAgent(flag string) (string, error) {
	if flag != "" {
		return flag, rootfs.CheckAgent(flag)
	}
	if env := os.Getenv("HEARTH_AGENT"); env != "" {
		return env, rootfs.CheckAgent(env)
	}
	var tried []string
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "hearth-agent")
		if _, err := os.Stat(p); err == nil {
			return p, rootfs.CheckAgent(p)
		}
		tried = append(tried, p)
	}
	if p, err := exec.LookPath("hearth-agent"); err == nil {
		return p, rootfs.CheckAgent(p)
	}
	tried = append(tried, "$PATH")
	return "", fmt.Errorf("%w: none found (looked at --agent, $HEARTH_AGENT, %s); build it with: CGO_ENABLED=0 go build -o hearth-agent ./cmd/hearth-agent, then pass --agent ./hearth-agent",
		rootfs.ErrAgent, strings.Join(tried, ", "))
}

func imageBuildCmd(g *globals) *cobra.Command {
	var req api.BuildImageRequest
	var agent, size string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "build default",
		Short: "Build the default guest image from Debian packages",
		Long: `Build hearth's default guest image from Debian packages, using no network
beyond the package mirror and installing nothing: the cloud kernel package
(linux-image-cloud-amd64, unpacked with dpkg-deb -x) gives vmlinux (extracted
from vmlinuz) and its virtio modules, which an initramfs loads before switching
to a root filesystem holding busybox-static and the hearth-agent as init.

Run apt-get update first. Downloaded packages are kept in <state-dir>/cache/debs.
When the inputs (package versions, the agent, the options, the builder) are
unchanged, the existing image is verified and reused.

Progress is a bar on a terminal and one line per step otherwise. Through a
daemon the build runs there and its steps stream back; interrupting the
command, or --timeout passing, cancels it.`,
		Example: `  hearth image build default
  hearth image build default --force --size 512M
  hearth image build default --kernel-deb ./linux-image.deb --busybox-deb ./busybox-static.deb`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"default"},
		RunE: func(cmd *cobra.Command, args []string) error {
			const op = "image build"
			req.Recipe = args[0]
			if req.Recipe != "default" {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: op, Err: fmt.Errorf("unknown recipe %q (only \"default\")", args[0])}
			}
			var err error
			if req.Agent, err = agentFlag(agent); err != nil {
				return err
			}
			if req.Agent != "" {
				if err := rootfs.CheckAgent(req.Agent); err != nil {
					return api.ImageError(op, "", err)
				}
			}
			if req.SizeBytes, err = parseSize(size); err != nil {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: op, Err: err}
			}
			if req.KernelDeb, err = absPath("--kernel-deb", req.KernelDeb); err != nil {
				return err
			}
			if req.BusyboxDeb, err = absPath("--busybox-deb", req.BusyboxDeb); err != nil {
				return err
			}
			imgs, err := images(cmd.Context(), g)
			if err != nil {
				return err
			}
			ctx, cancel := withTimeout(cmd.Context(), timeout)
			defer cancel()
			pr := newProgress(cmd.ErrOrStderr())
			res, err := imgs.Build(ctx, req, func(p api.Progress) { pr.Step(p.Step, p.Total, p.Message) })
			pr.Done()
			if err != nil {
				return err
			}
			if g.output == "json" {
				return writeJSON(cmd.OutOrStdout(), res)
			}
			state := "built"
			if res.Reused {
				state = "up to date"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s: kernel %s %s (%s), %d modules, rootfs %s, in %s\n", res.Image.Name, state,
				res.KernelPackage, res.KernelVersion, res.Release, len(res.Modules), humanBytes(res.Image.Files[rootfs.RootfsFile].Size),
				(time.Duration(res.TookMs) * time.Millisecond).Round(time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&agent, "agent", "", "hearth-agent binary (default: $HEARTH_AGENT, next to hearth, or on $PATH)")
	f.StringVar(&req.Name, "name", image.DefaultName, "catalog name of the image")
	f.StringVar(&req.KernelPackage, "kernel-package", image.DefaultKernelPackage, "Debian kernel (meta-)package")
	f.StringVar(&req.BusyboxPackage, "busybox-package", image.DefaultBusyboxPackage, "Debian busybox package (static)")
	f.StringVar(&req.KernelDeb, "kernel-deb", "", "use this kernel .deb instead of fetching one")
	f.StringVar(&req.BusyboxDeb, "busybox-deb", "", "use this busybox .deb instead of fetching one")
	f.StringVar(&size, "size", "256M", "root filesystem size (sparse)")
	f.StringSliceVar(&req.Modules, "modules", nil, "modules the initramfs loads (default: "+strings.Join(image.DefaultModules, ",")+")")
	f.BoolVar(&req.Force, "force", false, "rebuild even when the image is up to date")
	f.DurationVar(&timeout, "timeout", 30*time.Minute, "give up (and cancel the build) after this long; 0 for never")
	return cmd
}

func imageImportCmd(g *globals) *cobra.Command {
	var req api.ImportImageRequest
	var size string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "import NAME SOURCE",
		Short: "Import a directory, an OCI/docker image tarball or an ext4 image",
		Long: `Import SOURCE as image NAME. SOURCE is a directory tree, an OCI image layout
or 'docker save' tarball (optionally gzip-compressed; layers are applied in
order, whiteouts honoured), or an ext4 image file (copied as is). Trees and
tarballs are packed into ext4 with mkfs.ext4 -d and get the hearth-agent at
/sbin/hearth-agent, with /sbin/init pointing at it unless --keep-init.

The kernel comes from --kernel (an uncompressed vmlinux) and --initrd, or from
another image with --kernel-from (default: the "default" image, if any).`,
		Example: `  hearth image import tools ./rootfs-dir --kernel-from default
  docker save python:3.12-slim -o py.tar && hearth image import python py.tar
  hearth image import raw ./disk.ext4 --kernel ./vmlinux`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			req.Name = args[0]
			if req.SizeBytes, err = parseSize(size); err != nil {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "image import", Err: err}
			}
			for _, p := range []struct {
				flag string
				v    *string
			}{{"--kernel", &req.Kernel}, {"--initrd", &req.Initrd}} {
				if *p.v, err = absPath(p.flag, *p.v); err != nil {
					return err
				}
			}
			if req.Source, err = absPath("SOURCE", args[1]); err != nil {
				return err
			}
			if req.Agent, err = agentFlag(req.Agent); err != nil {
				return err
			}
			imgs, err := images(cmd.Context(), g)
			if err != nil {
				return err
			}
			ctx, cancel := withTimeout(cmd.Context(), timeout)
			defer cancel()
			pr := newProgress(cmd.ErrOrStderr())
			im, err := imgs.Import(ctx, req, func(p api.Progress) { pr.Line(p.Message) })
			pr.Done()
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), im, func(w io.Writer) { printImages(w, []rootfs.Image{im}, time.Now()) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Kernel, "kernel", "", "uncompressed kernel (vmlinux)")
	f.StringVar(&req.Initrd, "initrd", "", "initrd for --kernel")
	f.StringVar(&req.KernelFrom, "kernel-from", "", "take kernel and initrd from this image (default \"default\")")
	f.StringVar(&req.Agent, "agent", "", "hearth-agent binary (default: $HEARTH_AGENT, next to hearth, or on $PATH)")
	f.BoolVar(&req.NoAgent, "no-agent", false, "do not add the hearth-agent")
	f.BoolVar(&req.KeepInit, "keep-init", false, "keep the image's own /sbin/init")
	f.StringVar(&req.Tag, "tag", "", "image to take from a tarball holding several")
	f.StringVar(&size, "size", "", "root filesystem size (default: content plus headroom)")
	f.BoolVar(&req.Replace, "replace", false, "replace an existing image of the same name")
	f.DurationVar(&timeout, "timeout", 30*time.Minute, "give up (and cancel the import) after this long; 0 for never")
	return cmd
}

func imageRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove images",
		Long:    "Remove images from the catalog. VMs with their own disk clone are unaffected.",
		Example: "  hearth image rm tools old-python",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			imgs, err := images(cmd.Context(), g)
			if err != nil {
				return err
			}
			var errs []error
			removed := []string{}
			for _, n := range args {
				if err := imgs.Remove(cmd.Context(), n); err != nil {
					errs = append(errs, err)
					continue
				}
				removed = append(removed, n)
			}
			errs = append(errs, g.print(cmd.OutOrStdout(), removed, func(w io.Writer) {
				for _, n := range removed {
					fmt.Fprintln(w, n)
				}
			}))
			return errors.Join(errs...)
		},
	}
}

func imageVerifyCmd(g *globals) *cobra.Command {
	var cached bool
	cmd := &cobra.Command{
		Use:   "verify [NAME...]",
		Short: "Re-hash image files and compare them with their manifests",
		Long: `Re-hash every file of the named images (default: all) and compare with the
SHA-256 in the manifest. With --cached, files whose identity (device, inode,
size, mtime, ctime) is unchanged since their last verification are trusted.
A mismatch exits 1 with an integrity error.`,
		Example: `  hearth image verify
  hearth image verify default --cached`,
		RunE: func(cmd *cobra.Command, args []string) error {
			imgs, err := images(cmd.Context(), g)
			if err != nil {
				return err
			}
			names := args
			if len(names) == 0 {
				ims, err := imgs.List(cmd.Context())
				if err != nil {
					return err
				}
				for _, im := range ims {
					names = append(names, im.Name)
				}
			}
			type result struct {
				Image string             `json:"image"`
				OK    bool               `json:"ok"`
				Files []rootfs.FileCheck `json:"files,omitempty"`
				Error string             `json:"error,omitempty"`
			}
			results := []result{}
			var errs []error
			for _, n := range names {
				checks, err := imgs.Verify(cmd.Context(), n, cached)
				r := result{Image: n, OK: err == nil, Files: checks}
				if err != nil {
					r.Error = err.Error()
					errs = append(errs, err)
				}
				results = append(results, r)
			}
			perr := g.print(cmd.OutOrStdout(), results, func(w io.Writer) {
				for _, r := range results {
					if r.OK {
						fmt.Fprintf(w, "%s: ok (%d files)\n", r.Image, len(r.Files))
					} else {
						fmt.Fprintf(w, "%s: FAILED: %s\n", r.Image, r.Error)
					}
				}
			})
			return errors.Join(append(errs, perr)...)
		},
	}
	cmd.Flags().BoolVar(&cached, "cached", false, "trust files unchanged since their last verification")
	return cmd
}
