package firecracker

// The types below mirror the definitions of the pinned Firecracker API
// (internal/fcspec/firecracker.yaml, 1.17). Field names and JSON tags are
// exactly the spec's. Firecracker rejects unknown fields
// (deny_unknown_fields), so every field the spec marks optional is either
// omitempty or a pointer: a body built from these types can only ever
// carry fields the spec defines.

// MachineConfiguration is the body of PUT /machine-config.
type MachineConfiguration struct {
	VCPUCount       int    `json:"vcpu_count"`
	MemSizeMiB      int    `json:"mem_size_mib"`
	SMT             bool   `json:"smt,omitempty"`
	TrackDirtyPages bool   `json:"track_dirty_pages,omitempty"`
	HugePages       string `json:"huge_pages,omitempty"` // HugePagesNone, HugePages2M
	CPUTemplate     string `json:"cpu_template,omitempty"`
}

// Values of MachineConfiguration.HugePages.
const (
	HugePagesNone        = "None"
	HugePagesTransparent = "Transparent"
	HugePages2M          = "2M"
)

// BootSource is the body of PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// TokenBucket is one bucket of a RateLimiter. RefillTime is in
// milliseconds.
type TokenBucket struct {
	Size         int64  `json:"size"`
	OneTimeBurst *int64 `json:"one_time_burst,omitempty"`
	RefillTime   int64  `json:"refill_time"`
}

// RateLimiter limits bytes (Bandwidth) and operations (Ops).
type RateLimiter struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// Drive is the body of PUT /drives/{drive_id} for a virtio-block device.
// IsReadOnly and PathOnHost are always sent: the spec requires them for
// virtio-block (they are only optional for vhost-user-block, which hearth
// does not use).
type Drive struct {
	DriveID      string       `json:"drive_id"`
	IsRootDevice bool         `json:"is_root_device"`
	IsReadOnly   bool         `json:"is_read_only"`
	PathOnHost   string       `json:"path_on_host"`
	PartUUID     string       `json:"partuuid,omitempty"`
	CacheType    string       `json:"cache_type,omitempty"`
	IOEngine     string       `json:"io_engine,omitempty"`
	RateLimiter  *RateLimiter `json:"rate_limiter,omitempty"`
}

// PartialDrive is the body of PATCH /drives/{drive_id} (post-boot).
type PartialDrive struct {
	DriveID     string       `json:"drive_id"`
	PathOnHost  string       `json:"path_on_host,omitempty"`
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID       string       `json:"iface_id"`
	HostDevName   string       `json:"host_dev_name"`
	GuestMAC      string       `json:"guest_mac,omitempty"`
	MTU           *int         `json:"mtu,omitempty"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// PartialNetworkInterface is the body of PATCH
// /network-interfaces/{iface_id} (post-boot rate-limiter update).
type PartialNetworkInterface struct {
	IfaceID       string       `json:"iface_id"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// Vsock is the body of PUT /vsock (hybrid vsock over a unix socket).
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// Logger is the body of PUT /logger.
type Logger struct {
	LogPath       string `json:"log_path,omitempty"`
	Level         string `json:"level,omitempty"`
	ShowLevel     bool   `json:"show_level,omitempty"`
	ShowLogOrigin bool   `json:"show_log_origin,omitempty"`
	Module        string `json:"module,omitempty"`
}

// Metrics is the body of PUT /metrics.
type Metrics struct {
	MetricsPath string            `json:"metrics_path"`
	EmitID      bool              `json:"emit_id,omitempty"`
	Properties  map[string]string `json:"properties,omitempty"`
}

// MmdsConfig is the body of PUT /mmds/config. The MMDS data store itself
// (PUT /mmds) is an arbitrary JSON object, sent as json.RawMessage.
type MmdsConfig struct {
	Version           string   `json:"version,omitempty"` // "V1" or "V2"
	NetworkInterfaces []string `json:"network_interfaces"`
	IPv4Address       string   `json:"ipv4_address,omitempty"`
	IMDSCompat        bool     `json:"imds_compat,omitempty"`
}

// Balloon is the body of PUT /balloon.
type Balloon struct {
	AmountMiB             int  `json:"amount_mib"`
	DeflateOnOOM          bool `json:"deflate_on_oom"`
	StatsPollingIntervalS int  `json:"stats_polling_interval_s,omitempty"`
	FreePageHinting       bool `json:"free_page_hinting,omitempty"`
	FreePageReporting     bool `json:"free_page_reporting,omitempty"`
}

// InstanceActionInfo is the body of PUT /actions.
type InstanceActionInfo struct {
	ActionType string `json:"action_type"`
}

// Values of InstanceActionInfo.ActionType.
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
	ActionFlushMetrics   = "FlushMetrics"
)

// VM is the body of PATCH /vm.
type VM struct {
	State string `json:"state"`
}

// Values of VM.State.
const (
	VMStatePaused  = "Paused"
	VMStateResumed = "Resumed"
)

// SnapshotCreateParams is the body of PUT /snapshot/create.
type SnapshotCreateParams struct {
	SnapshotType string `json:"snapshot_type,omitempty"` // SnapshotFull or SnapshotDiff
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
}

// Values of SnapshotCreateParams.SnapshotType.
const (
	SnapshotFull = "Full"
	SnapshotDiff = "Diff"
)

// MemoryBackend says how a restored VM's memory is populated.
type MemoryBackend struct {
	BackendType string `json:"backend_type"` // BackendFile or BackendUffd
	BackendPath string `json:"backend_path"`
}

// Values of MemoryBackend.BackendType.
const (
	BackendFile = "File"
	BackendUffd = "Uffd"
)

// NetworkOverride re-points a recorded network interface to another TAP.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// VsockOverride re-binds the vsock device to another unix socket.
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// SnapshotLoadParams is the body of PUT /snapshot/load. It deliberately
// has no deprecated mem_file_path / enable_diff_snapshots fields and no
// network_interfaces field (the seed's defect): overrides are
// network_overrides.
type SnapshotLoadParams struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemBackend       *MemoryBackend    `json:"mem_backend,omitempty"`
	TrackDirtyPages  bool              `json:"track_dirty_pages,omitempty"`
	ResumeVM         bool              `json:"resume_vm,omitempty"`
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride    *VsockOverride    `json:"vsock_override,omitempty"`
	ClockRealtime    bool              `json:"clock_realtime,omitempty"`
	HugePages        string            `json:"huge_pages,omitempty"`
}

// InstanceInfo is the answer of GET /.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"` // InstanceNotStarted, InstanceRunning, InstancePaused
	VMMVersion string `json:"vmm_version"`
}

// Values of InstanceInfo.State.
const (
	InstanceNotStarted = "Not started"
	InstanceRunning    = "Running"
	InstancePaused     = "Paused"
)

// FirecrackerVersion is the answer of GET /version.
type FirecrackerVersion struct {
	FirecrackerVersion string `json:"firecracker_version"`
}

// Error is the body of every refused request.
type Error struct {
	FaultMessage string `json:"fault_message,omitempty"`
}
