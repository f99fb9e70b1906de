package snapshot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/rootfs/digest"
	"github.com/hearth-vm/hearth/rootfs/looptest"
	"github.com/hearth-vm/hearth/rootfs/sparse"
)

func openStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "snapshots"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writeAt writes chunks at offsets into p and sets its size (the rest
// stays holes), like a VMM writing a memory file.
func writeAt(t *testing.T, p string, size int64, chunks map[int64][]byte) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for off, b := range chunks {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// snap writes and commits a snapshot (full unless parent is set).
func snap(t *testing.T, s *Store, name, vm, parent string, mem map[int64][]byte, memSize int64) Snapshot {
	t.Helper()
	p, err := s.Begin(name)
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, p.StatePath, 4096, map[int64][]byte{0: []byte("state of " + name)})
	writeAt(t, p.MemPath, memSize, mem)
	sn, err := p.Commit(context.Background(), Meta{SourceVM: vm, Backend: "firecracker", Parent: parent, Restore: map[string]any{"vcpus": 2}})
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

func assertClean(t *testing.T, dir string, want ...string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	var got []string
	for _, e := range ents {
		if e.Name() == lockFile || e.Name() == "lost+found" {
			continue
		}
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("store holds %v, want %v", got, want)
	}
}

func TestValidateName(t *testing.T) {
	for _, c := range []struct {
		name string
		ok   bool
	}{{"warm", true}, {"Warm-1.x_y", true}, {"", false}, {"../x", false}, {"a..b", false}, {"a/b", false}, {"has space", false}, {".hidden", false}, {strings.Repeat("a", 64), false}} {
		if err := ValidateName(c.name); (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrInvalidName)) {
			t.Errorf("ValidateName(%q) = %v", c.name, err)
		}
	}
}

func TestCommitWritesManifest(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	p, err := s.Begin("warm")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(filepath.Base(p.Dir), ".pending-") || filepath.Dir(p.StatePath) != p.Dir {
		t.Fatalf("pending paths %+v", p)
	}
	// Not visible before Commit.
	if _, err := s.Get("warm"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get before commit = %v", err)
	}
	state := []byte("vmstate bytes")
	writeAt(t, p.StatePath, int64(len(state)), map[int64][]byte{0: state})
	writeAt(t, p.MemPath, 64<<20, map[int64][]byte{0: bytes.Repeat([]byte{1}, 4096), 32 << 20: bytes.Repeat([]byte{2}, 4096)})
	os.WriteFile(p.Path("rootfs.ext4"), []byte("disk copy"), 0o600)
	restore := json.RawMessage(`{"spec":{"vcpus":2}}`)
	sn, err := p.Commit(ctx, Meta{SourceVM: "vm1", Backend: "qemu", Restore: restore, Labels: map[string]string{"a": "b"}})
	if err != nil {
		t.Fatal(err)
	}
	if sn.Kind != Full || sn.SourceVM != "vm1" || sn.Backend != "qemu" || string(sn.Restore) != string(restore) || sn.Created.IsZero() {
		t.Errorf("manifest %+v", sn.Manifest)
	}
	for _, f := range []string{StateFile, MemFile, "rootfs.ext4"} {
		fi, ok := sn.Files[f]
		sum, size, _ := digest.File(ctx, sn.Path(f))
		if !ok || fi.SHA256 != sum || fi.Size != size {
			t.Errorf("%s: manifest %+v, actual %s %d", f, fi, sum, size)
		}
	}
	if mem := sn.Files[MemFile]; mem.Allocated >= mem.Size/2 {
		t.Errorf("mem allocated %d of %d: sparse file not recorded as such", mem.Allocated, mem.Size)
	}
	got, err := s.Get("warm")
	if err != nil || got.Files[MemFile] != sn.Files[MemFile] {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	assertClean(t, s.Dir(), "warm")
	if _, err := p.Commit(ctx, Meta{}); !errors.Is(err, ErrDone) {
		t.Errorf("second Commit = %v", err)
	}
	if err := p.Abort(); err != nil {
		t.Errorf("Abort after Commit = %v", err)
	}
	if _, err := s.Begin("warm"); !errors.Is(err, ErrExists) {
		t.Errorf("Begin of an existing name = %v", err)
	}
}

func TestFailedWritesLeaveNothing(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		run  func(t *testing.T, s *Store)
	}{
		{"abort", func(t *testing.T, s *Store) {
			p, _ := s.Begin("x")
			writeAt(t, p.MemPath, 4096, nil)
			if err := p.Abort(); err != nil {
				t.Fatal(err)
			}
			if err := p.Abort(); err != nil {
				t.Fatal("second Abort:", err)
			}
			if _, err := p.Commit(ctx, Meta{}); !errors.Is(err, ErrDone) {
				t.Fatalf("Commit after Abort = %v", err)
			}
		}},
		{"vmm wrote nothing", func(t *testing.T, s *Store) {
			p, _ := s.Begin("x")
			if _, err := p.Commit(ctx, Meta{}); !errors.Is(err, ErrIncomplete) {
				t.Fatalf("Commit = %v", err)
			}
		}},
		{"missing parent", func(t *testing.T, s *Store) {
			p, _ := s.Begin("x")
			writeAt(t, p.StatePath, 1, nil)
			writeAt(t, p.MemPath, 1, nil)
			if _, err := p.Commit(ctx, Meta{Parent: "nope"}); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Commit = %v", err)
			}
		}},
		{"name taken meanwhile", func(t *testing.T, s *Store) {
			p1, _ := s.Begin("x")
			p2, _ := s.Begin("x")
			for _, p := range []*Pending{p1, p2} {
				writeAt(t, p.StatePath, 1, nil)
				writeAt(t, p.MemPath, 1, nil)
			}
			if _, err := p1.Commit(ctx, Meta{}); err != nil {
				t.Fatal(err)
			}
			if _, err := p2.Commit(ctx, Meta{}); !errors.Is(err, ErrExists) {
				t.Fatalf("second Commit = %v", err)
			}
			s.Delete("x")
		}},
		{"cancelled", func(t *testing.T, s *Store) {
			p, _ := s.Begin("x")
			writeAt(t, p.StatePath, 1, nil)
			writeAt(t, p.MemPath, 8<<20, map[int64][]byte{0: {1}})
			c, cancel := context.WithCancel(ctx)
			cancel()
			if _, err := p.Commit(c, Meta{}); !errors.Is(err, context.Canceled) {
				t.Fatalf("Commit = %v", err)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := openStore(t)
			c.run(t, s)
			assertClean(t, s.Dir())
		})
	}
}

// On a small real filesystem: a VMM that runs out of space, and a Commit
// that runs out of space for its manifest, both leave no snapshot.
func TestDiskFullLeavesNothing(t *testing.T) {
	ctx := context.Background()
	mnt := looptest.Mount(t, "ext4", 16<<20)
	s, err := Open(filepath.Join(mnt, "snapshots"), Options{})
	if err != nil {
		t.Fatal(err)
	}

	// 1. The VMM's write fails with ENOSPC; the runtime aborts.
	p, err := s.Begin("full1")
	if err != nil {
		t.Fatal(err)
	}
	if err := fill(p.MemPath); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling = %v, want ENOSPC", err)
	}
	if err := p.Abort(); err != nil {
		t.Fatal(err)
	}
	assertClean(t, s.Dir())

	// 2. The VMM's files fit, but the disk is full when Commit writes the
	// manifest (a filler elsewhere took the rest).
	p, err = s.Begin("full2")
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, p.StatePath, 4096, map[int64][]byte{0: []byte("state")})
	writeAt(t, p.MemPath, 1<<20, map[int64][]byte{0: bytes.Repeat([]byte{3}, 1<<20)})
	filler := filepath.Join(mnt, "filler")
	if err := fill(filler); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling = %v", err)
	}
	_, err = p.Commit(ctx, Meta{SourceVM: "vm"})
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Commit on a full disk = %v, want ENOSPC", err)
	}
	assertClean(t, s.Dir())
	// With space again, the same name works.
	os.Remove(filler)
	snap(t, s, "full2", "vm", "", map[int64][]byte{0: {1}}, 4096)
	assertClean(t, s.Dir(), "full2")
}

