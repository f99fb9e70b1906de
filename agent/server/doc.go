// Package server is the guest side of the hearth agent: it serves the
// protocol documented in package agent (hello, yamux, HTTP/1.1) on any
// listener or byte stream, and the seed's newline-delimited JSON protocol
// on a listener of its own.
//
// What it owns inside the guest: the env store (a K=V file, merged, never
// replaced), the secrets directory (0700, one 0600 file per secret,
// written atomically), processes it starts for exec (each in its own
// process group, killed when the client goes away), and file operations
// (confined to Config.FilesRoot when set, through os.Root, which also
// refuses symlinks that escape it). It does not mount, configure the
// network or reap orphans: agent/guestinit does that when the agent is
// PID 1.
//
// Listeners: ParseListen understands "vsock:PORT" (AF_VSOCK, any CID),
// "unix:PATH", "fcsim:PORT" (the Firecracker simulator's guest socket
// <$HEARTH_FCSIM_GUEST_VSOCK_DIR>/PORT.sock) and "serial:NAME" or
// "serial:/dev/vportNpM" (a virtio-serial port, found by its name under
// /sys/class/virtio-ports). A serial port carries one session at a time
// and stays open for the agent's life (closing it would discard queued
// bytes): a session ends when the host goes away (the port reads
// end-of-file) or when a new host's hello arrives at a yamux frame
// boundary, which is how a restored clone or a guest that missed its
// host's departure starts afresh (serial.go explains it in full).
//
// Robustness rules: every body and line has a size limit, every request
// is authenticated before it is routed, a panic in a handler is
// recovered by net/http (and logged), and malformed input gets an error
// answer, never a crash.
package server
