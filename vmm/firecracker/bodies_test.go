package firecracker

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/internal/fcspec"
	"github.com/hearth-vm/hearth/vmm"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.json")

// fullConfig exercises every field a cold boot can carry.
func fullConfig() vmm.Config {
	return vmm.Config{
		VCPUs:           2,
		MemoryMiB:       1024,
		SMT:             true,
		HugePages:       true,
		TrackDirtyPages: true,
		Kernel:          "/images/default/vmlinux",
		Initrd:          "/images/default/initrd",
		BootArgs:        "console=ttyS0 reboot=k panic=1 hearth.ip=172.16.0.2/30,172.16.0.1,1.1.1.1",
		Drives: []vmm.Drive{
			{ID: "data", Path: "/vms/a/data.ext4", RateLimit: &vmm.RateLimiter{
				Bandwidth: &vmm.TokenBucket{Size: 10 << 20, OneTimeBurst: 1 << 20, RefillTime: time.Second},
				Ops:       &vmm.TokenBucket{Size: 1000, RefillTime: 100 * time.Millisecond},
			}},
			{ID: "rootfs", Path: "/vms/a/rootfs.ext4", Root: true, ReadOnly: true},
			{ID: "scratch", Path: "/vms/a/scratch.img", RateLimit: &vmm.RateLimiter{}},
		},
		NICs: []vmm.NIC{
			{ID: "eth0", HostDev: "hth-tap0", MAC: "06:00:ac:10:00:02",
				RX: &vmm.RateLimiter{Bandwidth: &vmm.TokenBucket{Size: 1 << 20, RefillTime: time.Second}},
				TX: &vmm.RateLimiter{Ops: &vmm.TokenBucket{Size: 500, OneTimeBurst: 100, RefillTime: time.Second}}},
			{ID: "eth1", HostDev: "hth-tap1"},
		},
		Vsock:   &vmm.Vsock{CID: 3, UDSPath: "/vms/a/v.sock"},
		Balloon: &vmm.Balloon{TargetMiB: 0, DeflateOnOOM: true, StatsPollingIntervalS: 5},
		MMDS: &vmm.MMDS{Version: "V2", NICs: []string{"eth0"}, IPv4Addr: "169.254.169.254",
			Data: []byte(`{ "latest": { "meta-data": { "instance-id": "a" } } }`)},
	}
}

func minimalConfig() vmm.Config {
	return vmm.Config{
		VCPUs: 1, MemoryMiB: 128, Kernel: "/vmlinux",
		Drives: []vmm.Drive{{ID: "rootfs", Path: "/rootfs.ext4", Root: true}},
	}
}

var testPaths = Paths{LogPath: "/vms/a/firecracker.log", MetricsPath: "/vms/a/metrics.fifo"}

