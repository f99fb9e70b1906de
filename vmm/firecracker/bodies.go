package firecracker

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/hearth-vm/hearth/vmm"
)

// The builders below are pure: they turn vmm types into API bodies and do
// no I/O. Paths in their inputs are taken as the VMM sees them (a jailed
// Machine maps host paths into its chroot before calling them).

// TokenBucketBody converts a vmm.TokenBucket. A zero OneTimeBurst is
// omitted rather than sent as 0, and the refill time is whole milliseconds
// (ValidateConfig rejects anything finer).
func TokenBucketBody(b *vmm.TokenBucket) *TokenBucket {
	if b == nil {
		return nil
	}
	tb := &TokenBucket{Size: b.Size, RefillTime: b.RefillTime.Milliseconds()}
	if b.OneTimeBurst > 0 {
		burst := b.OneTimeBurst
		tb.OneTimeBurst = &burst
	}
	return tb
}

// RateLimiterBody converts a vmm.RateLimiter; a limiter without buckets is
// no limiter at all and is omitted.
func RateLimiterBody(rl *vmm.RateLimiter) *RateLimiter {
	if rl == nil || rl.Bandwidth == nil && rl.Ops == nil {
		return nil
	}
	return &RateLimiter{Bandwidth: TokenBucketBody(rl.Bandwidth), Ops: TokenBucketBody(rl.Ops)}
}

// MachineConfigBody builds PUT /machine-config.
func MachineConfigBody(cfg vmm.Config) MachineConfiguration {
	mc := MachineConfiguration{
		VCPUCount:       cfg.VCPUs,
		MemSizeMiB:      cfg.MemoryMiB,
		SMT:             cfg.SMT,
		TrackDirtyPages: cfg.TrackDirtyPages,
	}
	if cfg.HugePages {
		mc.HugePages = HugePages2M
	}
	return mc
}

// BootSourceBody builds PUT /boot-source.
func BootSourceBody(cfg vmm.Config) BootSource {
	return BootSource{KernelImagePath: cfg.Kernel, BootArgs: cfg.BootArgs, InitrdPath: cfg.Initrd}
}

// DriveBody builds PUT /drives/{id}.
func DriveBody(d vmm.Drive) Drive {
	return Drive{
		DriveID:      d.ID,
		IsRootDevice: d.Root,
		IsReadOnly:   d.ReadOnly,
		PathOnHost:   d.Path,
		RateLimiter:  RateLimiterBody(d.RateLimit),
	}
}

// NICBody builds PUT /network-interfaces/{id}.
func NICBody(n vmm.NIC) NetworkInterface {
	return NetworkInterface{
		IfaceID:       n.ID,
		HostDevName:   n.HostDev,
		GuestMAC:      n.MAC,
		RxRateLimiter: RateLimiterBody(n.RX),
		TxRateLimiter: RateLimiterBody(n.TX),
	}
}

// VsockBody builds PUT /vsock.
func VsockBody(v vmm.Vsock) Vsock {
	return Vsock{GuestCID: v.CID, UDSPath: v.UDSPath}
}

// BalloonBody builds PUT /balloon.
func BalloonBody(b vmm.Balloon) Balloon {
	return Balloon{AmountMiB: b.TargetMiB, DeflateOnOOM: b.DeflateOnOOM, StatsPollingIntervalS: b.StatsPollingIntervalS}
}

// MMDSConfigBody builds PUT /mmds/config.
func MMDSConfigBody(m vmm.MMDS) MmdsConfig {
	return MmdsConfig{
		Version:           m.Version,
		NetworkInterfaces: append([]string{}, m.NICs...),
		IPv4Address:       m.IPv4Addr,
		IMDSCompat:        m.IMDSCompat,
	}
}

// LoggerBody builds PUT /logger. The level is shown in each line because
// the log file is read by people after the fact.
func LoggerBody(path, level string) Logger {
	if level == "" {
		level = DefaultLogLevel
	}
	return Logger{LogPath: path, Level: level, ShowLevel: true}
}

// MetricsBody builds PUT /metrics.
func MetricsBody(path string) Metrics { return Metrics{MetricsPath: path} }

// ActionBody builds PUT /actions.
func ActionBody(action string) InstanceActionInfo { return InstanceActionInfo{ActionType: action} }

