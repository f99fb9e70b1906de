package vmm

import (
	"context"
	"errors"
	"strconv"
	"time"
)

// Backend launches new VMM processes and adopts running ones.
//
// Contracts:
//   - Launch either returns a Machine whose control channel answers, or an
//     error after which nothing it started is left running (no process, no
//     socket, no FIFO).
//   - Adopt re-attaches to a VMM launched earlier, possibly by another
//     process, from the Handle recorded at launch. It fails with ErrGone when
//     that process no longer exists (pid reused counts as gone).
//   - All methods are safe for concurrent use.
type Backend interface {
	// Name is the backend's stable name ("firecracker", "qemu", "mem").
	Name() string
	Launch(ctx context.Context, spec LaunchSpec) (Machine, error)
	Adopt(ctx context.Context, h Handle) (Machine, error)
}

// Machine is one VMM process and the guest it runs.
//
// Contracts:
//   - A freshly launched Machine accepts exactly one of Configure (cold
//     boot) or LoadSnapshot (restore), then Start (cold boot only).
//   - Methods do not enforce hearth's state machine; the runtime does. A
//     request the VMM refuses comes back as a *RequestError.
//   - Kill is idempotent and returns once the process is gone.
//   - Shutdown asks the guest to power off, waits up to the context's
//     deadline, then escalates through signals; it returns once the process
//     is gone.
//   - Done is closed when the VMM process exits for any reason; ExitStatus
//     is valid after that.
//   - All methods are safe for concurrent use.
type Machine interface {
	Handle() Handle
	Configure(ctx context.Context, cfg Config) error
	LoadSnapshot(ctx context.Context, req LoadRequest) error
	Start(ctx context.Context) error
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	Snapshot(ctx context.Context, req SnapshotRequest) error
	Shutdown(ctx context.Context) (ShutdownReport, error)
	Kill() error
	Done() <-chan struct{}
	ExitStatus() ExitStatus
	// Release stops supervising the VMM without touching it (the runtime
	// is closing and the VM keeps running, to be adopted later). No other
	// method may be called afterwards; Done may never close.
	Release()
}

// LaunchSpec says where and how to run a new VMM process.
type LaunchSpec struct {
	// VMID is the hearth VM id, used for the VMM's --id and in logs.
	VMID string
	// Dir is the VM's private runtime directory: the backend puts its
	// sockets, FIFOs and scratch files here. It exists; on a relaunch it
	// may hold the previous VMM's stale files, which the backend replaces.
	Dir string
	// ConsolePath receives the VMM's stdout (the guest serial console)
	// and stderr. Empty discards them.
	ConsolePath string
	// NetNS is the path of the network namespace the VMM runs in; empty
	// means the caller's namespace.
	NetNS string
	// Jail, when set, runs the VMM confined (chroot, uid/gid, cgroups).
	Jail *Jail
	// Env is extra environment for the VMM process.
	Env []string
	// Spawned, when set, is called once the VMM process exists (before
	// its API answers) with its handle so far, so the caller can record
	// it durably while the VMM starts. Backends may not call it; the
	// handle Launch's machine reports stays authoritative.
	Spawned func(Handle)
}

// Jail describes the confinement of a VMM process.
type Jail struct {
	UID, GID      int
	ChrootBaseDir string
	CgroupVersion int // 1 or 2
	// CPUQuota is the share of one CPU the VM may use (1.5 = 150 %); 0 = unlimited.
	CPUQuota  float64
	MemoryMax int64 // bytes; 0 = unlimited
	PidsMax   int64 // 0 = unlimited
	// Files are host paths to expose inside the jail; the backend maps each
	// to the in-jail path it reports through JailPath.
	Files []string
}

// Handle is everything a runtime must persist to re-attach to a VMM.
type Handle struct {
	Backend string `json:"backend"`
	Pid     int    `json:"pid"`
	// StartTime is the process start time in clock ticks after boot
	// (field 22 of /proc/<pid>/stat); with Pid it identifies the process
	// even after pid reuse.
	StartTime uint64 `json:"start_time"`
	// Control is the control socket (Firecracker API socket, QMP socket).
	Control string `json:"control"`
	Dir     string `json:"dir"`
	// Extra holds backend-specific facts (e.g. the jail's chroot).
	Extra map[string]string `json:"extra,omitempty"`
}

// Config is a cold-boot machine configuration.
type Config struct {
	VCPUs           int
	MemoryMiB       int
	SMT             bool
	HugePages       bool // 2 MiB huge pages for guest memory
	TrackDirtyPages bool // needed for diff snapshots
	Kernel          string
	Initrd          string
	BootArgs        string
	// Drives holds the root drive (Root: true, exactly one) and extra drives.
	Drives  []Drive
	NICs    []NIC
	Vsock   *Vsock
	Balloon *Balloon
	// MMDS, when set, enables the metadata service on the listed NICs
	// and seeds it with Data (a JSON document).
	MMDS *MMDS
}

// Drive is a block device.
type Drive struct {
	ID        string
	Path      string
	Root      bool
	ReadOnly  bool
	RateLimit *RateLimiter
}

