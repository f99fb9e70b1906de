package reliability

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
)

// resEnvFDChild hands the re-executed child of TestResourceFDs its env
// (JSON of resFDEnv); only the child has it.
const resEnvFDChild = "HEARTH_TEST_RES_FD_CHILD"

// resFDEnv is what the child needs of the parent's resEnv.
type resFDEnv struct {
	Dir, State, Kernel, Rootfs, Sim, AgentRoot string
}

// TestResourceFDs runs TestResourceFDsChild in a process of its own,
// because only there may RLIMIT_NOFILE be lowered, and then checks that
// no VMM the child started outlived its VMs.
func TestResourceFDs(t *testing.T) {
	resRequireRoot(t)
	if os.Getenv(resEnvFDChild) != "" {
		t.Skip("in the child")
	}
	e := resNewEnv(t, 1<<20)
	cfg, _ := json.Marshal(resFDEnv{e.dir, e.state, e.kernel, e.rootfs, e.sim, e.agentRoot})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	child := exec.CommandContext(ctx, os.Args[0], "-test.run", "^TestResourceFDsChild$", "-test.count=1", "-test.v")
	child.Env = append(os.Environ(), resEnvFDChild+"="+string(cfg))
	out, err := child.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
	eventually(t, 10*time.Second, "VMM processes after the child", func() (bool, string) {
		left := e.vmmProcs()
		return len(left) == 0, fmt.Sprint(left)
	})
}

// resLimitFor returns the RLIMIT_NOFILE under which exactly budget more
// descriptors can be opened: the kernel hands out the lowest free number
// and refuses numbers at or above the limit, so the limit is where the
// budget-th free number below it ends (open descriptors above it stay).
func resLimitFor(budget int) uint64 {
	open := map[int]bool{}
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			open[n] = true
		}
	}
	n, free := 0, 0
	for ; free < budget || open[n]; n++ {
		if !open[n] {
			free++
		}
	}
	return uint64(n)
}

// TestResourceFDsChild creates VMs while the process is allowed only a
// few more descriptors than it has open, for every budget from none up
// to enough: each create either succeeds or fails with a typed error
// that is errors.Is EMFILE, and leaves no process, directory, record or
// descriptor behind; the VM created before keeps working; with the limit
// restored, creates succeed; at the end the process has the descriptors
// and goroutines it started with.
func TestResourceFDsChild(t *testing.T) {
	raw := os.Getenv(resEnvFDChild)
	if raw == "" {
		t.Skip("helper process of TestResourceFDs")
	}
	var c resFDEnv
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		t.Fatal(err)
	}
	e := &resEnv{dir: c.Dir, state: c.State, kernel: c.Kernel, rootfs: c.Rootfs, sim: c.Sim, agentRoot: c.AgentRoot}
	ctx := context.Background()
	fds0, g0 := resFDs(), runtime.NumGoroutine()

	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
	}
	defer restore()

	rt := e.open(t, nil, nil)
	defer rt.Close()
	if _, err := resUp(ctx, rt, "keep", e.spec(false)); err != nil {
		t.Fatal(err)
	}
	resExec(t, ctx, rt, "keep")

	var failed, succeeded int
	for budget := 0; succeeded < 2; budget++ {
		if budget > 64 {
			t.Fatalf("creates still fail with %d spare descriptors", budget)
		}
		id := fmt.Sprintf("b%d", budget)
		low := lim
		low.Cur = resLimitFor(budget)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
			t.Fatal(err)
		}
		_, err := resUp(ctx, rt, id, e.spec(false))
		restore()
		if err == nil {
			succeeded++
			// A VMM started under the low limit keeps it: it is only
			// checked to exist, then destroyed.
			if err := rt.Destroy(ctx, id); err != nil {
				t.Fatalf("destroy %s: %v", id, err)
			}
			continue
		}
		succeeded = 0
		failed++
		t.Logf("%d spare descriptors: %v", budget, err)
		var he *hearth.Error
		if !errors.As(err, &he) {
			t.Fatalf("%d spare descriptors: want a *hearth.Error, got %T: %v", budget, err, err)
		}
		if !errors.Is(err, syscall.EMFILE) {
			t.Fatalf("%d spare descriptors: errors.Is(EMFILE) is false for %v", budget, err)
		}
		// A create that failed half way may have made a VM record: it
		// must be gone (created and not started is also a failure here).
		if _, gerr := rt.Get(ctx, id); gerr == nil {
			if derr := rt.Destroy(ctx, id); derr != nil {
				t.Fatalf("destroy %s after a failed start: %v", id, derr)
			}
		}
		e.checkLive(t, rt, "keep")
		resServes(t, rt, "keep")
	}
	if failed == 0 {
		t.Fatal("no create ran out of descriptors")
	}

	// The limit is back: creates work and so does everything else.
	if _, err := resUp(ctx, rt, "after", e.spec(false)); err != nil {
		t.Fatalf("create with the limit restored: %v", err)
	}
	resExec(t, ctx, rt, "after")
	resServes(t, rt, "keep")
	for _, id := range []string{"keep", "after"} {
		if err := rt.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	e.checkLive(t, rt)
	rt.Close()
	e.checkStoreEmpty(t)
	resGoroutinesBack(t, g0)
	if n := resFDs(); n > fds0 {
		ents, _ := os.ReadDir("/proc/self/fd")
		var l []string
		for _, x := range ents {
			tg, _ := os.Readlink("/proc/self/fd/" + x.Name())
			l = append(l, x.Name()+"="+tg)
		}
		t.Fatalf("descriptors: %d open, %d at the start: %v", n, fds0, l)
	}
}