// goldenRequests lists every request-body golden file and how to build it.
func goldenRequests(t *testing.T) map[string][]Request {
	t.Helper()
	must := func(plan []Request, err error) []Request {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return plan
	}
	req := func(method, path string, body any) Request {
		t.Helper()
		r, err := NewRequest(method, path, body)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	loadFile, err := LoadBody(vmm.LoadRequest{
		StatePath: "/snap/vmstate", MemPath: "/snap/mem", MemBackend: vmm.MemFile,
		Resume: true, TrackDirtyPages: true,
		NetworkOverrides: []vmm.NetworkOverride{{IfaceID: "eth0", HostDev: "hth-tap7"}},
		VsockUDSPath:     "/vms/b/v.sock",
	})
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]Request{
		"boot_plan_minimal": must(BootPlan(minimalConfig(), Paths{})),
		"boot_plan_full":    must(BootPlan(fullConfig(), testPaths)),
		"load_plan_file":    must(LoadPlan(vmm.LoadRequest{StatePath: "/snap/vmstate", MemPath: "/snap/mem"}, testPaths)),
		"load_plan_uffd": must(LoadPlan(vmm.LoadRequest{
			StatePath: "/snap/vmstate", MemPath: "/vms/b/uffd.sock", MemBackend: vmm.MemUffd,
			NetworkOverrides: []vmm.NetworkOverride{{IfaceID: "eth0", HostDev: "hth-tap9"}, {IfaceID: "eth1", HostDev: "hth-tap10"}},
		}, Paths{})),
		"load_plan_clone": must(LoadPlan(vmm.LoadRequest{
			StatePath: "/snap/vmstate", MemPath: "/snap/mem", Resume: true, VsockUDSPath: "/vms/c/vsock.sock",
			DriveOverrides: []vmm.DriveOverride{{ID: "rootfs", Path: "/vms/c/rootfs.ext4"}},
		}, testPaths)),
		"runtime": {
			req("PUT", "/actions", ActionBody(ActionInstanceStart)),
			req("PUT", "/actions", ActionBody(ActionSendCtrlAltDel)),
			req("PUT", "/actions", ActionBody(ActionFlushMetrics)),
			req("PATCH", "/vm", VMStateBody(true)),
			req("PATCH", "/vm", VMStateBody(false)),
			req("PUT", "/snapshot/create", SnapshotCreateBody(vmm.SnapshotRequest{StatePath: "/s/vmstate", MemPath: "/s/mem"})),
			req("PUT", "/snapshot/create", SnapshotCreateBody(vmm.SnapshotRequest{StatePath: "/s/vmstate", MemPath: "/s/mem.diff", Diff: true})),
			req("PUT", "/snapshot/load", loadFile),
			req("PATCH", "/drives/data", PatchDriveBody("data", "", &vmm.RateLimiter{Bandwidth: &vmm.TokenBucket{Size: 0, RefillTime: 0}})),
			req("PATCH", "/drives/data", PatchDriveBody("data", "/vms/a/data2.ext4", nil)),
			req("PATCH", "/network-interfaces/eth0", PatchNICBody("eth0",
				&vmm.RateLimiter{Bandwidth: &vmm.TokenBucket{Size: 2 << 20, OneTimeBurst: 4 << 20, RefillTime: 500 * time.Millisecond}}, nil)),
			req("PATCH", "/drives/data", PartialDrive{DriveID: "data", RateLimiter: ReplaceRateLimiterBody(
				&vmm.RateLimiter{Ops: &vmm.TokenBucket{Size: 100, RefillTime: time.Second}})}),
			req("PATCH", "/network-interfaces/eth0", PartialNetworkInterface{IfaceID: "eth0", RxRateLimiter: ReplaceRateLimiterBody(nil),
				TxRateLimiter: ReplaceRateLimiterBody(&vmm.RateLimiter{Bandwidth: &vmm.TokenBucket{Size: 1 << 20, RefillTime: time.Second}})}),
			req("GET", "/", nil),
			req("GET", "/machine-config", nil),
		},
	}
}

func checkGolden(t *testing.T, name string, got any) {
	t.Helper()
	b, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, '\n')
	path := filepath.Join("testdata", name+".golden.json")
	if *update {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(want, b) {
		t.Errorf("%s differs from golden file (run go test -update after checking):\n got: %s\nwant: %s", name, b, want)
	}
}

func TestGoldenRequests(t *testing.T) {
	for name, reqs := range goldenRequests(t) {
		t.Run(name, func(t *testing.T) { checkGolden(t, name, reqs) })
	}
}

