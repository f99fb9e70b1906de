package firecracker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/hearth-vm/hearth/vmm"
)

// ErrInvalidConfig is matched (errors.Is) by every error that rejects a
// caller's input before any request is sent or process started.
var ErrInvalidConfig = errors.New("invalid firecracker configuration")

// ConfigError names one invalid field of a vmm.Config, vmm.LoadRequest,
// vmm.SnapshotRequest or vmm.LaunchSpec.
type ConfigError struct {
	Field  string // e.g. "drives[1].id"
	Reason string
}

func (e *ConfigError) Error() string {
	return ErrInvalidConfig.Error() + ": " + e.Field + ": " + e.Reason
}

// Is makes errors.Is(err, ErrInvalidConfig) true.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

func invalid(field, format string, args ...any) error {
	return &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Limits of the pinned API.
const (
	maxVCPUs = 32
	// maxIDLen is Firecracker's limit on drive and interface ids.
	maxIDLen = 64
	// maxIfNameLen is IFNAMSIZ-1: a TAP name longer than this cannot exist.
	maxIfNameLen = 15
	// firstGuestCID is the lowest CID a guest may have (0–2 are reserved).
	firstGuestCID = 3
)

// validID reports whether s may be used as a drive or interface id. These
// ids are path parameters (/drives/{id}); Firecracker accepts ASCII
// alphanumerics and '_' up to 64 bytes, and restricting to that set also
// guarantees the URL path needs no escaping.
func validID(s string) bool {
	if s == "" || len(s) > maxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// validIfName reports whether s can name a host network device.
func validIfName(s string) bool {
	if s == "" || len(s) > maxIfNameLen || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c == '/' || c == ':' || c >= 0x7f {
			return false
		}
	}
	return true
}

// validPath rejects paths Firecracker could not open: empty, or containing
// NUL (which would silently truncate the path in the VMM).
func validPath(s string) bool {
	return s != "" && !bytes.ContainsRune([]byte(s), 0)
}

// ValidateConfig checks a cold-boot configuration against the limits of
// the pinned API and hearth's own rules (exactly one root drive, unique
// ids). It returns every problem found, joined; each is a *ConfigError.
func ValidateConfig(cfg vmm.Config) error {
	var errs []error
	add := func(err error) { errs = append(errs, err) }

	if cfg.VCPUs < 1 || cfg.VCPUs > maxVCPUs {
		add(invalid("vcpus", "%d is outside 1–%d", cfg.VCPUs, maxVCPUs))
	} else if cfg.SMT && cfg.VCPUs > 1 && cfg.VCPUs%2 != 0 {
		add(invalid("vcpus", "%d with SMT must be 1 or even", cfg.VCPUs))
	}
	switch {
	case cfg.MemoryMiB < 1:
		add(invalid("memory_mib", "%d must be at least 1", cfg.MemoryMiB))
	case cfg.HugePages && cfg.MemoryMiB%2 != 0:
		add(invalid("memory_mib", "%d must be a multiple of 2 with 2 MiB huge pages", cfg.MemoryMiB))
	}
	if !validPath(cfg.Kernel) {
		add(invalid("kernel", "a kernel image path is required"))
	}
	if cfg.Initrd != "" && !validPath(cfg.Initrd) {
		add(invalid("initrd", "invalid path %q", cfg.Initrd))
	}

	roots := 0
	driveIDs := map[string]bool{}
	for i, d := range cfg.Drives {
		f := "drives[" + strconv.Itoa(i) + "]"
		if d.Root {
			roots++
		}
		if !validID(d.ID) {
			add(invalid(f+".id", "%q must be 1–64 characters of [A-Za-z0-9_]", d.ID))
		} else if driveIDs[d.ID] {
			add(invalid(f+".id", "duplicate drive id %q", d.ID))
		}
		driveIDs[d.ID] = true
		if !validPath(d.Path) {
			add(invalid(f+".path", "a backing file path is required"))
		}
		if err := validateRateLimiter(f+".rate_limit", d.RateLimit); err != nil {
			add(err)
		}
	}
	if roots != 1 {
		add(invalid("drives", "exactly one root drive is required, found %d", roots))
	}

	nicIDs := map[string]bool{}
	for i, n := range cfg.NICs {
		f := "nics[" + strconv.Itoa(i) + "]"
		if !validID(n.ID) {
			add(invalid(f+".id", "%q must be 1–64 characters of [A-Za-z0-9_]", n.ID))
		} else if nicIDs[n.ID] {
			add(invalid(f+".id", "duplicate interface id %q", n.ID))
		}
		nicIDs[n.ID] = true
		if !validIfName(n.HostDev) {
			add(invalid(f+".host_dev", "%q is not a valid host device name", n.HostDev))
		}
		if n.MAC != "" {
			if hw, err := net.ParseMAC(n.MAC); err != nil || len(hw) != 6 {
				add(invalid(f+".mac", "%q is not a 48-bit MAC address", n.MAC))
			}
		}
		if err := validateRateLimiter(f+".rx", n.RX); err != nil {
			add(err)
		}
		if err := validateRateLimiter(f+".tx", n.TX); err != nil {
			add(err)
		}
	}

	if v := cfg.Vsock; v != nil {
		if v.CID < firstGuestCID || v.CID == ^uint32(0) {
			add(invalid("vsock.cid", "%d is reserved (guest CIDs are 3…2^32-2)", v.CID))
		}
		if !validPath(v.UDSPath) {
			add(invalid("vsock.uds_path", "a unix socket path is required"))
		}
	}
	if b := cfg.Balloon; b != nil {
		if b.TargetMiB < 0 {
			add(invalid("balloon.target_mib", "%d is negative", b.TargetMiB))
		}
		if b.StatsPollingIntervalS < 0 {
			add(invalid("balloon.stats_polling_interval_s", "%d is negative", b.StatsPollingIntervalS))
		}
	}
	if m := cfg.MMDS; m != nil {
		if m.Version != "" && m.Version != "V1" && m.Version != "V2" {
			add(invalid("mmds.version", "%q is neither V1 nor V2", m.Version))
		}
		if len(m.NICs) == 0 {
			add(invalid("mmds.nics", "at least one interface must carry MMDS traffic"))
		}
		for _, id := range m.NICs {
			if !nicIDs[id] {
				add(invalid("mmds.nics", "%q is not a configured interface", id))
			}
		}
		if m.IPv4Addr != "" && !validMMDSAddr(m.IPv4Addr) {
			add(invalid("mmds.ipv4_addr", "%q is not a link-local address 169.254.1.0–169.254.254.255", m.IPv4Addr))
		}
		if len(m.Data) > 0 {
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(m.Data, &obj); err != nil {
				add(invalid("mmds.data", "not a JSON object: %v", err))
			}
		}
	}
	return errors.Join(errs...)
}

// validMMDSAddr follows the spec's pattern for MmdsConfig.ipv4_address:
// 169.254.x.y with x in 1–254.
func validMMDSAddr(s string) bool {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return false
	}
	b := a.As4()
	return b[0] == 169 && b[1] == 254 && b[2] >= 1 && b[2] <= 254
}

