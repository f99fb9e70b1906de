package guestinit

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func TestSplitCmdline(t *testing.T) {
	got := SplitCmdline(`console=ttyS0  reboot=k hearth.hostname="box one" panic=1 "quoted word"` + "\n")
	want := []string{"console=ttyS0", "reboot=k", "hearth.hostname=box one", "panic=1", "quoted word"}
	if !slices.Equal(got, want) {
		t.Fatalf("%q", got)
	}
	if len(SplitCmdline("   \n")) != 0 {
		t.Fatal("blank cmdline has parameters")
	}
}

func TestParseCmdline(t *testing.T) {
	cl, err := ParseCmdline("console=ttyS0 reboot=k panic=1 hearth.token=tok-0123456789 hearth.ip=172.30.0.2/24,172.30.0.1,1.1.1.1,9.9.9.9 " +
		"hearth.iface=eth1 hearth.hostname=vm-1.example hearth.entropy=00ff10 hearth.debug=1 hearth.future=x\n")
	if err != nil {
		t.Fatal(err)
	}
	if cl.Token != "tok-0123456789" || cl.Iface != "eth1" || cl.Hostname != "vm-1.example" || !cl.Debug || !slices.Equal(cl.Entropy, []byte{0, 0xff, 0x10}) {
		t.Errorf("%+v", cl)
	}
	if cl.IP == nil || cl.IP.String() != "172.30.0.2/24,172.30.0.1,1.1.1.1,9.9.9.9" {
		t.Errorf("ip %v", cl.IP)
	}
	if cl.Params["hearth.future"] != "x" || len(cl.Params) != 7 {
		t.Errorf("params %v", cl.Params)
	}

	// Bad parameters are reported, good ones still apply; the last
	// occurrence wins.
	cl, err = ParseCmdline("hearth.token=first hearth.token=second hearth.ip=300.1.1.1/24 hearth.hostname=-bad hearth.entropy=zz hearth.iface=a/b")
	if err == nil {
		t.Fatal("no error for bad parameters")
	}
	for _, want := range []string{"hearth.ip", "hearth.hostname", "hearth.entropy", "hearth.iface"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if cl.Token != "second" || cl.IP != nil || cl.Hostname != "" {
		t.Errorf("%+v", cl)
	}
}

func TestParseIP(t *testing.T) {
	tests := []struct {
		in   string
		want string // String() of the result, "" for an error
	}{
		{"10.1.2.3/24", "10.1.2.3/24"},
		{"10.1.2.3/24,10.1.2.1", "10.1.2.3/24,10.1.2.1"},
		{"10.1.2.3/24,,1.1.1.1", "10.1.2.3/24,,1.1.1.1"},
		// What the network package emits when it has no resolver.
		{"172.30.0.5/24,172.30.0.1,", "172.30.0.5/24,172.30.0.1"},
		{"10.1.2.3/32,10.1.2.1,1.1.1.1,8.8.8.8,9.9.9.9", "10.1.2.3/32,10.1.2.1,1.1.1.1,8.8.8.8,9.9.9.9"},
		{"fd00::2/64,fd00::1,2001:4860:4860::8888", "fd00::2/64,fd00::1,2001:4860:4860::8888"},
		{"10.1.2.3", ""},
		{"10.1.2.3/33", ""},
		{"10.1.2.3/24,fd00::1", ""},
		{"10.1.2.3/24,10.1.2.3", ""},
		{"10.1.2.3/24,x", ""},
		{"10.1.2.3/24,10.1.2.1,nope", ""},
		{"10.1.2.3/24,10.1.2.1,1.1.1.1,1.1.1.2,1.1.1.3,1.1.1.4", ""},
		{"fe80::1%eth0/64", ""},
		{"", ""},
	}
	for _, tt := range tests {
		cfg, err := ParseIP(tt.in)
		got := ""
		if err == nil {
			got = cfg.String()
		}
		if got != tt.want {
			t.Errorf("ParseIP(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

type fakeMounter struct {
	mounted map[string]bool
	calls   []string
	fail    map[string]error
}

func (f *fakeMounter) Mount(_, target, fstype string, _ uintptr, _ string) error {
	f.calls = append(f.calls, fstype+":"+target)
	if err := f.fail[target]; err != nil {
		return err
	}
	f.mounted[target] = true
	return nil
}

func (f *fakeMounter) Mounted() (map[string]bool, error)  { return f.mounted, nil }
func (f *fakeMounter) MkdirAll(string, os.FileMode) error { return nil }

func TestMountAll(t *testing.T) {
	m := &fakeMounter{
		mounted: map[string]bool{"/": true, "/dev": true}, // the kernel mounted devtmpfs
		fail:    map[string]error{"/sys/fs/cgroup": errors.New("no cgroup2"), "/dev/shm": errors.New("boom")},
	}
	err := MountAll(m, EssentialMounts, slog.New(slog.DiscardHandler))
	want := []string{"proc:/proc", "sysfs:/sys", "devpts:/dev/pts", "tmpfs:/dev/shm", "tmpfs:/run", "tmpfs:/tmp", "cgroup2:/sys/fs/cgroup"}
	if !reflect.DeepEqual(m.calls, want) {
		t.Errorf("calls %v", m.calls)
	}
	// The optional cgroup2 failure is not reported; /dev/shm's is.
	if err == nil || !strings.Contains(err.Error(), "/dev/shm") || strings.Contains(err.Error(), "cgroup") {
		t.Errorf("err %v", err)
	}
}

func TestParseMountinfo(t *testing.T) {
	p := filepath.Join(t.TempDir(), "mi")
	os.WriteFile(p, []byte("22 1 0:21 / /proc rw,nosuid - proc proc rw\n23 1 0:5 / /mnt/with\\040space rw - tmpfs tmpfs rw\nshort line\n"), 0o600)
	f, _ := os.Open(p)
	defer f.Close()
	m, err := parseMountinfo(f)
	if err != nil || !m["/proc"] || !m["/mnt/with space"] || len(m) != 2 {
		t.Fatalf("%v %v", m, err)
	}
	if unescapeMountPath(`a\134b\x`) != `a\b\x` {
		t.Error("unescape")
	}
}

func TestMakeDevLinks(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "dev"), 0o755)
	os.WriteFile(filepath.Join(root, "dev", "stdin"), nil, 0o600) // exists: kept
	if err := MakeDevLinks(root); err != nil {
		t.Fatal(err)
	}
	if l, _ := os.Readlink(filepath.Join(root, "dev", "fd")); l != "/proc/self/fd" {
		t.Errorf("fd link %q", l)
	}
	if fi, _ := os.Lstat(filepath.Join(root, "dev", "stdin")); fi.Mode()&os.ModeSymlink != 0 {
		t.Error("existing file replaced")
	}
}

func TestWriteResolvConf(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "run-resolv.conf")
	os.WriteFile(target, []byte("old"), 0o644)
	link := filepath.Join(dir, "resolv.conf")
	os.Symlink(target, link)
	cfg, _ := ParseIP("10.0.0.2/24,10.0.0.1,10.0.0.53,fd00::53")
	if err := WriteResolvConf(link, cfg); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(target)
	if !strings.Contains(string(b), "nameserver 10.0.0.53\nnameserver fd00::53\n") {
		t.Errorf("resolv.conf %q", b)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Error("symlink replaced instead of written through")
	}
	noDNS, _ := ParseIP("10.0.0.2/24")
	if err := WriteResolvConf(filepath.Join(dir, "none"), noDNS); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "none")); err == nil {
		t.Error("resolv.conf written without DNS servers")
	}
}

