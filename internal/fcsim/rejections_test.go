package fcsim

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type call struct{ method, path, body string }

// TestRejections checks that each request Firecracker refuses is refused
// with 400 and a fault_message, after the given setup.
func TestRejections(t *testing.T) {
	// Placeholders filled per process: {kernel}, {rootfs}, {dir}.
	boot := []call{
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":32}`},
		{"PUT", "/boot-source", `{"kernel_image_path":"{kernel}"}`},
		{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"{rootfs}","is_root_device":true,"is_read_only":false}`},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
	}
	tests := []struct {
		name  string
		setup []call
		req   call
		fault string
	}{
		{"unknown field", nil, call{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":32,"cpu_count":2}`}, `unknown field "cpu_count"`},
		{"unknown nested field", nil, call{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true,"path_on_host":"{rootfs}","rate_limiter":{"bandwidth":{"size":1,"refill_time":1,"burst":2}}}`}, "/rate_limiter/bandwidth/burst"},
		{"missing required field", nil, call{"PUT", "/boot-source", `{"boot_args":"console=ttyS0"}`}, `missing required field "kernel_image_path"`},
		{"wrong type", nil, call{"PUT", "/machine-config", `{"vcpu_count":"1","mem_size_mib":32}`}, "/vcpu_count: expected integer"},
		{"negative for unsigned", nil, call{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":-1}`}, "mem_size_mib"},
		{"bad enum", nil, call{"PUT", "/actions", `{"action_type":"Reboot"}`}, "not one of"},
		{"malformed JSON", nil, call{"PUT", "/actions", `{"action_type":`}, "malformed JSON"},
		{"empty PUT", nil, call{"PUT", "/actions", ``}, "Empty PUT request."},
		{"GET with body", nil, call{"GET", "/machine-config", `{}`}, "GET request cannot have a body."},
		{"unknown path", nil, call{"GET", "/no-such-thing", ``}, "Invalid request method and/or path: GET /no-such-thing."},
		{"unknown method", nil, call{"DELETE", "/drives/rootfs", ``}, "Invalid request method and/or path"},
		{"drive id mismatch", nil, call{"PUT", "/drives/root", `{"drive_id":"rootfs","path_on_host":"{rootfs}","is_root_device":true}`}, "does not match the id from the body"},
		{"iface id mismatch", nil, call{"PUT", "/network-interfaces/eth1", `{"iface_id":"eth0","host_dev_name":"tap0"}`}, "does not match the id from the body"},
		{"missing kernel", nil, call{"PUT", "/boot-source", `{"kernel_image_path":"{dir}/nope"}`}, "No such file or directory"},
		{"missing drive file", nil, call{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"{dir}/nope","is_root_device":true}`}, "No such file or directory"},
		{"second root device", boot[2:3], call{"PUT", "/drives/other", `{"drive_id":"other","path_on_host":"{rootfs}","is_root_device":true}`}, "root block device already exists"},
		{"bad MAC", nil, call{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"zz"}`}, "MAC"},
		{"smt odd vcpus", nil, call{"PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":32,"smt":true}`}, "vCPU number is invalid"},
		{"start without kernel", nil, call{"PUT", "/actions", `{"action_type":"InstanceStart"}`}, "without kernel configuration"},
		{"start without root", boot[1:2], call{"PUT", "/actions", `{"action_type":"InstanceStart"}`}, "root block device"},
		{"start twice", boot, call{"PUT", "/actions", `{"action_type":"InstanceStart"}`}, "not supported after starting"},
		{"machine-config after boot", boot, call{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`}, "not supported after starting"},
		{"boot-source after boot", boot, call{"PUT", "/boot-source", `{"kernel_image_path":"{kernel}"}`}, "not supported after starting"},
		{"drive after boot", boot, call{"PUT", "/drives/data", `{"drive_id":"data","path_on_host":"{rootfs}","is_root_device":false}`}, "not supported after starting"},
		{"logger after boot", boot, call{"PUT", "/logger", `{"log_path":"{dir}/log"}`}, "not supported after starting"},
		{"metrics twice", []call{{"PUT", "/metrics", `{"metrics_path":"{dir}/m"}`}}, call{"PUT", "/metrics", `{"metrics_path":"{dir}/m2"}`}, "Reinitialization of metrics not allowed"},
		{"logger twice", []call{{"PUT", "/logger", `{"log_path":"{dir}/l"}`}}, call{"PUT", "/logger", `{"log_path":"{dir}/l"}`}, "only be configured once"},
		{"pause before boot", nil, call{"PATCH", "/vm", `{"state":"Paused"}`}, "not supported before starting"},
		{"patch drive before boot", boot[2:3], call{"PATCH", "/drives/rootfs", `{"drive_id":"rootfs"}`}, "not supported before starting"},
		{"ctrl-alt-del before boot", nil, call{"PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`}, "not supported before starting"},
		{"snapshot of a running VM", boot, call{"PUT", "/snapshot/create", `{"snapshot_path":"{dir}/s","mem_file_path":"{dir}/m"}`}, "not paused"},
		{"snapshot before boot", nil, call{"PUT", "/snapshot/create", `{"snapshot_path":"{dir}/s","mem_file_path":"{dir}/m"}`}, "not supported before starting"},
		{"load after configure", boot[:1], call{"PUT", "/snapshot/load", `{"snapshot_path":"{dir}/s","mem_file_path":"{dir}/m"}`}, "not allowed after configuring boot-specific resources"},
		{"load after boot", boot, call{"PUT", "/snapshot/load", `{"snapshot_path":"{dir}/s","mem_file_path":"{dir}/m"}`}, "not allowed after configuring boot-specific resources"},
		{"load with both memory fields", nil, call{"PUT", "/snapshot/load", `{"snapshot_path":"{dir}/s","mem_file_path":"{dir}/m","mem_backend":{"backend_type":"File","backend_path":"{dir}/m"}}`}, "exclusively"},
		{"load without memory", nil, call{"PUT", "/snapshot/load", `{"snapshot_path":"{dir}/s"}`}, "either `mem_backend` or `mem_file_path`"},
		{"load 2M with File", nil, call{"PUT", "/snapshot/load", `{"snapshot_path":"{dir}/s","mem_backend":{"backend_type":"File","backend_path":"{dir}/m"},"huge_pages":"2M"}`}, "Uffd"},
		{"mmds config unknown iface", nil, call{"PUT", "/mmds/config", `{"network_interfaces":["eth0"]}`}, "does not correspond"},
		{"balloon not configured", nil, call{"GET", "/balloon", ``}, "No balloon device"},
		{"payload too large", nil, call{"PUT", "/mmds", `{"k":"` + strings.Repeat("x", 60000) + `"}`}, "larger than the limit of 51200"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := startSim(t, simConfig{})
			files := makeVMFiles(t, p.dir)
			fill := func(s string) string {
				return strings.NewReplacer("{kernel}", files.kernel, "{rootfs}", files.rootfs, "{dir}", p.dir).Replace(s)
			}
			for _, c := range tc.setup {
				p.must(c.method, fill(c.path), fill(c.body))
			}
			p.fault(tc.req.method, fill(tc.req.path), fill(tc.req.body), tc.fault)
			// A refusal has no side effect: the instance still answers.
			p.must("GET", "/", "")
		})
	}
}

