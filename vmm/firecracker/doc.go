// Package firecracker is hearth's backend for the Firecracker VMM.
//
// It owns everything between a vmm.Config and a running Firecracker
// process:
//
//   - typed models of the request and response bodies of the pinned API
//     (internal/fcspec holds the spec, version 1.17) and pure builders that
//     turn vmm types into those bodies, so every byte sent can be
//     golden-tested against the spec;
//   - the cold-boot plan (BootPlan), in the order Firecracker expects;
//   - a small HTTP/1.1 client over the per-VM API socket;
//   - process launch, bare or under Firecracker's jailer (chroot staging,
//     cgroup limits, network namespace, pid file), readiness, exit watch,
//     graceful shutdown and adoption of a VMM started by an earlier
//     process;
//   - draining of the metrics FIFO (a FIFO nobody reads loses lines).
//
// It must not touch hearth's store, network setup, firewall or state
// machine: the runtime decides *what* to do (pause before snapshot, which
// uid a jail gets, which TAP a VM uses) and this package only executes it.
// The page-fault server for userfaultfd restores lives in uffd/; this
// package only tells Firecracker where its socket is.
//
// Paths: in a jailed Machine every host path given to Configure,
// LoadSnapshot or Snapshot is mapped into the chroot. Regular files are
// hard-linked (copied across filesystems) to /<basename> and chowned to the
// jail's uid/gid; the vsock socket Firecracker creates lives in the chroot
// and a symlink at the requested host path points to it; snapshot files are
// written inside the chroot and then moved to the requested host paths.
//
// Order of a restore: Firecracker accepts only the logger and the metrics
// before PUT /snapshot/load and refuses both once the VM runs, and a
// snapshot carries neither, so LoadSnapshot configures them first.
//
// Lifetime: Kill and Shutdown return once the process is gone and its API
// socket, metrics FIFO, jail (chroot and the VM's cgroups) and links are
// removed; Firecracker's log is kept in LaunchSpec.Dir. Release detaches
// without touching the process, which AdoptMachine can pick up again from
// the Handle.
package firecracker
