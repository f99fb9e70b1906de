package hearth

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/hearth-vm/hearth/rootfs"
)

// catalogResolver resolves Spec.Image through the image catalog, whose
// files are verified against their manifest digests on use.
type catalogResolver struct{ c *rootfs.Catalog }

func (c catalogResolver) Resolve(ctx context.Context, name string) (Image, error) {
	f, err := c.c.Resolve(ctx, name)
	if err != nil {
		return Image{}, classifyRootfs("resolve image", err)
	}
	return Image{Kernel: f.Kernel, Initrd: f.Initrd, Rootfs: f.Rootfs, RootfsSHA256: f.RootfsSHA256}, nil
}

// classifyRootfs maps the rootfs package's errors to hearth's kinds.
func classifyRootfs(op string, err error) error {
	var ie *rootfs.IntegrityError
	switch {
	case errors.As(err, &ie):
		return &Error{Kind: KindIntegrity, Op: op, Err: err}
	case errors.Is(err, rootfs.ErrInvalidName), errors.Is(err, rootfs.ErrShrink), errors.Is(err, rootfs.ErrNotFound):
		// A spec naming an image the catalog lacks is bad input.
		return &Error{Kind: KindInvalidArgument, Op: op, Err: err}
	case exhausted(err):
		return &Error{Kind: KindResourceExhausted, Op: op, Err: err}
	}
	return &Error{Kind: KindRootfs, Op: op, Err: err}
}

// rootfsErr classifies a failure of a rootfs step (what) of op on vm, so
// the error names the operation and the VM, not only the step.
func rootfsErr(op, vm, what string, err error) error {
	var he *Error
	errors.As(classifyRootfs(op, fmt.Errorf("%s: %w", what, err)), &he)
	he.VM = vm
	return he
}

// openImages opens the catalog at <state-dir>/images unless the caller
// brought its own resolver.
func (r *Runtime) openImages() error {
	if r.cfg.Images != nil {
		return nil
	}
	c, err := rootfs.OpenCatalog(filepath.Join(r.cfg.StateDir, "images"), rootfs.CatalogOptions{Logger: r.log})
	if err != nil {
		return err
	}
	r.cfg.Images = catalogResolver{c}
	return nil
}

// cloneDisk gives a VM (or a snapshot) its own copy of a disk: a reflink
// where the filesystem shares blocks, else a sparse copy; never a
// shell-out.
func cloneDisk(ctx context.Context, src, dst, sourceDigest string, record bool) error {
	_, err := rootfs.Clone(ctx, src, dst, rootfs.CloneOptions{SourceDigest: sourceDigest, NoRecord: !record})
	return err
}
