package hearth_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/firewall"
	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/network/nstest"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/firecracker"
)

// TestFirecrackerNetworked gives simulated VMs real host networking, all
// inside a namespace the test made: each VMM runs in its own network
// namespace with its TAP, the guest learns its address from the kernel
// command line, the egress policy is installed before the VMM starts and
// replaced atomically later, clones get their own slot, and destroy
// leaves no namespace behind.
func TestFirecrackerNetworked(t *testing.T) {
	nstest.RequireRoot(t)
	ctx := context.Background()
	w := nstest.NewWorld(t)
	f := newFC(t)
	f.rt.Close()
	b, err := firecracker.New(firecracker.Options{Binary: fcsimBinary(t), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	nsDir := filepath.Join(w.Dir, "vmns")
	rt, err := hearth.Open(ctx, hearth.Config{StateDir: f.state, Backends: []vmm.Backend{b},
		Network: &hearth.NetworkConfig{
			Network:  network.Config{Mode: network.ModeNetNS, HostNS: w.Host.Path, NetNSDir: nsDir, EgressIface: nstest.EgressIface, PoolSize: -1},
			Firewall: firewall.NFTables,
		}})
	if err != nil {
		t.Fatal(err)
	}
	f.rt = rt
	spec := f.spec
	spec.Network = &hearth.NetworkSpec{Allow: []string{"tcp:198.18.1.10/32:443"}}

	bad := spec
	bad.Network = &hearth.NetworkSpec{Allow: []string{"tcp:999.0.0.0/8:443"}}
	if _, err := rt.Create(ctx, "bad", bad); !errorsIs(err, hearth.ErrInvalidArgument) {
		t.Fatalf("bad egress rule: %v", err)
	}

	v, err := rt.Create(ctx, "n1", spec)
	if err != nil {
		t.Fatal(err)
	}
	reqs := f.requests(t)
	var nic, boot string
	for _, r := range reqs {
		switch r.Path {
		case "/network-interfaces/eth0":
			nic = string(r.Body)
		case "/boot-source":
			boot = string(r.Body)
		}
	}
	if !strings.Contains(nic, `"host_dev_name":"hthtap0"`) || !strings.Contains(boot, "hearth.ip=172.16.0.2/30,172.16.0.1") {
		t.Fatalf("NIC %s\nboot %s", nic, boot)
	}
	// The VMM runs in the VM's own namespace (the one pinned for its slot).
	vmNS, _ := os.Readlink(filepath.Join("/proc", itoa(v.Pid), "ns", "net"))
	if want := pinnedNS(t, nsDir); vmNS != want {
		t.Fatalf("VMM net namespace %q, want the VM's %q", vmNS, want)
	}
	if err := rt.SetEgress(ctx, "n1", []string{"tcp:198.18.1.20/32:80"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := rt.SetEgress(ctx, "n1", []string{"tcp:nonsense"}, nil); !errorsIs(err, hearth.ErrInvalidArgument) {
		t.Fatalf("bad replacement: %v", err)
	}
	if _, err := rt.Start(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Snapshot(ctx, "n1", "nsnap"); err != nil {
		t.Fatal(err)
	}
	c, err := rt.Restore(ctx, hearth.RestoreSpec{Snapshot: "nsnap", VM: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	cNS, _ := os.Readlink(filepath.Join("/proc", itoa(c.Pid), "ns", "net"))
	if cNS == vmNS {
		t.Fatal("clone shares its source's network namespace")
	}
	if ents, _ := os.ReadDir(nsDir); len(ents) != 2 {
		t.Fatalf("want 2 VM namespaces, have %v", ents)
	}
	for _, id := range []string{"n1", "n2"} {
		if err := rt.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if ents, _ := os.ReadDir(nsDir); len(ents) != 0 {
		t.Fatalf("namespaces left: %v", ents)
	}
}

func itoa(n int) string {
	b := []byte{}
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

// pinnedNS returns the namespace id ("net:[inode]") of the only namespace
// pinned in dir.
func pinnedNS(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 1 {
		t.Fatalf("want one VM namespace in %s: %v %v", dir, ents, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, ents[0].Name()), &st); err != nil {
		t.Fatal(err)
	}
	return "net:[" + itoa(int(st.Ino)) + "]"
}
