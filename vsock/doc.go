// Package vsock owns the byte-stream transports between the host and the
// guest agent; it knows nothing of the agent protocol that runs over them.
//
// Host side:
//
//   - HybridDialer connects through Firecracker's hybrid vsock: it dials the
//     VM's vsock unix socket (uds_path), writes "CONNECT <port>\n" and
//     expects "OK <host-port>\n". Firecracker drops a CONNECT for a port no
//     guest process listens on yet (it closes the connection without a
//     reply), and a guest agent starts listening some time after boot or
//     resume, so the dialer retries with capped exponential backoff until
//     its deadline. Each attempt's handshake is bounded separately, so a
//     VMM that accepts but never answers cannot hang a caller.
//   - UnixDialer connects to a plain unix socket, such as the chardev
//     socket QEMU serves for the guest's virtio-serial port (or a socket a
//     test agent listens on), with the same retry rules for a socket that
//     does not exist yet.
//
// Guest side:
//
//   - Listen binds an AF_VSOCK stream socket (any CID) for a guest agent.
//
// Both dialers implement Dialer, which is what agent.Dial consumes.
//
// This package must not touch VMM processes or allocate CIDs (the runtime
// owns those records); it only opens connections.
package vsock
