// Package qemu is hearth's QEMU backend: it runs each VM in its own
// qemu-system-x86_64 process with the microvm machine type and controls it
// over QMP (DESIGN §1, §5).
//
// QEMU takes its whole machine configuration on the command line, so
// Launch only validates the LaunchSpec and returns a Machine; Configure
// (cold boot) and LoadSnapshot (restore) build the command line, start
// QEMU paused (-S) and wait until QMP answers. Start and Resume send
// "cont", Pause sends "stop". The Machine contracts of package vmm hold
// across that split: a failed Configure or LoadSnapshot leaves nothing
// running, Kill before Configure just marks the machine dead and closes
// Done.
//
// Devices are virtio-mmio: virtio-blk per drive (with QEMU block
// throttling for rate limits), virtio-net on a TAP per NIC, and instead of
// virtio-vsock (no vhost-vsock on these hosts) a virtio-serial port named
// "hearth.agent" on a unix-socket chardev at Config.Vsock.UDSPath. The
// guest serial console goes to the process's stdout, i.e. the LaunchSpec's
// ConsolePath.
//
// Snapshots are migrations to a file ("exec:cat > file", which QEMU 7.2
// supports; the "file:" URI needs 8.2) plus a small JSON state document
// recording the vmm.Config and the command line, from which a restore
// rebuilds the same machine with "-incoming defer" and then runs
// "migrate-incoming" from the file.
//
// Options of vmm.Config with no QEMU equivalent (MMDS, balloon, NIC rate
// limits, token-bucket bursts, diff snapshots, uffd restore, jailing) are
// refused with an *UnsupportedError naming the option.
package qemu