// TestGoldenBodiesMatchSpec validates every request of every golden file
// against the pinned API spec: the route must exist and the body must
// conform (Firecracker rejects unknown fields). It reads the files, not
// the builders, so a hand-edited golden cannot drift from the spec either.
func TestGoldenBodiesMatchSpec(t *testing.T) {
	spec := fcspec.MustLoad()
	files, err := filepath.Glob(filepath.Join("testdata", "*.golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, f := range files {
		if strings.HasPrefix(filepath.Base(f), "jailer_") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var reqs []Request
		if err := json.Unmarshal(b, &reqs); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for i, r := range reqs {
			if err := spec.ValidateRequest(r.Method, r.Path, r.Body); err != nil {
				t.Errorf("%s[%d] %s: %v\nbody: %s", f, i, r, err, r.Body)
			}
			checked++
		}
	}
	if checked < 20 {
		t.Fatalf("only %d golden requests validated; golden files missing?", checked)
	}
}

// TestModelsMatchDefinitions validates fully populated model values
// against their spec definitions: a field the spec lacks, or a wrong tag,
// fails here even if no builder sets it yet.
func TestModelsMatchDefinitions(t *testing.T) {
	spec := fcspec.MustLoad()
	one := int64(1)
	mtu := 1500
	rl := &RateLimiter{Bandwidth: &TokenBucket{Size: 1, OneTimeBurst: &one, RefillTime: 1}, Ops: &TokenBucket{Size: 1, RefillTime: 1}}
	cases := []struct {
		def string
		v   any
	}{
		{"MachineConfiguration", MachineConfiguration{VCPUCount: 2, MemSizeMiB: 256, SMT: true, TrackDirtyPages: true, HugePages: HugePages2M, CPUTemplate: "None"}},
		{"BootSource", BootSource{KernelImagePath: "/k", BootArgs: "a", InitrdPath: "/i"}},
		{"Drive", Drive{DriveID: "d", IsRootDevice: true, IsReadOnly: true, PathOnHost: "/p", PartUUID: "u", CacheType: "Writeback", IOEngine: "Async", RateLimiter: rl}},
		{"PartialDrive", PartialDrive{DriveID: "d", PathOnHost: "/p", RateLimiter: rl}},
		{"NetworkInterface", NetworkInterface{IfaceID: "e", HostDevName: "t", GuestMAC: "06:00:00:00:00:01", MTU: &mtu, RxRateLimiter: rl, TxRateLimiter: rl}},
		{"PartialNetworkInterface", PartialNetworkInterface{IfaceID: "e", RxRateLimiter: rl, TxRateLimiter: rl}},
		{"Vsock", Vsock{GuestCID: 3, UDSPath: "/v"}},
		{"Logger", Logger{LogPath: "/l", Level: "Debug", ShowLevel: true, ShowLogOrigin: true, Module: "api_server"}},
		{"Metrics", Metrics{MetricsPath: "/m", EmitID: true, Properties: map[string]string{"k": "v"}}},
		{"MmdsConfig", MmdsConfig{Version: "V2", NetworkInterfaces: []string{"e"}, IPv4Address: "169.254.169.254", IMDSCompat: true}},
		{"Balloon", Balloon{AmountMiB: 1, DeflateOnOOM: true, StatsPollingIntervalS: 1, FreePageHinting: true, FreePageReporting: true}},
		{"InstanceActionInfo", InstanceActionInfo{ActionType: ActionFlushMetrics}},
		{"Vm", VM{State: VMStatePaused}},
		{"SnapshotCreateParams", SnapshotCreateParams{SnapshotType: SnapshotDiff, SnapshotPath: "/s", MemFilePath: "/m"}},
		{"SnapshotLoadParams", SnapshotLoadParams{SnapshotPath: "/s", MemBackend: &MemoryBackend{BackendType: BackendUffd, BackendPath: "/u"},
			TrackDirtyPages: true, ResumeVM: true, NetworkOverrides: []NetworkOverride{{IfaceID: "e", HostDevName: "t"}},
			VsockOverride: &VsockOverride{UDSPath: "/v"}, ClockRealtime: true, HugePages: "Snapshot"}},
		{"InstanceInfo", InstanceInfo{AppName: "Firecracker", ID: "a", State: InstanceNotStarted, VMMVersion: "1.17.0"}},
		{"FirecrackerVersion", FirecrackerVersion{FirecrackerVersion: "1.17.0"}},
		{"Error", Error{FaultMessage: "x"}},
	}
	for _, c := range cases {
		b, err := json.Marshal(c.v)
		if err != nil {
			t.Fatal(err)
		}
		if err := spec.ValidateDefinition(c.def, b); err != nil {
			t.Errorf("%s %s: %v", c.def, b, err)
		}
	}
}

func TestLoadBodyHasNoNetworkInterfaces(t *testing.T) {
	// The seed sent "network_interfaces" on snapshot load; Firecracker's
	// field is network_overrides and unknown fields are refused.
	p, err := LoadBody(vmm.LoadRequest{StatePath: "/s", MemPath: "/m",
		NetworkOverrides: []vmm.NetworkOverride{{IfaceID: "eth0", HostDev: "tap1"}}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(p)
	var m map[string]json.RawMessage
	json.Unmarshal(b, &m)
	if _, ok := m["network_interfaces"]; ok {
		t.Fatalf("load body carries network_interfaces: %s", b)
	}
	if _, ok := m["network_overrides"]; !ok {
		t.Fatalf("load body lacks network_overrides: %s", b)
	}
	if _, ok := m["mem_file_path"]; ok {
		t.Fatalf("load body uses the deprecated mem_file_path: %s", b)
	}
	// And the spec check has teeth: the seed's body is refused.
	seed := `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"network_interfaces":[{"iface_id":"eth0","host_dev_name":"tap1"}]}`
	if err := fcspec.MustLoad().ValidateRequest("PUT", "/snapshot/load", []byte(seed)); err == nil {
		t.Fatal("the spec validator accepted network_interfaces on snapshot load")
	}
}

func TestTokenBucketConversion(t *testing.T) {
	for _, c := range []struct {
		name string
		in   *vmm.TokenBucket
		want string
	}{
		{"nil", nil, "null"},
		{"no burst omitted", &vmm.TokenBucket{Size: 100, RefillTime: 1500 * time.Millisecond}, `{"size":100,"refill_time":1500}`},
		{"burst kept", &vmm.TokenBucket{Size: 1, OneTimeBurst: 7, RefillTime: time.Second}, `{"size":1,"one_time_burst":7,"refill_time":1000}`},
		{"zero disables", &vmm.TokenBucket{}, `{"size":0,"refill_time":0}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, _ := json.Marshal(TokenBucketBody(c.in))
			if string(b) != c.want {
				t.Fatalf("got %s, want %s", b, c.want)
			}
		})
	}
	if RateLimiterBody(&vmm.RateLimiter{}) != nil {
		t.Fatal("an empty limiter must be omitted")
	}
}

func TestBootPlanOrder(t *testing.T) {
	plan, err := BootPlan(fullConfig(), testPaths)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range plan {
		got = append(got, r.String())
	}
	want := []string{
		"PUT /logger", "PUT /metrics", "PUT /machine-config", "PUT /boot-source",
		"PUT /drives/rootfs", "PUT /drives/data", "PUT /drives/scratch",
		"PUT /network-interfaces/eth0", "PUT /network-interfaces/eth1",
		"PUT /vsock", "PUT /mmds/config", "PUT /mmds", "PUT /balloon",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("plan order:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestValidateConfig(t *testing.T) {
	mod := func(f func(*vmm.Config)) vmm.Config {
		c := minimalConfig()
		f(&c)
		return c
	}
	limiter := func(tb vmm.TokenBucket) *vmm.RateLimiter { return &vmm.RateLimiter{Bandwidth: &tb} }
	cases := []struct {
		name  string
		cfg   vmm.Config
		field string // "" = valid
	}{
		{"minimal", minimalConfig(), ""},
		{"full", fullConfig(), ""},
		{"zero vcpus", mod(func(c *vmm.Config) { c.VCPUs = 0 }), "vcpus"},
		{"33 vcpus", mod(func(c *vmm.Config) { c.VCPUs = 33 }), "vcpus"},
		{"32 vcpus", mod(func(c *vmm.Config) { c.VCPUs = 32 }), ""},
		{"odd vcpus with smt", mod(func(c *vmm.Config) { c.VCPUs, c.SMT = 3, true }), "vcpus"},
		{"zero memory", mod(func(c *vmm.Config) { c.MemoryMiB = 0 }), "memory_mib"},
		{"odd memory with huge pages", mod(func(c *vmm.Config) { c.MemoryMiB, c.HugePages = 129, true }), "memory_mib"},
		{"no kernel", mod(func(c *vmm.Config) { c.Kernel = "" }), "kernel"},
		{"no root", mod(func(c *vmm.Config) { c.Drives[0].Root = false }), "drives"},
		{"two roots", mod(func(c *vmm.Config) {
			c.Drives = append(c.Drives, vmm.Drive{ID: "r2", Path: "/r2", Root: true})
		}), "drives"},
		{"duplicate drive", mod(func(c *vmm.Config) { c.Drives = append(c.Drives, vmm.Drive{ID: "rootfs", Path: "/x"}) }), "drives[1].id"},
		{"path traversal in drive id", mod(func(c *vmm.Config) { c.Drives[0].ID = "../vm" }), "drives[0].id"},
		{"slash in drive id", mod(func(c *vmm.Config) { c.Drives[0].ID = "a/b" }), "drives[0].id"},
		{"query in drive id", mod(func(c *vmm.Config) { c.Drives[0].ID = "a?b" }), "drives[0].id"},
		{"long drive id", mod(func(c *vmm.Config) { c.Drives[0].ID = strings.Repeat("a", 65) }), "drives[0].id"},
		{"drive without path", mod(func(c *vmm.Config) { c.Drives[0].Path = "" }), "drives[0].path"},
		{"NUL in path", mod(func(c *vmm.Config) { c.Drives[0].Path = "/a\x00b" }), "drives[0].path"},
		{"duplicate nic", mod(func(c *vmm.Config) {
			c.NICs = []vmm.NIC{{ID: "eth0", HostDev: "t0"}, {ID: "eth0", HostDev: "t1"}}
		}), "nics[1].id"},
		{"long tap name", mod(func(c *vmm.Config) { c.NICs = []vmm.NIC{{ID: "eth0", HostDev: "a-very-long-tap-name"}} }), "nics[0].host_dev"},
		{"bad mac", mod(func(c *vmm.Config) { c.NICs = []vmm.NIC{{ID: "eth0", HostDev: "t0", MAC: "zz"}} }), "nics[0].mac"},
		{"reserved cid", mod(func(c *vmm.Config) { c.Vsock = &vmm.Vsock{CID: 2, UDSPath: "/v"} }), "vsock.cid"},
		{"vsock without path", mod(func(c *vmm.Config) { c.Vsock = &vmm.Vsock{CID: 3} }), "vsock.uds_path"},
		{"mmds on unknown nic", mod(func(c *vmm.Config) { c.MMDS = &vmm.MMDS{NICs: []string{"eth9"}} }), "mmds.nics"},
		{"mmds bad version", mod(func(c *vmm.Config) {
			c.NICs = []vmm.NIC{{ID: "eth0", HostDev: "t0"}}
			c.MMDS = &vmm.MMDS{Version: "V3", NICs: []string{"eth0"}}
		}), "mmds.version"},
		{"mmds bad address", mod(func(c *vmm.Config) {
			c.NICs = []vmm.NIC{{ID: "eth0", HostDev: "t0"}}
			c.MMDS = &vmm.MMDS{NICs: []string{"eth0"}, IPv4Addr: "10.0.0.1"}
		}), "mmds.ipv4_addr"},
		{"mmds data not an object", mod(func(c *vmm.Config) {
			c.NICs = []vmm.NIC{{ID: "eth0", HostDev: "t0"}}
			c.MMDS = &vmm.MMDS{NICs: []string{"eth0"}, Data: []byte(`[1]`)}
		}), "mmds.data"},
		{"negative bucket", mod(func(c *vmm.Config) { c.Drives[0].RateLimit = limiter(vmm.TokenBucket{Size: -1}) }), "drives[0].rate_limit.bandwidth.size"},
		{"sub-ms refill", mod(func(c *vmm.Config) {
			c.Drives[0].RateLimit = limiter(vmm.TokenBucket{Size: 1, RefillTime: 1500 * time.Microsecond})
		}), "drives[0].rate_limit.bandwidth.refill_time"},
		{"negative balloon", mod(func(c *vmm.Config) { c.Balloon = &vmm.Balloon{TargetMiB: -1} }), "balloon.target_mib"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := ValidateConfig(c.cfg)
			if c.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v is not ErrInvalidConfig", err)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != c.field {
				t.Fatalf("error %v does not name field %q", err, c.field)
			}
			if _, err := BootPlan(c.cfg, Paths{}); err == nil {
				t.Fatal("BootPlan accepted an invalid config")
			}
		})
	}
}

func TestValidateLoadRequest(t *testing.T) {
	for _, c := range []struct {
		name string
		req  vmm.LoadRequest
		ok   bool
	}{
		{"file", vmm.LoadRequest{StatePath: "/s", MemPath: "/m"}, true},
		{"uffd", vmm.LoadRequest{StatePath: "/s", MemPath: "/u.sock", MemBackend: vmm.MemUffd}, true},
		{"no state", vmm.LoadRequest{MemPath: "/m"}, false},
		{"no mem", vmm.LoadRequest{StatePath: "/s"}, false},
		{"bad backend", vmm.LoadRequest{StatePath: "/s", MemPath: "/m", MemBackend: "nbd"}, false},
		{"bad override id", vmm.LoadRequest{StatePath: "/s", MemPath: "/m", NetworkOverrides: []vmm.NetworkOverride{{IfaceID: "../x", HostDev: "t"}}}, false},
		{"duplicate override", vmm.LoadRequest{StatePath: "/s", MemPath: "/m", NetworkOverrides: []vmm.NetworkOverride{{IfaceID: "e", HostDev: "t"}, {IfaceID: "e", HostDev: "u"}}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := ValidateLoadRequest(c.req)
			if (err == nil) != c.ok {
				t.Fatalf("ValidateLoadRequest = %v, want ok=%v", err, c.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("%v is not ErrInvalidConfig", err)
			}
		})
	}
}
