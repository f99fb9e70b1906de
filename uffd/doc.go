//go:build linux

// Package uffd is hearth's userfaultfd page-fault server: it lets a VM
// restored from a snapshot run before its memory is loaded, by serving each
// page the guest touches from the snapshot's memory file (Firecracker's
// mem_backend "Uffd"; DESIGN §10).
//
// # Process model
//
// One server per restored VM, as its own process (`hearth _uffd`, started
// by Launch in its own session), so that the daemon can restart without
// hanging its guests. The runtime:
//
//  1. calls Launch with the snapshot's memory file, a socket path in the
//     VM's directory, a status file and (per restore) the trace file next
//     to the snapshot and whether to prefetch; Launch returns once the
//     socket listens. For a jailed VMM the socket must be inside the jail
//     and chowned to the VMM's uid (it is created 0600);
//  2. sends PUT /snapshot/load with backend_type "Uffd" and backend_path
//     the socket;
//  3. supervises the returned *proc.Process (record Status.Identity() to
//     proc.Adopt it after a daemon restart).
//
// The server ends on its own when the VMM exits or closes the connection
// (exit 0, state "exited"). It kills the VMM itself (SIGKILL through a
// pidfd, VMMKilled in the status) when it cannot serve it: a failed
// handshake (exit 2) or a fault it cannot serve — outside every region, a
// memory file it cannot read, no memory for a hugepage (exit 3); the reason
// is in Status.Error and the log. What it cannot handle is its own death
// by a signal (SIGKILL, OOM kill, crash): then the VMM's next fault would
// wait forever, so the runtime must kill the VMM when the server process
// exits with anything but 0 while the VMM still runs. To stop a server
// while its VM keeps running (hearth upgrade), send SIGTERM: it copies the
// rest of the memory in, unregisters it and exits 0 in state "detached",
// after which the VMM needs no server (this takes about as long as reading
// the memory file). Exit codes are the Exit* constants (see ExitCode).
//
// # Files
//
//   - socket: removed once the VMM has connected (one VMM per server), or
//     at exit;
//   - status file: JSON (Status), rewritten atomically every
//     StatusInterval and at every state change, left after exit for the
//     runtime's metrics and post-mortems (read it with ReadStatus);
//   - log file: the server's slog output (LaunchSpec.LogFile);
//   - trace file: the working set of the snapshot, written (atomically) by
//     the first restore that finds none, read by later ones. It belongs to
//     the snapshot and is deleted with it.
//
// # Protocol and serving
//
// Firecracker connects, sends one message — a JSON array of regions
// (base_host_virt_addr, size, offset, page_size, and the deprecated
// page_size_kib, which holds bytes too) with the userfaultfd in SCM_RIGHTS
// — and never writes again. The server validates the regions against the
// memory file (inside it, aligned, no overlap, 4 KiB or 2 MiB pages),
// identifies the VMM by SO_PEERCRED (or LaunchSpec.VMMPid), and maps the
// memory file read-only and shared. The page cache is the copy source and
// every clone of a snapshot shares it: hugepages are copied from the
// mapping, 4 KiB pages through a small buffer read from the page cache
// with pread, which measured twice as fast (see stageFile).
//
// Everything is served by one event loop (ordering REMOVE events before
// later copies without locks): faults with UFFDIO_COPY at the region's page
// size; EEXIST is benign; after UFFD_EVENT_REMOVE (balloon, MADV_DONTNEED)
// or UNMAP the range is served with zeros (UFFDIO_ZEROPAGE, or a copy of
// zeros for hugepages); REMAP moves regions; FORK serves the child's
// userfaultfd as well.
//
// A fault wakes the guest as soon as its own page is in; more is copied
// between events, because a userfaultfd round trip costs many times a page
// copy: for 4 KiB pages the rest of the aligned 64 KiB block around an
// isolated fault, and for a sequential stream a block forward plus a
// readahead window that doubles up to 1 MiB, so a streaming guest takes a
// fault per window while the copy overlaps its own work (see
// server.window).
//
// # Prefetch
//
// The REAP technique: a restore that finds no trace records the pages the
// guest faults in during TraceWindow (single pages for isolated faults, so
// the trace is the working set rather than speculative neighbours); a
// later restore with Prefetch copies that working set in recorded order in
// the background, in short steps between which pending faults are served
// first. The status file is rewritten the moment the replay completes, so
// a runtime can hold the VM's vCPUs until then (AwaitPrefetch; hearth's
// RestoreSpec.PrefetchWaitMs), as REAP does, instead of letting the guest
// race the copy.
//
// The package does not know about VMs, snapshots or the store: the runtime
// decides paths and lifetimes. It uses golang.org/x/sys/unix only (no cgo).
package uffd
