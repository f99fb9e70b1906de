package network_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/network/nstest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// newManager runs a Manager with the world's host namespace as "host".
func newManager(t *testing.T, w *nstest.World, mode network.Mode, pool int) (*network.Manager, *network.MemAllocator) {
	t.Helper()
	alloc := network.NewMemAllocator()
	m, err := network.New(network.Config{
		Mode:        mode,
		HostNS:      w.Host.Path,
		NetNSDir:    filepath.Join(w.Dir, "vms"),
		EgressIface: nstest.EgressIface,
		DNS:         nstest.Resolver,
		PoolSize:    pool,
	}, alloc)
	if err != nil {
		t.Fatalf("network.New: %v", err)
	}
	t.Cleanup(func() {
		// Whatever the test left attached goes too, even on failure.
		if _, err := m.Reconcile(context.Background(), func(string) bool { return false }); err != nil {
			t.Errorf("final reconcile: %v", err)
		}
		if err := m.Purge(context.Background()); err != nil {
			t.Errorf("purge: %v", err)
		}
	})
	return m, alloc
}

// vmNS returns the namespace holding the attachment's TAP.
func vmNS(t *testing.T, w *nstest.World, a *network.Attachment) netns.NsHandle {
	t.Helper()
	if a.NetNSPath == "" {
		return w.Host.Handle
	}
	h, err := netns.GetFromPath(a.NetNSPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func guestFor(t *testing.T, w *nstest.World, name string, a *network.Attachment) *nstest.Guest {
	t.Helper()
	return nstest.AttachGuest(t, w.Dir, name, vmNS(t, w, a), a.TAP, a.HardwareAddr(), a.GuestAddr, a.Gateway)
}

func hearthLinks(t *testing.T, nl *netlink.Handle) []string {
	t.Helper()
	links, err := nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, network.Prefix) || n == network.DefaultBridge {
			out = append(out, n)
		}
	}
	return out
}

func TestModesEndToEnd(t *testing.T) {
	for _, mode := range []network.Mode{network.ModeNetNS, network.ModeBridge} {
		t.Run(string(mode), func(t *testing.T) {
			w := nstest.NewWorld(t)
			pool := 2
			m, alloc := newManager(t, w, mode, pool)
			ctx := context.Background()
			if mode == network.ModeNetNS {
				if err := m.Fill(ctx); err != nil {
					t.Fatalf("fill: %v", err)
				}
			}
			a, err := m.Attach(ctx, "vm-a")
			if err != nil {
				t.Fatalf("attach: %v", err)
			}
			b, err := m.Attach(ctx, "vm-b")
			if err != nil {
				t.Fatalf("attach b: %v", err)
			}
			if a.Slot == b.Slot || a.HostAddr == b.HostAddr {
				t.Fatalf("slots collide: %+v %+v", a, b)
			}
			if mode == network.ModeNetNS && (a.GuestAddr != b.GuestAddr || a.MAC != b.MAC || a.TAP != b.TAP) {
				t.Fatalf("netns mode: inside view differs between VMs: %+v %+v", a, b)
			}
			if want := fmt.Sprintf("hearth.ip=%s,%s,%s", a.GuestAddr, a.Gateway, nstest.Resolver); a.BootArg != want {
				t.Fatalf("boot arg %q, want %q", a.BootArg, want)
			}
			// The record round-trips through JSON for the runtime's store.
			js, _ := json.Marshal(a)
			var back network.Attachment
			if err := json.Unmarshal(js, &back); err != nil || back != *a {
				t.Fatalf("attachment JSON round trip: %v\n%s\n%+v", err, js, back)
			}
			if err := m.Adopt(ctx, &back); err != nil {
				t.Fatalf("adopt: %v", err)
			}

			// A jailed VMM runs as its own uid: the TAP is handed to it.
			if err := m.SetTAPOwner(ctx, a, 65534, 65534); err != nil {
				t.Fatalf("set tap owner: %v", err)
			}
			var owner uint32
			err = network.InNS(vmNS(t, w, a), func() error {
				l, err := netlink.LinkByName(a.TAP)
				if err != nil {
					return err
				}
				tt, ok := l.(*netlink.Tuntap)
				if !ok {
					return fmt.Errorf("%s is a %T", a.TAP, l)
				}
				owner = tt.Owner
				return nil
			})
			if err != nil || owner != 65534 {
				t.Fatalf("tap owner %d, %v", owner, err)
			}

			g := guestFor(t, w, "guest-a", a)
			// No firewall here: the guest reaches the internet, masqueraded
			// behind the host's egress address, and replies come back.
			var got string
			err = nstest.Eventually(5*time.Second, func() (err error) {
				got, err = g.NS.DialTCP(nstest.Allowed.String()+":443", netipZero, 2*time.Second)
				return err
			})
			if err != nil {
				t.Fatalf("guest → internet: %v", err)
			}
			if !strings.Contains(got, nstest.HostEgress.Addr().String()+":") {
				t.Fatalf("responder saw %q, want the host's egress address (NAT)", got)
			}
			if _, err := g.NS.QueryUDP(nstest.Resolver.String()+":53", "q", 2*time.Second); err != nil {
				t.Fatalf("guest → resolver: %v", err)
			}

			// Detach is idempotent and leaves nothing of the VM behind.
			g.Close()
			for _, o := range []string{"vm-a", "vm-b"} {
				for i := 0; i < 2; i++ {
					if err := m.Detach(ctx, o); err != nil {
						t.Fatalf("detach %s: %v", o, err)
					}
				}
			}
			if _, err := os.Stat(a.NetNSPath); mode == network.ModeNetNS && !os.IsNotExist(err) {
				t.Fatalf("netns %s still there: %v", a.NetNSPath, err)
			}
			for _, l := range hearthLinks(t, w.Host.NL) {
				if l == a.HostIface || l == b.HostIface {
					t.Fatalf("link %s left after detach", l)
				}
			}
			allocs, _ := alloc.Allocations("net." + string(mode))
			for s, o := range allocs {
				if o == "vm-a" || o == "vm-b" {
					t.Fatalf("slot %d still allocated to %s", s, o)
				}
			}
		})
	}
}

