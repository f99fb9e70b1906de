package reliability

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/hearth-vm/hearth"
	"golang.org/x/sys/unix"
)

// resRootfsBytes is the source rootfs of the disk tests: larger than the
// slack a "nearly full" disk keeps, smaller than the tmpfs.
const resRootfsBytes = 4 << 20

// resTmpfs mounts a tmpfs of size bytes on dir (created if needed) and
// unmounts it at cleanup.
func resTmpfs(t *testing.T, dir string, size int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// resFill allocates a file on dir's filesystem that leaves only slack
// bytes free, and returns a function that frees the space again.
func resFill(t *testing.T, dir string, slack int64) (free func()) {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	avail := int64(st.Bavail) * st.Bsize
	if avail <= slack {
		t.Fatalf("%s has %d bytes free, less than the slack %d", dir, avail, slack)
	}
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, avail-slack); err != nil {
		t.Fatalf("fill %s: %v", dir, err)
	}
	var once sync.Once
	free = func() {
		once.Do(func() {
			if err := os.Remove(p); err != nil {
				t.Error(err)
			}
		})
	}
	// A test that fails half way must not leave the disk full for the
	// next one.
	t.Cleanup(free)
	return free
}

// TestResourceDiskFull fills the state dir's filesystem (a small tmpfs)
// while VMs are cloned and snapshotted: the operation fails with a
// Rootfs error that says the disk is full (errors.Is ENOSPC), leaves no
// clone, directory, record, allocation or snapshot fragment behind, the
// VM created before keeps working (and is resumed after a failed
// snapshot), and once space is freed creates and snapshots succeed.
func TestResourceDiskFull(t *testing.T) {
	resRequireRoot(t)
	ctx := context.Background()
	e := resNewEnv(t, resRootfsBytes)
	resTmpfs(t, e.state, 32<<20)
	rt := e.open(t, nil, nil)
	defer rt.Close()
	if _, err := resUp(ctx, rt, "keep", e.spec(false)); err != nil {
		t.Fatal(err)
	}

	wantFull := func(t *testing.T, err error) {
		t.Helper()
		he := resWantErr(t, err, hearth.KindRootfs, "space")
		if he.VM == "" || he.Op == "" {
			t.Fatalf("the error does not name its operation and VM: %v", err)
		}
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("errors.Is(ENOSPC) is false for %v", err)
		}
	}

	t.Run("clone/preflight", func(t *testing.T) {
		free := resFill(t, e.state, 1<<20)
		_, err := rt.Create(ctx, "full", e.spec(false))
		wantFull(t, err)
		e.checkLive(t, rt, "keep")
		resServes(t, rt, "keep")
		free()
		if _, err := resUp(ctx, rt, "full", e.spec(false)); err != nil {
			t.Fatalf("create after space was freed: %v", err)
		}
		resExec(t, ctx, rt, "full")
		if err := rt.Destroy(ctx, "full"); err != nil {
			t.Fatal(err)
		}
		e.checkLive(t, rt, "keep")
	})

	// Two clones that each pass the free-space check but do not both fit:
	// at least one runs out of space while copying.
	t.Run("clone/racing", func(t *testing.T) {
		free := resFill(t, e.state, resRootfsBytes*3/2)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = rt.Create(ctx, fmt.Sprintf("race%d", i), e.spec(false))
			}()
		}
		wg.Wait()
		live := []string{"keep"}
		failed := 0
		for i, err := range errs {
			if err == nil {
				live = append(live, fmt.Sprintf("race%d", i))
				continue
			}
			failed++
			wantFull(t, err)
		}
		if failed == 0 {
			t.Fatal("two clones fitted where only one can")
		}
		e.checkLive(t, rt, live...)
		resServes(t, rt, "keep")
		free()
		for _, id := range live[1:] {
			if err := rt.Destroy(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		e.checkLive(t, rt, "keep")
	})

	// The snapshot's memory fits, the copy of the VM's disk does not.
	t.Run("snapshot", func(t *testing.T) {
		free := resFill(t, e.state, 1<<20)
		_, err := rt.Snapshot(ctx, "keep", "snap")
		wantFull(t, err)
		if v, _ := rt.Get(ctx, "keep"); v.Status != hearth.StatusRunning {
			t.Fatalf("after a failed snapshot the VM is %s, want running", v.Status)
		}
		if _, err := rt.GetSnapshot(ctx, "snap"); !errors.Is(err, hearth.ErrSnapshotNotFound) {
			t.Fatalf("failed snapshot is listed: %v", err)
		}
		e.checkLive(t, rt, "keep")
		resServes(t, rt, "keep")
		free()
		if _, err := rt.Snapshot(ctx, "keep", "snap"); err != nil {
			t.Fatalf("snapshot after space was freed: %v", err)
		}
		if err := rt.VerifySnapshot(ctx, "snap"); err != nil {
			t.Fatal(err)
		}
		if err := rt.DeleteSnapshot(ctx, "snap"); err != nil {
			t.Fatal(err)
		}
	})

	// Not even the memory file fits: the VMM fails the write and says so
	// only in its message; the runtime makes the cause checkable.
	t.Run("snapshot/memory", func(t *testing.T) {
		free := resFill(t, e.state, 0)
		_, err := rt.Snapshot(ctx, "keep", "snap")
		resWantErr(t, err, hearth.KindVMM, "space")
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("errors.Is(ENOSPC) is false for %v", err)
		}
		if v, _ := rt.Get(ctx, "keep"); v.Status != hearth.StatusRunning {
			t.Fatalf("after a failed snapshot the VM is %s, want running", v.Status)
		}
		e.checkLive(t, rt, "keep")
		resServes(t, rt, "keep")
		free()
	})

	if err := rt.Destroy(ctx, "keep"); err != nil {
		t.Fatal(err)
	}
	e.checkLive(t, rt)
	rt.Close()
	e.checkStoreEmpty(t)
}
