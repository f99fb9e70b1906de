package reliability

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/nftables"
	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/firewall"
	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/network/nstest"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/memvmm"
)

// resNetSlots is the room of the tests' address pool: a /28 holds four
// /30 host links, one per VM.
const resNetSlots = 4

var resNetSubnet = netip.MustParsePrefix("10.231.0.0/28")

// resNetHost is what a networked runtime has put in the test's host
// namespace: VM namespaces, host veth ends and per-VM firewall chains.
type resNetHost struct {
	namespaces, veths, chains []string
}

func resNetState(t testing.TB, w *nstest.World, nsDir string) resNetHost {
	t.Helper()
	var h resNetHost
	ents, _ := os.ReadDir(nsDir)
	h.namespaces = names(ents)
	links, err := w.Host.NL.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if kind, _, ok := network.ParseLinkName(l.Attrs().Name); ok && kind == "veth" {
			h.veths = append(h.veths, l.Attrs().Name)
		}
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(w.Host.Handle)))
	if err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChains()
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == firewall.TableName && strings.HasPrefix(ch.Name, "vm-") {
			h.chains = append(h.chains, ch.Name)
		}
	}
	slices.Sort(h.veths)
	slices.Sort(h.chains)
	return h
}

// TestResourceIPAMExhausted fills a network whose pool has room for
// resNetSlots VMs (inside namespaces the test made). The next create
// fails with a NetworkConfig error that says the pool is exhausted and
// how large it is, before any VMM starts; it leaves no namespace, link,
// firewall chain, directory or allocation behind; the VMs already there
// keep working; and once one is destroyed, a create succeeds again.
func TestResourceIPAMExhausted(t *testing.T) {
	nstest.RequireRoot(t)
	for _, pool := range []int{-1, network.DefaultPoolSize} {
		t.Run(fmt.Sprintf("prebuilt=%d", max(pool, 0)), func(t *testing.T) {
			ctx := context.Background()
			w := nstest.NewWorld(t)
			nsDir := filepath.Join(w.Dir, "vmns")
			e := resNewEnv(t, 1<<20)
			netCfg := func(c *hearth.Config) {
				c.Network = &hearth.NetworkConfig{
					Network: network.Config{Mode: network.ModeNetNS, HostNS: w.Host.Path, NetNSDir: nsDir,
						EgressIface: nstest.EgressIface, Subnet: resNetSubnet, PoolSize: pool},
					Firewall: firewall.NFTables,
				}
			}
			rt := e.open(t, netCfg, nil)
			spec := e.spec(true)
			spec.Network = &hearth.NetworkSpec{Allow: []string{"tcp:198.18.1.10/32:443"}}

			var ids []string
			for i := range resNetSlots {
				id := fmt.Sprintf("n%d", i)
				if _, err := resUp(ctx, rt, id, spec); err != nil {
					t.Fatalf("create %s of %d: %v", id, resNetSlots, err)
				}
				ids = append(ids, id)
			}
			before := resNetState(t, w, nsDir)
			if len(before.chains) != resNetSlots || len(before.veths) != resNetSlots {
				t.Fatalf("%d VMs hold %+v", resNetSlots, before)
			}

			_, err := rt.Create(ctx, "over", spec)
			resWantErr(t, err, hearth.KindNetworkConfig, "exhausted", resNetSubnet.String(), fmt.Sprintf("%d slots", resNetSlots))
			if !errors.Is(err, network.ErrExhausted) {
				t.Fatalf("errors.Is(network.ErrExhausted) is false for %v", err)
			}
			if after := resNetState(t, w, nsDir); !resNetEqual(before, after) {
				t.Fatalf("a failed create changed the host:\nbefore %+v\nafter  %+v", before, after)
			}
			e.checkLive(t, rt, ids...)
			resServes(t, rt, "n0")

			// A restart adopts the VMs with their slots: the pool is as
			// full as before and nothing on the host changed.
			rt.Close()
			rt = e.open(t, netCfg, nil)
			if rep := rt.Reconciled(); len(rep.Adopted) != resNetSlots {
				t.Fatalf("after a restart: %+v", rep)
			}
			_, err = rt.Create(ctx, "over", spec)
			resWantErr(t, err, hearth.KindNetworkConfig, "exhausted")
			if after := resNetState(t, w, nsDir); !resNetEqual(before, after) {
				t.Fatalf("a restart changed the host:\nbefore %+v\nafter  %+v", before, after)
			}
			resServes(t, rt, "n1")

			// Room again: the freed slot serves the next VM.
			if err := rt.Destroy(ctx, "n3"); err != nil {
				t.Fatal(err)
			}
			ids = ids[:3]
			if _, err := resUp(ctx, rt, "over", spec); err != nil {
				t.Fatalf("create after a slot was freed: %v", err)
			}
			resExec(t, ctx, rt, "over")
			ids = append(ids, "over")
			e.checkLive(t, rt, ids...)

			for _, id := range ids {
				if err := rt.Destroy(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			e.checkLive(t, rt)
			left := resNetState(t, w, nsDir)
			// Pre-built slots stay pooled for the next VM; nothing a VM
			// held may stay.
			if len(left.chains) != 0 || len(left.namespaces) != len(left.veths) || len(left.veths) > max(pool, 0) {
				t.Fatalf("left after every VM was destroyed: %+v", left)
			}
			rt.Close()
			e.checkStoreEmpty(t)
		})
	}
}

func resNetEqual(a, b resNetHost) bool {
	return slices.Equal(a.namespaces, b.namespaces) && slices.Equal(a.veths, b.veths) && slices.Equal(a.chains, b.chains)
}

// TestResourceIPAMRace races three times as many creates as the network
// has slots, on the in-memory backend (a VMM process adds nothing to
// address allocation) with a slot pool refilling underneath: exactly as
// many succeed as there are slots, every other create fails with the
// exhausted error, no two VMs share a slot (each has its own firewall
// chain), and after the VMs are destroyed nothing they held is left.
func TestResourceIPAMRace(t *testing.T) {
	nstest.RequireRoot(t)
	ctx := context.Background()
	w := nstest.NewWorld(t)
	nsDir := filepath.Join(w.Dir, "vmns")
	e := resNewEnv(t, 1<<20)
	rt, err := hearth.Open(ctx, hearth.Config{StateDir: e.state, Backends: []vmm.Backend{memvmm.New()},
		Network: &hearth.NetworkConfig{
			Network: network.Config{Mode: network.ModeNetNS, HostNS: w.Host.Path, NetNSDir: nsDir,
				EgressIface: nstest.EgressIface, Subnet: resNetSubnet, PoolSize: 2},
			Firewall: firewall.NFTables,
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	spec := hearth.Spec{Kernel: e.kernel, Rootfs: e.rootfs, RootfsReadOnly: true, MemoryMiB: 32}

	var wg sync.WaitGroup
	errs := make([]error, 3*resNetSlots)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = resUp(ctx, rt, fmt.Sprintf("r%d", i), spec)
		}()
	}
	wg.Wait()
	var live []string
	for i, err := range errs {
		if err == nil {
			live = append(live, fmt.Sprintf("r%d", i))
			continue
		}
		resWantErr(t, err, hearth.KindNetworkConfig, "exhausted")
	}
	if len(live) != resNetSlots {
		t.Fatalf("%d creates succeeded for %d slots", len(live), resNetSlots)
	}
	h := resNetState(t, w, nsDir)
	if len(h.chains) != resNetSlots || len(h.veths) != resNetSlots || len(h.namespaces) != resNetSlots {
		t.Fatalf("%d VMs hold %+v", resNetSlots, h)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.state, "vms")); len(ents) != resNetSlots {
		t.Fatalf("VM directories: %v", names(ents))
	}
	for _, id := range live {
		if err := rt.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if views, _ := rt.List(ctx); len(views) != 0 {
		t.Fatalf("VMs left: %v", views)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.state, "vms")); len(ents) != 0 {
		t.Fatalf("VM directories left: %v", names(ents))
	}
	if h := resNetState(t, w, nsDir); len(h.chains) != 0 || len(h.veths) > 2 {
		t.Fatalf("left after every VM was destroyed: %+v", h)
	}
	rt.Close()
	e.checkStoreEmpty(t)
}
