package metrics

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Source describes where one VM's numbers are. Zero fields are skipped.
type Source struct {
	VM      string
	Backend string
	// Pid and StartTime identify the VMM process (StartTime in clock
	// ticks after boot, as recorded by package proc). When StartTime is
	// set, a pid now used by another process is not read.
	Pid       int
	StartTime uint64
	// Cgroup is the VMM's cgroup, when it has one.
	Cgroup *CgroupDirs
	// NetNS is the path of the network namespace holding the TAPs; empty
	// means the caller's namespace.
	NetNS string
	TAPs  []string
	// Firecracker is the VMM's metrics accumulator (Firecracker only).
	Firecracker *FirecrackerAccumulator
	// PageFaults reads the counters of the VM's page-fault server, when
	// it was restored lazily (userfaultfd).
	PageFaults func() (PageFaultStats, error)
}

// PageFaultStats are the counters of a lazily restored VM's page-fault
// server, as of its last status write (at most a second old while it
// serves). Counters are totals since the restore.
type PageFaultStats struct {
	// State is the server's: serving, exited, detached or failed.
	State string `json:"state"`
	// Faults were served on demand, copying FaultBytes (with the pages
	// copied in the same call).
	Faults     uint64 `json:"faults"`
	FaultBytes uint64 `json:"fault_bytes"`
	// BackgroundBytes were copied after their fault was served
	// (readahead and fault-around); PrefetchedBytes from the working-set
	// trace; ZeroBytes were served as zeros (removed by the guest).
	BackgroundBytes uint64 `json:"background_bytes"`
	PrefetchedBytes uint64 `json:"prefetched_bytes"`
	ZeroBytes       uint64 `json:"zero_bytes"`
	// Fault service latency, from reading a fault to the copy that woke
	// the guest.
	MaxFaultLatencyUS  float64 `json:"max_fault_latency_us"`
	MeanFaultLatencyUS float64 `json:"mean_fault_latency_us"`
	// Trace is the working-set trace's state (recording, replaying,
	// replayed, …); PrefetchMS how long its replay took, once done.
	Trace      string  `json:"trace,omitempty"`
	PrefetchMS float64 `json:"prefetch_ms,omitempty"`
	// Errors counts transient errors the server retried or skipped.
	Errors uint64 `json:"errors"`
}

// Stats is a point-in-time view of one VM's resource use, for
// Runtime.Stats and `hearth stats`. Sections that could not be read are
// nil, with the reason in Errors.
type Stats struct {
	VM          string              `json:"vm"`
	Backend     string              `json:"backend"`
	Time        time.Time           `json:"time"`
	Pid         int                 `json:"pid,omitempty"`
	CPU         *CPUStats           `json:"cpu,omitempty"`
	Memory      *MemoryStats        `json:"memory,omitempty"`
	Pids        *PidsStats          `json:"pids,omitempty"`
	Net         []NetStats          `json:"net,omitempty"`
	Block       *BlockIO            `json:"block,omitempty"`
	Firecracker *FirecrackerMetrics `json:"firecracker,omitempty"`
	PageFaults  *PageFaultStats     `json:"page_faults,omitempty"`
	Errors      []string            `json:"errors,omitempty"`
}

// Collect reads everything src names. It never fails as a whole: a VMM
// that just exited still yields its Firecracker counters, and each part
// that could not be read is reported in Stats.Errors.
func Collect(src Source) Stats {
	st := Stats{VM: src.VM, Backend: src.Backend, Time: time.Now()}
	fail := func(what string, err error) {
		st.Errors = append(st.Errors, what+": "+err.Error())
	}
	pidOK := src.Pid > 0
	if pidOK && src.StartTime != 0 && !sameProcess(src.Pid, src.StartTime) {
		pidOK = false
		fail("process", errors.New("pid "+strconv.Itoa(src.Pid)+" is no longer the VMM"))
	}
	if pidOK {
		st.Pid = src.Pid
	}
	if src.Cgroup != nil {
		if c, err := ReadCgroupCPU(*src.Cgroup); err == nil {
			st.CPU = &c
		} else if !pidOK {
			fail("cgroup cpu", err)
		}
		if m, err := ReadCgroupMemory(*src.Cgroup); err == nil {
			st.Memory = &m
		} else if !pidOK {
			fail("cgroup memory", err)
		}
		if p, err := ReadCgroupPids(*src.Cgroup); err == nil {
			st.Pids = &p
		}
	}
	// Without a cgroup (or a controller in it) the process itself is
	// the next best account.
	if pidOK {
		if st.CPU == nil {
			if c, err := ReadProcessCPU(src.Pid); err == nil {
				st.CPU = &c
			} else {
				fail("process cpu", err)
			}
		}
		if st.Memory == nil {
			if m, err := ReadProcessMemory(src.Pid); err == nil {
				st.Memory = &m
			} else {
				fail("process memory", err)
			}
		}
		if b, err := ReadProcessIO(src.Pid); err == nil {
			st.Block = &b
		} else {
			fail("block io", err)
		}
	}
	if len(src.TAPs) > 0 {
		n, err := ReadNetStats(src.NetNS, src.TAPs)
		st.Net = n
		if err != nil {
			fail("net", err)
		}
	}
	if src.Firecracker != nil {
		fc := src.Firecracker.Snapshot()
		st.Firecracker = &fc
	}
	if src.PageFaults != nil {
		if pf, err := src.PageFaults(); err == nil {
			st.PageFaults = &pf
		} else {
			fail("page faults", err)
		}
	}
	return st
}

// sameProcess reports whether pid still has the given start time.
func sameProcess(pid int, start uint64) bool {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 20 {
		return false
	}
	v, err := strconv.ParseUint(string(f[19]), 10, 64)
	return err == nil && v == start
}
