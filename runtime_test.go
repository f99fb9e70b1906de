package hearth

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/jail"
	"github.com/hearth-vm/hearth/rootfs"
	"github.com/hearth-vm/hearth/store"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/memvmm"
)

type fixture struct {
	dir     string
	backend *memvmm.Backend
	rt      *Runtime
	spec    Spec
}

// newFixture opens a runtime on a fresh state dir with the in-memory
// backend and a kernel and rootfs file to boot.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	if err := os.Mkdir(img, 0o700); err != nil {
		t.Fatal(err)
	}
	kernel, rootfs := filepath.Join(img, "vmlinux"), filepath.Join(img, "rootfs.ext4")
	for _, f := range []string{kernel, rootfs} {
		if err := os.WriteFile(f, []byte("contents of "+filepath.Base(f)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f := &fixture{dir: filepath.Join(dir, "state"), backend: memvmm.New(),
		spec: Spec{Kernel: kernel, Rootfs: rootfs}}
	f.rt = f.open(t, f.backend)
	t.Cleanup(func() { f.rt.Close() })
	return f
}

func (f *fixture) open(t *testing.T, b *memvmm.Backend) *Runtime {
	t.Helper()
	rt, err := Open(context.Background(), Config{StateDir: f.dir, Backends: []vmm.Backend{b}})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return rt
}

// storeDump is everything the store holds, for before/after comparisons.
type storeDump struct {
	VMs       []store.VM
	Snapshots []store.Snapshot
	Allocs    map[string]map[uint64]string
}

func dump(t *testing.T, st *store.Store) storeDump {
	t.Helper()
	var d storeDump
	var err error
	if d.VMs, err = st.ListVMs(); err != nil {
		t.Fatal(err)
	}
	if d.Snapshots, err = st.ListSnapshots(); err != nil {
		t.Fatal(err)
	}
	d.Allocs = map[string]map[uint64]string{}
	pools, err := st.Pools()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pools {
		a, err := st.Allocations(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(a) > 0 {
			d.Allocs[p] = a
		}
	}
	return d
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && p != dir {
			out = append(out, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func mustStatus(t *testing.T, rt *Runtime, id string, want Status) {
	t.Helper()
	v, err := rt.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get %s: %v", id, err)
	}
	if v.Status != want {
		t.Fatalf("%s: status %s, want %s", id, v.Status, want)
	}
}

// machine returns the in-memory machine of VM id, or nil. The backend
// knows machines by the VM's immutable key, not its id.
func (f *fixture) machine(id string) *memvmm.Machine {
	f.rt.mu.Lock()
	e := f.rt.vms[id]
	f.rt.mu.Unlock()
	if e == nil {
		return f.backend.Find("no-such-key")
	}
	rec := e.view.Load()
	if rec == nil {
		return nil
	}
	return f.backend.Find(rec.Key)
}

func agentOn() *bool { b := true; return &b }

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	rt := f.rt
	spec := f.spec
	spec.Agent = agentOn()
	spec.Labels = map[string]string{"tenant": "t1"}
	spec.Jail = &JailSpec{CPUQuota: 0.5, PidsMax: 32}

	v, err := rt.Create(ctx, "vm1", spec)
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != StatusCreated || v.Backend != "mem" || v.Spec.VCPUs != 1 || v.Spec.MemoryMiB != 256 || v.Spec.BootArgs != DefaultBootArgs {
		t.Fatalf("created view: %+v", v)
	}
	m := f.machine("vm1")
	if m == nil || m.State() != "configured" {
		t.Fatalf("machine not configured: %v", m)
	}
	cfg := m.Config()
	if cfg.Vsock == nil || cfg.Vsock.CID != cidFirst || len(cfg.Drives) != 1 || !cfg.Drives[0].Root {
		t.Fatalf("machine config: %+v", cfg)
	}
	// The writable rootfs is the VM's own clone, not the template.
	if cfg.Drives[0].Path == spec.Rootfs {
		t.Fatal("writable rootfs must be cloned")
	}
	if b, err := os.ReadFile(cfg.Drives[0].Path); err != nil || string(b) != "contents of rootfs.ext4" {
		t.Fatalf("clone: %q %v", b, err)
	}

	steps := []struct {
		name string
		do   func() (View, error)
		want Status
	}{
		{"start", func() (View, error) { return rt.Start(ctx, "vm1") }, StatusRunning},
		{"pause", func() (View, error) { return rt.Pause(ctx, "vm1") }, StatusPaused},
		{"resume", func() (View, error) { return rt.Resume(ctx, "vm1") }, StatusRunning},
	}
	for _, s := range steps {
		v, err := s.do()
		if err != nil || v.Status != s.want {
			t.Fatalf("%s: %v %v", s.name, v.Status, err)
		}
	}
	if _, err := rt.Start(ctx, "vm1"); !errors.Is(err, ErrInvalidTransition) {
		t.Fatalf("start while running: %v", err)
	}

	// Snapshot of a running VM pauses, writes and resumes it.
	sv, err := rt.Snapshot(ctx, "vm1", "snap1")
	if err != nil {
		t.Fatal(err)
	}
	mustStatus(t, rt, "vm1", StatusRunning)
	if m.State() != "running" {
		t.Fatalf("machine after snapshot: %s", m.State())
	}
	if _, err := os.Stat(filepath.Join(sv.Dir, "manifest.json")); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Snapshot(ctx, "vm1", "snap1"); !errors.Is(err, ErrSnapshotAlreadyExists) {
		t.Fatalf("duplicate snapshot: %v", err)
	}

	// Two clones from one snapshot, each with its own disk and socket.
	c1, err := rt.Restore(ctx, RestoreSpec{Snapshot: "snap1", VM: "clone1"})
	if err != nil || c1.Status != StatusRunning || c1.RestoredFrom != "snap1" {
		t.Fatalf("restore: %+v %v", c1, err)
	}
	c2, err := rt.Restore(ctx, RestoreSpec{Snapshot: "snap1", VM: "clone2", Paused: true})
	if err != nil || c2.Status != StatusPaused {
		t.Fatalf("restore paused: %+v %v", c2, err)
	}
	d1, d2 := f.machine("clone1").Config(), f.machine("clone2").Config()
	if d1.Drives[0].Path == d2.Drives[0].Path || d1.Drives[0].Path == cfg.Drives[0].Path {
		t.Fatalf("clones share a disk: %s %s", d1.Drives[0].Path, d2.Drives[0].Path)
	}
	if d1.Vsock.UDSPath == d2.Vsock.UDSPath || d1.Vsock.UDSPath == cfg.Vsock.UDSPath {
		t.Fatal("clones share a vsock socket")
	}
	if _, err := rt.Restore(ctx, RestoreSpec{Snapshot: "nope", VM: "clone3"}); !errors.Is(err, ErrSnapshotNotFound) {
		t.Fatalf("restore of missing snapshot: %v", err)
	}
	if _, err := rt.Restore(ctx, RestoreSpec{Snapshot: "snap1", VM: "clone1"}); !errors.Is(err, ErrVMAlreadyExists) {
		t.Fatalf("restore onto existing id: %v", err)
	}

	// Stop releases the VMM; start boots a fresh one on the same disk.
	if v, err := rt.Stop(ctx, "vm1"); err != nil || v.Status != StatusStopped || v.Pid != 0 {
		t.Fatalf("stop: %+v %v", v, err)
	}
	if f.machine("vm1") != nil {
		t.Fatal("stopped VM still has a machine")
	}
	if v, err := rt.Start(ctx, "vm1"); err != nil || v.Status != StatusRunning {
		t.Fatalf("restart: %+v %v", v, err)
	}
	if got := f.machine("vm1").Config().Drives[0].Path; got != cfg.Drives[0].Path {
		t.Fatalf("restart changed the disk: %s", got)
	}

	// Rename keeps everything but the id.
	if _, err := rt.Rename(ctx, "clone2", "vm1"); !errors.Is(err, ErrVMAlreadyExists) {
		t.Fatalf("rename onto existing: %v", err)
	}
	if v, err := rt.Rename(ctx, "clone2", "tenant-a"); err != nil || v.ID != "tenant-a" || v.Status != StatusPaused {
		t.Fatalf("rename: %+v %v", v, err)
	}
	if _, err := rt.Get(ctx, "clone2"); !errors.Is(err, ErrVMNotFound) {
		t.Fatalf("old id after rename: %v", err)
	}
	if _, err := rt.Resume(ctx, "tenant-a"); err != nil {
		t.Fatal(err)
	}

	list, _ := rt.List(ctx)
	var ids []string
	for _, v := range list {
		ids = append(ids, v.ID)
	}
	if !reflect.DeepEqual(ids, []string{"clone1", "tenant-a", "vm1"}) {
		t.Fatalf("list: %v", ids)
	}

	// Destroy everything: the snapshot survives, nothing else does.
	for _, id := range ids {
		if err := rt.Destroy(ctx, id); err != nil {
			t.Fatalf("destroy %s: %v", id, err)
		}
	}
	if err := rt.Destroy(ctx, "vm1"); !errors.Is(err, ErrVMNotFound) {
		t.Fatalf("second destroy: %v", err)
	}
	if f.backend.Live() != 0 {
		t.Fatalf("%d machines left", f.backend.Live())
	}
	d := dump(t, rt.st)
	if len(d.VMs) != 0 || len(d.Allocs) != 0 || len(d.Snapshots) != 1 {
		t.Fatalf("store after destroy: %+v", d)
	}
	if left := listDir(t, rt.vmsDir()); len(left) != 0 {
		t.Fatalf("vm dirs left: %v", left)
	}
	// A destroyed id can be reused.
	if _, err := rt.Create(ctx, "vm1", f.spec); err != nil {
		t.Fatalf("reuse id: %v", err)
	}
	if err := rt.DeleteSnapshot(ctx, "snap1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sv.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("snapshot dir left: %v", err)
	}
}

func TestInvalidInputHasNoSideEffects(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	good := f.spec
	cases := []struct {
		name string
		id   string
		spec func(Spec) Spec
	}{
		{"empty id", "", nil},
		{"dotdot id", "a..b", nil},
		{"slash id", "a/b", nil},
		{"space id", "a b", nil},
		{"leading dot", ".a", nil},
		{"unicode id", "ünicode", nil},
		{"too long id", strings.Repeat("a", 64), nil},
		{"nul id", "a\x00", nil},
		{"vcpus", "v", func(s Spec) Spec { s.VCPUs = 99; return s }},
		{"memory", "v", func(s Spec) Spec { s.MemoryMiB = 1; return s }},
		{"hugepages odd", "v", func(s Spec) Spec { s.HugePages = true; s.MemoryMiB = 129; return s }},
		{"relative kernel", "v", func(s Spec) Spec { s.Kernel = "vmlinux"; return s }},
		{"missing kernel", "v", func(s Spec) Spec { s.Kernel = "/nonexistent/vmlinux"; return s }},
		{"reserved drive", "v", func(s Spec) Spec {
			s.Drives = []DriveSpec{{ID: "rootfs", Path: s.Rootfs}}
			return s
		}},
		{"duplicate drive", "v", func(s Spec) Spec {
			s.Drives = []DriveSpec{{ID: "d", Path: s.Rootfs}, {ID: "d", Path: s.Rootfs}}
			return s
		}},
		{"bad rate limit", "v", func(s Spec) Spec {
			s.Drives = []DriveSpec{{ID: "d", Path: s.Rootfs, RateLimit: &RateLimit{Ops: &TokenBucket{Size: 0, RefillTimeMs: 10}}}}
			return s
		}},
		{"unknown backend", "v", func(s Spec) Spec { s.Backend = "xen"; return s }},
		{"unknown image", "v", func(s Spec) Spec { s.Kernel, s.Rootfs, s.Image = "", "", "debian"; return s }},
		{"bad image name", "v", func(s Spec) Spec { s.Kernel, s.Rootfs, s.Image = "", "", "../x"; return s }},
		{"boot args newline", "v", func(s Spec) Spec { s.BootArgs = "a\nb"; return s }},
	}
	before := dump(t, f.rt.st)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spec := good
			if c.spec != nil {
				spec = c.spec(spec)
			}
			_, err := f.rt.Create(ctx, c.id, spec)
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("want InvalidArgument, got %v", err)
			}
		})
	}
	if after := dump(t, f.rt.st); !reflect.DeepEqual(before, after) {
		t.Fatalf("store changed: %+v", after)
	}
	if left := listDir(t, f.rt.vmsDir()); len(left) != 0 {
		t.Fatalf("files created: %v", left)
	}
	badRestores := []RestoreSpec{
		{Snapshot: "../x", VM: "a"}, {Snapshot: "s", VM: "a/b"},
		{Snapshot: "s", VM: "a", MemoryBackend: "disk"}, {Snapshot: "s", VM: "a", Prefetch: true},
		{Snapshot: "s", VM: "a", MemoryBackend: "uffd", PrefetchWaitMs: 100},
		{Snapshot: "s", VM: "a", MemoryBackend: "uffd", Prefetch: true, PrefetchWaitMs: -1},
		{Snapshot: "s", VM: "a", MemoryBackend: "uffd", Prefetch: true, PrefetchWaitMs: maxPrefetchWaitMs + 1},
		{Snapshot: "s", VM: "a", MemoryBackend: "uffd", Prefetch: true, PrefetchWaitMs: 100, Paused: true},
	}
	for _, rs := range badRestores {
		if _, err := f.rt.Restore(ctx, rs); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("restore %+v: %v", rs, err)
		}
	}
	if _, err := f.rt.Rename(ctx, "x", "a/b"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("rename to bad id: %v", err)
	}
	if _, err := f.rt.Snapshot(ctx, "x", "a b"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("snapshot with bad name: %v", err)
	}
}

