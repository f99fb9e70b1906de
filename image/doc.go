// Package image builds hearth's default guest image from Debian packages
// (`hearth image build default`), using no network beyond the package
// mirror and installing nothing on the host:
//
//   - the Debian cloud kernel package is resolved with apt-cache, fetched
//     with apt-get download (digest-checked against the archive index) and
//     unpacked with dpkg-deb -x;
//   - vmlinux is extracted from the bzImage vmlinuz by finding its
//     compressed payload (header first, then signatures: gzip, xz, zstd,
//     lz4, bzip2, lzma) and decompressing until a complete ELF appears,
//     which must carry the PVH entry note QEMU microvm boots through;
//   - an initramfs (newc cpio written here) loads the virtio modules in
//     dependency order taken from each module's .modinfo (the package has
//     no modules.dep before depmod) and switch_roots to the rootfs;
//   - the rootfs holds a static busybox with its applets and the
//     hearth-agent as /sbin/init, packed by the rootfs catalog.
//
// A build key over the builder version, package versions and digests, the
// agent's digest and the options is recorded in the image manifest; an
// unchanged build reuses the catalog image after verifying it.
//
// The package owns the recipe only; the catalog, hashing and ext4 packing
// belong to rootfs.
package image
