package fcsim

import (
	"encoding/json"
	"fmt"
	"hash/crc64"
	"os"
	"sync/atomic"
	"time"
)

// VMStateMagic and VMStateVersion identify the simulator's vmstate file.
// Firecracker's own format is a versioned binary blob with a CRC64; the
// simulator writes a JSON document with the same role and an embedded
// CRC64 so that corruption is detected the same way.
const (
	VMStateMagic   = "hearth-fcsim-vmstate"
	VMStateVersion = 1
)

// VMState is the vmstate file written by PUT /snapshot/create.
type VMState struct {
	Magic              string          `json:"magic"`
	Version            int             `json:"version"`
	FirecrackerVersion string          `json:"firecracker_version"`
	VMID               string          `json:"vm_id"`
	CreatedAt          time.Time       `json:"created_at"`
	SnapshotType       string          `json:"snapshot_type"`
	Config             json.RawMessage `json:"config"` // fullConfig without logger/metrics
	Memory             VMStateMemory   `json:"memory"`
	Guest              VMStateGuest    `json:"guest"`
	// CRC64 (ECMA) of the document with this field set to 0.
	CRC64 uint64 `json:"crc64"`
}

// VMStateMemory describes the guest memory the memory file holds.
type VMStateMemory struct {
	SizeBytes uint64       `json:"size_bytes"`
	PageSize  uint64       `json:"page_size"`
	Regions   []*memRegion `json:"regions"`
	Digest    memDigest    `json:"digest"`
	DiffPages *[]uint64    `json:"diff_pages,omitempty"` // pages a Diff file holds
	File      VMStateFiles `json:"file"`
}

// VMStateFiles records where the snapshot's memory was written.
type VMStateFiles struct {
	MemFilePath  string `json:"mem_file_path"`
	PagesWritten int    `json:"pages_written"`
}

// VMStateGuest is what the simulated guest had written.
type VMStateGuest struct {
	BootID  string `json:"boot_id"`
	Counter uint64 `json:"counter"`
}

var crcTable = crc64.MakeTable(crc64.ECMA)

func encodeVMState(st *VMState) ([]byte, error) {
	st.CRC64 = 0
	b, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	st.CRC64 = crc64.Checksum(b, crcTable)
	return json.MarshalIndent(st, "", "  ")
}

func decodeVMState(data []byte) (*VMState, error) {
	var st VMState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("invalid vmstate: %w", err)
	}
	if st.Magic != VMStateMagic {
		return nil, fmt.Errorf("invalid vmstate: bad magic %q", st.Magic)
	}
	if st.Version != VMStateVersion {
		return nil, fmt.Errorf("unsupported vmstate version %d (want %d)", st.Version, VMStateVersion)
	}
	want := st.CRC64
	st.CRC64 = 0
	b, err := json.Marshal(&st)
	if err != nil {
		return nil, err
	}
	if got := crc64.Checksum(b, crcTable); got != want {
		return nil, fmt.Errorf("invalid vmstate: CRC64 mismatch (file %#x, computed %#x)", want, got)
	}
	st.CRC64 = want
	return &st, nil
}

