package memvmm

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/hearth-vm/hearth/vmm"
)

func cfg() vmm.Config {
	return vmm.Config{VCPUs: 1, MemoryMiB: 128, Kernel: "/k", Drives: []vmm.Drive{{ID: "rootfs", Path: "/r", Root: true}}}
}

func TestMachineRules(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sp, mp := filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	b := New()
	m, err := b.Launch(ctx, vmm.LaunchSpec{VMID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		call func() error
		ok   bool
	}{
		{"start before configure", func() error { return m.Start(ctx) }, false},
		{"bad config", func() error { c := cfg(); c.Drives = nil; return m.Configure(ctx, c) }, false},
		{"configure", func() error { return m.Configure(ctx, cfg()) }, true},
		{"configure twice", func() error { return m.Configure(ctx, cfg()) }, false},
		{"load after configure", func() error { return m.LoadSnapshot(ctx, vmm.LoadRequest{StatePath: sp}) }, false},
		{"pause before start", func() error { return m.Pause(ctx) }, false},
		{"start", func() error { return m.Start(ctx) }, true},
		{"snapshot while running", func() error { return m.Snapshot(ctx, vmm.SnapshotRequest{StatePath: sp, MemPath: mp}) }, false},
		{"pause", func() error { return m.Pause(ctx) }, true},
		{"diff without tracking", func() error {
			return m.Snapshot(ctx, vmm.SnapshotRequest{StatePath: sp, MemPath: mp, Diff: true})
		}, false},
		{"snapshot", func() error { return m.Snapshot(ctx, vmm.SnapshotRequest{StatePath: sp, MemPath: mp}) }, true},
		{"resume", func() error { return m.Resume(ctx) }, true},
	}
	for _, s := range steps {
		err := s.call()
		if s.ok != (err == nil) {
			t.Fatalf("%s: %v", s.name, err)
		}
		var re *vmm.RequestError
		if err != nil && !errors.As(err, &re) {
			t.Fatalf("%s: refusal is not a RequestError: %v", s.name, err)
		}
	}
	// Restore the snapshot into a new machine, with overrides.
	c, _ := b.Launch(ctx, vmm.LaunchSpec{VMID: "c"})
	if err := c.LoadSnapshot(ctx, vmm.LoadRequest{StatePath: filepath.Join(dir, "nope"), MemPath: mp, MemBackend: vmm.MemFile}); err == nil {
		t.Fatal("load of unknown snapshot accepted")
	}
	if err := c.LoadSnapshot(ctx, vmm.LoadRequest{StatePath: sp, MemPath: mp, MemBackend: vmm.MemFile,
		DriveOverrides: []vmm.DriveOverride{{ID: "nodrive", Path: "/x"}}}); err == nil {
		t.Fatal("override of unknown drive accepted")
	}
	if err := c.LoadSnapshot(ctx, vmm.LoadRequest{StatePath: sp, MemPath: mp, MemBackend: vmm.MemFile,
		DriveOverrides: []vmm.DriveOverride{{ID: "rootfs", Path: "/clone"}}}); err != nil {
		t.Fatal(err)
	}
	if got := c.(*Machine); got.State() != "paused" || got.Config().Drives[0].Path != "/clone" {
		t.Fatalf("restored: %s %+v", got.State(), got.Config())
	}
	if m.(*Machine).Config().Drives[0].Path != "/r" {
		t.Fatal("override leaked into the source machine")
	}

	// Exits: Kill is idempotent and expected; Crash is not expected.
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	m.Kill()
	<-m.Done()
	if st := m.ExitStatus(); !st.Exited || !st.Expected {
		t.Fatalf("kill status %+v", st)
	}
	c.(*Machine).Crash()
	if st := c.ExitStatus(); !st.Exited || st.Expected {
		t.Fatalf("crash status %+v", st)
	}
	if _, err := b.Adopt(ctx, c.Handle()); !errors.Is(err, vmm.ErrGone) {
		t.Fatalf("adopt exited: %v", err)
	}
	if b.Live() != 0 {
		t.Fatalf("live %d", b.Live())
	}
}

func TestAdoptReleased(t *testing.T) {
	ctx := context.Background()
	b := New()
	m, _ := b.Launch(ctx, vmm.LaunchSpec{VMID: "a"})
	m.Release()
	got, err := b.Adopt(ctx, m.Handle())
	if err != nil || got != m {
		t.Fatalf("adopt: %v", err)
	}
	h := m.Handle()
	h.StartTime++
	if _, err := b.Adopt(ctx, h); !errors.Is(err, vmm.ErrGone) {
		t.Fatalf("adopt with wrong start time: %v", err)
	}
}
