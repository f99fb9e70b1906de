// Package fcsim is a Firecracker simulator: a process that accepts
// Firecracker's (and the jailer's) command line, serves Firecracker's REST
// API on a unix socket, and is strict exactly where Firecracker is strict,
// so that hearth's Firecracker backend can be tested on machines where
// Firecracker cannot run. cmd/hearth-fcsim is its binary; Main is the whole
// program. The package is Linux-only and free of cgo, so the binary is
// static (CGO_ENABLED=0) and runs inside an empty chroot.
//
// It owns nothing of hearth's runtime: it must not import hearth's other
// packages except internal/fcspec, which supplies the pinned API (1.17).
//
// # What it models, and how
//
// API. HTTP/1.1 with keep-alive on --api-sock. Every request goes through
// Firecracker's order of checks: method (GET/PUT/PATCH only), body
// presence ("Empty PUT request.", "GET request cannot have a body."), route
// (an unknown path or method is 400 "Invalid request method and/or path:
// METHOD /path." — Firecracker answers 400, not 404/405, because its parser
// treats any unmatched request as a bad request), the body against the
// spec schema (fcspec; unknown fields rejected like serde's
// deny_unknown_fields), then the operation and its state rules. Refusals
// are 400 with {"fault_message": "..."} (the spec's Error definition).
// Successful PUT/PATCH answer 204 without a body, GETs 200 with JSON.
// Bodies over --http-api-max-payload-size (51200) are refused.
//
// State rules. Pre-boot only: machine-config (PUT/PATCH), boot-source,
// cpu-config, PUT drives/network-interfaces/vsock/balloon/mmds/config/
// entropy/serial/pmem/hotplug memory, logger and metrics (each configurable
// once; a snapshot does not carry them, so configure them before
// /snapshot/load), and InstanceStart. Post-boot only: PATCH /vm, PATCH
// drives/network-interfaces/pmem/hotplug memory, SendCtrlAltDel,
// /snapshot/create (and only when Paused). /snapshot/load only on a fresh
// process that has configured nothing but the logger and metrics. Path ids
// must equal body ids. Kernel, initrd and drive files must open
// (read-write unless is_read_only) when configured; the kernel again at
// InstanceStart. One root device at most.
//
// Guest. InstanceStart maps mem_size_mib (default 128) of anonymous private
// memory (MAP_NORESERVE), lays it out like x86_64 (a second region above
// 4 GiB past 3.25 GiB), and the simulated guest writes a header page (magic,
// VM id, boot time, counter) and a deterministic pattern into eight pages
// spread over memory, then bumps the counter every --guest-tick while
// running, dirtying pages that dirty-page tracking records. Boot lines go to
// stdout (the serial console) or serial_out_path, ending with
// "fcsim: guest <id> booted".
//
// Snapshots. /snapshot/create writes the vmstate file (JSON, see VMState:
// magic "hearth-fcsim-vmstate", version 1, the VM configuration without
// logger/metrics, memory layout, a SHA-256 and per-page CRCs of guest
// memory, an embedded CRC64 like Firecracker's) and the memory file: Full
// = file truncated to the memory size with every non-zero page written
// (sparse); Diff = exactly the pages dirtied since the last snapshot (with
// track_dirty_pages) or the resident pages per mincore(2) (without, as
// Firecracker 1.17 does), zero pages included so a merge is correct.
// /snapshot/load reads the vmstate (CRC-checked), reopens drives, applies
// network_overrides (unknown iface_id is 400) and vsock_override (binds
// the new path), then restores memory: File (or deprecated mem_file_path)
// maps the memory file MAP_PRIVATE as Firecracker does; Uffd creates a real
// userfaultfd (UFFDIO_API with EVENT_REMOVE, UFFDIO_REGISTER MISSING on the
// anonymous mapping), connects to backend_path and sends the JSON region
// array [{base_host_virt_addr,size,offset,page_size,page_size_kib}] with the
// fd in SCM_RIGHTS. Either way the simulator then reads every guest page
// (each a real fault served by the handler, bounded by --uffd-timeout;
// --uffd-verify written limits this to the pages the snapshot holds) and
// checks the contents against the vmstate digest. Unlike Firecracker, which
// leaves faults to the guest, this makes the restore touch all of memory;
// it is how the simulator proves the handler served the right bytes. A failed load answers 400
// and then the process exits (status 1), as Firecracker ends a process whose
// load failed. After a load the VM is Paused unless resume_vm.
//
// Hybrid vsock. PUT /vsock binds uds_path immediately (a stale file is an
// error, as in Firecracker). A host connection sends "CONNECT <port>\n";
// once the guest runs the simulator dials <guest-vsock-dir>/<port>.sock,
// answers "OK <host-port>\n" (host ports count up from 1<<30) and copies
// bytes both ways; if nothing listens it closes the connection without an
// answer. guest-vsock-dir is $HEARTH_FCSIM_GUEST_VSOCK_DIR or
// "<uds_path>.guest". A snapshot resets the device (open connections close).
//
// Guest process. $HEARTH_FCSIM_GUEST_CMD (a JSON array or a space-separated
// command line) is started when the guest first runs, with
// HEARTH_FCSIM_GUEST_VSOCK_DIR, HEARTH_FCSIM_VM_ID and
// HEARTH_FCSIM_BOOT_ARGS (the kernel command line) in its environment and
// its output on the console; it is SIGSTOPped while the VM is paused,
// SIGCONTed on resume, and killed when the simulator exits (also via
// PR_SET_PDEATHSIG if the simulator dies).
//
// Logger and metrics. --log-path or PUT /logger, --metrics-path or PUT
// /metrics: a file (created if missing) or FIFO opened O_WRONLY|O_NONBLOCK;
// a FIFO without a reader (ENXIO) is retried for --fifo-open-timeout, never
// forever. Writes never block: a line that does not fit in a full FIFO is
// lost and counted (logger.missed_metrics_count), as in Firecracker. Log
// lines use Firecracker's format "<time> [<id>:<thread>(:LEVEL)] msg".
// Metrics lines are Firecracker's JSON (utc_timestamp_ms, optional id and
// properties, and every group of metrics.md with delta counters, plus
// block_<id>/net_<id> and a simulator-only "fcsim" group with uffd and
// guest counters), written on FlushMetrics, every --metrics-interval
// (default 60 s) and at exit.
//
// Exit. SendCtrlAltDel makes the running guest reset and the process exit 0
// at the next guest tick. SIGTERM/SIGINT exit 0 after removing the API
// socket, killing the guest process and flushing metrics.
//
// # Jailer
//
// When invoked as "jailer" (argv[0] base name) or with "jailer" as first
// argument, it performs the jailer's steps for real: validate --id and
// --exec-file (whose name must contain "firecracker", as the real jailer
// requires), create <chroot-base-dir>/<exec name>/<id>/root, copy the exec
// file in, setrlimit (--resource-limit fsize=/no-file=, default
// no-file=2048), cgroups (--cgroup file=value written into
// <mount>/<parent-cgroup>/<id> of the v1 controller or the v2 hierarchy
// found in /proc/mounts, and the pid moved in; when that hierarchy does not
// exist or is read-only the values are only recorded), mknod /dev/net/tun,
// /dev/kvm and /dev/userfaultfd in the jail (recorded, not fatal, when not
// permitted), chown the jail, setns into --netns, chroot and chdir /, then
// drop to --uid/--gid and exec /<exec name> --id=<id> --start-time-us=…
// --start-time-cpu-us=… --parent-cpu-time-us=… <args after -->. With
// --new-pid-ns it instead clones the VMM with CLONE_NEWPID, writes its host
// pid to <chroot>/<exec name>.pid and exits; without, it writes its own pid
// there and execs. --daemonize calls setsid and points stdio at /dev/null.
// The jailer does not create <chroot>/run: like with the real one, stage
// the directories the VMM's paths need (the API socket's included) before
// running it.
//
// # Knobs (command line and environment)
//
//	--fail-at, HEARTH_FCSIM_FAIL_AT   comma-separated faults (both merge):
//	    start              exit 1 before creating the API socket
//	    ready              stay alive but never create the API socket
//	    api:METHOD:/path   answer that request 400 "injected failure"
//	    crash:METHOD:/path exit 137 when that request arrives, unanswered
//	    hang:METHOD:/path  never answer that request
//	    snapshot-enospc    /snapshot/create writes half the memory file,
//	                       then fails 400 "... No space left on device"
//	    A path ending in * matches a prefix.
//	--hang-at, HEARTH_FCSIM_HANG_AT   requests the API accepts and never
//	    answers (the request is logged with event "hang"; the handler
//	    returns when the client gives up or the process exits), as a hung
//	    VMM does: comma-separated "METHOD /path" entries (METHOD * is any
//	    method, a path ending in * matches a prefix), e.g. "PATCH /vm";
//	    or "@FILE": the entries (one a line or comma-separated) are read
//	    from FILE on every request, so a test can hang a VMM that is
//	    already running by writing FILE (no file, no hang). A jailed VMM
//	    reads FILE inside its chroot.
//	--request-log, HEARTH_FCSIM_REQUEST_LOG   append one JSON line per
//	    request: {"ts","method","path","body" (raw JSON, a string if not
//	    JSON, or null),"status" (0 if never answered),"fault","event"
//	    ("crash"|"hang"|"fail-at-start"),"pid"}; jailer steps are lines with
//	    method "JAILER", path the step (mkdir, copy, rlimit, cgroup, mknod,
//	    chown, netns, chroot, spawn, exec, error) and body its details.
//	HEARTH_FCSIM_REQUEST_LOG_FD  the jailer passes the open log to the
//	    jailed VMM this way (set internally).
//	HEARTH_FCSIM_GUEST_CMD, HEARTH_FCSIM_GUEST_VSOCK_DIR   see above.
//	--metrics-interval, HEARTH_FCSIM_METRICS_INTERVAL (60s)
//	--uffd-timeout, HEARTH_FCSIM_UFFD_TIMEOUT (10s)
//	--uffd-verify, HEARTH_FCSIM_UFFD_VERIFY (all): "written" faults in and
//	    checks only the snapshot's non-zero pages, so that a Uffd restore
//	    stays lazy (for prefetch benchmarks); "all" reads every page.
//	--fifo-open-timeout, HEARTH_FCSIM_FIFO_OPEN_TIMEOUT (2s)
//	--guest-tick, HEARTH_FCSIM_TICK (100ms)
//
// Accepted Firecracker flags: --api-sock (default /run/firecracker.socket),
// --id (default anonymous-instance), --config-file (applied through the API
// handlers, then InstanceStart), --no-api (requires --config-file), --level,
// --log-path, --metrics-path, --boot-timer, --show-level, --show-log-origin,
// --start-time-us, --start-time-cpu-us, --parent-cpu-time-us,
// --http-api-max-payload-size, --version; --seccomp-level, --seccomp-filter,
// --no-seccomp, --mmds-size-limit, --module and --enable-pci are accepted
// and ignored.
//
// # Known differences from Firecracker
//
//   - No KVM, no vCPUs, no devices on the data path: block and net devices
//     are configuration only (TAP devices are not opened, since tests must
//     not create interfaces outside their own namespaces); MMDS is a data
//     store without the guest-side HTTP endpoint; balloon statistics are
//     synthesised.
//   - The vmstate file is the simulator's JSON, not Firecracker's binary
//     format; hearth must treat it as opaque, as it does Firecracker's.
//   - Guest-initiated vsock connections (uds_path_<port>) are not modelled.
//   - InstanceStart requires a root block device (or pmem root) unless an
//     initrd is given; Firecracker itself would boot and let the guest
//     kernel fail to mount its root.
//   - Fault messages follow Firecracker's wording where known; where
//     Firecracker's text could not be confirmed the simulator's own clear
//     message is used. Tests should match on substrings.
//   - GET /mmds before any PUT /mmds answers {} (Firecracker's data store
//     starts empty).
//   - The jailer uses chroot(2), not a new mount namespace with
//     pivot_root, and keeps HEARTH_FCSIM_* variables when clearing the
//     environment.
//   - With huge_pages 2M the regions advertise 2 MiB pages to a uffd
//     handler but are backed by ordinary anonymous memory.
package fcsim
