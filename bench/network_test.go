package bench

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/firewall"
	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/network/nstest"
)

// Per-VM network + firewall setup and teardown: hearth (netlink and one
// nftables batch, or one iptables-restore commit) against the same
// topology and rules built with ip/iptables shell-outs, in one run, all
// inside namespaces the benchmark creates (nstest.World). Metrics:
// setup-µs and teardown-µs per VM.

var benchRules = []string{"tcp:198.18.1.10/32:443", "tcp:10.0.0.0/8:80-90", "udp:[2001:db8::]/32:53-54", "icmp:0.0.0.0/0"}

type netStack struct {
	w  *nstest.World
	m  *network.Manager
	fw firewall.Firewall
}

func newNetStack(b *testing.B, mode network.Mode, backend firewall.Backend, pool int) *netStack {
	b.Helper()
	w := nstest.NewWorld(b)
	m, err := network.New(network.Config{
		Mode: mode, HostNS: w.Host.Path, NetNSDir: filepath.Join(w.Dir, "vms"),
		EgressIface: nstest.EgressIface, DNS: nstest.Resolver, PoolSize: pool,
	}, network.NewMemAllocator())
	if err != nil {
		b.Fatal(err)
	}
	fw, err := firewall.New(firewall.Config{Backend: backend, HostNS: w.Host.Path, VMNets: m.VMNets(), Guard: m.GuardIfaces()})
	if err != nil {
		m.Purge(context.Background())
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx := context.Background()
		fw.Reconcile(ctx, func(string) bool { return false })
		fw.Purge(ctx)
		m.Reconcile(ctx, func(string) bool { return false })
		m.Purge(ctx)
	})
	return &netStack{w: w, m: m, fw: fw}
}

func reportNet(b *testing.B, setup, teardown time.Duration) {
	b.ReportMetric(float64(setup.Microseconds())/float64(b.N), "setup-µs")
	b.ReportMetric(float64(teardown.Microseconds())/float64(b.N), "teardown-µs")
}

func benchHearth(b *testing.B, mode network.Mode, backend firewall.Backend, pool int) {
	s := newNetStack(b, mode, backend, pool)
	ctx := context.Background()
	pol, err := firewall.ParsePolicy(benchRules, nstest.Resolver.String())
	if err != nil {
		b.Fatal(err)
	}
	var setup, teardown time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if pool > 0 {
			// Refill outside the measurement: a pool exists so creates
			// do not pay for it.
			b.StopTimer()
			if err := s.m.Fill(ctx); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		owner := fmt.Sprintf("vm-%d", i)
		t0 := time.Now()
		a, err := s.m.Attach(ctx, owner)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.fw.Apply(ctx, firewall.RefFor(a), pol); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := s.fw.Remove(ctx, firewall.RefFor(a)); err != nil {
			b.Fatal(err)
		}
		if err := s.m.Detach(ctx, owner); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		setup += t1.Sub(t0)
		teardown += t2.Sub(t1)
	}
	reportNet(b, setup, teardown)
}

// benchShell builds what bridge mode + the iptables backend build, with
// one ip or iptables process per step, as the seed did.
func benchShell(b *testing.B) {
	s := newNetStack(b, network.ModeBridge, firewall.IPTables, -1)
	pol, err := firewall.ParsePolicy(benchRules, nstest.Resolver.String())
	if err != nil {
		b.Fatal(err)
	}
	vmNets := s.m.VMNets()
	run := func(cmds [][]string) error {
		return s.w.Host.Run(func() error {
			for _, c := range cmds {
				if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
					return fmt.Errorf("%s: %w: %s", strings.Join(c, " "), err, out)
				}
			}
			return nil
		})
	}
	var setup, teardown time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		slot := uint64(100 + i%1000)
		tap := network.BridgeTAPName(slot)
		chain := fmt.Sprintf("hth-%d-a", slot)
		guest := fmt.Sprintf("172.30.%d.%d", (slot+2)/256, (slot+2)%256)
		ref := firewall.VMRef{Owner: "shell", Slot: slot, Iface: tap, Bridge: network.DefaultBridge,
			Addr: netipMust(guest), MAC: []byte{0x02, 0x68, 172, 30, byte((slot + 2) / 256), byte(slot + 2)}}
		up := [][]string{
			{"ip", "tuntap", "add", "dev", tap, "mode", "tap"},
			{"ip", "link", "set", "dev", tap, "mtu", "1500"},
			{"ip", "link", "set", "dev", tap, "master", network.DefaultBridge},
			{"ip", "link", "set", "dev", tap, "type", "bridge_slave", "isolated", "on"},
			{"ip", "link", "set", "dev", tap, "up"},
		}
		down := [][]string{}
		for _, fam := range []int{4, 6} {
			bin := "iptables"
			if fam == 6 {
				bin = "ip6tables"
			}
			up = append(up, []string{bin, "-w", "-N", chain})
			for _, r := range firewall.IPTablesRules(ref, pol, vmNets, fam) {
				up = append(up, append([]string{bin, "-w", "-A", chain}, r...))
			}
			jump := []string{"-m", "physdev", "--physdev-in", tap, "-j", chain}
			up = append(up, append([]string{bin, "-w", "-I", "FORWARD", "1"}, jump...), append([]string{bin, "-w", "-I", "INPUT", "1"}, jump...))
			down = append(down, append([]string{bin, "-w", "-D", "FORWARD"}, jump...), append([]string{bin, "-w", "-D", "INPUT"}, jump...),
				[]string{bin, "-w", "-F", chain}, []string{bin, "-w", "-X", chain})
		}
		down = append(down, []string{"ip", "link", "del", "dev", tap})
		t0 := time.Now()
		if err := run(up); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := run(down); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		setup += t1.Sub(t0)
		teardown += t2.Sub(t1)
	}
	reportNet(b, setup, teardown)
}

// BenchmarkVMNetworkSetup runs every variant in one run; compare
// hearth-bridge-* with shell-bridge-ip-iptables (same links, same rules).
func BenchmarkVMNetworkSetup(b *testing.B) {
	nstest.RequireRoot(b)
	for _, bin := range []string{"ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(bin); err != nil {
			b.Skipf("%s not installed (apt-get install iproute2 iptables)", bin)
		}
	}
	b.Run("hearth-netns-nftables", func(b *testing.B) { benchHearth(b, network.ModeNetNS, firewall.NFTables, -1) })
	b.Run("hearth-netns-nftables-pooled", func(b *testing.B) { benchHearth(b, network.ModeNetNS, firewall.NFTables, 1) })
	b.Run("hearth-bridge-nftables", func(b *testing.B) { benchHearth(b, network.ModeBridge, firewall.NFTables, -1) })
	b.Run("hearth-bridge-iptables", func(b *testing.B) { benchHearth(b, network.ModeBridge, firewall.IPTables, -1) })
	b.Run("shell-bridge-ip-iptables", benchShell)
}
