package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/internal/testbin"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/qemu"
)

// qemuImage builds hearth, the agent and the default image (from Debian
// packages) into a fresh state directory, or skips when the machine
// cannot: it needs root, QEMU and the package mirror.
func qemuImage(b *testing.B) string {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		b.Skip("qemu-system-x86_64 is not installed")
	}
	dir := b.TempDir()
	state := filepath.Join(dir, "state")
	out, err := exec.Command(testbin.Build(b, "cmd/hearth", "hearth"), "--state-dir", state, "image", "build", "default",
		"--agent", testbin.Build(b, "cmd/hearth-agent", "hearth-agent")).CombinedOutput()
	if err != nil {
		b.Skipf("no default image (the build needs the Debian package mirror): %v\n%s", err, out)
	}
	return state
}

// agentReady waits until the VM's agent answers a ping (each ping is
// bounded by the runtime's agent timeout; a booting guest needs several).
func agentReady(ctx context.Context, rt *hearth.Runtime, id string) error {
	c, err := rt.Agent(ctx, id)
	if err != nil {
		return err
	}
	for {
		err := c.Ping(ctx)
		if err == nil || ctx.Err() != nil {
			return err
		}
	}
}

// BenchmarkQEMUBootVsRestore measures, on the default image under QEMU,
// a cold boot to agent-ready (create, start, first answered ping) against
// a restore of a snapshot of that running guest to agent-ready (the
// clone answers with its own token: the restore includes the token
// rotation, clock and entropy), in the same run on the same image.
// x-restore-faster is cold boot over restore. Needs root, QEMU and the
// default image (built here; skipped without the package mirror).
func BenchmarkQEMUBootVsRestore(b *testing.B) {
	state := qemuImage(b)
	be, err := qemu.New(qemu.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	rt, err := hearth.Open(ctx, hearth.Config{StateDir: state, Backends: []vmm.Backend{be}})
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close()
	on := true
	spec := hearth.Spec{Image: "default", MemoryMiB: 256, Agent: &on}
	var boot, restore time.Duration
	i := 0
	for b.Loop() {
		src, clone, snap := fmt.Sprintf("src%d", i), fmt.Sprintf("clone%d", i), fmt.Sprintf("snap%d", i)
		i++
		rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		t0 := time.Now()
		if _, err := rt.Create(rctx, src, spec); err != nil {
			b.Fatal(err)
		}
		if _, err := rt.Start(rctx, src); err != nil {
			b.Fatal(err)
		}
		if err := agentReady(rctx, rt, src); err != nil {
			b.Fatal(err)
		}
		boot += time.Since(t0)
		b.StopTimer()
		if _, err := rt.Snapshot(rctx, src, snap); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 = time.Now()
		if _, err := rt.Restore(rctx, hearth.RestoreSpec{Snapshot: snap, VM: clone}); err != nil {
			b.Fatal(err)
		}
		if err := agentReady(rctx, rt, clone); err != nil {
			b.Fatal(err)
		}
		restore += time.Since(t0)
		b.StopTimer()
		for _, id := range []string{clone, src} {
			if err := rt.Destroy(rctx, id); err != nil {
				b.Fatal(err)
			}
		}
		if err := rt.DeleteSnapshot(rctx, snap); err != nil {
			b.Fatal(err)
		}
		cancel()
		b.StartTimer()
	}
	n := float64(i)
	b.ReportMetric(float64(boot.Microseconds())/1000/n, "cold-boot-ms")
	b.ReportMetric(float64(restore.Microseconds())/1000/n, "restore-ms")
	b.ReportMetric(float64(boot)/float64(restore), "x-restore-faster")
}