func TestUnknownVM(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	calls := map[string]func() error{
		"start":    func() error { _, err := f.rt.Start(ctx, "nope"); return err },
		"pause":    func() error { _, err := f.rt.Pause(ctx, "nope"); return err },
		"resume":   func() error { _, err := f.rt.Resume(ctx, "nope"); return err },
		"stop":     func() error { _, err := f.rt.Stop(ctx, "nope"); return err },
		"snapshot": func() error { _, err := f.rt.Snapshot(ctx, "nope", "s"); return err },
		"destroy":  func() error { return f.rt.Destroy(ctx, "nope") },
		"rename":   func() error { _, err := f.rt.Rename(ctx, "nope", "other"); return err },
		"get":      func() error { _, err := f.rt.Get(ctx, "nope"); return err },
	}
	for name, call := range calls {
		err := call()
		var he *Error
		if !errors.As(err, &he) || he.Kind != KindVMNotFound || he.VM != "nope" {
			t.Errorf("%s: want VMNotFound naming the vm, got %v", name, err)
		}
	}
}

// TestCreateFailureAtEveryStep injects a failure at each step of the
// create and restore pipelines and checks that nothing is left: no store
// change, no directory, no machine, and the id is free again.
func TestCreateFailureAtEveryStep(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	spec := f.spec
	spec.Agent = agentOn()
	spec.Jail = &JailSpec{PidsMax: 64}
	// A snapshot to restore from, and one VM that stays, so that leaks
	// show up as differences rather than hiding in an empty store.
	if _, err := f.rt.Create(ctx, "base", spec); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Start(ctx, "base"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Snapshot(ctx, "base", "s"); err != nil {
		t.Fatal(err)
	}
	pipelines := []struct {
		name  string
		steps []step
		run   func() (View, error)
	}{
		{"create", f.rt.createSteps(&createPlan{}), func() (View, error) { return f.rt.Create(ctx, "victim", spec) }},
		{"restore", f.rt.restoreSteps(&createPlan{}), func() (View, error) {
			return f.rt.Restore(ctx, RestoreSpec{Snapshot: "s", VM: "victim"})
		}},
	}
	for _, p := range pipelines {
		if len(p.steps) < 6 {
			t.Fatalf("%s pipeline has only %d steps", p.name, len(p.steps))
		}
		for _, s := range p.steps {
			t.Run(p.name+"/"+s.name, func(t *testing.T) {
				before := dump(t, f.rt.st)
				files := listDir(t, f.dir)
				live := f.backend.Live()
				injected := errors.New("injected failure at " + s.name)
				f.rt.inject = func(name string) error {
					if name == s.name {
						return injected
					}
					return nil
				}
				defer func() { f.rt.inject = nil }()
				_, err := p.run()
				if !errors.Is(err, injected) {
					t.Fatalf("want the injected error, got %v", err)
				}
				if after := dump(t, f.rt.st); !reflect.DeepEqual(before, after) {
					t.Fatalf("store changed:\nbefore %+v\nafter  %+v", before, after)
				}
				if got := listDir(t, f.dir); !reflect.DeepEqual(files, got) {
					t.Fatalf("files changed:\nbefore %v\nafter  %v", files, got)
				}
				if f.backend.Live() != live || f.machine("victim") != nil {
					t.Fatal("a machine was left running")
				}
				if _, err := f.rt.Get(ctx, "victim"); !errors.Is(err, ErrVMNotFound) {
					t.Fatalf("victim visible after rollback: %v", err)
				}
			})
		}
		// With no failure the same call succeeds, so the id really is free.
		if _, err := p.run(); err != nil {
			t.Fatalf("%s without failure: %v", p.name, err)
		}
		if err := f.rt.Destroy(ctx, "victim"); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConcurrentCreatesAndDestroys(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	spec := f.spec
	spec.Agent = agentOn()
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id := fmt.Sprintf("vm-%02d", i)
			if _, err := f.rt.Create(ctx, id, spec); err != nil {
				errs <- err
				return
			}
			if _, err := f.rt.Start(ctx, id); err != nil {
				errs <- err
				return
			}
			if _, err := f.rt.List(ctx); err != nil {
				errs <- err
				return
			}
			if i%2 == 0 {
				if err := f.rt.Destroy(ctx, id); err != nil {
					errs <- err
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	list, _ := f.rt.List(ctx)
	if len(list) != n/2 {
		t.Fatalf("%d VMs left, want %d", len(list), n/2)
	}
	// Every surviving VM holds a distinct CID.
	allocs, _ := f.rt.st.Allocations(poolCID)
	if len(allocs) != n/2 {
		t.Fatalf("%d CIDs allocated, want %d", len(allocs), n/2)
	}
	if f.backend.Live() != n/2 {
		t.Fatalf("%d machines live", f.backend.Live())
	}
}

func TestConcurrentCreateSameID(t *testing.T) {
	ctx := context.Background()
	for round := 0; round < 20; round++ {
		f := newFixture(t)
		var wg sync.WaitGroup
		results := make([]error, 2)
		start := make(chan struct{})
		for i := range results {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				<-start
				_, results[i] = f.rt.Create(ctx, "same", f.spec)
			}(i)
		}
		close(start)
		wg.Wait()
		ok, exists := 0, 0
		for _, err := range results {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrVMAlreadyExists):
				exists++
			default:
				t.Fatalf("unexpected error: %v", err)
			}
		}
		if ok != 1 || exists != 1 {
			t.Fatalf("round %d: %d successes, %d VMAlreadyExists", round, ok, exists)
		}
		if f.backend.Live() != 1 {
			t.Fatalf("%d machines for one VM", f.backend.Live())
		}
	}
}

func TestReopenKeepsVMs(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	want := map[string]Status{}
	for id, ops := range map[string][]func(string) error{
		"created": nil,
		"running": {func(id string) error { _, err := f.rt.Start(ctx, id); return err }},
		"paused": {func(id string) error { _, err := f.rt.Start(ctx, id); return err },
			func(id string) error { _, err := f.rt.Pause(ctx, id); return err }},
		"stopped": {func(id string) error { _, err := f.rt.Start(ctx, id); return err },
			func(id string) error { _, err := f.rt.Stop(ctx, id); return err }},
	} {
		if _, err := f.rt.Create(ctx, id, f.spec); err != nil {
			t.Fatal(err)
		}
		for _, op := range ops {
			if err := op(id); err != nil {
				t.Fatal(err)
			}
		}
		v, _ := f.rt.Get(ctx, id)
		want[id] = v.Status
	}
	before, _ := f.rt.List(ctx)
	if err := f.rt.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Get(ctx, "running"); err == nil {
		// Get reads the published view; operations must refuse.
		if _, err := f.rt.Pause(ctx, "running"); !errors.Is(err, ErrStatePoisoned) {
			t.Fatalf("operation on closed runtime: %v", err)
		}
	}
	if f.backend.Live() != 3 {
		t.Fatalf("Close must leave VMs running, %d live", f.backend.Live())
	}

	// Same backend: the VMMs still run and are adopted.
	f.rt = f.open(t, f.backend)
	after, _ := f.rt.List(ctx)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("views changed across reopen:\n%+v\n%+v", before, after)
	}
	rep := f.rt.Reconciled()
	sort.Strings(rep.Adopted)
	if !reflect.DeepEqual(rep.Adopted, []string{"created", "paused", "running"}) || len(rep.Crashed) != 0 {
		t.Fatalf("report: %+v", rep)
	}
	// Adopted machines are really driven.
	if _, err := f.rt.Resume(ctx, "paused"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Pause(ctx, "paused"); err != nil {
		t.Fatal(err)
	}

	// A fresh backend (as after a host reboot): the VMMs are gone.
	f.rt.Close()
	f.rt = f.open(t, memvmm.New())
	for id, st := range want {
		v, err := f.rt.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		exp := st
		if st.HasProcess() {
			exp = StatusCrashed
		}
		if v.Status != exp {
			t.Errorf("%s: %s, want %s", id, v.Status, exp)
		}
		if exp == StatusCrashed && v.Exit == "" {
			t.Errorf("%s: crashed without a reason", id)
		}
	}
	if len(f.rt.Reconciled().Crashed) != 3 {
		t.Fatalf("report: %+v", f.rt.Reconciled())
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	f := newFixture(t)
	_, err := Open(context.Background(), Config{StateDir: f.dir, Backends: []vmm.Backend{memvmm.New()}})
	if !errors.Is(err, ErrStatePoisoned) || !errors.Is(err, store.ErrLocked) {
		t.Fatalf("second Open: %v", err)
	}
	if !strings.Contains(err.Error(), fmt.Sprint(os.Getpid())) {
		t.Errorf("error should name the owner pid: %v", err)
	}
}

func TestCrashIsObserved(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	var events []Event
	f := newFixture(t)
	f.rt.Close()
	rt, err := Open(ctx, Config{StateDir: f.dir, Backends: []vmm.Backend{f.backend}, OnEvent: func(e Event) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	f.rt = rt
	if _, err := rt.Create(ctx, "vm", f.spec); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	f.machine("vm").Crash()
	deadline := time.Now().Add(time.Second)
	for {
		v, _ := rt.Get(ctx, "vm")
		if v.Status == StatusCrashed {
			if !strings.Contains(v.Exit, "SIGKILL") {
				t.Errorf("exit reason %q", v.Exit)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not marked crashed within a second: %s", v.Status)
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	last := events[len(events)-1]
	mu.Unlock()
	if last.Type != "crashed" || last.VM != "vm" {
		t.Fatalf("last event %+v", last)
	}
	// A crashed VM can be started again or destroyed, nothing else.
	if _, err := rt.Pause(ctx, "vm"); !errors.Is(err, ErrInvalidTransition) {
		t.Fatal(err)
	}
	if v, err := rt.Start(ctx, "vm"); err != nil || v.Status != StatusRunning {
		t.Fatalf("start after crash: %v %v", v.Status, err)
	}
	// Expected exits (stop) are not crashes.
	if _, err := rt.Stop(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	mustStatus(t, rt, "vm", StatusStopped)
}

func TestFailedSnapshotLeavesNothingAndResumes(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	spec := f.spec
	if _, err := f.rt.Create(ctx, "vm", spec); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Snapshot(ctx, "vm", "s"); !errors.Is(err, ErrInvalidTransition) {
		t.Fatalf("snapshot of a created VM: %v", err)
	}
	if _, err := f.rt.Start(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	// Break the disk copy: the snapshot must fail, leave no files and no
	// record, and the VM must be running again.
	clone := filepath.Join(f.rt.vmDir(f.rt.vms["vm"].rec.Key), "rootfs.ext4")
	if err := os.Remove(clone); err != nil {
		t.Fatal(err)
	}
	_, err := f.rt.Snapshot(ctx, "vm", "s")
	var he *Error
	if !errors.As(err, &he) || he.Kind != KindRootfs || he.Snapshot != "s" {
		t.Fatalf("want a rootfs error naming the snapshot, got %v", err)
	}
	mustStatus(t, f.rt, "vm", StatusRunning)
	if f.machine("vm").State() != "running" {
		t.Fatal("machine left paused")
	}
	for _, p := range listDir(t, f.rt.snapshotsDir()) {
		if p != "/.lock" { // the snapshot store's lock file
			t.Fatalf("partial snapshot left: %v", p)
		}
	}
	if snaps, _ := f.rt.Snapshots(ctx); len(snaps) != 0 {
		t.Fatalf("snapshot record left: %v", snaps)
	}
}

func TestReconcileRollsBackInterruptedCreate(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	spec := f.spec
	spec.Agent = agentOn()
	// Simulate a runtime that died in the middle of create: the pipeline
	// stops at "configure" without undoing anything.
	p := &createPlan{op: "create", id: "half", spec: spec.withDefaults(f.rt.cfg.Defaults), backend: f.backend,
		files: Image{Kernel: spec.Kernel, Rootfs: spec.Rootfs}}
	all := f.rt.createSteps(p)
	for _, s := range all {
		if s.name == "configure" {
			break
		}
		if err := s.do(ctx); err != nil {
			t.Fatal(err)
		}
	}
	p.entry.mu.Unlock()
	halfKey := p.entry.rec.Key
	if f.backend.Find(halfKey) == nil {
		t.Fatal("setup: no machine launched")
	}
	// An orphan directory and allocation no record owns.
	orphan := filepath.Join(f.rt.vmsDir(), "orphan")
	os.Mkdir(orphan, 0o700)
	f.rt.st.Allocate(poolCID, 1000, 1000, "ghost")
	f.rt.st.Allocate(jail.IDPool, 7, 7, "ghost")
	f.rt.Close()

	f.rt = f.open(t, f.backend)
	rep := f.rt.Reconciled()
	if !reflect.DeepEqual(rep.Abandoned, []string{"half"}) {
		t.Fatalf("report: %+v", rep)
	}
	if f.backend.Find(halfKey) != nil {
		t.Fatal("the half-created VM's machine was not killed")
	}
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("orphan dir not reclaimed")
	}
	d := dump(t, f.rt.st)
	if len(d.VMs) != 0 || len(d.Allocs) != 0 {
		t.Fatalf("store after reconcile: %+v", d)
	}
	if left := listDir(t, f.rt.vmsDir()); len(left) != 0 {
		t.Fatalf("dirs left: %v", left)
	}
}

func TestConsole(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	if _, err := f.rt.Create(ctx, "vm", f.spec); err != nil {
		t.Fatal(err)
	}
	// The backend's VMM writes the console file; here the test plays it.
	path := filepath.Join(f.rt.vmDir(f.rt.vms["vm"].rec.Key), "console.log")
	if err := os.WriteFile(path, []byte("Linux version 6.1\nhearth-agent ready\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	lines, err := f.rt.ConsoleTail(ctx, "vm", 1)
	if err != nil || len(lines) != 1 || lines[0] != "hearth-agent ready" {
		t.Fatalf("tail: %v %v", lines, err)
	}
	if _, err := f.rt.ConsoleTail(ctx, "nope", 1); !errors.Is(err, ErrVMNotFound) {
		t.Fatal(err)
	}
	// Kept after a crash, for post-mortem.
	f.rt.Start(ctx, "vm")
	f.machine("vm").Crash()
	time.Sleep(50 * time.Millisecond)
	if lines, _ := f.rt.ConsoleTail(ctx, "vm", 5); len(lines) != 2 {
		t.Fatalf("after crash: %v", lines)
	}
}

func TestStats(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	if _, err := f.rt.Create(ctx, "vm", f.spec); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Stats(ctx, "nope"); !errors.Is(err, ErrVMNotFound) {
		t.Fatal(err)
	}
	st, err := f.rt.Stats(ctx, "vm")
	if err != nil || st.VM != "vm" || st.Backend != "mem" {
		t.Fatalf("%+v %v", st, err)
	}
	if srcs := f.rt.MetricSources(); len(srcs) != 1 || srcs[0].VM != "vm" {
		t.Fatalf("sources: %+v", srcs)
	}
	f.rt.Start(ctx, "vm")
	f.rt.Stop(ctx, "vm")
	if _, err := f.rt.Stats(ctx, "vm"); !errors.Is(err, ErrInvalidTransition) {
		t.Fatalf("stats of a stopped VM: %v", err)
	}
	if srcs := f.rt.MetricSources(); len(srcs) != 0 {
		t.Fatalf("stopped VM in sources: %+v", srcs)
	}
}

// TestImageCatalog creates VMs from a catalog image: the clone records
// the template's digest, and a template changed behind the catalog's
// back is refused as an integrity error before anything is created.
func TestImageCatalog(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	cat, err := rootfs.OpenCatalog(filepath.Join(f.dir, "images"), rootfs.CatalogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Create(ctx, "tiny", rootfs.Input{RootfsImage: f.spec.Rootfs, Kernel: f.spec.Kernel}); err != nil {
		t.Fatal(err)
	}
	v, err := f.rt.Create(ctx, "fromimg", Spec{Image: "tiny"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Spec.Image != "tiny" {
		t.Fatalf("spec: %+v", v.Spec)
	}
	cfg := f.machine("fromimg").Config()
	if !strings.HasPrefix(cfg.Kernel, filepath.Join(f.dir, "images", "tiny")) {
		t.Fatalf("kernel %s is not the catalog's", cfg.Kernel)
	}
	info, err := rootfs.ReadCloneInfo(cfg.Drives[0].Path)
	if err != nil || info.SourceSHA256 == "" {
		t.Fatalf("clone record: %+v %v", info, err)
	}
	if _, err := f.rt.Create(ctx, "x", Spec{Image: "nope"}); err == nil {
		t.Fatal("unknown image accepted")
	}
	// Tamper with the template (same size, so only the digest can tell).
	tpl := filepath.Join(f.dir, "images", "tiny", "rootfs.ext4")
	os.Chmod(tpl, 0o600)
	b, _ := os.ReadFile(tpl)
	b[0] ^= 0xff
	if err := os.WriteFile(tpl, b, 0o600); err != nil {
		t.Fatal(err)
	}
	before := dump(t, f.rt.st)
	if _, err := f.rt.Create(ctx, "tampered", Spec{Image: "tiny"}); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("tampered template: %v", err)
	}
	if after := dump(t, f.rt.st); !reflect.DeepEqual(before, after) {
		t.Fatal("a refused create changed the store")
	}
}

func TestSnapshotVerifyAndGC(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	if _, err := f.rt.Create(ctx, "vm", f.spec); err != nil {
		t.Fatal(err)
	}
	f.rt.Start(ctx, "vm")
	for _, n := range []string{"s1", "s2", "s3"} {
		if _, err := f.rt.Snapshot(ctx, "vm", n); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // distinct creation times
	}
	if err := f.rt.VerifySnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	// Corrupt s1's disk copy: verification names the integrity failure.
	sv, _ := f.rt.GetSnapshot(ctx, "s1")
	disk := filepath.Join(sv.Dir, "rootfs.ext4")
	os.Chmod(disk, 0o600)
	if err := os.WriteFile(disk, []byte("corrupted rootfs...."), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.rt.VerifySnapshot(ctx, "s1"); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("verify corrupted: %v", err)
	}
	if _, err := f.rt.Restore(ctx, RestoreSpec{Snapshot: "s1", VM: "c"}); err == nil {
		t.Fatal("restore of a corrupted snapshot succeeded")
	}
	removed, err := f.rt.GCSnapshots(ctx, GCPolicy{KeepPerVM: 1})
	if err != nil || len(removed) != 2 {
		t.Fatalf("gc: %v %v", removed, err)
	}
	snaps, _ := f.rt.Snapshots(ctx)
	if len(snaps) != 1 || snaps[0].Name != "s3" {
		t.Fatalf("kept: %+v", snaps)
	}
	if _, err := f.rt.GCSnapshots(ctx, GCPolicy{KeepPerVM: -1}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatal(err)
	}
}

// TestSnapshotFailureAtEveryStep injects a failure at each step of a
// snapshot of a running VM: no snapshot (record, files or pending
// directory) remains, and the VM runs again, unmarked.
func TestSnapshotFailureAtEveryStep(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	if _, err := f.rt.Create(ctx, "v", f.spec); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Start(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	snapDir := filepath.Join(f.rt.StateDir(), "snapshots")
	for _, s := range f.rt.snapshotSteps(&snapPlan{}) {
		t.Run(s.name, func(t *testing.T) {
			files := listDir(t, snapDir)
			injected := errors.New("injected failure at " + s.name)
			f.rt.inject = func(name string) error {
				if name == s.name {
					return injected
				}
				return nil
			}
			defer func() { f.rt.inject = nil }()
			if _, err := f.rt.Snapshot(ctx, "v", "s"); !errors.Is(err, injected) {
				t.Fatalf("want the injected error, got %v", err)
			}
			if snaps, _ := f.rt.st.ListSnapshots(); len(snaps) != 0 {
				t.Fatalf("snapshot records left: %+v", snaps)
			}
			if got := listDir(t, snapDir); !reflect.DeepEqual(files, got) {
				t.Fatalf("files changed:\nbefore %v\nafter  %v", files, got)
			}
			v, _ := f.rt.Get(ctx, "v")
			if v.Status != StatusRunning || f.machine("v").State() != "running" {
				t.Fatalf("after a failed snapshot: %s, machine %s", v.Status, f.machine("v").State())
			}
			if rec, _ := f.rt.st.GetVM("v"); rec.PausedFor != "" {
				t.Fatalf("VM still marked paused for %q", rec.PausedFor)
			}
		})
	}
	if _, err := f.rt.Snapshot(ctx, "v", "s"); err != nil {
		t.Fatalf("snapshot without failure: %v", err)
	}
}