// VMStateBody builds PATCH /vm.
func VMStateBody(paused bool) VM {
	if paused {
		return VM{State: VMStatePaused}
	}
	return VM{State: VMStateResumed}
}

// SnapshotCreateBody builds PUT /snapshot/create. The type is always sent
// explicitly so the request says what it does.
func SnapshotCreateBody(req vmm.SnapshotRequest) SnapshotCreateParams {
	t := SnapshotFull
	if req.Diff {
		t = SnapshotDiff
	}
	return SnapshotCreateParams{SnapshotType: t, SnapshotPath: req.StatePath, MemFilePath: req.MemPath}
}

// LoadBody builds PUT /snapshot/load. MemPath is the memory file (File) or
// the page-fault server's socket (Uffd). Overrides go into
// network_overrides and vsock_override — never into a network_interfaces
// field, which the spec does not have.
func LoadBody(req vmm.LoadRequest) (SnapshotLoadParams, error) {
	if err := ValidateLoadRequest(req); err != nil {
		return SnapshotLoadParams{}, err
	}
	p := SnapshotLoadParams{
		SnapshotPath:    req.StatePath,
		MemBackend:      &MemoryBackend{BackendType: BackendFile, BackendPath: req.MemPath},
		TrackDirtyPages: req.TrackDirtyPages,
		ResumeVM:        req.Resume,
	}
	if req.MemBackend == vmm.MemUffd {
		p.MemBackend.BackendType = BackendUffd
	}
	for _, o := range req.NetworkOverrides {
		p.NetworkOverrides = append(p.NetworkOverrides, NetworkOverride{IfaceID: o.IfaceID, HostDevName: o.HostDev})
	}
	if req.VsockUDSPath != "" {
		p.VsockOverride = &VsockOverride{UDSPath: req.VsockUDSPath}
	}
	return p, nil
}

// PatchDriveBody builds PATCH /drives/{id}: a new backing file (empty
// keeps the current one) and/or new rate limits.
func PatchDriveBody(id, path string, rl *vmm.RateLimiter) PartialDrive {
	return PartialDrive{DriveID: id, PathOnHost: path, RateLimiter: RateLimiterBody(rl)}
}

// ReplaceRateLimiterBody states a whole new limiter for a PATCH: unlike
// RateLimiterBody, a missing bucket is sent as a disabled one (size and
// refill_time 0, which Firecracker reads as "no limit") instead of being
// left out, which Firecracker reads as "keep the current bucket".
func ReplaceRateLimiterBody(rl *vmm.RateLimiter) *RateLimiter {
	off := &vmm.TokenBucket{}
	out := &vmm.RateLimiter{Bandwidth: off, Ops: off}
	if rl != nil {
		if rl.Bandwidth != nil {
			out.Bandwidth = rl.Bandwidth
		}
		if rl.Ops != nil {
			out.Ops = rl.Ops
		}
	}
	return &RateLimiter{Bandwidth: TokenBucketBody(out.Bandwidth), Ops: TokenBucketBody(out.Ops)}
}

// PatchNICBody builds PATCH /network-interfaces/{id}.
func PatchNICBody(id string, rx, tx *vmm.RateLimiter) PartialNetworkInterface {
	return PartialNetworkInterface{IfaceID: id, RxRateLimiter: RateLimiterBody(rx), TxRateLimiter: RateLimiterBody(tx)}
}

// Request is one API call: a method, a path and an optional JSON body.
type Request struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
}

func (r Request) String() string { return r.Method + " " + r.Path }

// NewRequest marshals body (nil for none) into a Request.
func NewRequest(method, path string, body any) (Request, error) {
	r := Request{Method: method, Path: path}
	if body == nil {
		return r, nil
	}
	b, err := json.Marshal(body)
	if err != nil {
		return Request{}, fmt.Errorf("encode body of %s %s: %w", method, path, err)
	}
	r.Body = b
	return r, nil
}

// mustRequest is NewRequest for bodies built from the model types, whose
// encoding cannot fail.
func mustRequest(method, path string, body any) Request {
	r, err := NewRequest(method, path, body)
	if err != nil {
		panic(err)
	}
	return r
}