// newTestNetns creates a network namespace without moving the test
// process into it, and returns a netlink handle for it. Nothing in the
// host's namespace is touched.
func newTestNetns(t *testing.T) *netlink.Handle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.New() // moves this thread into the new namespace
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Skipf("cannot create a network namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with the goroutine and the
		// namespace switch dies with it.
		t.Fatalf("cannot return to the original namespace: %v", err)
	}
	orig.Close()
	runtime.UnlockOSThread()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(); ns.Close() })
	return h
}

// TestApplyNetwork configures hearth.ip inside a namespace the test
// creates: addresses from the documentation ranges, a veth pair that
// lives and dies with the namespace.
func TestApplyNetwork(t *testing.T) {
	h := newTestNetns(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}); err != nil {
		t.Fatalf("veth in the test namespace: %v", err)
	}
	tests := []struct {
		name, iface, ip string
		wantGW          string
		onlink          bool
	}{
		{"ipv4 with gateway", "", "192.0.2.10/24,192.0.2.1,192.0.2.53", "192.0.2.1", false},
		{"again is harmless", "", "192.0.2.10/24,192.0.2.1", "192.0.2.1", false},
		{"gateway outside a /32", "eth0", "198.51.100.7/32,198.51.100.1", "198.51.100.1", true},
		{"ipv6", "peer0", "2001:db8::10/64,2001:db8::1", "2001:db8::1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseIP(tt.ip)
			if err != nil {
				t.Fatal(err)
			}
			name, err := ApplyNetwork(h, tt.iface, cfg)
			if err != nil {
				t.Fatal(err)
			}
			link, err := h.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if link.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("%s not up", name)
			}
			addrs, _ := h.AddrList(link, netlink.FAMILY_ALL)
			found := false
			for _, a := range addrs {
				if p, _ := netip.ParsePrefix(a.IPNet.String()); p == cfg.Addr {
					found = true
				}
			}
			if !found {
				t.Errorf("address %s missing from %v", cfg.Addr, addrs)
			}
			fam := netlink.FAMILY_V4
			if cfg.Addr.Addr().Is6() {
				fam = netlink.FAMILY_V6
			}
			routes, _ := h.RouteList(link, fam)
			gwOK := false
			for _, r := range routes {
				if r.Gw != nil && r.Gw.String() == tt.wantGW && (r.Dst == nil || r.Dst.IP.IsUnspecified()) {
					gwOK = true
					if tt.onlink && r.Flags&int(netlink.FLAG_ONLINK) == 0 {
						t.Errorf("route %v lacks onlink", r)
					}
				}
			}
			if !gwOK {
				t.Errorf("no default route via %s in %v", tt.wantGW, routes)
			}
		})
	}
	lo, _ := h.LinkByName("lo")
	if lo.Attrs().Flags&net.FlagUp == 0 {
		t.Error("lo not up")
	}
	if _, err := ApplyNetwork(h, "nope0", &IPConfig{Addr: netip.MustParsePrefix("192.0.2.9/24")}); err == nil {
		t.Error("missing interface accepted")
	}
}