func (s *Sim) createSnapshot(_ map[string]string, body []byte) (any, error) {
	var p snapshotCreateParams
	if err := decode(body, &p); err != nil {
		return nil, err
	}
	if err := s.postBoot(); err != nil {
		return nil, err
	}
	if s.state != statePaused {
		return nil, faultf("Cannot create a snapshot: the microVM is not paused. Pause it first (PATCH /vm).")
	}
	if p.SnapshotType == "" {
		p.SnapshotType = "Full"
	}
	start := time.Now()
	diff := p.SnapshotType == "Diff"
	mem := s.mem

	// The vsock device is reset on snapshot: open connections close.
	if s.vsock != nil {
		s.vsock.reset()
	}

	var selected func(uint64) bool
	var diffPages []uint64
	if diff {
		if s.trackDirty {
			selected = mem.isDirty
		} else {
			// Without dirty-page tracking Firecracker picks the
			// pages with mincore(2).
			resident, err := mem.residentPages()
			if err != nil {
				return nil, faultf("Cannot create a diff snapshot: %v", err)
			}
			selected = func(i uint64) bool { return resident[i] }
		}
		diffPages = []uint64{}
		for i := uint64(0); i < mem.pages(); i++ {
			if selected(i) {
				diffPages = append(diffPages, i)
			}
		}
	}

	id, counter, _ := mem.guestHeader()
	st := &VMState{
		Magic:              VMStateMagic,
		Version:            VMStateVersion,
		FirecrackerVersion: Version(),
		VMID:               s.opts.ID,
		CreatedAt:          time.Now().UTC(),
		SnapshotType:       p.SnapshotType,
		Memory: VMStateMemory{
			SizeBytes: mem.size,
			PageSize:  mem.pageSize,
			Regions:   mem.regions,
			Digest:    mem.digest(),
			File:      VMStateFiles{MemFilePath: p.MemFilePath},
		},
		Guest: VMStateGuest{BootID: id, Counter: counter},
	}
	if diff {
		st.Memory.DiffPages = &diffPages
	}
	cfg, err := json.Marshal(s.fullConfigLocked(false))
	if err != nil {
		return nil, faultf("Cannot save the microVM state: %v", err)
	}
	st.Config = cfg

	failAfter := -1
	if s.faults.enospc {
		// A disk that fills up half way through the memory file.
		failAfter = len(st.Memory.Digest.NonZeroPages) / 2
		if diff {
			failAfter = len(diffPages) / 2
		}
	}
	written, err := mem.writeMemoryFile(p.MemFilePath, selected, diff, failAfter)
	if err != nil {
		s.log.Error("snapshot memory file", "path", p.MemFilePath, "err", err)
		return nil, faultf("Cannot create the memory snapshot file %s: %v", p.MemFilePath, osErr(err))
	}
	st.Memory.File.PagesWritten = written
	data, err := encodeVMState(st)
	if err != nil {
		return nil, faultf("Cannot save the microVM state: %v", err)
	}
	if err := writeFileSync(p.SnapshotPath, data); err != nil {
		return nil, faultf("Cannot save the microVM state to %s: %v", p.SnapshotPath, osErr(err))
	}
	// Both snapshot kinds reset dirty tracking: the next Diff holds what
	// changed after this snapshot.
	mem.clearDirty()
	s.metrics.add("fcsim.snapshot_pages_written", uint64(written))
	lat := uint64(time.Since(start).Microseconds())
	if diff {
		s.metrics.set("latencies_us.diff_create_snapshot", lat)
	} else {
		s.metrics.set("latencies_us.full_create_snapshot", lat)
	}
	s.log.Info("snapshot created", "type", p.SnapshotType, "vmstate", p.SnapshotPath, "mem", p.MemFilePath, "pages", written)
	return nil, nil
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// loadFailed is a snapshot-load failure: Firecracker answers 400 and then
// ends the process, since the VMM may be half restored.
func loadFailed(format string, args ...any) *apiError {
	e := faultf("Load snapshot error: "+format, args...)
	e.exitCode = exitGeneric
	return e
}

func (s *Sim) loadSnapshot(_ map[string]string, body []byte) (any, error) {
	var p snapshotLoadParams
	if err := decode(body, &p); err != nil {
		return nil, err
	}
	if s.booted || s.bootSpecific {
		return nil, faultf(msgLoadNotAllowed)
	}
	switch {
	case p.MemFilePath != nil && p.MemBackend != nil:
		return nil, faultf("%stoo many fields: either `mem_backend` or `mem_file_path` exclusively is required.", msgDeserialize)
	case p.MemFilePath == nil && p.MemBackend == nil:
		return nil, faultf("%smissing field: either `mem_backend` or `mem_file_path` is required.", msgDeserialize)
	}
	backend := memoryBackend{BackendType: "File"}
	if p.MemBackend != nil {
		backend = *p.MemBackend
	} else {
		backend.BackendPath = *p.MemFilePath
		s.metrics.inc("deprecated_api.deprecated_http_api_calls")
	}
	if p.EnableDiffSnapshots != nil {
		s.metrics.inc("deprecated_api.deprecated_http_api_calls")
	}
	if p.HugePages == "2M" && backend.BackendType == "File" {
		return nil, faultf("Load snapshot error: explicit 2M huge pages require the Uffd memory backend.")
	}
	start := time.Now()

	data, err := os.ReadFile(p.SnapshotPath)
	if err != nil {
		return nil, loadFailed("cannot open the snapshot file %s: %v", p.SnapshotPath, osErr(err))
	}
	st, err := decodeVMState(data)
	if err != nil {
		return nil, loadFailed("%v", err)
	}
	var cfg fullConfig
	if err := json.Unmarshal(st.Config, &cfg); err != nil {
		return nil, loadFailed("invalid vmstate configuration: %v", err)
	}

	// Network overrides must name interfaces the snapshot has.
	for _, o := range p.NetworkOverrides {
		found := false
		for i := range cfg.NetworkInterfaces {
			if cfg.NetworkInterfaces[i].IfaceID == o.IfaceID {
				cfg.NetworkInterfaces[i].HostDevName = o.HostDevName
				found = true
			}
		}
		if !found {
			return nil, faultf("Load snapshot error: invalid network override: no network interface with iface_id %q in the snapshot.", o.IfaceID)
		}
	}
	if p.VsockOverride != nil {
		if cfg.Vsock == nil {
			return nil, faultf("Load snapshot error: vsock_override given but the snapshot has no vsock device.")
		}
		cfg.Vsock.UdsPath = p.VsockOverride.UdsPath
	}
	// Block devices are reopened at their recorded paths.
	for _, d := range cfg.Drives {
		if d.PathOnHost == nil {
			continue
		}
		ro := d.IsReadOnly != nil && *d.IsReadOnly
		if err := checkWritable(*d.PathOnHost, ro); err != nil {
			return nil, loadFailed("cannot open block device %s backing file %s: %v", d.DriveID, *d.PathOnHost, err)
		}
	}

	hugePages := "None"
	if cfg.MachineConfig != nil {
		hugePages = cfg.MachineConfig.HugePages
	}
	if p.HugePages != "" && p.HugePages != "Snapshot" {
		hugePages = p.HugePages
	}
	var mem *guestMemory
	switch backend.BackendType {
	case "File":
		mem, err = newFileMemory(backend.BackendPath, st.Memory.SizeBytes, hugePages)
		if err != nil {
			return nil, loadFailed("%v", err)
		}
		if err := mem.verify(st.Memory.Digest); err != nil {
			mem.close()
			s.log.Error("restored memory does not match the snapshot", "err", err)
			return nil, loadFailed("%v", err)
		}
	case "Uffd":
		mem, err = s.uffdRestore(backend.BackendPath, st, hugePages)
		if err != nil {
			s.log.Error("uffd restore failed", "err", err)
			return nil, loadFailed("%v", err)
		}
	default:
		return nil, faultf("Load snapshot error: unknown memory backend %q.", backend.BackendType)
	}

	// Devices come back from the vmstate.
	if cfg.Vsock != nil {
		dev, err := newVsockDevice(s, *cfg.Vsock)
		if err != nil {
			mem.close()
			return nil, loadFailed("cannot restore the vsock device: %v", err)
		}
		s.vsock = dev
	}
	if cfg.MachineConfig != nil {
		s.machine = *cfg.MachineConfig
	}
	s.boot = cfg.BootSource
	s.drives = cfg.Drives
	s.nets = cfg.NetworkInterfaces
	s.balloon = cfg.Balloon
	s.cpuConfig = cfg.CPUConfig
	s.mmdsConfig = cfg.MmdsConfig
	s.entropy = cfg.Entropy
	s.memHotplug = cfg.MemoryHotplug
	s.pmem = cfg.Pmem
	for _, d := range s.drives {
		s.metrics.addGroup("block_"+d.DriveID, blockMetrics)
	}
	for _, n := range s.nets {
		s.metrics.addGroup("net_"+n.IfaceID, netMetrics)
	}
	// track_dirty_pages is not saved in a snapshot; only the load
	// request decides it.
	s.trackDirty = (p.TrackDirtyPages != nil && *p.TrackDirtyPages) || (p.EnableDiffSnapshots != nil && *p.EnableDiffSnapshots)
	s.machine.TrackDirtyPages = s.trackDirty
	mem.clearDirty()
	s.mem = mem
	s.booted = true
	s.restored = true
	s.state = statePaused
	s.metrics.set("latencies_us.load_snapshot", uint64(time.Since(start).Microseconds()))
	id, counter, _ := mem.guestHeader()
	s.console.printf("fcsim: guest %s restored from snapshot of %s (boot id %s, counter %d)\n", s.opts.ID, st.VMID, id, counter)
	s.log.Info("snapshot loaded", "vmstate", p.SnapshotPath, "backend", backend.BackendType, "from_vm", st.VMID)
	if p.ResumeVM {
		s.resumeLocked()
	}
	return nil, nil
}

// uffdRestore does what Firecracker does with mem_backend Uffd: anonymous
// guest memory registered with a fresh userfaultfd, the fd and the region
// layout sent to the handler at socketPath, then (the simulator's check)
// every page read back, which faults each page through the handler, and
// the contents compared with the snapshot.
func (s *Sim) uffdRestore(socketPath string, st *VMState, hugePages string) (*guestMemory, error) {
	mem, err := newAnonMemory(st.Memory.SizeBytes, hugePages)
	if err != nil {
		return nil, err
	}
	fd, _, err := NewUffd()
	if err != nil {
		mem.close()
		return nil, err
	}
	mem.uffd = fd
	for _, r := range mem.regions {
		if err := UffdRegister(fd, uint64(uintptrOf(r.data)), r.Size); err != nil {
			mem.close()
			return nil, err
		}
	}
	conn, err := SendUffdHandshake(socketPath, fd, mem.uffdRegions())
	if err != nil {
		mem.close()
		return nil, err
	}
	// Firecracker never writes to this socket again; keeping it open
	// lets the handler see our exit as EOF.
	mem.handlerConn = conn
	s.metrics.inc("fcsim.uffd_handshakes")

	var progress atomic.Uint64
	done := make(chan struct{})
	written := s.opts.UffdVerify == "written"
	go func() {
		defer close(done)
		if written {
			mem.touchPages(st.Memory.Digest.NonZeroPages, &progress)
		} else {
			mem.touchAll(&progress)
		}
	}()
	timer := time.NewTimer(s.opts.UffdTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		// Unregistering wakes the blocked reader (the rest of memory
		// then reads as zeros) so that the goroutine does not stay
		// stuck in a fault forever.
		for _, r := range mem.regions {
			_ = UffdUnregister(fd, uint64(uintptrOf(r.data)), r.Size)
		}
		<-done
		faulted := progress.Load()
		mem.close()
		return nil, fmt.Errorf("userfaultfd page-fault handler at %s did not serve guest memory within %s (%d pages faulted in)", socketPath, s.opts.UffdTimeout, faulted)
	}
	s.metrics.add("fcsim.uffd_pages_faulted", progress.Load())
	verify := mem.verify
	if written {
		verify = mem.verifyPages
	}
	if err := verify(st.Memory.Digest); err != nil {
		mem.close()
		return nil, fmt.Errorf("memory served by the uffd handler: %w", err)
	}
	return mem, nil
}
