package qemu

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/vmm"
)

func baseConfig() vmm.Config {
	return vmm.Config{
		VCPUs: 2, MemoryMiB: 256,
		Kernel: "/img/vmlinux", Initrd: "/img/initrd", BootArgs: "console=ttyS0 quiet",
		Drives: []vmm.Drive{
			{ID: "rootfs", Path: "/vm/root.ext4", Root: true},
			{ID: "data", Path: "/vm/a,b.img", ReadOnly: true},
		},
		NICs:  []vmm.NIC{{ID: "eth0", HostDev: "tap0", MAC: "02:00:00:00:00:01"}},
		Vsock: &vmm.Vsock{CID: 3, UDSPath: "/vm/agent.sock"},
	}
}

func TestBuildArgsGolden(t *testing.T) {
	got, err := BuildArgs(ArgsSpec{Accel: AccelTCG, QMPSocket: "/vm/qmp.sock"}, baseConfig())
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"-M", DefaultMachine, "-nodefaults", "-no-user-config", "-nographic",
		"-accel", "tcg", "-icount", "shift=auto",
		"-m", "256", "-smp", "2",
		"-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
		"-kernel", "/img/vmlinux", "-initrd", "/img/initrd", "-append", "console=ttyS0 quiet",
		"-drive", "id=drive-rootfs,file=/vm/root.ext4,format=raw,if=none,readonly=off", "-device", "virtio-blk-device,drive=drive-rootfs",
		"-drive", "id=drive-data,file=/vm/a,,b.img,format=raw,if=none,readonly=on", "-device", "virtio-blk-device,drive=drive-data",
		"-netdev", "tap,id=net-eth0,ifname=tap0,script=no,downscript=no", "-device", "virtio-net-device,netdev=net-eth0,mac=02:00:00:00:00:01",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=/vm/agent.sock,server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=hearth.agent",
		"-qmp", "unix:/vm/qmp.sock,server=on,wait=off", "-S",
	}, "\n")
	if g := strings.Join(got, "\n"); g != want {
		t.Errorf("args:\n%s\nwant:\n%s", g, want)
	}
}

func TestBuildArgsVariants(t *testing.T) {
	tests := []struct {
		name     string
		spec     ArgsSpec
		mod      func(*vmm.Config)
		contains []string // consecutive argument pairs "a b"
		absent   []string
	}{
		{name: "kvm", spec: ArgsSpec{Accel: AccelKVM}, contains: []string{"-accel kvm", "-cpu host"}, absent: []string{"-icount"}},
		{name: "incoming", spec: ArgsSpec{Accel: AccelTCG, Incoming: true}, contains: []string{"-incoming defer", "-S -incoming"}},
		{name: "smt", spec: ArgsSpec{Accel: AccelTCG}, mod: func(c *vmm.Config) { c.SMT, c.VCPUs = true, 4 },
			contains: []string{"-smp 4,sockets=1,cores=2,threads=2"}},
		{name: "hugepages", spec: ArgsSpec{Accel: AccelTCG}, mod: func(c *vmm.Config) { c.HugePages = true },
			contains: []string{"-M " + DefaultMachine + ",memory-backend=mem", "-object memory-backend-memfd,id=mem,size=256M,hugetlb=on,hugetlbsize=2M"}},
		{name: "no vsock no initrd", spec: ArgsSpec{Accel: AccelTCG}, mod: func(c *vmm.Config) { c.Vsock, c.Initrd = nil, "" },
			absent: []string{"virtio-serial-device", "-initrd"}},
		{name: "throttling", spec: ArgsSpec{Accel: AccelTCG}, mod: func(c *vmm.Config) {
			c.Drives[0].RateLimit = &vmm.RateLimiter{
				Bandwidth: &vmm.TokenBucket{Size: 1 << 20, RefillTime: 100 * time.Millisecond},
				Ops:       &vmm.TokenBucket{Size: 100, RefillTime: time.Second},
			}
		}, contains: []string{"-drive id=drive-rootfs,file=/vm/root.ext4,format=raw,if=none,readonly=off,throttling.bps-total=10485760,throttling.iops-total=100"}},
		{name: "machine override", spec: ArgsSpec{Accel: AccelTCG, Machine: "microvm"}, contains: []string{"-M microvm -nodefaults"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			if tt.mod != nil {
				tt.mod(&cfg)
			}
			tt.spec.QMPSocket = "/q"
			args, err := BuildArgs(tt.spec, cfg)
			if err != nil {
				t.Fatal(err)
			}
			line := " " + strings.Join(args, " ") + " "
			for _, c := range tt.contains {
				if !strings.Contains(line, " "+c+" ") {
					t.Errorf("missing %q in %s", c, line)
				}
			}
			for _, a := range tt.absent {
				if strings.Contains(line, a) {
					t.Errorf("unexpected %q in %s", a, line)
				}
			}
		})
	}
}

