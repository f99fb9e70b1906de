package agent

import (
	"time"
)

// Well-known transport parameters.
const (
	// DefaultPort is the guest AF_VSOCK port of the agent protocol.
	DefaultPort = 1024
	// DefaultLinePort is the guest AF_VSOCK port of the seed's
	// newline-delimited JSON protocol.
	DefaultLinePort = 5555
	// SerialPortName is the name of the virtio-serial port the agent
	// serves on QEMU guests (-device virtserialport,name=hearth.agent).
	SerialPortName = "hearth.agent"
	// ProtocolVersion is the version the hello negotiates.
	ProtocolVersion = 1
	// ExecUpgrade is the Upgrade token of POST /v1/exec.
	ExecUpgrade = "hearth-exec/1"
)

// HTTP headers and trailers of the file endpoints.
const (
	HeaderSize   = "X-Hearth-Size"
	HeaderPerm   = "X-Hearth-Perm"
	TrailerSHA   = "X-Hearth-Sha256"
	HeaderExecID = "X-Hearth-Exec-Id"
)

// Error codes in ErrorResponse.Code.
const (
	CodeInvalid      = "invalid"
	CodeUnauthorized = "unauthorized"
	CodeNotFound     = "not_found"
	CodeExists       = "exists"
	CodePermission   = "permission"
	CodeTooLarge     = "too_large"
	CodeIsDir        = "is_directory"
	CodeNotDir       = "not_directory"
	CodeNotEmpty     = "not_empty"
	CodeUnsupported  = "unsupported"
	CodeInternal     = "internal"
)

// ErrorResponse is the body of every failed request.
type ErrorResponse struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// Pong answers GET /v1/ping.
type Pong struct {
	OK      bool   `json:"ok"`
	Version string `json:"version"`
}

// Info answers GET /v1/info.
type Info struct {
	Version  string `json:"version"`
	Protocol int    `json:"protocol"`
	// PID1 says the agent is the guest's init.
	PID1 bool `json:"pid1"`
	// AgentUptime is how long this agent process has run.
	AgentUptime time.Duration `json:"agent_uptime_ns"`
	// Uptime is the guest kernel's uptime (/proc/uptime).
	Uptime   time.Duration `json:"uptime_ns"`
	Kernel   string        `json:"kernel"`
	Hostname string        `json:"hostname"`
	Time     time.Time     `json:"time"`
	Ifaces   []Interface   `json:"interfaces"`
	// Features lists optional capabilities ("tty", "files-root", …).
	Features []string `json:"features"`
}

// Interface is one guest network interface.
type Interface struct {
	Name  string   `json:"name"`
	MAC   string   `json:"mac,omitempty"`
	Up    bool     `json:"up"`
	Addrs []string `json:"addrs"` // CIDR notation
}

// EnvRequest is the body of POST /v1/env.
type EnvRequest struct {
	// Env is merged into the agent's environment store; an empty value
	// deletes the key. Keys match [A-Za-z_][A-Za-z0-9_]*.
	Env map[string]string `json:"env"`
}

// EnvResponse is the whole stored environment after a change.
type EnvResponse struct {
	Env map[string]string `json:"env"`
}

// SecretList answers GET /v1/secrets.
type SecretList struct {
	Names []string `json:"names"`
}

// ExecRequest is the body of POST /v1/exec.
type ExecRequest struct {
	Args []string `json:"args"`
	// Env is added to the agent's base environment and its env store
	// (this wins on conflicts).
	Env map[string]string `json:"env,omitempty"`
	// Dir is the working directory ("/" if empty).
	Dir string `json:"dir,omitempty"`
	// UID and GID run the process as that user (the agent must be root).
	UID *uint32 `json:"uid,omitempty"`
	GID *uint32 `json:"gid,omitempty"`
	// TimeoutMS kills the process group after that many milliseconds
	// (0: no timeout).
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// Stdin says the host will send stdin frames; without it the process
	// reads /dev/null.
	Stdin bool `json:"stdin,omitempty"`
	// TTY runs the process on a new pseudo-terminal (stdout and stderr
	// merge into FrameStdout); Rows and Cols size it.
	TTY  bool   `json:"tty,omitempty"`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
}

