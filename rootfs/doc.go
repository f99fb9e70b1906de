// Package rootfs owns guest root filesystems on the host: the image
// catalog (<state-dir>/images/<name>/ with rootfs.ext4, vmlinux, an
// optional initrd and manifest.json), imports from a directory or an
// OCI / `docker save` tarball into ext4 (mkfs.ext4 -d) with the
// hearth-agent added, integrity checks of catalog files, and per-VM clones.
//
// Names are validated before any path is built from them. Catalog files
// are read-only once imported; images appear and disappear with a single
// rename, so a crash or a concurrent reader never sees half an image.
// Every file's SHA-256 is recorded at import and re-verified on use when
// the file's identity (device, inode, size, mtime, ctime) changed since it
// was last verified; a mismatch is an *IntegrityError naming the file and
// both digests. Archive entries and symlinks in imported trees resolve
// inside the tree (openat2 RESOLVE_IN_ROOT), never on the host.
//
// Clone gives a VM its own disk: a FICLONE reflink where the filesystem
// shares blocks, else an in-kernel sparse copy of the data extents; an
// optional grow runs resize2fs; the clone records its source's digest.
// Nothing here shells out to cp.
//
// The package does not know about VMs, the store or the runtime's error
// kinds: the root package maps ErrInvalidName, ErrNotFound, ErrExists and
// *IntegrityError to its kinds. Subpackages: digest (hashing, identity,
// verification cache) and sparse (reflink and sparse copy).
package rootfs
