package network

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-vm/hearth/store"
)

func TestPrefixMath(t *testing.T) {
	tests := []struct {
		prefix string
		n      uint64
		want   string
		err    bool
	}{
		{"172.16.0.0/30", 0, "172.16.0.0", false},
		{"172.16.0.0/30", 2, "172.16.0.2", false},
		{"172.16.0.0/30", 4, "", true},
		{"10.0.0.0/8", 1<<24 - 1, "10.255.255.255", false},
		{"10.0.0.0/8", 1 << 24, "", true},
		{"0.0.0.0/0", 1<<32 - 1, "255.255.255.255", false},
		{"2001:db8::/64", 1, "2001:db8::1", false},
		{"2001:db8::/64", 1<<64 - 1, "2001:db8::ffff:ffff:ffff:ffff", false},
		{"2001:db8::/120", 255, "2001:db8::ff", false},
		{"2001:db8::/120", 256, "", true},
		{"fe80::/10", 1 << 40, "fe80::100:0:0", false},
	}
	for _, tt := range tests {
		got, err := Nth(netip.MustParsePrefix(tt.prefix), tt.n)
		if (err != nil) != tt.err || (!tt.err && got.String() != tt.want) {
			t.Errorf("Nth(%s, %d) = %v, %v; want %s (err %v)", tt.prefix, tt.n, got, err, tt.want, tt.err)
		}
		if err == nil {
			back, err := Offset(netip.MustParsePrefix(tt.prefix), got)
			if err != nil || back != tt.n {
				t.Errorf("Offset(%s, %v) = %d, %v; want %d", tt.prefix, got, back, err, tt.n)
			}
		}
	}
	if got := Last(netip.MustParsePrefix("172.30.0.0/24")); got.String() != "172.30.0.255" {
		t.Errorf("Last = %v", got)
	}
	if got := Last(netip.MustParsePrefix("2001:db8::/32")); got.String() != "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff" {
		t.Errorf("Last v6 = %v", got)
	}
	if Size(netip.MustParsePrefix("10.0.0.0/30")) != 4 || Size(netip.MustParsePrefix("::/0")) != ^uint64(0) {
		t.Error("Size")
	}
	if _, err := Offset(netip.MustParsePrefix("10.0.0.0/30"), netip.MustParseAddr("10.0.0.9")); err == nil {
		t.Error("Offset outside prefix accepted")
	}
	subnets := []struct {
		parent string
		bits   int
		i      uint64
		want   string
		err    bool
	}{
		{"10.200.0.0/16", 30, 0, "10.200.0.0/30", false},
		{"10.200.0.0/16", 30, 1, "10.200.0.4/30", false},
		{"10.200.0.0/16", 30, 16383, "10.200.255.252/30", false},
		{"10.200.0.0/16", 30, 16384, "", true},
		{"10.200.0.0/16", 8, 0, "", true},
		{"2001:db8::/48", 64, 3, "2001:db8:0:3::/64", false},
		{"2001:db8::/32", 96, 1 << 40, "2001:db8:0:100::/96", false},
	}
	for _, tt := range subnets {
		got, err := Subnet(netip.MustParsePrefix(tt.parent), tt.bits, tt.i)
		if (err != nil) != tt.err || (!tt.err && got.String() != tt.want) {
			t.Errorf("Subnet(%s, /%d, %d) = %v, %v; want %s", tt.parent, tt.bits, tt.i, got, err, tt.want)
		}
	}
	if Mask(netip.MustParsePrefix("172.16.0.0/30")) != "255.255.255.252" || Mask(netip.MustParsePrefix("0.0.0.0/0")) != "0.0.0.0" {
		t.Error("Mask")
	}
}

