package fcsim

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

func (s *Sim) action(_ map[string]string, body []byte) (any, error) {
	var a struct {
		ActionType string `json:"action_type"`
	}
	if err := decode(body, &a); err != nil {
		return nil, err
	}
	switch a.ActionType {
	case "FlushMetrics":
		// Without a metrics destination Firecracker has nothing to
		// flush and still answers 204.
		s.flushMetricsLocked()
		return nil, nil
	case "InstanceStart":
		return nil, s.instanceStart()
	case "SendCtrlAltDel":
		if err := s.postBoot(); err != nil {
			return nil, err
		}
		// The guest (booted with reboot=k) resets on Ctrl+Alt+Del and
		// Firecracker exits on the reset. A paused guest acts on it
		// once resumed.
		s.ctrlAltDel = true
		s.metrics.inc("i8042.write_count")
		s.logf(3, "fc_api", "Sending CTRL+ALT+DEL to the guest")
		return nil, nil
	}
	return nil, faultf("Unknown action %q.", a.ActionType)
}

// instanceStart boots the simulated guest: real guest memory is mapped,
// the guest writes its header and pattern pages and prints boot lines on
// the serial console, and the optional guest process starts.
func (s *Sim) instanceStart() error {
	if s.booted {
		return faultf(msgPostBoot)
	}
	if s.boot == nil {
		return faultf("Cannot start microvm without kernel configuration.")
	}
	if err := checkReadable(s.boot.KernelImagePath); err != nil {
		return faultf("The kernel file cannot be opened: %v", err)
	}
	hasRoot := false
	for _, d := range s.drives {
		hasRoot = hasRoot || d.IsRootDevice
	}
	for _, p := range s.pmem {
		hasRoot = hasRoot || p.RootDevice
	}
	if !hasRoot && s.boot.InitrdPath == nil {
		return faultf("Cannot start microvm without a root block device or an initrd.")
	}
	mem, err := newAnonMemory(s.machine.MemSizeMib<<20, s.machine.HugePages)
	if err != nil {
		return faultf("Cannot create guest memory: %v", err)
	}
	s.mem = mem
	s.trackDirty = s.machine.TrackDirtyPages
	start := time.Now()
	mem.guestBoot(s.opts.ID)
	s.booted = true
	s.state = stateRunning
	s.bootedAt = time.Now()
	s.bootConsole()
	if s.opts.BootTimer {
		s.logf(3, "fc_vcpu 0", "Guest-boot-time = %6d us %4d ms", time.Since(start).Microseconds(), time.Since(start).Milliseconds())
	}
	if err := s.startGuestProcess(); err != nil {
		s.log.Error("guest process", "err", err)
		s.console.printf("fcsim: guest process failed to start: %v\n", err)
	}
	s.log.Info("guest booted", "mem_mib", s.machine.MemSizeMib, "vcpus", s.machine.VcpuCount)
	return nil
}

func (s *Sim) bootConsole() {
	args := ""
	if s.boot != nil && s.boot.BootArgs != nil {
		args = *s.boot.BootArgs
	}
	c := s.console
	c.printf("[    0.000000] Linux version 6.1.0-fcsim (hearth-fcsim) #1 SMP PREEMPT_DYNAMIC\n")
	c.printf("[    0.000000] Command line: %s\n", args)
	c.printf("[    0.000000] Memory: %dK available\n", s.machine.MemSizeMib*1024)
	for i, d := range s.drives {
		c.printf("[    0.010000] virtio_blk virtio%d: [vd%c] attached drive %s\n", i, 'a'+i, d.DriveID)
	}
	for i, n := range s.nets {
		c.printf("[    0.011000] virtio_net virtio%d: eth%d attached (%s)\n", len(s.drives)+i, i, n.IfaceID)
	}
	if s.vsock != nil {
		c.printf("[    0.012000] NET: Registered PF_VSOCK protocol family (cid %d)\n", s.vsock.cfg.GuestCID)
	}
	c.printf("[    0.050000] Run /sbin/init as init process\n")
	c.printf("fcsim: guest %s booted\n", s.opts.ID)
	s.metrics.add("uart.write_count", 6)
}

func (s *Sim) patchVM(_ map[string]string, body []byte) (any, error) {
	var v struct {
		State string `json:"state"`
	}
	if err := decode(body, &v); err != nil {
		return nil, err
	}
	if err := s.postBoot(); err != nil {
		return nil, err
	}
	start := time.Now()
	switch v.State {
	case "Paused":
		s.pauseLocked()
		s.metrics.set("latencies_us.pause_vm", uint64(time.Since(start).Microseconds()))
	case "Resumed":
		s.resumeLocked()
		s.metrics.set("latencies_us.resume_vm", uint64(time.Since(start).Microseconds()))
	}
	return nil, nil
}

func (s *Sim) pauseLocked() {
	if s.state == statePaused {
		return
	}
	s.state = statePaused
	if s.guest != nil {
		s.guest.pause()
	}
	s.logf(3, "fc_api", "The microVM is paused")
}

func (s *Sim) resumeLocked() {
	if s.state == stateRunning {
		return
	}
	s.state = stateRunning
	if s.guest == nil {
		if err := s.startGuestProcess(); err != nil {
			s.log.Error("guest process", "err", err)
		}
	} else {
		s.guest.resume()
	}
	if s.vsock != nil {
		s.vsock.wake()
	}
	s.logf(3, "fc_api", "The microVM is resumed")
}

// applyConfigFile applies a --config-file document through the same
// handlers as the API, in Firecracker's order, then boots the VM.
func (s *Sim) applyConfigFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config file: %w", err)
	}
	if err := s.spec.ValidateDefinition("FullVmConfiguration", data); err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	type step struct{ key, method, path string }
	single := []step{
		{"logger", "PUT", "/logger"},
		{"metrics", "PUT", "/metrics"},
		{"machine-config", "PUT", "/machine-config"},
		{"cpu-config", "PUT", "/cpu-config"},
		{"boot-source", "PUT", "/boot-source"},
	}
	call := func(method, path string, body []byte) error {
		if _, err := s.handle(method, path, body); err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		return nil
	}
	for _, st := range single {
		if b, ok := raw[st.key]; ok && string(b) != "null" {
			if err := call(st.method, st.path, b); err != nil {
				return err
			}
		}
	}
	lists := []struct{ key, prefix, idField string }{
		{"drives", "/drives/", "drive_id"},
		{"network-interfaces", "/network-interfaces/", "iface_id"},
		{"pmem", "/pmem/", "id"},
	}
	for _, l := range lists {
		var items []json.RawMessage
		if b, ok := raw[l.key]; ok && string(b) != "null" {
			if err := json.Unmarshal(b, &items); err != nil {
				return fmt.Errorf("config file %s: %w", l.key, err)
			}
		}
		for _, it := range items {
			var idOnly map[string]any
			_ = json.Unmarshal(it, &idOnly)
			id, _ := idOnly[l.idField].(string)
			if err := call("PUT", l.prefix+id, it); err != nil {
				return err
			}
		}
	}
	rest := []step{
		{"vsock", "PUT", "/vsock"},
		{"balloon", "PUT", "/balloon"},
		{"mmds-config", "PUT", "/mmds/config"},
		{"entropy", "PUT", "/entropy"},
		{"memory-hotplug", "PUT", "/hotplug/memory"},
	}
	for _, st := range rest {
		if b, ok := raw[st.key]; ok && string(b) != "null" {
			if err := call(st.method, st.path, b); err != nil {
				return err
			}
		}
	}
	return call("PUT", "/actions", []byte(`{"action_type":"InstanceStart"}`))
}