// fill writes to p until the filesystem is full.
func fill(p string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{0xee}, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			// Top up the last partial block too.
			for _, n := range []int{64 << 10, 4096, 1} {
				for {
					if _, err := f.Write(buf[:n]); err != nil {
						break
					}
				}
			}
			if serr := f.Sync(); serr != nil {
				return serr
			}
			return err
		}
	}
}

func TestVerifyOnPrepare(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	sn := snap(t, s, "base", "vm", "", map[int64][]byte{0: bytes.Repeat([]byte{9}, 8192)}, 1<<20)

	r, err := s.Prepare(ctx, "base", PrepareOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.StatePath != sn.Path(StateFile) || r.MemPath != sn.Path(MemFile) || r.Merged {
		t.Errorf("Prepare = %+v", r)
	}
	// Tamper with the memory file, keeping size and mtime.
	mem := sn.Path(MemFile)
	fi, _ := os.Stat(mem)
	time.Sleep(10 * time.Millisecond)
	f, _ := os.OpenFile(mem, os.O_WRONLY, 0)
	f.WriteAt([]byte{7}, 100)
	f.Close()
	os.Chtimes(mem, fi.ModTime(), fi.ModTime())

	cases := []struct {
		mode digest.Mode
		fail bool
	}{{digest.OnChange, true}, {digest.Always, true}, {digest.Never, false}}
	for _, c := range cases {
		_, err := s.Prepare(ctx, "base", PrepareOptions{Verify: c.mode})
		var ie *IntegrityError
		if c.fail != errors.As(err, &ie) {
			t.Errorf("mode %v: Prepare = %v", c.mode, err)
		}
		if ie != nil && (ie.Path != mem || ie.Want != sn.Files[MemFile].SHA256) {
			t.Errorf("IntegrityError %+v", ie)
		}
	}
	if err := s.Verify(ctx, "base", digest.Always); err == nil {
		t.Error("Verify passed a tampered snapshot")
	}
}

func TestDiffSnapshotsMerge(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	page := func(b byte) []byte { return bytes.Repeat([]byte{b}, 4096) }
	const size = 16 << 20
	snap(t, s, "base", "vm", "", map[int64][]byte{0: page('A'), 4096: page('A'), 8 << 20: page('A')}, size)
	d1 := snap(t, s, "d1", "vm", "base", map[int64][]byte{4096: page('B')}, size)
	snap(t, s, "d2", "vm", "d1", map[int64][]byte{8 << 20: page('C'), 12 << 20: page('C')}, size)
	if d1.Kind != Diff || d1.Parent != "base" {
		t.Fatalf("d1 manifest %+v", d1.Manifest)
	}

	if _, err := s.Prepare(ctx, "d2", PrepareOptions{}); err == nil {
		t.Fatal("Prepare of a diff without a directory succeeded")
	}
	vmDir := t.TempDir()
	r, err := s.Prepare(ctx, "d2", PrepareOptions{Dir: vmDir})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Merged || r.MemPath != filepath.Join(vmDir, MemFile) || strings.Join(r.Chain, ",") != "base,d1,d2" || r.StatePath != filepath.Join(s.Dir(), "d2", StateFile) {
		t.Fatalf("Prepare = %+v", r)
	}
	want := make([]byte, size)
	copy(want[0:], page('A'))
	copy(want[4096:], page('B'))
	copy(want[8<<20:], page('C'))
	copy(want[12<<20:], page('C'))
	got, _ := os.ReadFile(r.MemPath)
	if !bytes.Equal(got, want) {
		t.Fatal("merged memory is not base+d1+d2")
	}
	if fi, _ := os.Stat(r.MemPath); sparse.Allocated(fi) > 4<<20 {
		t.Errorf("merged file allocates %d bytes: holes were filled", sparse.Allocated(fi))
	}
	if _, err := s.Prepare(ctx, "d2", PrepareOptions{Dir: vmDir}); err == nil {
		t.Error("merging over an existing memory file succeeded")
	}

	// Parents are protected.
	if err := s.Delete("base"); !errors.Is(err, ErrHasChildren) {
		t.Errorf("Delete(base) = %v", err)
	}
	kids, _ := s.Children("base")
	if strings.Join(kids, ",") != "d1" {
		t.Errorf("Children(base) = %v", kids)
	}
	gone, err := s.DeleteWithDescendants("d1")
	if err != nil || strings.Join(gone, ",") != "d2,d1" {
		t.Fatalf("DeleteWithDescendants = %v, %v", gone, err)
	}
	if err := s.Delete("base"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, s.Dir())
}

// A diff that really is all data replaces the whole base. (The guard
// against filesystems that hide holes is table-tested in rootfs/sparse.)
func TestMergeDenseDiff(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base")
	diff := filepath.Join(dir, "diff")
	writeAt(t, base, 8192, map[int64][]byte{0: bytes.Repeat([]byte{1}, 8192)})
	writeAt(t, diff, 8192, map[int64][]byte{0: bytes.Repeat([]byte{2}, 8192)})
	out := filepath.Join(dir, "out")
	if err := MergeMemory(ctx, out, []string{base, diff}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, bytes.Repeat([]byte{2}, 8192)) {
		t.Fatal("dense diff not applied")
	}
}

func TestWorkingSet(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	snap(t, s, "ws", "vm", "", nil, 4096)
	trace := filepath.Join(t.TempDir(), "trace")
	os.WriteFile(trace, []byte("0\n4096\n"), 0o600)
	if err := s.AttachWorkingSet(ctx, "ws", trace); err != nil {
		t.Fatal(err)
	}
	sn, _ := s.Get("ws")
	if sn.WorkingSet != WorkingSetFile || sn.Files[WorkingSetFile].SHA256 != digest.Bytes([]byte("0\n4096\n")) {
		t.Fatalf("manifest %+v", sn.Manifest)
	}
	if err := s.Verify(ctx, "ws", digest.Always); err != nil {
		t.Fatal(err)
	}
}

func TestOpenCleansStalePending(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "snapshots")
	s, _ := Open(dir, Options{})
	p, _ := s.Begin("live")
	os.MkdirAll(filepath.Join(dir, ".rm-old-1", "old"), 0o700)
	// A live writer's lock keeps everything while it runs...
	Open(dir, Options{})
	if _, err := os.Stat(p.Dir); err != nil {
		t.Fatal("pending dir of a live writer removed")
	}
	// ...and once it is gone (process died: lock released without
	// cleanup), the next Open removes its leftovers.
	p.unlock()
	Open(dir, Options{})
	assertClean(t, dir)
}