// NIC is a network interface backed by a host TAP device.
type NIC struct {
	ID      string // guest-facing id, e.g. "eth0"
	HostDev string // TAP name on the host
	MAC     string // empty lets the VMM choose
	RX, TX  *RateLimiter
}

// Vsock is a virtio-vsock device exposed on the host as a unix socket
// (Firecracker's hybrid vsock).
type Vsock struct {
	CID     uint32
	UDSPath string
}

// Balloon is a memory balloon device.
type Balloon struct {
	TargetMiB             int
	DeflateOnOOM          bool
	StatsPollingIntervalS int
}

// MMDS configures the microVM metadata service.
type MMDS struct {
	Version    string // "V1" or "V2"
	NICs       []string
	IPv4Addr   string
	Data       []byte // JSON document
	IMDSCompat bool
}

// RateLimiter limits bandwidth (bytes) and/or operations.
type RateLimiter struct {
	Bandwidth *TokenBucket
	Ops       *TokenBucket
}

// TokenBucket refills Size tokens every RefillTime; OneTimeBurst is an
// extra initial credit.
type TokenBucket struct {
	Size         int64
	OneTimeBurst int64
	RefillTime   time.Duration
}

// SnapshotRequest asks for the VM's state and memory to be written to the
// given host paths. The VM must be paused.
type SnapshotRequest struct {
	StatePath string
	MemPath   string
	// Diff writes only the pages dirtied since the last snapshot (requires
	// TrackDirtyPages).
	Diff bool
}

// MemBackend selects how a restored VM's memory is populated.
type MemBackend string

const (
	// MemFile maps the memory file directly (eager, private).
	MemFile MemBackend = "file"
	// MemUffd lets a page-fault server populate memory lazily.
	MemUffd MemBackend = "uffd"
)

// LoadRequest restores a snapshot into a freshly launched Machine.
type LoadRequest struct {
	StatePath string
	// MemPath is the memory file (MemFile) or the page-fault server's
	// unix socket (MemUffd).
	MemPath         string
	MemBackend      MemBackend
	Resume          bool
	TrackDirtyPages bool
	// NetworkOverrides re-points recorded NICs to other host devices.
	NetworkOverrides []NetworkOverride
	// VsockUDSPath, when set, re-binds the vsock device to a new socket so
	// that clones do not collide on the source VM's path.
	VsockUDSPath string
	// DriveOverrides re-points recorded drives to other host files (each
	// clone gets its own copy of the disk). Firecracker's load request
	// cannot do this, so backends load paused, patch the drives, then
	// resume when Resume is set.
	DriveOverrides []DriveOverride
}

// DriveOverride maps a recorded drive to a new host file.
type DriveOverride struct {
	ID   string
	Path string
}

// NetworkOverride maps a recorded NIC to a new host device.
type NetworkOverride struct {
	IfaceID string
	HostDev string
}

// ExitStatus describes how a VMM process ended.
type ExitStatus struct {
	Exited   bool // false while the process runs
	Code     int  // exit code, or -1 when killed by a signal
	Signal   string
	Expected bool // the exit was requested (Shutdown, Kill)
}

// ShutdownReport says how a Shutdown ended.
type ShutdownReport struct {
	// Outcome is "graceful" (the guest powered off when asked),
	// "terminated" (SIGTERM), "killed" (SIGKILL) or "already exited".
	Outcome string        `json:"outcome"`
	Took    time.Duration `json:"took"`
	// Detail is a human-readable account (rungs, exit status, why the
	// graceful request failed).
	Detail string `json:"detail,omitempty"`
}

// RequestError is a request the VMM refused: it carries enough to tell
// "the VMM answered 400" from "the VMM is unreachable".
type RequestError struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	Status int    `json:"status"`
	Body   string `json:"body"` // the VMM's fault message or raw body
}

func (e *RequestError) Error() string {
	return e.Method + " " + e.Path + ": status " + strconv.Itoa(e.Status) + ": " + e.Body
}

// ErrGone is returned by Adopt when the recorded process no longer exists.
var ErrGone = errors.New("vmm process is gone")

// Guestless is implemented by machines that run no guest at all (the
// in-memory backend): the runtime skips the steps that talk to a guest
// agent for them.
type Guestless interface {
	Guestless() bool
}

// RateLimitSetter is implemented by machines whose device rate limits can
// change while the guest runs.
//
// Contract: SetRateLimits validates the whole update before it sends any
// request, so bad input changes nothing; a device the backend cannot
// limit is refused with an error matching errors.ErrUnsupported that
// names the option. A failure after the first request may leave earlier
// devices changed; the caller restores them.
type RateLimitSetter interface {
	SetRateLimits(ctx context.Context, u RateLimitUpdate) error
}

// RateLimitUpdate replaces the rate limits of the listed devices (the
// others keep theirs). A nil limiter, or a nil bucket within one, means
// unlimited: the update states the whole new limit, not a difference.
type RateLimitUpdate struct {
	Drives []DriveLimit
	NICs   []NICLimit
}

// DriveLimit is a drive's new rate limit.
type DriveLimit struct {
	ID    string
	Limit *RateLimiter
}

// NICLimit is a network interface's new rate limits.
type NICLimit struct {
	ID     string
	RX, TX *RateLimiter
}