func TestReconcileRemovesOrphans(t *testing.T) {
	for _, mode := range []network.Mode{network.ModeNetNS, network.ModeBridge} {
		t.Run(string(mode), func(t *testing.T) {
			w := nstest.NewWorld(t)
			m, alloc := newManager(t, w, mode, -1)
			ctx := context.Background()
			live, err := m.Attach(ctx, "live")
			if err != nil {
				t.Fatal(err)
			}
			dead, err := m.Attach(ctx, "dead")
			if err != nil {
				t.Fatal(err)
			}
			// Plant orphans: a hearth-named link and namespace with no slot.
			strayLink := network.HostVethName(4000)
			if mode == network.ModeBridge {
				strayLink = network.BridgeTAPName(4000)
			}
			if err := w.Host.NL.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: strayLink}, PeerName: "stray-peer"}); err != nil {
				t.Fatal(err)
			}
			strayNS := filepath.Join(m.Config().NetNSDir, network.NetNSName(4001))
			if err := network.CreateNS(strayNS); err != nil {
				t.Fatal(err)
			}
			removed, err := m.Reconcile(ctx, func(o string) bool { return o == "live" })
			if err != nil {
				t.Fatalf("reconcile: %v", err)
			}
			joined := strings.Join(removed, "\n")
			for _, want := range []string{`owner "dead"`, "link " + strayLink, "netns " + network.NetNSName(4001)} {
				if !strings.Contains(joined, want) {
					t.Errorf("reconcile removed %q, missing %q", removed, want)
				}
			}
			if _, ok, _ := m.Lookup("dead"); ok {
				t.Error("dead VM still holds a slot")
			}
			if _, err := w.Host.NL.LinkByName(dead.HostIface); err == nil {
				t.Errorf("dead VM's %s survived", dead.HostIface)
			}
			if _, err := w.Host.NL.LinkByName(live.HostIface); err != nil {
				t.Errorf("live VM's %s removed: %v", live.HostIface, err)
			}
			// A second pass finds nothing.
			if again, err := m.Reconcile(ctx, func(o string) bool { return o == "live" }); err != nil || len(again) != 0 {
				t.Fatalf("second reconcile: %v %v", again, err)
			}
			if err := m.Detach(ctx, "live"); err != nil {
				t.Fatal(err)
			}
			allocs, _ := alloc.Allocations("net." + string(mode))
			if len(allocs) != 0 {
				t.Fatalf("allocations left: %v", allocs)
			}
			if err := m.Purge(ctx); err != nil {
				t.Fatal(err)
			}
			if left := hearthLinks(t, w.Host.NL); len(left) != 0 {
				t.Fatalf("links left after purge: %v", left)
			}
			ents, _ := os.ReadDir(m.Config().NetNSDir)
			if len(ents) != 0 {
				t.Fatalf("namespaces left: %v", ents)
			}
		})
	}
}
