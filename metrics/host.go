package metrics

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hearth-vm/hearth/proc"
)

// Roots of the kernel's pseudo filesystems; tests point them at fakes.
var (
	procRoot    = "/proc"
	sysClassNet = "/sys/class/net"
)

// BlockIO is the VMM process's I/O (/proc/<pid>/io): what the guest's
// disks and the VMM's own files cost on the host.
type BlockIO struct {
	// ReadBytes and WriteBytes reached the storage layer (page-cache hits
	// are not counted).
	ReadBytes  uint64 `json:"read_bytes"`
	WriteBytes uint64 `json:"write_bytes"`
	// ReadChars and WriteChars passed through read/write-like syscalls,
	// cached or not.
	ReadChars     uint64 `json:"read_chars"`
	WriteChars    uint64 `json:"write_chars"`
	ReadSyscalls  uint64 `json:"read_syscalls"`
	WriteSyscalls uint64 `json:"write_syscalls"`
}

// ReadProcessIO reads /proc/<pid>/io.
func ReadProcessIO(pid int) (BlockIO, error) {
	p := filepath.Join(procRoot, strconv.Itoa(pid), "io")
	b, err := os.ReadFile(p)
	if err != nil {
		return BlockIO{}, err
	}
	kv := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			kv[k] = n
		}
	}
	if _, ok := kv["read_bytes"]; !ok {
		return BlockIO{}, fmt.Errorf("parse %s: no read_bytes", p)
	}
	return BlockIO{
		ReadBytes: kv["read_bytes"], WriteBytes: kv["write_bytes"],
		ReadChars: kv["rchar"], WriteChars: kv["wchar"],
		ReadSyscalls: kv["syscr"], WriteSyscalls: kv["syscw"],
	}, nil
}

// ReadProcessCPU reads the CPU time of pid from /proc/<pid>/stat: the
// fallback for a VMM without a cgroup with CPU accounting.
func ReadProcessCPU(pid int) (CPUStats, error) {
	p := filepath.Join(procRoot, strconv.Itoa(pid), "stat")
	b, err := os.ReadFile(p)
	if err != nil {
		return CPUStats{}, err
	}
	// The command name may contain spaces and ')': fields start after
	// the last ')'. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return CPUStats{}, fmt.Errorf("parse %s: no ')'", p)
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return CPUStats{}, fmt.Errorf("parse %s: %d fields", p, len(f))
	}
	ut, err1 := strconv.ParseUint(string(f[11]), 10, 64)
	st, err2 := strconv.ParseUint(string(f[12]), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return CPUStats{}, fmt.Errorf("parse %s: %w", p, err)
	}
	const tick = 1e9 / userHZ
	return CPUStats{Source: "process", UserNanos: ut * tick, SystemNanos: st * tick, UsageNanos: (ut + st) * tick}, nil
}

// ReadProcessMemory reads the resident set of pid (VmRSS, peak VmHWM):
// the fallback for a VMM without a memory cgroup.
func ReadProcessMemory(pid int) (MemoryStats, error) {
	p := filepath.Join(procRoot, strconv.Itoa(pid), "status")
	b, err := os.ReadFile(p)
	if err != nil {
		return MemoryStats{}, err
	}
	s := MemoryStats{Source: "process"}
	found := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			s.UsageBytes, found = n<<10, true
		case "VmHWM":
			s.PeakBytes = n << 10
		case "RssAnon":
			s.AnonBytes = n << 10
		case "RssFile":
			s.FileBytes = n << 10
		}
	}
	if !found {
		return s, fmt.Errorf("parse %s: no VmRSS (kernel thread or zombie?)", p)
	}
	return s, nil
}

// NetStats are a TAP device's counters as the host sees them: Rx is what
// the guest sent, Tx what it received.
type NetStats struct {
	Device    string `json:"device"`
	RxBytes   uint64 `json:"rx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	RxDropped uint64 `json:"rx_dropped"`
	TxBytes   uint64 `json:"tx_bytes"`
	TxPackets uint64 `json:"tx_packets"`
	TxDropped uint64 `json:"tx_dropped"`
}

// ReadNetStats reads the counters of devs. With netns empty they come
// from /sys/class/net/<dev>/statistics of the caller's namespace. With a
// netns path they come from that namespace: sysfs shows the namespace it
// was mounted in, not the caller's, so the devices are read from
// /proc/thread-self/net/dev on a thread that entered netns (and leaves it
// again before it is reused).
func ReadNetStats(netns string, devs []string) ([]NetStats, error) {
	if len(devs) == 0 {
		return nil, nil
	}
	if netns == "" {
		out := make([]NetStats, 0, len(devs))
		var errs []error
		for _, d := range devs {
			s, err := readSysNet(d)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			out = append(out, s)
		}
		return out, errors.Join(errs...)
	}
	b, err := readInNetNS(netns, "/proc/thread-self/net/dev")
	if err != nil {
		return nil, err
	}
	all, err := parseProcNetDev(b)
	if err != nil {
		return nil, err
	}
	out := make([]NetStats, 0, len(devs))
	var errs []error
	for _, d := range devs {
		s, ok := all[d]
		if !ok {
			errs = append(errs, fmt.Errorf("device %s not in netns %s: %w", d, netns, os.ErrNotExist))
			continue
		}
		out = append(out, s)
	}
	return out, errors.Join(errs...)
}

func readSysNet(dev string) (NetStats, error) {
	if dev == "" || strings.ContainsAny(dev, "/") || dev == "." || dev == ".." {
		return NetStats{}, fmt.Errorf("invalid device name %q", dev)
	}
	s := NetStats{Device: dev}
	dir := filepath.Join(sysClassNet, dev, "statistics")
	for _, f := range []struct {
		name string
		dst  *uint64
	}{
		{"rx_bytes", &s.RxBytes}, {"rx_packets", &s.RxPackets}, {"rx_dropped", &s.RxDropped},
		{"tx_bytes", &s.TxBytes}, {"tx_packets", &s.TxPackets}, {"tx_dropped", &s.TxDropped},
	} {
		v, err := readUint(filepath.Join(dir, f.name))
		if err != nil {
			return NetStats{}, fmt.Errorf("device %s: %w", dev, err)
		}
		*f.dst = v
	}
	return s, nil
}

// parseProcNetDev parses /proc/net/dev: two header lines, then
// "name: rx_bytes rx_packets rx_errs rx_drop fifo frame compressed
// multicast tx_bytes tx_packets tx_errs tx_drop …".
func parseProcNetDev(b []byte) (map[string]NetStats, error) {
	out := map[string]NetStats{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 16 {
			continue // a header line
		}
		var n [16]uint64
		bad := false
		for i := range n {
			v, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				bad = true
				break
			}
			n[i] = v
		}
		if bad {
			continue
		}
		dev := strings.TrimSpace(name)
		out[dev] = NetStats{Device: dev, RxBytes: n[0], RxPackets: n[1], RxDropped: n[3], TxBytes: n[8], TxPackets: n[9], TxDropped: n[11]}
	}
	if len(out) == 0 {
		return nil, errors.New("parse /proc/net/dev: no devices")
	}
	return out, nil
}

// readInNetNS reads path on an OS thread that has entered the network
// namespace at nsPath. The thread returns to its own namespace before it
// is unlocked; if it cannot, it stays locked and the Go runtime discards
// it when the goroutine ends, so no other goroutine ever runs in netns.
func readInNetNS(nsPath, path string) ([]byte, error) {
	var b []byte
	err := proc.InNetNS(nsPath, func() (err error) {
		b, err = os.ReadFile(path)
		return err
	})
	return b, err
}
