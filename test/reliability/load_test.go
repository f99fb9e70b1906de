package reliability

import (
	"context"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
)

// resLoadWorkers bounds the operations in flight: enough to keep both
// cores and every lock path busy, few enough that a 2-core machine under
// -race stays within the test's time.
const resLoadWorkers = 24

// resLoadPhase runs op for every VM index on resLoadWorkers goroutines
// and returns the wall time and the errors (at most one per index).
func resLoadPhase(n int, op func(i int) error) (time.Duration, []error) {
	t0 := time.Now()
	var (
		next atomic.Int64
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for range resLoadWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := op(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(t0), errs
}

// TestLoad runs 200 VMs (40 with -short) on the Firecracker simulator,
// each with its guest agent as a host process, all alive at once: they
// are created and started, exec'd, some snapshotted and restored into
// clones that are exec'd too, and all destroyed, many operations at a
// time, under one deadline (so a stuck operation fails the test instead
// of hanging it). Afterwards nothing may be left: no VMM or agent
// process, VM directory, snapshot fragment, record or allocation, open
// descriptor or goroutine beyond what the test process had before.
func TestLoad(t *testing.T) {
	n := 200
	if testing.Short() {
		n = 40
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := resNewEnv(t, 1<<20)
	_, agentBin := binaries(t)

	// The netpoller's descriptors are made on first use and kept: make
	// them before the baseline.
	if l, err := net.Listen("unix", filepath.Join(e.dir, "warm.sock")); err == nil {
		l.Close()
	}
	fds0, g0 := resFDs(), runtime.NumGoroutine()

	// Step timings say where the time of a create goes.
	var stepMu sync.Mutex
	steps := map[string]time.Duration{}
	rt := e.open(t, func(c *hearth.Config) {
		c.ObserveStep = func(_, step string, d time.Duration) {
			stepMu.Lock()
			steps[step] += d
			stepMu.Unlock()
		}
	}, nil)
	defer rt.Close()
	id := func(i int) string { return fmt.Sprintf("load%03d", i) }
	// Every fourth VM has its own clone of the rootfs, the others share
	// it read-only: both paths, without 200 copies.
	spec := func(i int) hearth.Spec { return e.spec(i%4 != 0) }
	snapshotted := func(i int) bool { return i%10 == 0 }
	restored := func(i int) bool { return i%20 == 0 }

	report := func(phase string, d time.Duration, ops int, errs []error) {
		t.Helper()
		t.Logf("%-22s %4d ops in %6.2fs: %6.1f/s", phase, ops, d.Seconds(), float64(ops)/d.Seconds())
		for j, err := range errs {
			if j == 5 {
				t.Errorf("... and %d more", len(errs)-5)
				break
			}
			t.Errorf("%s: %v", phase, err)
		}
		if len(errs) > 0 {
			t.FailNow()
		}
	}

	d, errs := resLoadPhase(n, func(i int) error {
		_, err := resUp(ctx, rt, id(i), spec(i))
		return err
	})
	report("create+start", d, n, errs)
	stepMu.Lock()
	t.Logf("create steps, mean per VM: %v", resMeans(steps, n))
	clear(steps)
	stepMu.Unlock()
	if views, _ := rt.List(ctx); len(views) != n {
		t.Fatalf("%d VMs listed, want %d", len(views), n)
	}

	// Exec in every VM while others are snapshotted and restored: the
	// snapshot of one VM must not hold up the rest.
	var ops atomic.Int64
	d, errs = resLoadPhase(n, func(i int) error {
		if err := resExecErr(ctx, rt, id(i)); err != nil {
			return err
		}
		ops.Add(1)
		if !snapshotted(i) {
			return nil
		}
		snap := "snap-" + id(i)
		if _, err := rt.Snapshot(ctx, id(i), snap); err != nil {
			return err
		}
		ops.Add(1)
		if restored(i) {
			clone := "clone-" + id(i)
			if _, err := rt.Restore(ctx, hearth.RestoreSpec{Snapshot: snap, VM: clone}); err != nil {
				return err
			}
			if err := resExecErr(ctx, rt, clone); err != nil {
				return err
			}
			if err := rt.Destroy(ctx, clone); err != nil {
				return err
			}
			ops.Add(3)
		}
		if err := resExecErr(ctx, rt, id(i)); err != nil {
			return fmt.Errorf("after its snapshot: %w", err)
		}
		if err := rt.DeleteSnapshot(ctx, snap); err != nil {
			return err
		}
		ops.Add(2)
		return nil
	})
	report("exec+snapshot+restore", d, int(ops.Load()), errs)

	d, errs = resLoadPhase(n, func(i int) error { return rt.Destroy(ctx, id(i)) })
	report("destroy", d, n, errs)

	e.checkLive(t, rt)
	eventually(t, 20*time.Second, "guest agents", func() (bool, string) {
		left := resProcs(func(exe string) bool { return exe == agentBin })
		return len(left) == 0, fmt.Sprintf("%d still running: %v", len(left), left)
	})
	if err := rt.Close(); err != nil {
		t.Fatal(err)
	}
	e.checkStoreEmpty(t)
	resGoroutinesBack(t, g0)
	eventually(t, 10*time.Second, "descriptors", func() (bool, string) {
		n := resFDs()
		return n <= fds0, fmt.Sprintf("%d open, %d before the runtime opened", n, fds0)
	})
}

func resMeans(steps map[string]time.Duration, n int) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(steps)) {
		fmt.Fprintf(&b, "%s %v ", name, (steps[name] / time.Duration(n)).Round(100*time.Microsecond))
	}
	return b.String()
}
