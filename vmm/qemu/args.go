package qemu

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hearth-vm/hearth/vmm"
)

// Accelerators accepted by Options.Accel.
const (
	AccelTCG  = "tcg"
	AccelKVM  = "kvm"
	AccelAuto = "auto"
)

// DefaultMachine is the -M value. The PIT, PIC and RTC stay enabled: the
// Debian kernel calibrates its timers with them, and under TCG a guest
// without them stalls in calibration.
const DefaultMachine = "microvm,x-option-roms=off,isa-serial=on"

// AgentPortName is the virtio-serial port the guest agent opens
// (/dev/virtio-ports/hearth.agent).
const AgentPortName = "hearth.agent"

// UnsupportedError names a configuration option QEMU has no equivalent
// for. It matches errors.ErrUnsupported.
type UnsupportedError struct {
	Option string
	Reason string
}

func (e *UnsupportedError) Error() string {
	s := "qemu backend does not support " + e.Option
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// Is makes errors.Is(err, errors.ErrUnsupported) true.
func (e *UnsupportedError) Is(target error) bool { return target == errors.ErrUnsupported }

func unsupported(option, reason string) error {
	return &UnsupportedError{Option: option, Reason: reason}
}

// ConfigError is an invalid value in a vmm.Config.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string { return "invalid " + e.Field + ": " + e.Reason }

func invalid(field, format string, args ...any) error {
	return &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// ArgsSpec is everything besides the vmm.Config that goes into a QEMU
// command line.
type ArgsSpec struct {
	Accel     string // AccelTCG or AccelKVM (auto is resolved before)
	Machine   string // -M value; DefaultMachine when empty
	QMPSocket string
	// Incoming adds "-incoming defer" (restore).
	Incoming bool
}

// BuildArgs returns QEMU's arguments (without argv[0]) for cfg. It is
// pure: the same inputs always give the same command line, so restores
// can rebuild a snapshot's machine exactly. The VM always starts paused
// (-S): Start, or the restore's resume, sends "cont".
func BuildArgs(s ArgsSpec, cfg vmm.Config) ([]string, error) {
	if err := validateConfig(cfg); err != nil {
		return nil, err
	}
	if s.QMPSocket == "" {
		return nil, invalid("qmp socket", "empty")
	}
	machine := s.Machine
	if machine == "" {
		machine = DefaultMachine
	}
	if cfg.HugePages {
		machine += ",memory-backend=mem"
	}
	a := []string{
		"-M", machine,
		"-nodefaults", "-no-user-config", "-nographic",
	}
	switch s.Accel {
	case AccelTCG:
		// Under TCG the guest's timer calibration sees wildly uneven
		// time on a loaded host; icount makes guest time follow the
		// instructions executed.
		a = append(a, "-accel", "tcg", "-icount", "shift=auto")
	case AccelKVM:
		a = append(a, "-accel", "kvm", "-cpu", "host")
	default:
		return nil, invalid("accel", "%q is not tcg or kvm", s.Accel)
	}
	a = append(a, "-m", strconv.Itoa(cfg.MemoryMiB))
	if cfg.HugePages {
		a = append(a, "-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,hugetlb=on,hugetlbsize=2M", cfg.MemoryMiB))
	}
	if cfg.SMT {
		a = append(a, "-smp", fmt.Sprintf("%d,sockets=1,cores=%d,threads=2", cfg.VCPUs, cfg.VCPUs/2))
	} else {
		a = append(a, "-smp", strconv.Itoa(cfg.VCPUs))
	}
	// The console is QEMU's stdout, which proc sends to the console file;
	// signal=off keeps a stray ^C in the stream from killing QEMU.
	a = append(a, "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console")
	if cfg.Kernel != "" {
		a = append(a, "-kernel", cfg.Kernel)
	}
	if cfg.Initrd != "" {
		a = append(a, "-initrd", cfg.Initrd)
	}
	if cfg.BootArgs != "" {
		a = append(a, "-append", cfg.BootArgs)
	}
	for i, d := range cfg.Drives {
		id := "drive-" + d.ID
		ro := "off"
		if d.ReadOnly {
			ro = "on"
		}
		opt := "id=" + id + ",file=" + escapeOpt(d.Path) + ",format=raw,if=none,readonly=" + ro
		thr, err := throttling(fmt.Sprintf("drives[%d].rate_limiter", i), d.RateLimit)
		if err != nil {
			return nil, err
		}
		a = append(a, "-drive", opt+thr, "-device", "virtio-blk-device,drive="+id)
	}
	for _, n := range cfg.NICs {
		id := "net-" + n.ID
		dev := "virtio-net-device,netdev=" + id
		if n.MAC != "" {
			dev += ",mac=" + n.MAC
		}
		a = append(a,
			"-netdev", "tap,id="+id+",ifname="+n.HostDev+",script=no,downscript=no",
			"-device", dev)
	}
	if cfg.Vsock != nil {
		a = append(a,
			"-device", "virtio-serial-device",
			"-chardev", "socket,id=agent,path="+escapeOpt(cfg.Vsock.UDSPath)+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent,name="+AgentPortName)
	}
	a = append(a, "-qmp", "unix:"+escapeOpt(s.QMPSocket)+",server=on,wait=off", "-S")
	if s.Incoming {
		a = append(a, "-incoming", "defer")
	}
	return a, nil
}

// escapeOpt escapes commas, which QEMU's option parser reads as
// separators; a doubled comma is a literal one.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// throttling maps a Firecracker-style token bucket onto QEMU's block
// throttling: Size tokens every RefillTime is a steady rate of
// Size/RefillTime per second. QEMU's bursts are expressed differently
// (a maximum rate held for a length of time), so a one-time burst is
// refused rather than approximated.
func throttling(field string, rl *vmm.RateLimiter) (string, error) {
	bps, iops, err := throttleRates(field, rl)
	if err != nil {
		return "", err
	}
	var s string
	if bps > 0 {
		s += ",throttling.bps-total=" + strconv.FormatInt(bps, 10)
	}
	if iops > 0 {
		s += ",throttling.iops-total=" + strconv.FormatInt(iops, 10)
	}
	return s, nil
}

// throttleRates returns the steady bytes and operations per second of a
// limiter; 0 means unlimited, which is also how QEMU reads 0.
func throttleRates(field string, rl *vmm.RateLimiter) (bps, iops int64, err error) {
	if rl == nil {
		return 0, 0, nil
	}
	rate := func(name string, tb *vmm.TokenBucket) (int64, error) {
		if tb == nil {
			return 0, nil
		}
		if tb.OneTimeBurst != 0 {
			return 0, unsupported(field+"."+name+".one_time_burst", "QEMU block throttling has no one-time credit")
		}
		if tb.Size <= 0 || tb.RefillTime <= 0 {
			return 0, invalid(field+"."+name, "size and refill time must be positive")
		}
		return max(tb.Size*int64(time.Second)/int64(tb.RefillTime), 1), nil
	}
	if bps, err = rate("bandwidth", rl.Bandwidth); err != nil {
		return 0, 0, err
	}
	if iops, err = rate("ops", rl.Ops); err != nil {
		return 0, 0, err
	}
	return bps, iops, nil
}

func validateConfig(cfg vmm.Config) error {
	var errs []error
	if cfg.VCPUs < 1 {
		errs = append(errs, invalid("vcpus", "%d is less than 1", cfg.VCPUs))
	}
	if cfg.SMT && cfg.VCPUs%2 != 0 {
		errs = append(errs, invalid("vcpus", "%d must be even with SMT", cfg.VCPUs))
	}
	if cfg.MemoryMiB < 1 {
		errs = append(errs, invalid("memory", "%d MiB is less than 1", cfg.MemoryMiB))
	}
	roots := 0
	seen := map[string]bool{}
	for i, d := range cfg.Drives {
		if d.Root {
			roots++
		}
		if d.ID == "" || !validID(d.ID) || seen["d"+d.ID] {
			errs = append(errs, invalid(fmt.Sprintf("drives[%d].id", i), "%q must be unique and of [A-Za-z0-9_-]", d.ID))
		}
		seen["d"+d.ID] = true
		if d.Path == "" {
			errs = append(errs, invalid(fmt.Sprintf("drives[%d].path", i), "empty"))
		}
	}
	if len(cfg.Drives) > 0 && roots != 1 {
		errs = append(errs, invalid("drives", "%d root drives, want exactly one", roots))
	}
	for i, n := range cfg.NICs {
		if n.ID == "" || !validID(n.ID) || seen["n"+n.ID] {
			errs = append(errs, invalid(fmt.Sprintf("nics[%d].id", i), "%q must be unique and of [A-Za-z0-9_-]", n.ID))
		}
		seen["n"+n.ID] = true
		if n.HostDev == "" || strings.ContainsAny(n.HostDev, ", =") {
			errs = append(errs, invalid(fmt.Sprintf("nics[%d].host_dev", i), "%q is not a device name", n.HostDev))
		}
		if n.MAC != "" && strings.ContainsAny(n.MAC, ", =") {
			errs = append(errs, invalid(fmt.Sprintf("nics[%d].mac", i), "%q is not a MAC address", n.MAC))
		}
		if n.RX != nil {
			errs = append(errs, unsupported(fmt.Sprintf("nics[%d].rx_rate_limiter", i), "QEMU has no rate limiting for tap netdevs"))
		}
		if n.TX != nil {
			errs = append(errs, unsupported(fmt.Sprintf("nics[%d].tx_rate_limiter", i), "QEMU has no rate limiting for tap netdevs"))
		}
	}
	if cfg.Vsock != nil && cfg.Vsock.UDSPath == "" {
		errs = append(errs, invalid("vsock.uds_path", "empty"))
	}
	if cfg.Balloon != nil {
		errs = append(errs, unsupported("balloon", "not implemented for QEMU yet"))
	}
	if cfg.MMDS != nil {
		errs = append(errs, unsupported("mmds", "the metadata service is Firecracker's"))
	}
	return errors.Join(errs...)
}

func validID(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return len(s) <= 64
}
