package reliability

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/jail"
	"github.com/hearth-vm/hearth/store"
	"github.com/hearth-vm/hearth/vmm/firecracker"
)

// resJailParent is the tests' own cgroup parent, so they never touch the
// cgroups of real VMs.
const resJailParent = "hearth-test-resjail"

// resJailLeft lists what jails of the runtime are on the host: chroots
// under the state dir's jail base and VM cgroups under resJailParent.
func resJailLeft(e *resEnv) []string {
	var left []string
	execs, _ := os.ReadDir(filepath.Join(e.state, "jail"))
	for _, x := range execs {
		ents, _ := os.ReadDir(filepath.Join(e.state, "jail", x.Name()))
		for _, j := range ents {
			left = append(left, "chroot "+x.Name()+"/"+j.Name())
		}
	}
	ctrls, _ := os.ReadDir("/sys/fs/cgroup")
	for _, c := range ctrls {
		ents, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", c.Name(), resJailParent))
		for _, g := range ents {
			if g.IsDir() {
				left = append(left, "cgroup "+c.Name()+"/"+g.Name())
			}
		}
	}
	return left
}

// TestResourceJailUIDsExhausted runs jailed VMs (the simulator plays the
// jailer) from a uid range with room for two. The third fails with a
// Jailer error that says the range is used up (errors.Is store.ErrFull),
// before any process starts; no chroot, cgroup, directory or allocation
// stays; the jailed VMs keep working; and a freed uid serves a new VM.
func TestResourceJailUIDsExhausted(t *testing.T) {
	resRequireRoot(t)
	ctx := context.Background()
	e := resNewEnv(t, 1<<20)
	ids := jail.Range{Lo: 7_100_000, Hi: 7_100_001}
	rt := e.open(t, func(c *hearth.Config) {
		c.JailIDs = ids
		c.JailCgroupParent = resJailParent
	}, func(o *firecracker.Options) {
		o.JailerBinary = filepath.Join(filepath.Dir(e.sim), "jailer")
		o.UseJailer = true
		o.ParentCgroup = resJailParent
	})
	defer rt.Close()
	t.Cleanup(func() {
		for _, c := range []string{"pids", "cpu", "memory", "cpu,cpuacct", "cpuset"} {
			os.Remove(filepath.Join("/sys/fs/cgroup", c, resJailParent))
		}
	})
	spec := e.spec(false)
	spec.Agent = new(bool) // the guest would have to live in the chroot
	spec.Jail = &hearth.JailSpec{PidsMax: 64}

	for _, id := range []string{"j0", "j1"} {
		if _, err := resUp(ctx, rt, id, spec); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
	}
	before := resJailLeft(e)
	_, err := rt.Create(ctx, "j2", spec)
	resWantErr(t, err, hearth.KindJailer, "no free jail uid", fmt.Sprintf("%d-%d", ids.Lo, ids.Hi))
	if !errors.Is(err, store.ErrFull) {
		t.Fatalf("errors.Is(store.ErrFull) is false for %v", err)
	}
	if after := resJailLeft(e); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a failed create changed the jails:\nbefore %v\nafter  %v", before, after)
	}
	e.checkLive(t, rt, "j0", "j1")
	resServes(t, rt, "j0")

	if err := rt.Destroy(ctx, "j1"); err != nil {
		t.Fatal(err)
	}
	if _, err := resUp(ctx, rt, "j2", spec); err != nil {
		t.Fatalf("create after a uid was freed: %v", err)
	}
	e.checkLive(t, rt, "j0", "j2")
	for _, id := range []string{"j0", "j2"} {
		if err := rt.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	e.checkLive(t, rt)
	eventually(t, 10*time.Second, "jails", func() (bool, string) {
		left := resJailLeft(e)
		return len(left) == 0, fmt.Sprint(left)
	})
	rt.Close()
	e.checkStoreEmpty(t)
}