// TestFaultInjection covers HEARTH_FCSIM_FAIL_AT / --fail-at.
func TestFaultInjection(t *testing.T) {
	t.Run("start", func(t *testing.T) {
		p := startSim(t, simConfig{env: []string{EnvFailAt + "=start"}, noWait: true})
		if code := p.waitExit(5 * time.Second); code != 1 {
			t.Fatalf("exit %d, want 1", code)
		}
		if _, err := os.Stat(p.sock); !os.IsNotExist(err) {
			t.Fatalf("API socket exists: %v", err)
		}
	})
	t.Run("ready", func(t *testing.T) {
		p := startSim(t, simConfig{args: []string{"--fail-at", "ready"}, noWait: true})
		time.Sleep(300 * time.Millisecond)
		select {
		case <-p.exited:
			t.Fatalf("process exited: %v", p.state)
		default:
		}
		if _, err := os.Stat(p.sock); !os.IsNotExist(err) {
			t.Fatalf("API socket exists: %v", err)
		}
	})
	t.Run("api", func(t *testing.T) {
		p := startSim(t, simConfig{env: []string{EnvFailAt + "=api:PUT:/machine-config"}})
		p.fault("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":32}`, "injected failure")
		p.must("GET", "/machine-config", "")
		lines := readRequestLog(t, p.reqlog)
		found := false
		for _, l := range lines {
			found = found || (l.Path == "/machine-config" && l.Status == 400 && l.Fault == "injected failure")
		}
		if !found {
			t.Fatalf("request log lacks the injected failure: %+v", lines)
		}
	})
	t.Run("crash", func(t *testing.T) {
		p := startSim(t, simConfig{env: []string{EnvFailAt + "=crash:PUT:/actions"}})
		files := makeVMFiles(t, p.dir)
		p.must("PUT", "/boot-source", files.bootSource())
		if st, _ := p.do("PUT", "/actions", `{"action_type":"InstanceStart"}`); st != 0 {
			t.Fatalf("crashing request answered %d", st)
		}
		if code := p.waitExit(5 * time.Second); code != 137 {
			t.Fatalf("exit %d, want 137", code)
		}
	})
	t.Run("hang", func(t *testing.T) {
		p := startSim(t, simConfig{args: []string{"--fail-at", "hang:GET:/version"}})
		p.client.Timeout = 300 * time.Millisecond
		if st, _ := p.do("GET", "/version", ""); st != 0 {
			t.Fatalf("hanging request answered %d", st)
		}
		// Other requests are still served.
		p.client = unixClient(p.sock, 5*time.Second)
		p.must("GET", "/", "")
	})
	t.Run("hang-at file", func(t *testing.T) {
		// A running VMM whose API stops answering once the file names
		// the request.
		hang := filepath.Join(t.TempDir(), "hang")
		p := startSim(t, simConfig{env: []string{EnvHangAt + "=@" + hang}})
		files := makeVMFiles(t, p.dir)
		p.bootMinimal(files, 32)
		p.must("PATCH", "/vm", `{"state":"Paused"}`)
		if err := os.WriteFile(hang, []byte("PATCH /vm"), 0o600); err != nil {
			t.Fatal(err)
		}
		p.client.Timeout = 300 * time.Millisecond
		if st, _ := p.do("PATCH", "/vm", `{"state":"Resumed"}`); st != 0 {
			t.Fatalf("hanging request answered %d", st)
		}
		p.client = unixClient(p.sock, 5*time.Second)
		p.must("GET", "/", "")
		os.Remove(hang)
		p.must("PATCH", "/vm", `{"state":"Resumed"}`)
	})
	t.Run("snapshot-enospc", func(t *testing.T) {
		p := startSim(t, simConfig{env: []string{EnvFailAt + "=snapshot-enospc"}})
		files := makeVMFiles(t, p.dir)
		p.bootMinimal(files, 32)
		p.must("PATCH", "/vm", `{"state":"Paused"}`)
		mem := filepath.Join(p.dir, "mem")
		p.fault("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, filepath.Join(p.dir, "vmstate"), mem), "No space left on device")
		if _, err := os.Stat(mem); err != nil {
			t.Fatalf("no partial memory file: %v", err)
		}
		if _, err := os.Stat(filepath.Join(p.dir, "vmstate")); !os.IsNotExist(err) {
			t.Fatalf("vmstate written despite the failure: %v", err)
		}
		// The VM is intact and can resume.
		p.must("PATCH", "/vm", `{"state":"Resumed"}`)
	})
	t.Run("bad spec", func(t *testing.T) {
		p := startSim(t, simConfig{args: []string{"--fail-at", "explode"}, noWait: true})
		if code := p.waitExit(5 * time.Second); code != exitArgParsing {
			t.Fatalf("exit %d, want %d", code, exitArgParsing)
		}
	})
}

// TestStaleSocket: like Firecracker, the simulator refuses to start when
// the API socket path exists.
func TestStaleSocket(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "api.sock")
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	p := startSim(t, simConfig{args: []string{"--api-sock", sock}, noWait: true, noSocket: true})
	if code := p.waitExit(5 * time.Second); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
}
