package fcsim

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// metricsReader drains a metrics FIFO the way hearth does: the reader is
// open before the VMM opens the FIFO for writing.
func metricsReader(t *testing.T, path string) <-chan map[string]any {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	// O_RDWR keeps the open from blocking and the pipe from reporting
	// EOF between writers.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	lines := make(chan map[string]any, 16)
	go func() {
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				select {
				case lines <- m:
				default:
				}
			}
		}
	}()
	return lines
}

// TestColdBootSnapshotRestore drives a whole VM life the way hearth's
// Firecracker backend does: cold boot, pause, Full and Diff snapshots,
// resume, clean shutdown, then restores of the snapshot in new processes.
func TestColdBootSnapshotRestore(t *testing.T) {
	p := startSim(t, simConfig{args: []string{"--id", "vm-a"}})
	files := makeVMFiles(t, p.dir)
	metricsFifo := filepath.Join(p.dir, "metrics.fifo")
	metrics := metricsReader(t, metricsFifo)
	logFile := filepath.Join(p.dir, "fc.log")
	vsockPath := filepath.Join(p.dir, "v.sock")
	snapDir := shortDir(t)
	vmstate, memFile := filepath.Join(snapDir, "vmstate"), filepath.Join(snapDir, "mem")
	diffState, diffMem := filepath.Join(snapDir, "vmstate.diff"), filepath.Join(snapDir, "mem.diff")

	if got := p.state_(); got != "Not started" {
		t.Fatalf("state = %q", got)
	}
	calls := []struct{ method, path, body string }{
		{"PUT", "/logger", fmt.Sprintf(`{"log_path":%q,"level":"Info","show_level":true}`, logFile)},
		{"PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q,"emit_id":true,"properties":{"tenant":"t1"}}`, metricsFifo)},
		{"PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":64,"smt":false,"track_dirty_pages":true}`},
		{"PUT", "/boot-source", files.bootSource()},
		{"PUT", "/drives/rootfs", files.rootDrive()},
		{"PUT", "/drives/data", fmt.Sprintf(`{"drive_id":"data","path_on_host":%q,"is_root_device":false,"is_read_only":true,"rate_limiter":{"bandwidth":{"size":1048576,"refill_time":100}}}`, files.data)},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"hth-tap0","guest_mac":"06:00:ac:10:00:02"}`},
		{"PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, vsockPath)},
		{"PUT", "/mmds/config", `{"network_interfaces":["eth0"],"version":"V2"}`},
		{"PUT", "/mmds", `{"latest":{"meta-data":{"id":"vm-a"}}}`},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
	}
	for _, c := range calls {
		p.must(c.method, c.path, c.body)
	}
	if _, err := os.Stat(vsockPath); err != nil {
		t.Fatalf("vsock socket not bound: %v", err)
	}
	waitFor(t, "boot message on the console", 5*time.Second, func() bool {
		return strings.Contains(p.stdout.String(), "fcsim: guest vm-a booted")
	})
	if got := p.state_(); got != "Running" {
		t.Fatalf("state = %q, want Running", got)
	}
	var mc machineConfig
	if err := json.Unmarshal(p.must("GET", "/machine-config", ""), &mc); err != nil || mc.MemSizeMib != 64 || mc.VcpuCount != 2 || !mc.TrackDirtyPages {
		t.Fatalf("GET /machine-config = %+v (%v)", mc, err)
	}
	p.must("PATCH", "/drives/data", `{"drive_id":"data","rate_limiter":{"ops":{"size":100,"refill_time":1000}}}`)
	p.must("PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0","rx_rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}`)
	time.Sleep(250 * time.Millisecond) // let the guest tick

	// Full snapshot of the paused VM.
	p.must("PATCH", "/vm", `{"state":"Paused"}`)
	if got := p.state_(); got != "Paused" {
		t.Fatalf("state = %q, want Paused", got)
	}
	p.must("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_type":"Full","snapshot_path":%q,"mem_file_path":%q}`, vmstate, memFile))
	st, err := os.Stat(memFile)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 64<<20 {
		t.Fatalf("memory file is %d bytes, want %d", st.Size(), 64<<20)
	}
	if blocks := st.Sys().(*syscall.Stat_t).Blocks * 512; blocks >= 64<<20 {
		t.Errorf("memory file is not sparse: %d bytes allocated", blocks)
	}
	data, err := os.ReadFile(vmstate)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := decodeVMState(data)
	if err != nil {
		t.Fatal(err)
	}
	if vs.VMID != "vm-a" || vs.SnapshotType != "Full" || vs.Memory.SizeBytes != 64<<20 || vs.Guest.BootID != "vm-a" || vs.Guest.Counter == 0 {
		t.Fatalf("vmstate = %+v", vs.Guest)
	}

	// Resume, let the guest dirty a few pages, then a Diff snapshot
	// holds only those.
	p.must("PATCH", "/vm", `{"state":"Resumed"}`)
	time.Sleep(250 * time.Millisecond)
	p.must("PATCH", "/vm", `{"state":"Paused"}`)
	p.must("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_type":"Diff","snapshot_path":%q,"mem_file_path":%q}`, diffState, diffMem))
	data, err = os.ReadFile(diffState)
	if err != nil {
		t.Fatal(err)
	}
	dvs, err := decodeVMState(data)
	if err != nil {
		t.Fatal(err)
	}
	if dvs.Memory.DiffPages == nil || len(*dvs.Memory.DiffPages) == 0 || len(*dvs.Memory.DiffPages) > 20 {
		t.Fatalf("diff snapshot pages = %v, want the few pages dirtied since the full snapshot", dvs.Memory.DiffPages)
	}
	p.must("PATCH", "/vm", `{"state":"Resumed"}`)

	// Metrics: FlushMetrics writes one Firecracker-format line.
	p.must("PUT", "/actions", `{"action_type":"FlushMetrics"}`)
	var line map[string]any
	waitFor(t, "a metrics line", 5*time.Second, func() bool {
		select {
		case line = <-metrics:
			return true
		default:
			return false
		}
	})
	for _, k := range []string{"utc_timestamp_ms", "api_server", "block", "block_rootfs", "net", "net_eth0", "vcpu", "vmm", "vsock", "latencies_us", "put_api_requests", "fcsim"} {
		if _, ok := line[k]; !ok {
			t.Errorf("metrics line has no %q", k)
		}
	}
	if line["id"] != "vm-a" {
		t.Errorf("metrics id = %v", line["id"])
	}
	if put, _ := line["put_api_requests"].(map[string]any); put == nil || put["actions_count"].(float64) < 1 || put["drive_count"].(float64) != 2 {
		t.Errorf("put_api_requests = %v", line["put_api_requests"])
	}

	// Ctrl+Alt+Del: the guest resets and Firecracker exits 0.
	p.must("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	if code := p.waitExit(5 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if _, err := os.Stat(p.sock); !os.IsNotExist(err) {
		t.Errorf("API socket left behind: %v", err)
	}
	logData, _ := os.ReadFile(logFile)
	if !strings.Contains(string(logData), "[vm-a:fc_api:INFO]") {
		t.Errorf("log file lacks Firecracker-format lines:\n%s", logData)
	}

	// The request log holds the exact call sequence.
	var got []string
	for _, l := range readRequestLog(t, p.reqlog) {
		if l.Method != "GET" {
			got = append(got, fmt.Sprintf("%s %s %d", l.Method, l.Path, l.Status))
		}
	}
	want := []string{}
	for _, c := range calls {
		want = append(want, c.method+" "+c.path+" 204")
	}
	if strings.Join(got[:len(want)], "\n") != strings.Join(want, "\n") {
		t.Fatalf("request log:\n%s\nwant prefix:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	t.Run("restore/File", func(t *testing.T) {
		q := startSim(t, simConfig{args: []string{"--id", "vm-b"}})
		newVsock := filepath.Join(q.dir, "v2.sock")
		q.must("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q},"resume_vm":false,"track_dirty_pages":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"hth-tap9"}],"vsock_override":{"uds_path":%q}}`, vmstate, memFile, newVsock))
		if got := q.state_(); got != "Paused" {
			t.Fatalf("state after load = %q, want Paused", got)
		}
		var cfg fullConfig
		if err := json.Unmarshal(q.must("GET", "/vm/config", ""), &cfg); err != nil {
			t.Fatal(err)
		}
		if len(cfg.NetworkInterfaces) != 1 || cfg.NetworkInterfaces[0].HostDevName != "hth-tap9" {
			t.Errorf("network override not applied: %+v", cfg.NetworkInterfaces)
		}
		if cfg.Vsock == nil || cfg.Vsock.UdsPath != newVsock {
			t.Errorf("vsock override not applied: %+v", cfg.Vsock)
		}
		if len(cfg.Drives) != 2 || cfg.MachineConfig.MemSizeMib != 64 {
			t.Errorf("restored config = %+v", cfg)
		}
		if _, err := os.Stat(newVsock); err != nil {
			t.Errorf("vsock not listening at the override path: %v", err)
		}
		// A loaded VM is booted: pre-boot calls are refused.
		q.fault("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`, "not supported after starting")
		q.must("PATCH", "/vm", `{"state":"Resumed"}`)
		if got := q.state_(); got != "Running" {
			t.Fatalf("state = %q", got)
		}
		if !strings.Contains(q.stdout.String(), "restored from snapshot of vm-a") {
			t.Errorf("console: %s", q.stdout.String())
		}
	})

	t.Run("restore/deprecated mem_file_path", func(t *testing.T) {
		q := startSim(t, simConfig{})
		q.must("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"resume_vm":true,"vsock_override":{"uds_path":%q}}`, vmstate, memFile, filepath.Join(q.dir, "v.sock")))
		if got := q.state_(); got != "Running" {
			t.Fatalf("state = %q", got)
		}
	})

	t.Run("restore/unknown network override", func(t *testing.T) {
		q := startSim(t, simConfig{})
		q.fault("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"network_overrides":[{"iface_id":"eth9","host_dev_name":"x"}]}`, vmstate, memFile), "eth9")
	})

	t.Run("restore/corrupt memory file", func(t *testing.T) {
		bad := filepath.Join(shortDir(t), "mem")
		if err := os.WriteFile(bad, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(bad, 64<<20); err != nil {
			t.Fatal(err)
		}
		q := startSim(t, simConfig{})
		q.fault("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"vsock_override":{"uds_path":%q}}`, vmstate, bad, filepath.Join(q.dir, "v.sock")), "differs from the snapshot")
		// Firecracker ends a process whose load failed.
		if code := q.waitExit(5 * time.Second); code != 1 {
			t.Fatalf("exit code %d, want 1", code)
		}
	})

	t.Run("restore/Uffd", func(t *testing.T) {
		requireUffd(t)
		q := startSim(t, simConfig{args: []string{"--id", "vm-c"}})
		uffdSock := filepath.Join(q.dir, "uffd.sock")
		srv := startPageFaultServer(t, uffdSock, memFile, serveFromFile)
		q.must("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"Uffd","backend_path":%q},"resume_vm":true,"vsock_override":{"uds_path":%q}}`, vmstate, uffdSock, filepath.Join(q.dir, "v.sock")))
		if got := q.state_(); got != "Running" {
			t.Fatalf("state = %q", got)
		}
		regions, faults := srv.stats()
		if len(regions) != 1 || regions[0].Size != 64<<20 || regions[0].PageSize != 4096 || regions[0].PageSizeKiB != 4 || regions[0].Offset != 0 || regions[0].BaseHostVirtAddr == 0 {
			t.Fatalf("regions = %+v", regions)
		}
		if faults != 64<<20/4096 {
			t.Fatalf("handler served %d faults, want one per page (%d)", faults, 64<<20/4096)
		}
		if peer := srv.peerPid(); peer != q.cmd.Process.Pid {
			t.Errorf("SO_PEERCRED pid = %d, want the VMM's pid %d", peer, q.cmd.Process.Pid)
		}
	})

	t.Run("restore/Uffd lazy", func(t *testing.T) {
		requireUffd(t)
		q := startSim(t, simConfig{env: []string{EnvUffdVerify + "=written"}})
		uffdSock := filepath.Join(q.dir, "uffd.sock")
		srv := startPageFaultServer(t, uffdSock, memFile, serveFromFile)
		q.must("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"Uffd","backend_path":%q},"vsock_override":{"uds_path":%q}}`, vmstate, uffdSock, filepath.Join(q.dir, "v.sock")))
		// Only the pages the guest wrote were faulted in.
		if _, faults := srv.stats(); faults != len(vs.Memory.Digest.NonZeroPages) {
			t.Fatalf("handler served %d faults, want %d", faults, len(vs.Memory.Digest.NonZeroPages))
		}
	})

	t.Run("restore/Uffd handler serves wrong pages", func(t *testing.T) {
		requireUffd(t)
		q := startSim(t, simConfig{})
		uffdSock := filepath.Join(q.dir, "uffd.sock")
		startPageFaultServer(t, uffdSock, memFile, serveZeros)
		q.fault("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"Uffd","backend_path":%q},"vsock_override":{"uds_path":%q}}`, vmstate, uffdSock, filepath.Join(q.dir, "v.sock")), "memory served by the uffd handler")
		if code := q.waitExit(5 * time.Second); code != 1 {
			t.Fatalf("exit code %d, want 1", code)
		}
	})

	t.Run("restore/Uffd handler never serves", func(t *testing.T) {
		requireUffd(t)
		q := startSim(t, simConfig{env: []string{EnvUffdTimeout + "=500ms"}})
		uffdSock := filepath.Join(q.dir, "uffd.sock")
		startPageFaultServer(t, uffdSock, memFile, serveNothing)
		start := time.Now()
		q.fault("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"Uffd","backend_path":%q},"vsock_override":{"uds_path":%q}}`, vmstate, uffdSock, filepath.Join(q.dir, "v.sock")), "did not serve guest memory within 500ms")
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("load took %s", d)
		}
		q.waitExit(5 * time.Second)
	})

	t.Run("restore/Uffd without handler", func(t *testing.T) {
		requireUffd(t)
		q := startSim(t, simConfig{})
		q.fault("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"Uffd","backend_path":%q}}`, vmstate, filepath.Join(q.dir, "nobody.sock")), "connect to uffd handler")
	})
}

// TestVsockConnect checks hybrid vsock forwarding to a test listener and
// to a guest agent run through HEARTH_FCSIM_GUEST_CMD.
func TestVsockConnect(t *testing.T) {
	guestDir := shortDir(t)
	p := startSim(t, simConfig{env: []string{
		EnvGuestVsockDir + "=" + guestDir,
		EnvGuestCmd + "=" + fmt.Sprintf(`[%q]`, os.Args[0]),
		"FCSIM_TEST_GUEST_AGENT=1",
	}, args: []string{"--id", "vm-v"}})
	files := makeVMFiles(t, p.dir)
	uds := filepath.Join(p.dir, "v.sock")
	p.must("PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, uds))

	// A listener the test owns, on port 1024.
	ln, err := net.Listen("unix", filepath.Join(guestDir, "1024.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				fmt.Fprintf(c, "echo:%s", buf[:n])
			}()
		}
	}()

	// A CONNECT sent before the guest runs waits for it.
	early, err := net.Dial("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	fmt.Fprintf(early, "CONNECT 1024\nearly")

	p.bootMinimal(files, 32)

	connect := func(port int, payload string) (string, string, error) {
		c, err := net.Dial("unix", uds)
		if err != nil {
			return "", "", err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		// Send the payload together with CONNECT: bytes after the
		// newline must reach the guest too.
		fmt.Fprintf(c, "CONNECT %d\n%s", port, payload)
		br := bufio.NewReader(c)
		ok, err := br.ReadString('\n')
		if err != nil {
			return "", "", err
		}
		buf := make([]byte, 128)
		n, _ := br.Read(buf)
		return ok, string(buf[:n]), nil
	}

	ok, reply, err := connect(1024, "hello")
	if err != nil || !strings.HasPrefix(ok, "OK ") || reply != "echo:hello" {
		t.Fatalf("CONNECT 1024: ok=%q reply=%q err=%v", ok, reply, err)
	}
	br := bufio.NewReader(early)
	_ = early.SetDeadline(time.Now().Add(5 * time.Second))
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "OK 107374182") {
		t.Fatalf("early CONNECT: %q %v", line, err)
	}

	// Nobody listens on port 9: the connection is closed without reply.
	if ok, _, err := connect(9, ""); err == nil || ok != "" {
		t.Fatalf("CONNECT 9: got %q, %v; want the connection closed", ok, err)
	}

	// The guest agent process (the test binary) answers on port 52.
	var agentReply string
	waitFor(t, "the guest agent", 5*time.Second, func() bool {
		_, r, err := connect(52, "ping")
		agentReply = r
		return err == nil && r != ""
	})
	if !strings.HasPrefix(agentReply, "agent:vm-v:") {
		t.Fatalf("agent reply %q", agentReply)
	}

	// Pausing the VM stops the guest process.
	p.must("PATCH", "/vm", `{"state":"Paused"}`)
	pid := guestPid(t, p)
	waitFor(t, "guest process stopped", 5*time.Second, func() bool { return procState(pid) == "T" })
	p.must("PATCH", "/vm", `{"state":"Resumed"}`)
	waitFor(t, "guest process running", 5*time.Second, func() bool { return procState(pid) != "T" })

	// SIGTERM: clean exit, and the guest process dies with the VMM.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.waitExit(5 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	waitFor(t, "guest process gone", 5*time.Second, func() bool { s := procState(pid); return s == "" || s == "Z" })
}

// guestPid finds the guest agent: the simulator's only child.
func guestPid(t *testing.T, p *simProc) int {
	t.Helper()
	var children []string
	for _, task := range listTasks(p.cmd.Process.Pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.cmd.Process.Pid, task))
		if err != nil {
			t.Skipf("cannot list children: %v", err)
		}
		children = append(children, strings.Fields(string(b))...)
	}
	if len(children) != 1 {
		t.Fatalf("want exactly one guest process, found %v", children)
	}
	pid, err := strconv.Atoi(children[0])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func listTasks(pid int) []int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var out []int
	for _, e := range ents {
		var n int
		if _, err := fmt.Sscan(e.Name(), &n); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// procState is the state letter from /proc/<pid>/stat ("" if gone).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndex(s, ")")
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// TestConfigFileNoAPI boots from --config-file without an API socket.
func TestConfigFileNoAPI(t *testing.T) {
	dir := shortDir(t)
	files := makeVMFiles(t, dir)
	cfg := fmt.Sprintf(`{"boot-source":%s,"drives":[%s],"machine-config":{"vcpu_count":1,"mem_size_mib":16},"network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap0"}]}`, files.bootSource(), files.rootDrive())
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startSim(t, simConfig{args: []string{"--no-api", "--config-file", path, "--id", "cfg"}, noWait: true, noSocket: true})
	waitFor(t, "boot from the config file", 5*time.Second, func() bool {
		return strings.Contains(p.stdout.String(), "fcsim: guest cfg booted")
	})
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.waitExit(5 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}

	t.Run("invalid config file", func(t *testing.T) {
		bad := filepath.Join(dir, "bad.json")
		if err := os.WriteFile(bad, []byte(`{"machine-config":{"vcpu_count":1,"mem_size_mib":16,"bogus":1}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		q := startSim(t, simConfig{args: []string{"--config-file", bad}, noWait: true})
		if code := q.waitExit(5 * time.Second); code != exitBadConfiguration {
			t.Fatalf("exit %d, want %d", code, exitBadConfiguration)
		}
		if !strings.Contains(q.stderr.String(), "bogus") {
			t.Errorf("stderr does not name the bad field: %s", q.stderr.String())
		}
	})
}

func TestVersionFlag(t *testing.T) {
	out, err := runCmd(simBin, "--version")
	if err != nil || !strings.Contains(out, "Firecracker v1.17.0-dev") {
		t.Fatalf("--version: %q %v", out, err)
	}
}

// TestMetricsFIFO covers the periodic flush and a FIFO nobody reads.
func TestMetricsFIFO(t *testing.T) {
	t.Run("periodic", func(t *testing.T) {
		p := startSim(t, simConfig{env: []string{EnvMetricsInterval + "=50ms"}})
		fifo := filepath.Join(p.dir, "m.fifo")
		lines := metricsReader(t, fifo)
		p.must("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, fifo))
		p.must("GET", "/machine-config", "")
		deadline := time.After(5 * time.Second)
		var got []map[string]any
		for len(got) < 3 {
			select {
			case l := <-lines:
				got = append(got, l)
			case <-deadline:
				t.Fatalf("only %d periodic metrics lines", len(got))
			}
		}
		// Counters are per-interval deltas: the one GET shows up once.
		total := 0.0
		for _, l := range got {
			total += l["get_api_requests"].(map[string]any)["machine_cfg_count"].(float64)
		}
		if total != 1 {
			t.Fatalf("machine_cfg_count summed over lines = %v, want 1", total)
		}
	})
	t.Run("no reader", func(t *testing.T) {
		p := startSim(t, simConfig{env: []string{EnvFifoOpenTimeout + "=200ms"}})
		fifo := filepath.Join(p.dir, "m.fifo")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		p.fault("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, fifo), "No such device or address")
		// The refusal leaves metrics unconfigured, so a retry with a
		// reader works.
		f, err := os.OpenFile(fifo, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		p.must("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, fifo))
	})
}

// TestDiffWithoutTracking: Firecracker 1.17 takes Diff snapshots without
// dirty-page tracking by asking mincore(2) which pages are resident.
func TestDiffWithoutTracking(t *testing.T) {
	p := startSim(t, simConfig{})
	p.bootMinimal(makeVMFiles(t, p.dir), 16)
	p.must("PATCH", "/vm", `{"state":"Paused"}`)
	state, mem := filepath.Join(p.dir, "vmstate"), filepath.Join(p.dir, "mem")
	p.must("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_type":"Diff","snapshot_path":%q,"mem_file_path":%q}`, state, mem))
	data, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := decodeVMState(data)
	if err != nil {
		t.Fatal(err)
	}
	// At least the header and pattern pages the guest wrote are resident.
	if vs.Memory.DiffPages == nil || len(*vs.Memory.DiffPages) < 1+patternPages {
		t.Fatalf("diff pages = %v", vs.Memory.DiffPages)
	}
	// The first diff of a booted VM holds everything it touched, so it
	// restores on its own.
	q := startSim(t, simConfig{})
	q.must("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"resume_vm":true}`, state, mem))
}
