// Package jail confines VMM processes: a per-VM uid/gid from a reserved
// range, a chroot whose files are hard-linked (copied across filesystems)
// and owned by that uid, a cgroup with CPU, memory and pids limits (cgroup
// v2, or v1 with one hierarchy per controller), resource limits and a
// network namespace.
//
// Firecracker brings its own jailer, which creates the chroot's device
// nodes and the cgroup itself; for it hearth only allocates the uid,
// stages files into the chroot and cleans up. Every other VMM (QEMU) is
// started through `hearth _jail`, whose body is Exec: it performs the same
// steps in its own process and then execs the VMM, so the VMM's pid is the
// one hearth started.
//
// Layout (shared with Firecracker's jailer, so one teardown and one
// reconcile cover both):
//
//	<chroot base>/<exec name>/<id>/root   the chroot
//	<cgroup mount>/<parent>/<id>          v2
//	<cgroup mount>/<controller>/<parent>/<id>  v1, per controller
//
// The chroot base and the cgroup parent belong to hearth alone: Reconcile
// removes whatever lies there that no VM owns.
//
// The package never touches network links or firewall rules; it only
// joins a namespace someone else created.
package jail
