// Command hearth-agent is the guest agent: a static binary (build with
// CGO_ENABLED=0) in every hearth image. It serves the protocol of package
// agent (exec, files, env, secrets, power, entropy, clock) and the seed's
// line protocol.
//
// As PID 1 (or with --init=always) it first readies the guest (see
// agent/guestinit: mounts, hostname, hearth.ip network, entropy), then
// runs itself again as a supervised child that serves, reaping orphans
// and restarting the child if it dies. Otherwise it serves directly, as a
// service under another init.
//
// Flags:
//
//	--listen SPEC        agent protocol listener, repeatable: vsock:PORT,
//	                     serial:NAME|/dev/PATH, unix:PATH, fcsim:PORT
//	--line-listen SPEC   line-protocol listener, repeatable (same forms)
//	--token T            token (else --token-file, else hearth.token= on the kernel command line)
//	--token-file PATH    read the token from it if present; rotated tokens are written to it
//	                     (default /run/hearth/token)
//	--no-auth            serve without a token (tests only)
//	--env-file PATH      env store (default /run/hearth/env)
//	--secrets-dir PATH   secrets directory (default /run/hearth/secrets)
//	--files-root DIR     confine file operations to DIR
//	--max-file-size N    largest file upload in bytes (default 16 GiB)
//	--max-secret-size N  largest secret in bytes (default 1 MiB)
//	--line-allow-no-token  accept line-protocol writes without a token (the seed's behaviour)
//	--init auto|always|never   act as init (auto: when PID 1)
//	--init-mount=false   as init, do not mount anything (tests in a PID namespace)
//	--cmdline PATH       kernel command line to read (default /proc/cmdline; as the
//	                     Firecracker simulator's guest, $HEARTH_FCSIM_BOOT_ARGS)
//	--log-level L        debug, info, warn, error (hearth.debug=1 means debug)
//	--system S           linux: act on the kernel for power, clock and entropy; simulated: only
//	                     log them (a host process playing a guest); auto (default): simulated
//	                     when $HEARTH_FCSIM_GUEST_VSOCK_DIR is set
//	--version
//
// Default listeners: with $HEARTH_FCSIM_GUEST_VSOCK_DIR set (the agent runs
// as the Firecracker simulator's guest process) fcsim:1024 and, for the
// line protocol, fcsim:5555; otherwise vsock:1024 and the virtio-serial
// port hearth.agent when it exists, and vsock:5555 for the line protocol.
// A listener that cannot be opened is logged and skipped; the agent exits
// only if none could be. As the simulator's guest the token file, env file
// and secrets directory default to <that dir>/hearth-state/, so simulated
// VMs on one host do not share them (nor touch the host's /run).
//
// SIGTERM or SIGINT stop a service-mode agent (running exec processes are
// killed).
package main
