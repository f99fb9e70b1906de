package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/image"
	"github.com/hearth-vm/hearth/rootfs"
)

// CatalogImages implements Images on a rootfs.Catalog. The daemon serves
// it, and the CLI uses the same value in-process when no daemon runs, so
// both paths share one behaviour.
type CatalogImages struct {
	Catalog *rootfs.Catalog
	// CacheDir keeps downloaded .deb files between builds.
	CacheDir string
	// FindAgent returns the hearth-agent to put into images when a
	// request names none.
	FindAgent func() (string, error)
	Logger    *slog.Logger
}

var _ Images = (*CatalogImages)(nil)

// ImageError gives catalog errors the kinds the API and the CLI's exit
// codes use.
func ImageError(op, name string, err error) error {
	if err == nil {
		return nil
	}
	var he *hearth.Error
	if errors.As(err, &he) {
		return err
	}
	var ie *rootfs.IntegrityError
	kind := hearth.KindRootfs
	switch {
	case errors.As(err, &ie):
		kind = hearth.KindIntegrity
	case errors.Is(err, rootfs.ErrNotFound):
		kind = hearth.KindImageNotFound
	case errors.Is(err, rootfs.ErrExists):
		kind = hearth.KindImageAlreadyExists
	case errors.Is(err, rootfs.ErrInvalidName), errors.Is(err, rootfs.ErrAgent), errors.Is(err, rootfs.ErrShrink):
		kind = hearth.KindInvalidArgument
	}
	if name != "" {
		op += " " + name
	}
	return &hearth.Error{Kind: kind, Op: op, Err: err}
}

// List implements Images.
func (c *CatalogImages) List(ctx context.Context) ([]rootfs.Image, error) {
	ims, err := c.Catalog.List(ctx)
	return ims, ImageError("image ls", "", err)
}

// Get implements Images.
func (c *CatalogImages) Get(ctx context.Context, name string) (rootfs.Image, error) {
	im, err := c.Catalog.Get(ctx, name)
	return im, ImageError("image get", name, err)
}

// Remove implements Images.
func (c *CatalogImages) Remove(ctx context.Context, name string) error {
	return ImageError("image rm", name, c.Catalog.Remove(ctx, name))
}

// Verify implements Images.
func (c *CatalogImages) Verify(ctx context.Context, name string, cached bool) ([]rootfs.FileCheck, error) {
	checks, err := c.Catalog.Verify(ctx, name, !cached)
	return checks, ImageError("image verify", name, err)
}

func (c *CatalogImages) agent(given string) (string, error) {
	if given != "" {
		return given, rootfs.CheckAgent(given)
	}
	if c.FindAgent == nil {
		return "", fmt.Errorf("%w: none given and none configured", rootfs.ErrAgent)
	}
	return c.FindAgent()
}

// Build implements Images.
func (c *CatalogImages) Build(ctx context.Context, req BuildImageRequest, progress func(Progress)) (BuildImageResult, error) {
	const op = "image build"
	if err := req.validate(); err != nil {
		return BuildImageResult{}, err
	}
	agent, err := c.agent(req.Agent)
	if err != nil {
		return BuildImageResult{}, ImageError(op, "", err)
	}
	opts := image.BuildOptions{Name: req.Name, KernelPackage: req.KernelPackage, BusyboxPackage: req.BusyboxPackage,
		KernelDeb: req.KernelDeb, BusyboxDeb: req.BusyboxDeb, Agent: agent, CacheDir: c.CacheDir,
		Modules: req.Modules, RootfsSize: req.SizeBytes, Force: req.Force, Logger: c.Logger}
	if progress != nil {
		opts.Progress = func(step, total int, msg string) { progress(Progress{Step: step, Total: total, Message: msg}) }
	}
	res, err := image.BuildDefault(ctx, c.Catalog, opts)
	if err != nil {
		return BuildImageResult{}, ImageError(op, req.Name, err)
	}
	return BuildImageResult{Image: res.Image, Reused: res.Reused, KernelPackage: res.Kernel.Name, KernelVersion: res.Kernel.Version,
		Release: res.Release, Modules: res.Modules, TookMs: res.Took.Milliseconds()}, nil
}

// Import implements Images.
func (c *CatalogImages) Import(ctx context.Context, req ImportImageRequest, progress func(Progress)) (rootfs.Image, error) {
	const op = "image import"
	if err := req.validate(); err != nil {
		return rootfs.Image{}, err
	}
	in := rootfs.Input{Kernel: req.Kernel, Initrd: req.Initrd, NoAgent: req.NoAgent, KeepInit: req.KeepInit,
		Tag: req.Tag, Size: req.SizeBytes, Replace: req.Replace}
	fi, err := os.Stat(req.Source)
	if err != nil {
		return rootfs.Image{}, &hearth.Error{Kind: hearth.KindInvalidArgument, Op: op, Err: fmt.Errorf("source: %w", err)}
	}
	switch {
	case fi.IsDir():
		in.RootfsDir = req.Source
	case isExt4(req.Source):
		in.RootfsImage = req.Source
	default:
		in.OCI = req.Source
	}
	if !req.Replace {
		// Refuse a taken name before the minutes an import can take.
		if _, err := c.Catalog.Get(ctx, req.Name); err == nil {
			return rootfs.Image{}, ImageError(op, req.Name, rootfs.ErrExists)
		}
	}
	for field, p := range map[string]string{"kernel": in.Kernel, "initrd": in.Initrd, "agent": req.Agent} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return rootfs.Image{}, &hearth.Error{Kind: hearth.KindInvalidArgument, Op: op, Err: fmt.Errorf("%s: %w", field, err)}
		}
	}
	if in.Kernel == "" {
		from := req.KernelFrom
		if from == "" {
			from = image.DefaultName
		}
		im, err := c.Catalog.Get(ctx, from)
		if err != nil {
			return rootfs.Image{}, &hearth.Error{Kind: hearth.KindInvalidArgument, Op: op,
				Err: fmt.Errorf("no kernel given and no kernel from image %q: %w", from, err)}
		}
		in.Kernel, in.Initrd = im.Path(rootfs.KernelFile), im.Path(rootfs.InitrdFile)
	}
	if in.RootfsImage == "" && !in.NoAgent {
		if in.Agent, err = c.agent(req.Agent); err != nil {
			return rootfs.Image{}, ImageError(op, "", err)
		}
	}
	if progress != nil {
		in.Progress = func(s string) { progress(Progress{Message: s}) }
	}
	t0 := time.Now()
	im, err := c.Catalog.Create(ctx, req.Name, in)
	if err != nil {
		return rootfs.Image{}, ImageError(op, req.Name, err)
	}
	if c.Logger != nil {
		c.Logger.Info("image imported", "name", req.Name, "source", req.Source, "took", time.Since(t0))
	}
	return im, nil
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
