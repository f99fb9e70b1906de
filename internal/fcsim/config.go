package fcsim

import "encoding/json"

// Typed views of the request bodies the simulator acts on. Bodies are
// validated against the spec before they are decoded here; unsigned Go
// types reject negative values the way Firecracker's Rust types do.
// Resources the simulator only stores and echoes keep their raw JSON.

type bootSource struct {
	KernelImagePath string  `json:"kernel_image_path"`
	BootArgs        *string `json:"boot_args,omitempty"`
	InitrdPath      *string `json:"initrd_path,omitempty"`
}

type machineConfig struct {
	VcpuCount       uint8   `json:"vcpu_count"`
	MemSizeMib      uint64  `json:"mem_size_mib"`
	Smt             bool    `json:"smt"`
	TrackDirtyPages bool    `json:"track_dirty_pages"`
	HugePages       string  `json:"huge_pages,omitempty"`
	CPUTemplate     *string `json:"cpu_template,omitempty"`
}

func defaultMachineConfig() machineConfig {
	return machineConfig{VcpuCount: 1, MemSizeMib: 128, HugePages: "None"}
}

type drive struct {
	DriveID      string          `json:"drive_id"`
	PartUUID     *string         `json:"partuuid,omitempty"`
	IsRootDevice bool            `json:"is_root_device"`
	CacheType    *string         `json:"cache_type,omitempty"`
	IsReadOnly   *bool           `json:"is_read_only,omitempty"`
	PathOnHost   *string         `json:"path_on_host,omitempty"`
	RateLimiter  json.RawMessage `json:"rate_limiter,omitempty"`
	IoEngine     *string         `json:"io_engine,omitempty"`
	Socket       *string         `json:"socket,omitempty"`
}

type partialDrive struct {
	DriveID     string          `json:"drive_id"`
	PathOnHost  *string         `json:"path_on_host,omitempty"`
	RateLimiter json.RawMessage `json:"rate_limiter,omitempty"`
}

type networkInterface struct {
	IfaceID       string          `json:"iface_id"`
	HostDevName   string          `json:"host_dev_name"`
	GuestMac      *string         `json:"guest_mac,omitempty"`
	Mtu           *uint16         `json:"mtu,omitempty"`
	RxRateLimiter json.RawMessage `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter json.RawMessage `json:"tx_rate_limiter,omitempty"`
}

type partialNetworkInterface struct {
	IfaceID       string          `json:"iface_id"`
	RxRateLimiter json.RawMessage `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter json.RawMessage `json:"tx_rate_limiter,omitempty"`
}

type vsockConfig struct {
	GuestCID uint32  `json:"guest_cid"`
	UdsPath  string  `json:"uds_path"`
	VsockID  *string `json:"vsock_id,omitempty"`
}

type balloonConfig struct {
	AmountMib             uint32 `json:"amount_mib"`
	DeflateOnOom          bool   `json:"deflate_on_oom"`
	StatsPollingIntervalS uint16 `json:"stats_polling_interval_s"`
	FreePageHinting       bool   `json:"free_page_hinting,omitempty"`
	FreePageReporting     bool   `json:"free_page_reporting,omitempty"`
}

type loggerConfig struct {
	LogPath       *string `json:"log_path,omitempty"`
	Level         *string `json:"level,omitempty"`
	ShowLevel     *bool   `json:"show_level,omitempty"`
	ShowLogOrigin *bool   `json:"show_log_origin,omitempty"`
	Module        *string `json:"module,omitempty"`
}

type metricsConfig struct {
	MetricsPath string            `json:"metrics_path"`
	EmitID      bool              `json:"emit_id,omitempty"`
	Properties  map[string]string `json:"properties,omitempty"`
}

type pmemConfig struct {
	ID          string          `json:"id"`
	PathOnHost  string          `json:"path_on_host"`
	RootDevice  bool            `json:"root_device,omitempty"`
	ReadOnly    bool            `json:"read_only,omitempty"`
	RateLimiter json.RawMessage `json:"rate_limiter,omitempty"`
}

type snapshotCreateParams struct {
	MemFilePath  string `json:"mem_file_path"`
	SnapshotPath string `json:"snapshot_path"`
	SnapshotType string `json:"snapshot_type"`
}

type memoryBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

type networkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

type snapshotLoadParams struct {
	EnableDiffSnapshots *bool             `json:"enable_diff_snapshots"`
	TrackDirtyPages     *bool             `json:"track_dirty_pages"`
	MemFilePath         *string           `json:"mem_file_path"`
	MemBackend          *memoryBackend    `json:"mem_backend"`
	SnapshotPath        string            `json:"snapshot_path"`
	ResumeVM            bool              `json:"resume_vm"`
	NetworkOverrides    []networkOverride `json:"network_overrides"`
	VsockOverride       *struct {
		UdsPath string `json:"uds_path"`
	} `json:"vsock_override"`
	ClockRealtime bool   `json:"clock_realtime"`
	HugePages     string `json:"huge_pages"`
}

// fullConfig is GET /vm/config, the --config-file document, and the
// configuration recorded in a vmstate file. Key names are Firecracker's.
type fullConfig struct {
	Balloon           *balloonConfig     `json:"balloon,omitempty"`
	Drives            []drive            `json:"drives"`
	BootSource        *bootSource        `json:"boot-source,omitempty"`
	CPUConfig         json.RawMessage    `json:"cpu-config,omitempty"`
	Logger            *loggerConfig      `json:"logger,omitempty"`
	MachineConfig     *machineConfig     `json:"machine-config,omitempty"`
	Metrics           *metricsConfig     `json:"metrics,omitempty"`
	MemoryHotplug     json.RawMessage    `json:"memory-hotplug,omitempty"`
	MmdsConfig        json.RawMessage    `json:"mmds-config,omitempty"`
	NetworkInterfaces []networkInterface `json:"network-interfaces"`
	Pmem              []pmemConfig       `json:"pmem,omitempty"`
	Vsock             *vsockConfig       `json:"vsock,omitempty"`
	Entropy           json.RawMessage    `json:"entropy,omitempty"`
}
