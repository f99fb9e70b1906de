package main

import (
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
	"github.com/hearth-vm/hearth/image"
	"github.com/hearth-vm/hearth/rootfs"
	"github.com/spf13/cobra"
)

// imageCmd is `hearth image`: the image catalog under <state-dir>/images.
// It works on the files directly (no daemon needed): the catalog is safe
// for concurrent use by several processes.
func imageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Manage guest images (kernel, initrd, root filesystem)",
		Long: `Guest images live in <state-dir>/images/<name>/: rootfs.ext4, vmlinux, an
optional initrd and manifest.json with the SHA-256 of each file. Files are
read-only once imported and are verified against the manifest before use
when they changed on disk.`,
	}
	cmd.AddCommand(imageLsCmd(g), imageBuildCmd(g), imageImportCmd(g), imageRmCmd(g), imageVerifyCmd(g))
	return cmd
}

func openCatalog(g *globals) (*rootfs.Catalog, error) {
	c, err := rootfs.OpenCatalog(filepath.Join(g.stateDir, "images"), rootfs.CatalogOptions{Logger: g.log})
	if err != nil {
		return nil, imageErr("open catalog", err)
	}
	return c, nil
}

// imageErr gives catalog errors the kinds scripts and exit codes use.
func imageErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var ie *rootfs.IntegrityError
	switch {
	case errors.As(err, &ie):
		return &hearth.Error{Kind: hearth.KindIntegrity, Op: op, Err: err}
	case errors.Is(err, rootfs.ErrInvalidName), errors.Is(err, rootfs.ErrNotFound), errors.Is(err, rootfs.ErrExists),
		errors.Is(err, rootfs.ErrAgent), errors.Is(err, rootfs.ErrShrink):
		return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: op, Err: err}
	}
	return &hearth.Error{Kind: hearth.KindRootfs, Op: op, Err: err}
}

func imageLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := openCatalog(g)
			if err != nil {
				return err
			}
			ims, err := c.List(cmd.Context())
			if err != nil {
				return imageErr("image ls", err)
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
	var opts image.BuildOptions
	var agent, size, name string
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
unchanged, the existing image is verified and reused.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] != "default" {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "image build", Err: fmt.Errorf("unknown recipe %q (only \"default\")", args[0])}
			}
			var err error
			if opts.Agent, err = findAgent(agent); err != nil {
				return imageErr("image build", err)
			}
			if opts.RootfsSize, err = parseSize(size); err != nil {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "image build", Err: err}
			}
			c, err := openCatalog(g)
			if err != nil {
				return err
			}
			opts.Name = name
			opts.CacheDir = filepath.Join(g.stateDir, "cache", "debs")
			opts.Logger = g.log
			errw := cmd.ErrOrStderr()
			opts.Progress = func(n, total int, msg string) { fmt.Fprintf(errw, "[%d/%d] %s\n", n, total, msg) }
			res, err := image.BuildDefault(cmd.Context(), c, opts)
			if err != nil {
				return imageErr("image build", err)
			}
			if g.output == "json" {
				return writeJSON(cmd.OutOrStdout(), res)
			}
			state := "built"
			if res.Reused {
				state = "up to date"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s: kernel %s %s (%s), %d modules, rootfs %s, in %s\n", res.Image.Name, state,
				res.Kernel.Name, res.Kernel.Version, res.Release, len(res.Modules), humanBytes(res.Image.Files[rootfs.RootfsFile].Size), res.Took.Round(time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&agent, "agent", "", "hearth-agent binary (default: $HEARTH_AGENT, next to hearth, or on $PATH)")
	f.StringVar(&name, "name", image.DefaultName, "catalog name of the image")
	f.StringVar(&opts.KernelPackage, "kernel-package", image.DefaultKernelPackage, "Debian kernel (meta-)package")
	f.StringVar(&opts.BusyboxPackage, "busybox-package", image.DefaultBusyboxPackage, "Debian busybox package (static)")
	f.StringVar(&opts.KernelDeb, "kernel-deb", "", "use this kernel .deb instead of fetching one")
	f.StringVar(&opts.BusyboxDeb, "busybox-deb", "", "use this busybox .deb instead of fetching one")
	f.StringVar(&size, "size", "256M", "root filesystem size (sparse)")
	f.StringSliceVar(&opts.Modules, "modules", nil, "modules the initramfs loads (default: "+strings.Join(image.DefaultModules, ",")+")")
	f.BoolVar(&opts.Force, "force", false, "rebuild even when the image is up to date")
	return cmd
}

