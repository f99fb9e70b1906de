package firewall_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/google/nftables"
	"github.com/hearth-vm/hearth/firewall"
	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/network/nstest"
	"github.com/vishvananda/netns"
)

const (
	quick = 700 * time.Millisecond // below TCP's 1 s SYN retransmit: a drop shows as a timeout
	slow  = 3 * time.Second
)

type backendCase struct {
	name string
	cfg  firewall.Config
}

func backends() []backendCase {
	return []backendCase{
		{"nftables", firewall.Config{Backend: firewall.NFTables}},
		{"iptables-nft", firewall.Config{Backend: firewall.IPTables, IPTablesPath: "/usr/sbin/iptables-nft", IP6TablesPath: "/usr/sbin/ip6tables-nft"}},
		{"iptables-legacy", firewall.Config{Backend: firewall.IPTables, IPTablesPath: "/usr/sbin/iptables-legacy", IP6TablesPath: "/usr/sbin/ip6tables-legacy"}},
	}
}

// stack is one world with a network manager and a firewall in its host
// namespace.
type stack struct {
	purged bool
	w      *nstest.World
	m      *network.Manager
	fw     firewall.Firewall
}

func newStack(t *testing.T, mode network.Mode, bc backendCase) *stack {
	t.Helper()
	if bc.cfg.Backend == firewall.IPTables {
		if _, err := os.Stat(bc.cfg.IPTablesPath); err != nil {
			t.Skipf("%s not installed (apt-get install iptables)", bc.cfg.IPTablesPath)
		}
	}
	w := nstest.NewWorld(t)
	m, err := network.New(network.Config{
		Mode: mode, HostNS: w.Host.Path, NetNSDir: filepath.Join(w.Dir, "vms"),
		EgressIface: nstest.EgressIface, DNS: nstest.Resolver, PoolSize: -1,
	}, network.NewMemAllocator())
	if err != nil {
		t.Fatalf("network.New: %v", err)
	}
	cfg := bc.cfg
	cfg.HostNS = w.Host.Path
	cfg.VMNets = m.VMNets()
	cfg.Guard = m.GuardIfaces()
	fw, err := firewall.New(cfg)
	if err != nil {
		m.Purge(context.Background())
		t.Fatalf("firewall.New: %v", err)
	}
	s := &stack{w: w, m: m, fw: fw}
	t.Cleanup(func() {
		if s.purged {
			return
		}
		ctx := context.Background()
		if _, err := fw.Reconcile(ctx, func(string) bool { return false }); err != nil {
			t.Errorf("firewall final reconcile: %v", err)
		}
		if err := fw.Purge(ctx); err != nil {
			t.Errorf("firewall purge: %v", err)
		}
		if _, err := m.Reconcile(ctx, func(string) bool { return false }); err != nil {
			t.Errorf("network final reconcile: %v", err)
		}
		if err := m.Purge(ctx); err != nil {
			t.Errorf("network purge: %v", err)
		}
	})
	return s
}

func (s *stack) attach(t *testing.T, owner string) (*network.Attachment, *nstest.Guest) {
	t.Helper()
	a, err := s.m.Attach(context.Background(), owner)
	if err != nil {
		t.Fatalf("attach %s: %v", owner, err)
	}
	vmns := s.w.Host.Handle
	if a.NetNSPath != "" {
		h, err := netns.GetFromPath(a.NetNSPath)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		vmns = h
	}
	g := nstest.AttachGuest(t, s.w.Dir, "guest-"+owner, vmns, a.TAP, a.HardwareAddr(), a.GuestAddr, a.Gateway)
	return a, g
}