func TestNames(t *testing.T) {
	for _, s := range []uint64{0, 1, 42, 65535, MaxSlot} {
		for _, n := range []string{NetNSName(s), HostVethName(s), BridgeTAPName(s)} {
			if err := ValidIfName(n); err != nil {
				t.Errorf("slot %d: %v", s, err)
			}
			if !strings.HasPrefix(n, Prefix) {
				t.Errorf("%s lacks prefix %s", n, Prefix)
			}
		}
		if k, got, ok := ParseLinkName(HostVethName(s)); !ok || k != "veth" || got != s {
			t.Errorf("ParseLinkName(%s) = %s %d %v", HostVethName(s), k, got, ok)
		}
		if k, got, ok := ParseLinkName(BridgeTAPName(s)); !ok || k != "tap" || got != s {
			t.Errorf("ParseLinkName(%s) = %s %d %v", BridgeTAPName(s), k, got, ok)
		}
		if got, ok := ParseNetNSName(NetNSName(s)); !ok || got != s {
			t.Errorf("ParseNetNSName(%s) = %d %v", NetNSName(s), got, ok)
		}
	}
	for _, n := range []string{GuestTAP, NSVeth} {
		if err := ValidIfName(n); err != nil {
			t.Error(err)
		}
		if _, _, ok := ParseLinkName(n); ok {
			t.Errorf("%s must not parse as a slot link (it lives in VM namespaces)", n)
		}
	}
	for _, n := range []string{"hthv", "hthv01", "hthv-1", "hthvx", "hthv99999999999", "eth0", "hearth0", "hthtap0"} {
		if _, _, ok := ParseLinkName(n); ok {
			t.Errorf("ParseLinkName(%q) accepted", n)
		}
	}
	for _, n := range []string{"", "a234567890123456", "a b", "a/b", "a:b", "..", "é"} {
		if ValidIfName(n) == nil {
			t.Errorf("ValidIfName(%q) accepted", n)
		}
	}
	mac, err := MACFor(netip.MustParseAddr("172.16.0.2"))
	if err != nil || mac.String() != "02:68:ac:10:00:02" {
		t.Errorf("MACFor = %v %v", mac, err)
	}
	if mac[0]&0x02 == 0 || mac[0]&0x01 != 0 {
		t.Error("MAC must be locally administered unicast")
	}
	if _, err := MACFor(netip.MustParseAddr("::1")); err == nil {
		t.Error("MACFor accepted IPv6")
	}
}

