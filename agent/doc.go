// Package agent is hearth's guest-agent protocol and its host-side client.
// The guest side (the server) is agent/server, PID-1 duties are
// agent/guestinit, and the binary is cmd/hearth-agent. This package must
// not touch VMM processes or runtime records: it only speaks to an agent
// over a byte stream a Dialer (see package vsock) provides.
//
// # API for the runtime
//
//	d := &vsock.HybridDialer{Path: udsPath, Port: agent.DefaultPort} // Firecracker
//	d := &vsock.UnixDialer{Path: chardevSocket}                        // QEMU virtio-serial
//	c, err := agent.Dial(ctx, d, token)        // connect now (or agent.New: connect lazily)
//	defer c.Close()
//	st, err := c.Exec(ctx, &agent.Cmd{Args: []string{"uname", "-a"}, Stdout: w})
//	err = c.AfterRestore(ctx, newToken)        // after a snapshot restore
//
// The client reconnects by itself: when the connection drops (a snapshot
// resets every vsock connection; a restored VM is a new VMM process) the
// next call dials again through the same Dialer, and idempotent calls that
// fail because the connection died underneath them are retried once on a
// fresh connection. Exec, WriteFile and other streaming calls are not
// retried: they report the lost connection (ErrConnLost). Every method
// takes a context; cancelling it aborts the call, and cancelling an exec
// kills the process in the guest.
//
// # Wire protocol (version 1)
//
// Transport. Any reliable byte stream: Firecracker hybrid vsock (guest
// AF_VSOCK port DefaultPort), QEMU virtio-serial (port SerialPortName), or
// a unix socket in tests.
//
// Hello. The client writes "HEARTH-AGENT/1 <nonce>\n" (nonce: 1–64 hex
// digits); the agent answers "HEARTH-AGENT/1 OK <nonce>\n". Both sides
// skip bytes before the line they expect (bounded), because a
// virtio-serial port keeps stale bytes of an earlier session and the host
// end of a chardev cannot tell when the guest side was reset. The nonce
// ties the answer to this hello. An agent that does not speak the
// requested version answers "HEARTH-AGENT/1 UNSUPPORTED <nonce>\n".
// The hello starts with 'H', which no yamux header does: on a
// virtio-serial port a hello that arrives where the guest expects the
// next frame of a departed host's session ends that session (agent/server
// serial.go), so a restarted runtime or a restored clone is answered at
// once. A client retries a hello that timed out on a new connection.
//
// Session. After the hello both ends run a hashicorp/yamux session over
// the stream, the host as yamux client. Every yamux stream the host opens
// carries HTTP/1.1 (keep-alive allowed). So many requests, streamed exec
// output and file transfers share one connection, and a slow transfer
// does not block a ping (yamux flow control is per stream).
//
// Authentication. Every request carries "Authorization: Bearer <token>".
// The agent compares it in constant time with its token (kernel command
// line hearth.token=, or its --token/--token-file flags); a mismatch is 401
// with code "unauthorized". POST /v1/token replaces the token (the
// request is authenticated with the old one).
//
// Errors. A failed request answers a 4xx/5xx status and the JSON body
// {"error": "<message>", "code": "<code>"}; codes are the Code* constants.
// Error values returned by this client match fs.ErrNotExist, fs.ErrExist,
// fs.ErrPermission, ErrUnauthorized, ErrTooLarge and ErrInvalid with
// errors.Is.
//
// Endpoints (JSON bodies unless noted):
//
//	GET    /v1/ping                 → Pong
//	GET    /v1/info                 → Info (version, uptimes, kernel, hostname, addresses)
//	GET    /v1/env                  → EnvResponse
//	POST   /v1/env                  EnvRequest: merge; an empty value deletes the key → EnvResponse
//	GET    /v1/secrets              → SecretList (names only)
//	PUT    /v1/secrets/{name}       raw value (≤ the agent's limit): 0600 file, written atomically → 204
//	DELETE /v1/secrets/{name}       → 204
//	POST   /v1/exec                 ExecRequest, with "Connection: Upgrade" and
//	                                "Upgrade: hearth-exec/1" → 101, then exec frames (below)
//	POST   /v1/exec/{id}/signal     SignalRequest → 204
//	POST   /v1/exec/{id}/resize     ResizeRequest (TTY only) → 204
//	PUT    /v1/files?path=P[&perm=0644][&parents=1][&uid=U][&gid=G]
//	                                raw content, written to a temporary file, fsynced and renamed → FileInfo with SHA256
//	GET    /v1/files?path=P         raw content of a regular file; headers X-Hearth-Size and
//	                                X-Hearth-Perm; trailer X-Hearth-Sha256 (hex)
//	GET    /v1/files/stat?path=P[&follow=1] → FileInfo (lstat unless follow)
//	GET    /v1/files/list?path=P    → DirList
//	POST   /v1/files/mkdir          MkdirRequest → FileInfo
//	DELETE /v1/files?path=P[&recursive=1] → 204
//	POST   /v1/power                PowerRequest ("poweroff" | "reboot") → 202, then acts
//	POST   /v1/entropy              raw random bytes (≤ 4096) mixed into the guest pool → EntropyResponse
//	POST   /v1/clock                ClockRequest → ClockResponse (sets CLOCK_REALTIME)
//	POST   /v1/hostname             HostnameRequest → 204 (a restored clone takes its own)
//	POST   /v1/token                TokenRequest → 204
//
// File paths are absolute guest paths; a path with a ".." element is
// refused (code "invalid") rather than cleaned, and with a files root
// configured every path resolves inside it (symlinks included).
//
// Exec frames. After the 101 both directions carry frames: a 1-byte type,
// a 4-byte big-endian payload length (at most MaxFramePayload), then the
// payload. Agent to host: FrameStarted (JSON Started: exec id and guest
// pid) once, then FrameStdout / FrameStderr chunks in the order the
// process wrote them per stream, then one FrameExit (JSON ExitStatus) and
// the agent closes the stream. Host to agent: FrameStdin chunks and one
// FrameStdinEOF, which closes the process's stdin (on a TTY it sends
// ^D). The host keeps its side open until FrameExit: if it ends earlier,
// or the session dies, the agent kills the process group, so a vanished
// client never leaves work running. Output that a background process
// keeps open is cut 2 s after the process itself exits.
// Signals and TTY resizes travel as separate requests, so they are not
// stuck behind stdin the process is not reading.
//
// Exit status: ExitCode is the process's exit code, or 128+signal when a
// signal killed it (Signal then names it, e.g. "SIGKILL"); TimedOut says
// the agent killed it because ExecRequest.TimeoutMS passed.
//
// # Seed line protocol
//
// For clients of the seed's guest-metadata channel the agent also serves,
// on its own port (DefaultLinePort), newline-delimited JSON requests
// {"op":"ping"|"set_env"|"set_secret","id":…} answered by {"id","ok","error"}
// (see agent/server). set_env merges (an empty value deletes), as the
// seed's client documented but its daemon did not do.
package agent