func mustPolicy(t *testing.T, rules []string, dns ...string) firewall.Policy {
	t.Helper()
	p, err := firewall.ParsePolicy(rules, dns...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func reach(g *nstest.Guest, addr string) error {
	_, err := g.NS.DialTCP(addr, netip.Addr{}, quick)
	return err
}

func expectReach(t *testing.T, g *nstest.Guest, addr string) {
	t.Helper()
	if err := nstest.Eventually(slow, func() error { return reach(g, addr) }); err != nil {
		t.Errorf("%s → %s: want reachable, got %v", g.NS.Name, addr, err)
	}
}

func expectBlocked(t *testing.T, g *nstest.Guest, addr string) {
	t.Helper()
	if err := reach(g, addr); err == nil {
		t.Errorf("%s → %s: want blocked, got through", g.NS.Name, addr)
	}
}

func TestFirewallEndToEnd(t *testing.T) {
	for _, mode := range []network.Mode{network.ModeNetNS, network.ModeBridge} {
		for _, bc := range backends() {
			t.Run(string(mode)+"/"+bc.name, func(t *testing.T) {
				nstest.RequireRoot(t)
				testFirewall(t, mode, bc)
			})
		}
	}
}

func testFirewall(t *testing.T, mode network.Mode, bc backendCase) {
	ctx := context.Background()
	s := newStack(t, mode, bc)
	a, ga := s.attach(t, "vm-a")
	b, gb := s.attach(t, "vm-b")
	refA, refB := firewall.RefFor(a), firewall.RefFor(b)
	allowed := nstest.Allowed.String()
	denied := nstest.Denied.String()

	// Before any policy the guards keep the VM off the network.
	expectBlocked(t, ga, allowed+":443")

	polA := mustPolicy(t, []string{"tcp:" + allowed + "/32:443"}, nstest.Resolver.String())
	if err := s.fw.Apply(ctx, refA, polA); err != nil {
		t.Fatalf("apply A: %v", err)
	}
	// B gets a broad rule: it must still not reach metadata, the host or A.
	polB := mustPolicy(t, []string{"tcp:0.0.0.0/0"})
	if err := s.fw.Apply(ctx, refB, polB); err != nil {
		t.Fatalf("apply B: %v", err)
	}

	t.Run("allowed and return traffic", func(t *testing.T) {
		expectReach(t, ga, allowed+":443") // the greeting is the return traffic
	})
	t.Run("denied", func(t *testing.T) {
		expectBlocked(t, ga, denied+":443")
		expectBlocked(t, ga, allowed+":80")
	})
	t.Run("dns allowance", func(t *testing.T) {
		if _, err := ga.NS.QueryUDP(nstest.Resolver.String()+":53", "q", slow); err != nil {
			t.Errorf("resolver: %v", err)
		}
		if _, err := ga.NS.QueryUDP(allowed+":53", "q", quick); err == nil {
			t.Error("udp/53 to a non-resolver got through")
		}
	})
	t.Run("metadata denied despite broad rule", func(t *testing.T) {
		expectReach(t, gb, allowed+":80")
		expectBlocked(t, gb, nstest.Metadata.String()+":80")
	})
	t.Run("vm to host denied", func(t *testing.T) {
		nstest.ServeTCP(t, s.w.Host, nstest.HostEgress.Addr().String()+":443")
		expectBlocked(t, gb, nstest.HostEgress.Addr().String()+":443")
	})
	t.Run("vm to vm denied", func(t *testing.T) {
		// The target is what A can address of B: its namespace's
		// address in netns mode, the guest itself in bridge mode.
		target := gb.NS
		if mode == network.ModeNetNS {
			h, _ := netns.GetFromPath(b.NetNSPath)
			defer h.Close()
			target = &nstest.NS{Name: "vm-b-ns", Handle: h}
		}
		nstest.ServeTCP(t, target, b.HostAddr.String()+":443")
		expectBlocked(t, ga, b.HostAddr.String()+":443")
		if mode == network.ModeNetNS {
			// Nor is B's own namespace a way anywhere.
			expectBlocked(t, gb, b.HostAddr.String()+":443")
			// The deny is the firewall's: allowing VMs opens it.
			p := mustPolicy(t, []string{"tcp:0.0.0.0/0:443"})
			p.AllowVMs = true
			if err := s.fw.Apply(ctx, refA, p); err != nil {
				t.Fatal(err)
			}
			expectReach(t, ga, b.HostAddr.String()+":443")
			if err := s.fw.Apply(ctx, refA, polA); err != nil {
				t.Fatal(err)
			}
			expectBlocked(t, ga, b.HostAddr.String()+":443")
		}
	})
	t.Run("spoofed source dropped", func(t *testing.T) {
		spoof := netip.MustParseAddr("172.16.0.9")
		if mode == network.ModeBridge {
			spoof = netip.MustParseAddr("172.30.0.200")
		}
		ga.NS.AddAddr(t, nstest.GuestIface, netip.PrefixFrom(spoof, 32))
		if _, err := ga.NS.DialTCP(allowed+":443", spoof, quick); err == nil {
			t.Error("spoofed source got through")
		}
		// Claiming the other VM's address is spoofing too (bridge mode).
		if mode == network.ModeBridge {
			ga.NS.AddAddr(t, nstest.GuestIface, netip.PrefixFrom(b.GuestAddr.Addr(), 32))
			if _, err := ga.NS.DialTCP(allowed+":443", b.GuestAddr.Addr(), quick); err == nil {
				t.Error("source of another VM got through")
			}
		}
		expectReach(t, ga, allowed+":443")
	})
	t.Run("spoofed mac dropped", func(t *testing.T) {
		ga.SetMAC(t, []byte{0x02, 0x68, 0xde, 0xad, 0xbe, 0xef})
		expectBlocked(t, ga, allowed+":443")
		ga.SetMAC(t, a.HardwareAddr())
		expectReach(t, ga, allowed+":443")
	})
	t.Run("policy replaced atomically under traffic", func(t *testing.T) {
		atomicReplace(t, s, ga, refA)
	})
	t.Run("remove and reconcile", func(t *testing.T) {
		if err := s.fw.Remove(ctx, refA); err != nil {
			t.Fatal(err)
		}
		if err := s.fw.Remove(ctx, refA); err != nil {
			t.Fatalf("second remove: %v", err)
		}
		expectBlocked(t, ga, allowed+":443") // back behind the guard
		ghost := firewall.VMRef{Owner: "ghost", Slot: 999, Iface: network.HostVethName(999), Addr: netip.MustParseAddr("10.200.99.2")}
		if err := s.fw.Apply(ctx, ghost, polA); err != nil {
			t.Fatal(err)
		}
		removed, err := s.fw.Reconcile(ctx, func(o string) bool { return o == "vm-b" })
		if err != nil {
			t.Fatal(err)
		}
		if len(removed) != 1 || !strings.Contains(removed[0], `"ghost"`) {
			t.Fatalf("reconcile removed %q, want only the ghost", removed)
		}
		expectReach(t, gb, allowed+":80")
	})
	t.Run("teardown leaves nothing", func(t *testing.T) {
		ga.Close()
		gb.Close()
		for _, r := range []firewall.VMRef{refA, refB} {
			if err := s.fw.Remove(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		for _, o := range []string{"vm-a", "vm-b"} {
			if err := s.m.Detach(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.fw.Purge(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.m.Purge(ctx); err != nil {
			t.Fatal(err)
		}
		s.purged = true
		checkClean(t, s.w)
	})
}

// atomicReplace swaps A's policy back and forth while two probes run:
// one to a destination both policies allow (must never fail: no closed
// window) and one to a destination neither allows (must never pass: no
// open window).
func atomicReplace(t *testing.T, s *stack, g *nstest.Guest, ref firewall.VMRef) {
	ctx := context.Background()
	allowed := nstest.Allowed.String()
	p1 := mustPolicy(t, []string{"tcp:" + allowed + "/32:443"}, nstest.Resolver.String())
	p2 := mustPolicy(t, []string{"tcp:" + allowed + "/32:443", "tcp:" + nstest.Denied.String() + "/32:443", "icmp:0.0.0.0/0"})
	var stop atomic.Bool
	var okFails, badPasses, probes atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			probes.Add(1)
			if err := reach(g, allowed+":443"); err != nil {
				okFails.Add(1)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if reach(g, allowed+":80") == nil {
				badPasses.Add(1)
			}
		}
	}()
	for i := 0; i < 40; i++ {
		p := p1
		if i%2 == 1 {
			p = p2
		}
		if err := s.fw.Apply(ctx, ref, p); err != nil {
			t.Errorf("apply %d: %v", i, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if okFails.Load() != 0 || badPasses.Load() != 0 {
		t.Errorf("during 40 replacements (%d probes): %d allowed probes failed, %d denied probes passed", probes.Load(), okFails.Load(), badPasses.Load())
	}
	if probes.Load() < 5 {
		t.Errorf("only %d probes ran", probes.Load())
	}
}

// checkClean asserts the host namespace holds no hearth link, namespace,
// nftables table or iptables chain.
func checkClean(t *testing.T, w *nstest.World) {
	t.Helper()
	links, err := w.Host.NL.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, network.Prefix) || n == network.DefaultBridge {
			t.Errorf("link %s left", n)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(w.Dir, "vms")); len(ents) != 0 {
		t.Errorf("namespaces left: %v", ents)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(w.Host.Handle)))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if strings.HasPrefix(tb.Name, "hearth") {
			t.Errorf("nftables table %s (family %d) left", tb.Name, tb.Family)
		}
	}
	for _, bin := range []string{"/usr/sbin/iptables-nft", "/usr/sbin/iptables-legacy"} {
		if _, err := os.Stat(bin); err != nil {
			continue
		}
		ipt, err := iptables.New(iptables.Path(bin))
		if err != nil {
			t.Fatal(err)
		}
		var chains []string
		w.Host.Run(func() (err error) { chains, err = ipt.ListChains("filter"); return })
		for _, ch := range chains {
			if strings.HasPrefix(ch, "HEARTH") || strings.HasPrefix(ch, "hth-") {
				t.Errorf("%s chain %s left", bin, ch)
			}
		}
	}
	routes, _ := w.Host.NL.RouteList(nil, 0)
	for _, r := range routes {
		if l, err := w.Host.NL.LinkByIndex(r.LinkIndex); err == nil && strings.HasPrefix(l.Attrs().Name, network.Prefix) {
			t.Errorf("route %v via %s left", r, l.Attrs().Name)
		}
	}
	_ = fmt.Sprint()
}