func imageImportCmd(g *globals) *cobra.Command {
	var in rootfs.Input
	var agent, size, kernelFrom string
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
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, src := args[0], args[1]
			c, err := openCatalog(g)
			if err != nil {
				return err
			}
			if in.Size, err = parseSize(size); err != nil {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "image import", Err: err}
			}
			fi, err := os.Stat(src)
			if err != nil {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "image import", Err: err}
			}
			switch {
			case fi.IsDir():
				in.RootfsDir = src
			case isExt4(src):
				in.RootfsImage = src
			default:
				in.OCI = src
			}
			if in.Kernel == "" {
				from := kernelFrom
				if from == "" {
					from = image.DefaultName
				}
				im, err := c.Get(cmd.Context(), from)
				if err != nil {
					return imageErr("image import", fmt.Errorf("no --kernel given and no kernel from image %q: %w", from, err))
				}
				in.Kernel, in.Initrd = im.Path(rootfs.KernelFile), im.Path(rootfs.InitrdFile)
			}
			if in.RootfsImage == "" && !in.NoAgent {
				if in.Agent, err = findAgent(agent); err != nil {
					return imageErr("image import", err)
				}
			}
			errw := cmd.ErrOrStderr()
			in.Progress = func(s string) { fmt.Fprintln(errw, s) }
			im, err := c.Create(cmd.Context(), name, in)
			if err != nil {
				return imageErr("image import", err)
			}
			return g.print(cmd.OutOrStdout(), im, func(w io.Writer) { printImages(w, []rootfs.Image{im}, time.Now()) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&in.Kernel, "kernel", "", "uncompressed kernel (vmlinux)")
	f.StringVar(&in.Initrd, "initrd", "", "initrd for --kernel")
	f.StringVar(&kernelFrom, "kernel-from", "", "take kernel and initrd from this image (default \"default\")")
	f.StringVar(&agent, "agent", "", "hearth-agent binary (default: $HEARTH_AGENT, next to hearth, or on $PATH)")
	f.BoolVar(&in.NoAgent, "no-agent", false, "do not add the hearth-agent")
	f.BoolVar(&in.KeepInit, "keep-init", false, "keep the image's own /sbin/init")
	f.StringVar(&in.Tag, "tag", "", "image to take from a tarball holding several")
	f.StringVar(&size, "size", "", "root filesystem size (default: content plus headroom)")
	f.BoolVar(&in.Replace, "replace", false, "replace an existing image of the same name")
	return cmd
}

// isExt4 sniffs the ext2/3/4 superblock magic (0xEF53 at 1080).
func isExt4(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, 2)
	if _, err := f.ReadAt(b, 1080); err != nil {
		return false
	}
	return b[0] == 0x53 && b[1] == 0xEF
}

func imageRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove images",
		Long:  "Remove images from the catalog. VMs with their own disk clone are unaffected.",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := openCatalog(g)
			if err != nil {
				return err
			}
			var errs []error
			for _, n := range args {
				if err := c.Remove(cmd.Context(), n); err != nil {
					errs = append(errs, imageErr("image rm", err))
					continue
				}
				fmt.Fprintln(cmd.OutOrStdout(), n)
			}
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
size, mtime, ctime) is unchanged since their last verification are trusted.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := openCatalog(g)
			if err != nil {
				return err
			}
			names := args
			if len(names) == 0 {
				ims, err := c.List(cmd.Context())
				if err != nil {
					return imageErr("image verify", err)
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
			var results []result
			var errs []error
			for _, n := range names {
				checks, err := c.Verify(cmd.Context(), n, !cached)
				r := result{Image: n, OK: err == nil, Files: checks}
				if err != nil {
					r.Error = err.Error()
					errs = append(errs, imageErr("image verify", err))
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