func TestBuildArgsErrors(t *testing.T) {
	tests := []struct {
		name        string
		mod         func(*vmm.Config)
		unsupported string // option named by an UnsupportedError, or ""
		field       string // field named by a ConfigError, or ""
	}{
		{name: "mmds", mod: func(c *vmm.Config) { c.MMDS = &vmm.MMDS{} }, unsupported: "mmds"},
		{name: "balloon", mod: func(c *vmm.Config) { c.Balloon = &vmm.Balloon{} }, unsupported: "balloon"},
		{name: "nic rx", mod: func(c *vmm.Config) { c.NICs[0].RX = &vmm.RateLimiter{} }, unsupported: "nics[0].rx_rate_limiter"},
		{name: "nic tx", mod: func(c *vmm.Config) { c.NICs[0].TX = &vmm.RateLimiter{} }, unsupported: "nics[0].tx_rate_limiter"},
		{name: "burst", mod: func(c *vmm.Config) {
			c.Drives[1].RateLimit = &vmm.RateLimiter{Bandwidth: &vmm.TokenBucket{Size: 1, OneTimeBurst: 5, RefillTime: time.Second}}
		}, unsupported: "drives[1].rate_limiter.bandwidth.one_time_burst"},
		{name: "vcpus", mod: func(c *vmm.Config) { c.VCPUs = 0 }, field: "vcpus"},
		{name: "odd smt", mod: func(c *vmm.Config) { c.SMT, c.VCPUs = true, 3 }, field: "vcpus"},
		{name: "memory", mod: func(c *vmm.Config) { c.MemoryMiB = 0 }, field: "memory"},
		{name: "two roots", mod: func(c *vmm.Config) { c.Drives[1].Root = true }, field: "drives"},
		{name: "dup drive", mod: func(c *vmm.Config) { c.Drives[1].ID = "rootfs" }, field: "drives[1].id"},
		{name: "bad drive id", mod: func(c *vmm.Config) { c.Drives[1].ID = "a,b" }, field: "drives[1].id"},
		{name: "tap comma", mod: func(c *vmm.Config) { c.NICs[0].HostDev = "tap0,x=y" }, field: "nics[0].host_dev"},
		{name: "vsock path", mod: func(c *vmm.Config) { c.Vsock.UDSPath = "" }, field: "vsock.uds_path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			tt.mod(&cfg)
			_, err := BuildArgs(ArgsSpec{Accel: AccelTCG, QMPSocket: "/q"}, cfg)
			if err == nil {
				t.Fatal("no error")
			}
			if tt.unsupported != "" {
				var ue *UnsupportedError
				if !errors.As(err, &ue) || ue.Option != tt.unsupported || !errors.Is(err, errors.ErrUnsupported) {
					t.Errorf("err = %v, want UnsupportedError for %s", err, tt.unsupported)
				}
			}
			if tt.field != "" {
				var ce *ConfigError
				if !errors.As(err, &ce) || ce.Field != tt.field {
					t.Errorf("err = %v, want ConfigError for %s", err, tt.field)
				}
			}
		})
	}
	if _, err := BuildArgs(ArgsSpec{Accel: "xen", QMPSocket: "/q"}, baseConfig()); err == nil {
		t.Error("bad accel accepted")
	}
}

func TestRestoreConfig(t *testing.T) {
	src := baseConfig()
	got, err := RestoreConfig(src, vmm.LoadRequest{
		DriveOverrides:   []vmm.DriveOverride{{ID: "rootfs", Path: "/clone/root.ext4"}},
		NetworkOverrides: []vmm.NetworkOverride{{IfaceID: "eth0", HostDev: "tap9"}},
		VsockUDSPath:     "/clone/agent.sock",
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Drives[0].Path != "/clone/root.ext4" || got.Drives[1].Path != "/vm/a,b.img" || got.NICs[0].HostDev != "tap9" || got.Vsock.UDSPath != "/clone/agent.sock" {
		t.Errorf("restored config %+v", got)
	}
	// The source config is not modified.
	if src.Drives[0].Path != "/vm/root.ext4" || src.NICs[0].HostDev != "tap0" || src.Vsock.UDSPath != "/vm/agent.sock" {
		t.Errorf("source config modified: %+v", src)
	}
	for _, req := range []vmm.LoadRequest{
		{DriveOverrides: []vmm.DriveOverride{{ID: "nope", Path: "/x"}}},
		{NetworkOverrides: []vmm.NetworkOverride{{IfaceID: "eth9", HostDev: "tap1"}}},
	} {
		if _, err := RestoreConfig(src, req); err == nil {
			t.Errorf("override %+v of an unknown device accepted", req)
		}
	}
}

func TestShellQuote(t *testing.T) {
	if got := shellQuote("/a b/it's"); got != `'/a b/it'\''s'` {
		t.Errorf("shellQuote = %s", got)
	}
}
