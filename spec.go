package hearth

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Spec describes a VM. Zero fields take the runtime's defaults
// (Config.Defaults), so a Spec only says what differs.
type Spec struct {
	// Backend names the VMM backend ("firecracker", "qemu", "mem"); empty
	// uses the runtime's default.
	Backend string `json:"backend,omitempty"`
	// Image names a catalog image providing kernel, initrd and rootfs.
	// Kernel/Initrd/Rootfs, when set, override the image's files.
	Image  string `json:"image,omitempty"`
	Kernel string `json:"kernel,omitempty"`
	Initrd string `json:"initrd,omitempty"`
	Rootfs string `json:"rootfs,omitempty"`
	// RootfsReadOnly attaches the rootfs read-only and shared instead of
	// giving the VM its own writable clone.
	RootfsReadOnly bool   `json:"rootfs_read_only,omitempty"`
	VCPUs          int    `json:"vcpus,omitempty"`
	MemoryMiB      int    `json:"memory_mib,omitempty"`
	HugePages      bool   `json:"huge_pages,omitempty"`
	BootArgs       string `json:"boot_args,omitempty"`
	// Drives are extra block devices.
	Drives  []DriveSpec  `json:"drives,omitempty"`
	Network *NetworkSpec `json:"network,omitempty"`
	// Agent enables the vsock device and the guest agent channel.
	Agent *bool     `json:"agent,omitempty"`
	Jail  *JailSpec `json:"jail,omitempty"`
	// TrackDirtyPages enables diff snapshots.
	TrackDirtyPages bool              `json:"track_dirty_pages,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
}

// DriveSpec is an extra block device.
type DriveSpec struct {
	ID        string     `json:"id"`
	Path      string     `json:"path"`
	ReadOnly  bool       `json:"read_only,omitempty"`
	RateLimit *RateLimit `json:"rate_limit,omitempty"`
}

// NetworkSpec configures the VM's network interface and its egress
// firewall. Egress is denied by default; Allow opens destinations.
type NetworkSpec struct {
	// Disabled gives the VM no network interface at all.
	Disabled bool `json:"disabled,omitempty"`
	// Allow lists egress rules "proto:cidr[:port[-port]]", e.g.
	// "tcp:10.0.0.0/8:443", "udp:[2001:db8::]/32:53-54", "icmp:0.0.0.0/0".
	Allow []string `json:"allow,omitempty"`
	// DNS lists resolvers the VM may query even where Allow does not
	// reach.
	DNS []string `json:"dns,omitempty"`
	// AllowHost and AllowMetadata lift the default denial of the host
	// and of link-local metadata addresses (169.254.169.254).
	AllowHost     bool       `json:"allow_host,omitempty"`
	AllowMetadata bool       `json:"allow_metadata,omitempty"`
	RxRateLimit   *RateLimit `json:"rx_rate_limit,omitempty"`
	TxRateLimit   *RateLimit `json:"tx_rate_limit,omitempty"`
}

// JailSpec confines the VMM process.
type JailSpec struct {
	// CPUQuota is the share of one CPU (1.5 = 150 %); 0 = unlimited.
	CPUQuota float64 `json:"cpu_quota,omitempty"`
	// MemoryMax in bytes; 0 = unlimited.
	MemoryMax int64 `json:"memory_max,omitempty"`
	PidsMax   int64 `json:"pids_max,omitempty"`
}

// RateLimit limits bandwidth (bytes per refill) and/or operations.
type RateLimit struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// TokenBucket refills Size tokens every RefillTimeMs milliseconds.
type TokenBucket struct {
	Size         int64 `json:"size"`
	OneTimeBurst int64 `json:"one_time_burst,omitempty"`
	RefillTimeMs int64 `json:"refill_time_ms"`
}

// RestoreSpec creates a new VM from a snapshot. A snapshot can be
// restored any number of times; each restore is an independent clone.
type RestoreSpec struct {
	Snapshot string `json:"snapshot"`
	// VM is the new VM's id.
	VM string `json:"vm"`
	// Paused leaves the restored VM paused instead of resuming it.
	Paused bool `json:"paused,omitempty"`
	// MemoryBackend is "file" (default) or "uffd" (lazy restore).
	MemoryBackend string `json:"memory_backend,omitempty"`
	// Prefetch copies the snapshot's recorded working set eagerly (uffd).
	Prefetch bool `json:"prefetch,omitempty"`
	// PrefetchWaitMs, with Prefetch, holds the restored VM's vCPUs until
	// the working set is in memory, for at most this long, then resumes
	// it (REAP): the guest starts without faulting on its working set,
	// instead of racing the prefetcher. 0 resumes at once.
	PrefetchWaitMs int64             `json:"prefetch_wait_ms,omitempty"`
	Labels         map[string]string `json:"labels,omitempty"`
}

// maxPrefetchWaitMs bounds RestoreSpec.PrefetchWaitMs: a restore is not
// meant to wait longer than a boot would take.
const maxPrefetchWaitMs = 60_000

// View is a VM as callers see it.
type View struct {
	ID        string    `json:"id"`
	Status    Status    `json:"status"`
	Backend   string    `json:"backend"`
	Spec      Spec      `json:"spec"`
	Pid       int       `json:"pid,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// RestoredFrom names the snapshot this VM was restored from.
	RestoredFrom string `json:"restored_from,omitempty"`
	// Exit explains a crashed VM.
	Exit string `json:"exit,omitempty"`
}

