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
	"testing"

	"github.com/google/nftables"
	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/firewall"
	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/network/nstest"
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