// allocators returns the in-memory fake and the real store.
func allocators(t *testing.T) map[string]Allocator {
	st, err := store.Open(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return map[string]Allocator{"mem": NewMemAllocator(), "store": st}
}

func TestAllocationNoCollisions(t *testing.T) {
	for name, alloc := range allocators(t) {
		t.Run(name, func(t *testing.T) {
			c := (&Config{Mode: ModeNetNS, Subnet: netip.MustParsePrefix("10.0.0.0/8")}).withDefaults()
			m := &Manager{cfg: c, alloc: alloc}
			// The store fsyncs every allocation, so it proves parity on
			// fewer; the in-memory allocator (same lowest-free semantics)
			// runs the full 10,000.
			n := 10000
			if name == "store" {
				n = 500
			}
			seen := map[uint64]bool{}
			hostAddrs := map[netip.Addr]bool{}
			lo, hi := c.slotRange()
			for i := 0; i < n; i++ {
				s, err := alloc.Allocate(c.poolName(), lo, hi, fmt.Sprintf("vm-%d", i))
				if err != nil {
					t.Fatalf("allocation %d: %v", i, err)
				}
				if seen[s] {
					t.Fatalf("slot %d handed out twice", s)
				}
				seen[s] = true
				a := m.attachment(s, "x")
				if hostAddrs[a.HostAddr] {
					t.Fatalf("host address %v handed out twice", a.HostAddr)
				}
				hostAddrs[a.HostAddr] = true
				if err := ValidIfName(a.HostIface); err != nil {
					t.Fatal(err)
				}
			}
			got, _ := alloc.Allocations(c.poolName())
			if len(got) != n {
				t.Fatalf("%d allocations recorded, want %d", len(got), n)
			}
		})
	}
}

func TestAllocationReleaseReuseExhaustion(t *testing.T) {
	for name, alloc := range allocators(t) {
		t.Run(name, func(t *testing.T) {
			// A /29 bridge subnet has 8 addresses: network, gateway and
			// broadcast leave 5 guests.
			cfg := Config{Mode: ModeBridge, Subnet: netip.MustParsePrefix("172.30.0.0/29"), EgressIface: "eth0"}
			c := cfg.withDefaults()
			if err := c.validate(); err != nil {
				t.Fatal(err)
			}
			m := &Manager{cfg: c, alloc: alloc, stop: make(chan struct{})}
			var got []uint64
			for i := 0; i < 5; i++ {
				s, _, err := m.take(fmt.Sprintf("vm-%d", i))
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, s)
				a := m.attachment(s, "")
				if a.GuestAddr.Addr() == a.Gateway || a.GuestAddr.Addr() == Last(c.Subnet) || a.GuestAddr.Addr() == c.Subnet.Addr() {
					t.Fatalf("slot %d got reserved address %v", s, a.GuestAddr)
				}
			}
			_, _, err := m.take("one-too-many")
			if !errors.Is(err, ErrExhausted) || !errors.Is(err, ErrNetworkConfig) {
				t.Fatalf("exhaustion: got %v, want ErrExhausted/ErrNetworkConfig", err)
			}
			if err := alloc.Release(c.poolName(), got[2]); err != nil {
				t.Fatal(err)
			}
			s, _, err := m.take("reuser")
			if err != nil || s != got[2] {
				t.Fatalf("reuse: got %d, %v; want %d", s, err, got[2])
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		field string
		kind  error
	}{
		{"mode", Config{Mode: "tunnel"}, "mode", ErrInvalidArgument},
		{"v6 subnet", Config{Subnet: netip.MustParsePrefix("fd00::/64")}, "subnet", ErrInvalidArgument},
		{"host bits", Config{Subnet: netip.MustParsePrefix("10.0.0.1/16")}, "subnet", ErrInvalidArgument},
		{"tiny netns subnet", Config{Subnet: netip.MustParsePrefix("10.0.0.0/31")}, "subnet", ErrNetworkConfig},
		{"tiny bridge subnet", Config{Mode: ModeBridge, Subnet: netip.MustParsePrefix("10.0.0.0/31")}, "subnet", ErrNetworkConfig},
		{"overlap", Config{Subnet: netip.MustParsePrefix("172.16.0.0/12")}, "guest_net", ErrInvalidArgument},
		{"egress", Config{EgressIface: "way-too-long-name0"}, "egress_iface", ErrInvalidArgument},
		{"mtu", Config{MTU: 10}, "mtu", ErrInvalidArgument},
		{"dns", Config{DNS: netip.MustParseAddr("::1")}, "dns", ErrInvalidArgument},
		{"relative dir", Config{NetNSDir: "run/netns"}, "netns_dir", ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cfg.withDefaults()
			err := c.validate()
			var e *Error
			if !errors.As(err, &e) || e.Field != tt.field || !errors.Is(err, tt.kind) {
				t.Fatalf("got %v, want field %s kind %v", err, tt.field, tt.kind)
			}
		})
	}
	for _, mode := range []Mode{ModeNetNS, ModeBridge} {
		c := (&Config{Mode: mode}).withDefaults()
		if err := c.validate(); err != nil {
			t.Errorf("defaults of %s invalid: %v", mode, err)
		}
	}
}

func TestAttachmentAddressing(t *testing.T) {
	dns := netip.MustParseAddr("10.0.0.53")
	nsm := &Manager{cfg: (&Config{DNS: dns}).withDefaults()}
	a := nsm.attachment(3, "vm")
	want := Attachment{
		Mode: ModeNetNS, Owner: "vm", Slot: 3, NetNSPath: "/run/netns/hth-3", TAP: "hthtap0", MAC: "02:68:ac:10:00:02",
		GuestAddr: netip.MustParsePrefix("172.16.0.2/30"), Gateway: netip.MustParseAddr("172.16.0.1"), DNS: dns,
		BootArg:   "hearth.ip=172.16.0.2/30,172.16.0.1,10.0.0.53",
		HostIface: "hthv3", HostAddr: netip.MustParseAddr("10.200.0.14"),
	}
	if *a != want {
		t.Errorf("netns attachment\n got %+v\nwant %+v", *a, want)
	}
	brm := &Manager{cfg: (&Config{Mode: ModeBridge}).withDefaults()}
	b := brm.attachment(3, "vm")
	wantB := Attachment{
		Mode: ModeBridge, Owner: "vm", Slot: 3, TAP: "htht3", MAC: "02:68:ac:1e:00:05",
		GuestAddr: netip.MustParsePrefix("172.30.0.5/24"), Gateway: netip.MustParseAddr("172.30.0.1"),
		BootArg:   "hearth.ip=172.30.0.5/24,172.30.0.1,",
		HostIface: "htht3", HostAddr: netip.MustParseAddr("172.30.0.5"), Bridge: "hearth0",
	}
	if *b != wantB {
		t.Errorf("bridge attachment\n got %+v\nwant %+v", *b, wantB)
	}
}