// Paths says where the VMM writes its own output, as the VMM sees it.
type Paths struct {
	// LogPath is the Firecracker log file; empty skips PUT /logger.
	LogPath string
	// LogLevel defaults to DefaultLogLevel.
	LogLevel string
	// MetricsPath is the metrics FIFO; empty skips PUT /metrics.
	MetricsPath string
}

// DefaultLogLevel is the Firecracker log level used when none is given.
const DefaultLogLevel = "Warning"

// observabilityPlan is the part of a plan that must precede both a cold
// boot and a snapshot load: Firecracker accepts only the logger and the
// metrics before /snapshot/load, and refuses both once the VM runs.
func observabilityPlan(p Paths) []Request {
	var plan []Request
	if p.LogPath != "" {
		plan = append(plan, mustRequest("PUT", "/logger", LoggerBody(p.LogPath, p.LogLevel)))
	}
	if p.MetricsPath != "" {
		plan = append(plan, mustRequest("PUT", "/metrics", MetricsBody(p.MetricsPath)))
	}
	return plan
}

// BootPlan returns the cold-boot requests in the order Firecracker needs
// them: logger and metrics first (so errors in the rest are logged),
// machine config, boot source, drives (root first), network interfaces
// (before MMDS, which names them), vsock, MMDS, balloon. InstanceStart is
// not part of the plan; Machine.Start sends it.
func BootPlan(cfg vmm.Config, p Paths) ([]Request, error) {
	if err := ValidateConfig(cfg); err != nil {
		return nil, err
	}
	plan := observabilityPlan(p)
	plan = append(plan,
		mustRequest("PUT", "/machine-config", MachineConfigBody(cfg)),
		mustRequest("PUT", "/boot-source", BootSourceBody(cfg)),
	)
	for _, d := range cfg.Drives {
		if d.Root {
			plan = append(plan, mustRequest("PUT", "/drives/"+d.ID, DriveBody(d)))
		}
	}
	for _, d := range cfg.Drives {
		if !d.Root {
			plan = append(plan, mustRequest("PUT", "/drives/"+d.ID, DriveBody(d)))
		}
	}
	for _, n := range cfg.NICs {
		plan = append(plan, mustRequest("PUT", "/network-interfaces/"+n.ID, NICBody(n)))
	}
	if cfg.Vsock != nil {
		plan = append(plan, mustRequest("PUT", "/vsock", VsockBody(*cfg.Vsock)))
	}
	if m := cfg.MMDS; m != nil {
		plan = append(plan, mustRequest("PUT", "/mmds/config", MMDSConfigBody(*m)))
		if len(m.Data) > 0 {
			var buf bytes.Buffer
			// Validated as a JSON object above; compacting keeps the
			// request (and its golden file) canonical.
			if err := json.Compact(&buf, m.Data); err != nil {
				return nil, invalid("mmds.data", "%v", err)
			}
			plan = append(plan, Request{Method: "PUT", Path: "/mmds", Body: buf.Bytes()})
		}
	}
	if cfg.Balloon != nil {
		plan = append(plan, mustRequest("PUT", "/balloon", BalloonBody(*cfg.Balloon)))
	}
	return plan, nil
}

// LoadPlan returns the requests of a restore: logger and metrics (the
// snapshot does not carry them, and Firecracker accepts them only before
// the load), then PUT /snapshot/load.
//
// Drive overrides (each clone gets its own disk) have no place in
// Firecracker's load request, so the plan loads paused, re-points each
// drive with PATCH /drives, and only then resumes when asked: the guest
// never runs a single instruction against the source VM's disk.
func LoadPlan(req vmm.LoadRequest, p Paths) ([]Request, error) {
	resume := req.Resume
	if len(req.DriveOverrides) > 0 {
		req.Resume = false
	}
	body, err := LoadBody(req)
	if err != nil {
		return nil, err
	}
	plan := append(observabilityPlan(p), mustRequest("PUT", "/snapshot/load", body))
	for _, o := range req.DriveOverrides {
		plan = append(plan, mustRequest("PATCH", "/drives/"+o.ID, PatchDriveBody(o.ID, o.Path, nil)))
	}
	if len(req.DriveOverrides) > 0 && resume {
		plan = append(plan, mustRequest("PATCH", "/vm", VMStateBody(false)))
	}
	return plan, nil
}