// SnapshotView is a snapshot as callers see it.
type SnapshotView struct {
	Name      string    `json:"name"`
	SourceVM  string    `json:"source_vm"`
	Backend   string    `json:"backend"`
	CreatedAt time.Time `json:"created_at"`
	Dir       string    `json:"dir"`
	Spec      Spec      `json:"spec"`
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// ValidateID checks a VM id: 1–63 characters of [a-zA-Z0-9_.-], starting
// with a letter or digit, no "..". Ids are never rewritten, so two
// distinct ids can never collide on disk.
func ValidateID(id string) error {
	return validateName("vm id", id)
}

// ValidateSnapshotName applies the same rule to snapshot names.
func ValidateSnapshotName(name string) error {
	return validateName("snapshot name", name)
}

func validateName(what, s string) error {
	if !nameRE.MatchString(s) || strings.Contains(s, "..") {
		return fmt.Errorf("%s %q is invalid: want 1-63 characters of [a-zA-Z0-9_.-] starting with a letter or digit, without \"..\"", what, clip(s))
	}
	return nil
}

// clip shortens a rejected value quoted in an error: a request may carry a
// megabyte in a name field, and the error (echoed in the API's answer and
// the daemon's log) should not.
func clip(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

var driveIDRE = regexp.MustCompile(`^[a-zA-Z0-9_]{1,32}$`)

// Limits on a VM's size.
const (
	MaxVCPUs     = 32
	MinMemoryMiB = 16
)

// Limits on a Spec's free-form fields.
const (
	// MaxBootArgs leaves room, within the x86 kernel's 2048-byte command
	// line, for the arguments hearth adds (agent token, guest address); a
	// longer line would be cut by the kernel and lose them.
	MaxBootArgs = 1536
	// MaxLabels bounds the labels of one VM.
	MaxLabels = 64
)

// withDefaults fills zero fields of s from d.
func (s Spec) withDefaults(d Spec) Spec {
	if s.Backend == "" {
		s.Backend = d.Backend
	}
	if s.Image == "" && s.Kernel == "" && s.Rootfs == "" {
		s.Image = d.Image
		s.Kernel, s.Initrd, s.Rootfs = d.Kernel, d.Initrd, d.Rootfs
		if !s.RootfsReadOnly {
			s.RootfsReadOnly = d.RootfsReadOnly
		}
	}
	if s.VCPUs == 0 {
		s.VCPUs = d.VCPUs
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = d.MemoryMiB
	}
	if s.BootArgs == "" {
		s.BootArgs = d.BootArgs
	}
	if s.Network == nil && d.Network != nil {
		n := *d.Network
		s.Network = &n
	}
	if s.Agent == nil && d.Agent != nil {
		a := *d.Agent
		s.Agent = &a
	}
	if s.Jail == nil && d.Jail != nil {
		j := *d.Jail
		s.Jail = &j
	}
	return s
}

// AgentEnabled reports whether the VM gets a vsock device and agent.
func (s Spec) AgentEnabled() bool { return s.Agent != nil && *s.Agent }

// validate checks a defaulted spec without touching anything.
func (s Spec) validate() error {
	var errs []string
	add := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	if s.VCPUs < 1 || s.VCPUs > MaxVCPUs {
		add("vcpus must be between 1 and %d, got %d", MaxVCPUs, s.VCPUs)
	}
	if s.MemoryMiB < MinMemoryMiB {
		add("memory_mib must be at least %d, got %d", MinMemoryMiB, s.MemoryMiB)
	}
	if s.HugePages && s.MemoryMiB%2 != 0 {
		add("memory_mib must be a multiple of 2 with huge_pages, got %d", s.MemoryMiB)
	}
	if s.Image != "" {
		if err := ValidateImageName(s.Image); err != nil {
			add("%v", err)
		}
	} else if s.Kernel == "" || s.Rootfs == "" {
		add("either image or both kernel and rootfs must be set")
	}
	for _, p := range []struct{ name, v string }{{"kernel", s.Kernel}, {"initrd", s.Initrd}, {"rootfs", s.Rootfs}} {
		if p.v != "" && !filepath.IsAbs(p.v) {
			add("%s must be an absolute path, got %q", p.name, clip(p.v))
		}
	}
	if strings.ContainsAny(s.BootArgs, "\n\x00") {
		add("boot_args must not contain newlines or NUL")
	}
	if len(s.BootArgs) > MaxBootArgs {
		add("boot_args is %d bytes, at most %d are allowed", len(s.BootArgs), MaxBootArgs)
	}
	seen := map[string]bool{"rootfs": true}
	for i, d := range s.Drives {
		switch {
		case !driveIDRE.MatchString(d.ID):
			add("drives[%d].id %q must be 1-32 characters of [a-zA-Z0-9_]", i, clip(d.ID))
		case seen[d.ID]:
			add("drives[%d].id %q is reserved or duplicated", i, d.ID)
		}
		seen[d.ID] = true
		if !filepath.IsAbs(d.Path) {
			add("drives[%d].path must be an absolute path, got %q", i, clip(d.Path))
		}
		if err := d.RateLimit.validate(); err != nil {
			add("drives[%d].rate_limit: %v", i, err)
		}
	}
	if n := s.Network; n != nil {
		if _, err := egressPolicy(s); err != nil {
			add("network: %v", err)
		}
		if err := n.RxRateLimit.validate(); err != nil {
			add("network.rx_rate_limit: %v", err)
		}
		if err := n.TxRateLimit.validate(); err != nil {
			add("network.tx_rate_limit: %v", err)
		}
	}
	if j := s.Jail; j != nil {
		if j.CPUQuota < 0 || j.MemoryMax < 0 || j.PidsMax < 0 {
			add("jail limits must not be negative")
		}
	}
	if len(s.Labels) > MaxLabels {
		add("%d labels, at most %d are allowed", len(s.Labels), MaxLabels)
	}
	for k, v := range s.Labels {
		// A key with "=" could not be named in the API's ?label=k=v
		// filter.
		if k == "" || len(k) > 63 || len(v) > 256 || strings.ContainsAny(k+v, "\n\x00") || strings.Contains(k, "=") {
			add("label %q is invalid: keys 1-63 bytes without \"=\", values up to 256, no newlines", clip(k))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

func (r *RateLimit) validate() error {
	if r == nil {
		return nil
	}
	for _, b := range []*TokenBucket{r.Bandwidth, r.Ops} {
		if b == nil {
			continue
		}
		if b.Size <= 0 || b.RefillTimeMs <= 0 || b.OneTimeBurst < 0 {
			return fmt.Errorf("token bucket needs size > 0 and refill_time_ms > 0")
		}
	}
	return nil
}

var imageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidateImageName checks a catalog image name.
func ValidateImageName(name string) error {
	if !imageRE.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("image name %q is invalid: want [a-z0-9][a-z0-9._-]*, at most 63 characters, without \"..\"", clip(name))
	}
	return nil
}

func (r *RestoreSpec) validate() error {
	if err := ValidateSnapshotName(r.Snapshot); err != nil {
		return err
	}
	if err := ValidateID(r.VM); err != nil {
		return err
	}
	switch r.MemoryBackend {
	case "", "file", "uffd":
	default:
		return fmt.Errorf("memory_backend must be \"file\" or \"uffd\", got %q", clip(r.MemoryBackend))
	}
	if r.Prefetch && r.MemoryBackend != "uffd" {
		return fmt.Errorf("prefetch needs memory_backend \"uffd\"")
	}
	switch {
	case r.PrefetchWaitMs < 0 || r.PrefetchWaitMs > maxPrefetchWaitMs:
		return fmt.Errorf("prefetch_wait_ms must be between 0 and %d, got %d", maxPrefetchWaitMs, r.PrefetchWaitMs)
	case r.PrefetchWaitMs > 0 && !r.Prefetch:
		return fmt.Errorf("prefetch_wait_ms needs prefetch")
	case r.PrefetchWaitMs > 0 && r.Paused:
		return fmt.Errorf("prefetch_wait_ms has no effect on a VM restored paused")
	}
	return nil
}
