package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/firewall"
	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/network/nstest"
)

// withWorld opens runtimes inside w: the host namespace is the world's,
// VM namespaces are pinned under it, egress leaves by its uplink.
func withWorld(w *nstest.World) func(*hearth.Config) {
	return func(c *hearth.Config) {
		c.Network = &hearth.NetworkConfig{
			Network: network.Config{Mode: network.ModeNetNS, HostNS: w.Host.Path, NetNSDir: filepath.Join(w.Dir, "vmns"),
				EgressIface: nstest.EgressIface, PoolSize: -1},
			Firewall: firewall.NFTables,
		}
	}
}

// vmNS is the network namespace a VM's QEMU runs in, and the address of
// the namespace's uplink: where the VM's traffic comes from on the host.
func vmNS(t *testing.T, rt *hearth.Runtime, id string) (*nstest.NS, netip.Addr) {
	t.Helper()
	v, err := rt.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	h, err := netns.GetFromPath(fmt.Sprintf("/proc/%d/ns/net", v.Pid))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	ns := &nstest.NS{Name: id, Handle: h}
	var addr netip.Addr
	err = ns.Run(func() error {
		ifc, err := netIfaceAddrs(network.NSVeth)
		if err == nil {
			addr = ifc
		}
		return err
	})
	if err != nil {
		t.Fatalf("%s: address of %s: %v", id, network.NSVeth, err)
	}
	return ns, addr
}

// dial runs busybox nc in the guest against addr and reports whether the
// responder's greeting came back. A drop costs the connect timeout.
func dial(t *testing.T, rt *hearth.Runtime, id, addr string) bool {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	out, _, code := guestExec(t, rt, id, "/usr/bin/timeout", "60", "/usr/bin/nc", "-w", "4", host, port)
	return code == 0 && strings.HasPrefix(out, "ok ")
}

// TestGuestEgress boots two guests with real networking inside namespaces
// the test made and checks their egress firewall from inside the guests:
// allowed destinations answer, others do not, the DNS allowance reaches
// only the resolver, a broad rule does not open other VMs, and a policy
// replaced at run time takes effect.
func TestGuestEgress(t *testing.T) {
	t.Parallel()
	state := newState(t)
	w := nstest.NewWorld(t)
	// DNS over TCP too: the guest's busybox has no UDP client.
	nstest.ServeTCP(t, w.Inet, "0.0.0.0:53")
	ctx := context.Background()
	rt := openQEMU(t, state, withWorld(w))
	// Before the world goes: a VM left by a failure holds a namespace
	// pinned inside it.
	t.Cleanup(func() { destroyAll(rt); rt.Close() })
	on := true
	specs := map[string]*hearth.NetworkSpec{
		// A broad rule: every port-80 destination, but never another VM.
		"wide": {Allow: []string{"tcp:0.0.0.0/0:80"}},
		// One destination, and a resolver.
		"narrow": {Allow: []string{"tcp:" + nstest.Allowed.String() + "/32:80"}, DNS: []string{nstest.Resolver.String()}},
	}
	for _, id := range []string{"wide", "narrow"} {
		if _, err := rt.Create(ctx, id, hearth.Spec{Image: "default", MemoryMiB: 256, Agent: &on, Network: specs[id]}); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	// The guest took its address from hearth.ip=.
	if a := execOut(t, rt, "wide", "/sbin/ip", "-4", "-o", "addr"); !strings.Contains(a, "172.16.0.2/30") {
		t.Fatalf("guest addresses: %q\nkernel command line: %s\nlinks: %s\nconsole:\n%s", a, execOut(t, rt, "wide", "cat", "/proc/cmdline"),
			execOut(t, rt, "wide", "/sbin/ip", "-o", "link"), consoleTail(rt, "wide"))
	}
	wideNS, wideAddr := vmNS(t, rt, "wide")
	narrowNS, narrowAddr := vmNS(t, rt, "narrow")
	if wideAddr == narrowAddr {
		t.Fatalf("both VMs' traffic comes from %v", wideAddr)
	}
	// A responder on each VM's own uplink address, reachable from the
	// host: only the firewall stands between the VMs.
	for _, v := range []struct {
		ns   *nstest.NS
		addr netip.Addr
	}{{wideNS, wideAddr}, {narrowNS, narrowAddr}} {
		nstest.ServeTCP(t, v.ns, v.addr.String()+":80")
		if _, err := w.Host.DialTCP(v.addr.String()+":80", netip.Addr{}, 10*time.Second); err != nil {
			t.Fatalf("host to %v:80: %v", v.addr, err)
		}
	}

	checks := []struct {
		vm, addr string
		want     bool
	}{
		{"wide", nstest.Allowed.String() + ":80", true},
		{"wide", nstest.Denied.String() + ":80", true},
		{"wide", nstest.Allowed.String() + ":443", false},
		{"wide", narrowAddr.String() + ":80", false}, // VM→VM
		{"wide", nstest.Resolver.String() + ":53", false},
		{"narrow", nstest.Allowed.String() + ":80", true},
		{"narrow", nstest.Denied.String() + ":80", false},
		{"narrow", nstest.Resolver.String() + ":53", true}, // the DNS allowance
		{"narrow", nstest.Allowed.String() + ":53", false},
		{"narrow", wideAddr.String() + ":80", false}, // VM→VM
	}
	for _, c := range checks {
		if got := dial(t, rt, c.vm, c.addr); got != c.want {
			t.Errorf("%s → %s: reached %v, want %v", c.vm, c.addr, got, c.want)
		}
	}
	// A policy replaced at run time applies at once.
	if err := rt.SetEgress(ctx, "narrow", []string{"tcp:" + nstest.Denied.String() + "/32:80"}, nil); err != nil {
		t.Fatal(err)
	}
	if !dial(t, rt, "narrow", nstest.Denied.String()+":80") || dial(t, rt, "narrow", nstest.Allowed.String()+":80") {
		t.Error("the replaced policy is not the one enforced")
	}
	for _, id := range []string{"wide", "narrow"} {
		if err := rt.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	noGuestsLeft(t, state)
	if ents, _ := os.ReadDir(filepath.Join(w.Dir, "vmns")); len(ents) != 0 {
		t.Errorf("VM namespaces left: %v", ents)
	}
}