func validateRateLimiter(field string, rl *vmm.RateLimiter) error {
	if rl == nil {
		return nil
	}
	var errs []error
	for _, tb := range []struct {
		name string
		b    *vmm.TokenBucket
	}{{"bandwidth", rl.Bandwidth}, {"ops", rl.Ops}} {
		if tb.b == nil {
			continue
		}
		f := field + "." + tb.name
		if tb.b.Size < 0 {
			errs = append(errs, invalid(f+".size", "%d is negative", tb.b.Size))
		}
		if tb.b.OneTimeBurst < 0 {
			errs = append(errs, invalid(f+".one_time_burst", "%d is negative", tb.b.OneTimeBurst))
		}
		// Firecracker counts refill time in whole milliseconds; rounding
		// silently would change the configured rate.
		if tb.b.RefillTime < 0 || tb.b.RefillTime%time.Millisecond != 0 {
			errs = append(errs, invalid(f+".refill_time", "%v must be a non-negative whole number of milliseconds", tb.b.RefillTime))
		}
	}
	return errors.Join(errs...)
}

// ValidateLoadRequest checks a restore request before any side effect.
func ValidateLoadRequest(req vmm.LoadRequest) error {
	var errs []error
	if !validPath(req.StatePath) {
		errs = append(errs, invalid("state_path", "a snapshot state file is required"))
	}
	if !validPath(req.MemPath) {
		errs = append(errs, invalid("mem_path", "a memory file or page-fault server socket is required"))
	}
	switch req.MemBackend {
	case "", vmm.MemFile, vmm.MemUffd:
	default:
		errs = append(errs, invalid("mem_backend", "%q is neither %q nor %q", req.MemBackend, vmm.MemFile, vmm.MemUffd))
	}
	seen := map[string]bool{}
	for i, o := range req.NetworkOverrides {
		f := "network_overrides[" + strconv.Itoa(i) + "]"
		if !validID(o.IfaceID) {
			errs = append(errs, invalid(f+".iface_id", "%q must be 1–64 characters of [A-Za-z0-9_]", o.IfaceID))
		} else if seen[o.IfaceID] {
			errs = append(errs, invalid(f+".iface_id", "duplicate override for %q", o.IfaceID))
		}
		seen[o.IfaceID] = true
		if !validIfName(o.HostDev) {
			errs = append(errs, invalid(f+".host_dev", "%q is not a valid host device name", o.HostDev))
		}
	}
	if req.VsockUDSPath != "" && !validPath(req.VsockUDSPath) {
		errs = append(errs, invalid("vsock_uds_path", "invalid path %q", req.VsockUDSPath))
	}
	seenDrive := map[string]bool{}
	for i, o := range req.DriveOverrides {
		f := "drive_overrides[" + strconv.Itoa(i) + "]"
		if !validID(o.ID) {
			errs = append(errs, invalid(f+".id", "%q must be 1–64 characters of [A-Za-z0-9_]", o.ID))
		} else if seenDrive[o.ID] {
			errs = append(errs, invalid(f+".id", "duplicate override for %q", o.ID))
		}
		seenDrive[o.ID] = true
		if !validPath(o.Path) {
			errs = append(errs, invalid(f+".path", "invalid path %q", o.Path))
		}
	}
	return errors.Join(errs...)
}

// ValidateSnapshotRequest checks a snapshot request before any side effect.
func ValidateSnapshotRequest(req vmm.SnapshotRequest) error {
	var errs []error
	if !validPath(req.StatePath) {
		errs = append(errs, invalid("state_path", "a destination for the state file is required"))
	}
	if !validPath(req.MemPath) {
		errs = append(errs, invalid("mem_path", "a destination for the memory file is required"))
	}
	if req.StatePath != "" && req.StatePath == req.MemPath {
		errs = append(errs, invalid("mem_path", "state and memory must go to different files"))
	}
	return errors.Join(errs...)
}