// Started is the payload of FrameStarted.
type Started struct {
	ID  string `json:"id"`
	PID int    `json:"pid"`
}

// ExitStatus is the payload of FrameExit.
type ExitStatus struct {
	// ExitCode is the exit code, or 128+n when signal n ended the process.
	ExitCode int `json:"exit_code"`
	// Signal names the signal that ended the process ("SIGKILL"), if any.
	Signal string `json:"signal,omitempty"`
	// TimedOut says the agent killed the process at its timeout.
	TimedOut bool `json:"timed_out,omitempty"`
	// Duration is the process's wall time in the guest.
	Duration time.Duration `json:"duration_ns"`
	// Error reports an agent-side failure while the process ran (e.g. the
	// output stream broke); the status is still the process's.
	Error string `json:"error,omitempty"`
}

// Success reports exit code 0 without a signal.
func (s *ExitStatus) Success() bool { return s != nil && s.ExitCode == 0 && s.Signal == "" }

// SignalRequest is the body of POST /v1/exec/{id}/signal. Signal is a
// name ("TERM", "SIGTERM") or a decimal number.
type SignalRequest struct {
	Signal string `json:"signal"`
}

// ResizeRequest is the body of POST /v1/exec/{id}/resize.
type ResizeRequest struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// File types in FileInfo.Type.
const (
	TypeFile    = "file"
	TypeDir     = "dir"
	TypeSymlink = "symlink"
	TypeOther   = "other"
)

// FileInfo describes a guest file.
type FileInfo struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
	Size int64  `json:"size"`
	// Perm holds the permission bits and setuid/setgid/sticky, as in
	// chmod (0o7777 at most).
	Perm    uint32    `json:"perm"`
	ModTime time.Time `json:"mod_time"`
	UID     uint32    `json:"uid"`
	GID     uint32    `json:"gid"`
	// Link is a symlink's target.
	Link string `json:"link,omitempty"`
	// SHA256 is the hex digest of what PUT /v1/files wrote.
	SHA256 string `json:"sha256,omitempty"`
}

// DirList answers GET /v1/files/list.
type DirList struct {
	Entries []FileInfo `json:"entries"`
}

// MkdirRequest is the body of POST /v1/files/mkdir.
type MkdirRequest struct {
	Path    string `json:"path"`
	Perm    uint32 `json:"perm,omitempty"` // 0o755 if zero
	Parents bool   `json:"parents,omitempty"`
}

// Power actions.
const (
	PowerOff = "poweroff"
	Reboot   = "reboot"
)

// PowerRequest is the body of POST /v1/power.
type PowerRequest struct {
	Action string `json:"action"`
}

// EntropyResponse answers POST /v1/entropy.
type EntropyResponse struct {
	Bytes int `json:"bytes"`
	// Credited says the kernel counted the bytes as entropy
	// (RNDADDENTROPY); otherwise they were only mixed into the pool.
	Credited bool `json:"credited"`
}

// HostnameRequest is the body of POST /v1/hostname.
type HostnameRequest struct {
	Hostname string `json:"hostname"`
}

// ClockRequest is the body of POST /v1/clock.
type ClockRequest struct {
	UnixNano int64 `json:"unix_nano"`
}

// ClockResponse answers POST /v1/clock.
type ClockResponse struct {
	// Previous is the guest's realtime clock just before the change.
	Previous time.Time `json:"previous"`
	// Adjusted is how far the clock moved (new - previous).
	Adjusted time.Duration `json:"adjusted_ns"`
}

// TokenRequest is the body of POST /v1/token.
type TokenRequest struct {
	Token string `json:"token"`
}
