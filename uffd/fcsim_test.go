//go:build linux

package uffd

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/internal/testbin"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/firecracker"
)

// TestFirecrackerSimulator restores a snapshot through the Firecracker
// backend and simulator (cmd/hearth-fcsim) with mem_backend Uffd against
// this server, launched as its own process the way the runtime does: the
// simulator performs Firecracker's handshake, then reads every page of
// guest memory and checks it against the snapshot. The primary tests use
// the uffdtest harness instead; this one checks the two agree.
func TestFirecrackerSimulator(t *testing.T) {
	requireUffd(t)
	if testing.Short() {
		t.Skip("builds the simulator")
	}
	dir := t.TempDir()
	sim := testbin.Build(t, "cmd/hearth-fcsim", "firecracker")
	b, err := firecracker.New(firecracker.Options{Binary: sim, ReadyTimeout: 10 * time.Second, TermGrace: time.Second,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	files := filepath.Join(dir, "files")
	os.Mkdir(files, 0o755)
	kernel, rootfs := filepath.Join(files, "vmlinux"), filepath.Join(files, "rootfs.ext4")
	os.WriteFile(kernel, make([]byte, 4096), 0o644)
	os.WriteFile(rootfs, make([]byte, 4096), 0o644)
	launch := func(id string) *firecracker.Machine {
		vmDir := filepath.Join(dir, id)
		os.Mkdir(vmDir, 0o755)
		m, err := b.LaunchMachine(ctx, vmm.LaunchSpec{VMID: id, Dir: vmDir, ConsolePath: filepath.Join(vmDir, "console.log")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Kill() })
		return m
	}

	src := launch("src")
	if err := src.Configure(ctx, vmm.Config{VCPUs: 1, MemoryMiB: 64, Kernel: kernel,
		Drives: []vmm.Drive{{ID: "rootfs", Path: rootfs, Root: true, ReadOnly: true}}}); err != nil {
		t.Fatal(err)
	}
	if err := src.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	snap := vmm.SnapshotRequest{StatePath: filepath.Join(files, "vmstate"), MemPath: filepath.Join(files, "mem")}
	if err := src.Snapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	src.Kill()

	f := &fixture{dir: files, mem: snap.MemPath, socket: filepath.Join(dir, "uffd.sock"), status: filepath.Join(dir, "uffd.status"),
		trace: filepath.Join(files, "mem.trace"), size: 64 << 20}
	for _, prefetch := range []bool{false, true} {
		spec := f.launchSpec()
		spec.TraceFile, spec.Prefetch = f.trace, prefetch
		srv, err := Launch(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		dst := launch("dst")
		if err := dst.LoadSnapshot(ctx, vmm.LoadRequest{StatePath: snap.StatePath, MemPath: f.socket, MemBackend: vmm.MemUffd, Resume: true}); err != nil {
			t.Fatalf("load through the page-fault server: %v", err)
		}
		dst.Kill()
		if exit, err := srv.Wait(ctx); err != nil || exit.Code != 0 {
			t.Fatalf("server: %v %v", exit, err)
		}
		st := readStatus(t, f.status)
		t.Logf("prefetch=%v: faults %d, fault bytes %d, prefetched %d, trace %s", prefetch, st.Faults, st.FaultBytes, st.PrefetchedPages, st.Trace)
		if st.State != StateExited || copied(st)+st.PrefetchedBytes != f.size || st.Regions == 0 {
			t.Fatalf("status %+v", st)
		}
		if prefetch && (st.Trace != TraceReplayed && st.Trace != TraceReplaying || st.PrefetchedPages == 0) {
			t.Fatalf("second restore did not prefetch: %+v", st)
		}
		os.RemoveAll(filepath.Join(dir, "dst"))
	}
}
