package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/vmm"
	bolt "go.etcd.io/bbolt"
)

func openT(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestVMRecords(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir)
	now := time.Now().UTC().Truncate(time.Second)
	rec := VM{ID: "a", Key: "k1", Status: "created", Backend: "mem", Spec: json.RawMessage(`{"vcpus":2}`),
		Handle:    &vmm.Handle{Backend: "mem", Pid: 42, StartTime: 7},
		Resources: []Resource{{Kind: "dir", Name: "/x"}}, CreatedAt: now, UpdatedAt: now}
	if err := s.CreateVM(rec); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateVM(rec); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate create: %v", err)
	}
	if err := s.PutVM(VM{ID: "missing"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("put missing: %v", err)
	}
	got, err := s.GetVM("a")
	if err != nil || got.Handle.Pid != 42 || got.Handle.StartTime != 7 || string(got.Spec) != `{"vcpus":2}` || !got.CreatedAt.Equal(now) {
		t.Fatalf("get: %+v %v", got, err)
	}
	if err := s.CreateVM(VM{ID: "b"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RenameVM("a", "b", now); !errors.Is(err, ErrExists) {
		t.Fatalf("rename onto existing: %v", err)
	}
	if err := s.RenameVM("zz", "c", now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rename missing: %v", err)
	}
	if err := s.RenameVM("a", "c", now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetVM("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old id: %v", err)
	}
	if got, _ := s.GetVM("c"); got.ID != "c" || got.Key != "k1" {
		t.Fatalf("renamed: %+v", got)
	}
	list, _ := s.ListVMs()
	if len(list) != 2 || list[0].ID != "b" || list[1].ID != "c" {
		t.Fatalf("list: %+v", list)
	}
	if err := s.DeleteVM("c"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVM("c"); err != nil {
		t.Fatalf("delete twice: %v", err)
	}
	// Records survive close and reopen.
	s.Close()
	s2 := openT(t, dir)
	if list, _ := s2.ListVMs(); len(list) != 1 || list[0].ID != "b" {
		t.Fatalf("after reopen: %+v", list)
	}
}

func TestSnapshots(t *testing.T) {
	s := openT(t, t.TempDir())
	if err := s.CreateSnapshot(Snapshot{Name: "s1", SourceVM: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSnapshot(Snapshot{Name: "s1"}); !errors.Is(err, ErrExists) {
		t.Fatal(err)
	}
	if err := s.PutSnapshot(Snapshot{Name: "s1", SourceVM: "a", Complete: true}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetSnapshot("s1"); err != nil || !got.Complete {
		t.Fatalf("%+v %v", got, err)
	}
	if _, err := s.GetSnapshot("s2"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if err := s.PutSnapshot(Snapshot{Name: "s2"}); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	s.DeleteSnapshot("s1")
	if l, _ := s.ListSnapshots(); len(l) != 0 {
		t.Fatal(l)
	}
}

func TestAllocate(t *testing.T) {
	s := openT(t, t.TempDir())
	cases := []struct {
		op    string
		v     uint64
		owner string
		want  uint64
		err   error
	}{
		{op: "alloc", owner: "a", want: 3},
		{op: "alloc", owner: "b", want: 4},
		{op: "alloc", owner: "c", want: 5},
		{op: "release", v: 4},
		{op: "alloc", owner: "d", want: 4}, // lowest gap is reused
		{op: "alloc", owner: "e", want: 6},
		{op: "alloc", owner: "f", err: ErrFull}, // range is 3-6
		{op: "release", v: 99},                  // releasing a free value is fine
	}
	for i, c := range cases {
		switch c.op {
		case "alloc":
			got, err := s.Allocate("cid", 3, 6, c.owner)
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("%d: want %v, got %d %v", i, c.err, got, err)
				}
				continue
			}
			if err != nil || got != c.want {
				t.Fatalf("%d: got %d %v, want %d", i, got, err, c.want)
			}
		case "release":
			if err := s.Release("cid", c.v); err != nil {
				t.Fatal(err)
			}
		}
	}
	a, _ := s.Allocations("cid")
	if len(a) != 4 || a[4] != "d" {
		t.Fatalf("allocations: %v", a)
	}
	// Pools are independent.
	if v, err := s.Allocate("uid", 3, 6, "x"); err != nil || v != 3 {
		t.Fatalf("other pool: %d %v", v, err)
	}
	if pools, _ := s.Pools(); len(pools) != 2 {
		t.Fatalf("pools: %v", pools)
	}
	if _, err := s.Allocate("bad", 5, 4, "x"); err == nil {
		t.Fatal("empty range accepted")
	}
}

func TestLockAndSchema(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir)
	if _, err := Open(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v", err)
	}
	s.Close()
	// A database from a newer hearth is refused, not misread.
	db, err := bolt.Open(dir+"/hearth.db", 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, u64(SchemaVersion+1)) })
	db.Close()
	if _, err := Open(dir); !errors.Is(err, ErrSchema) {
		t.Fatalf("newer schema: %v", err)
	}
}

func TestCorruptRecord(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketVMs).Put([]byte("x"), []byte("{not json")) })
	if _, err := s.GetVM("x"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("get corrupt: %v", err)
	}
	if _, err := s.ListVMs(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("list corrupt: %v", err)
	}
	s.Close()
}

// TestGroupCommit runs many writes at once, so that most of them are
// committed in groups: each still behaves as its own transaction — a
// failing one (a duplicate id) fails alone and leaves nothing, the others
// all land, and allocations stay distinct.
func TestGroupCommit(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 64
	var wg sync.WaitGroup
	var dups, created atomic.Int32
	vals := make([]uint64, n)
	errs := make(chan error, 3*n)
	for i := 0; i < n; i++ {
		wg.Add(3)
		go func() {
			defer wg.Done()
			if err := s.CreateVM(VM{ID: fmt.Sprintf("vm-%d", i), Status: "created"}); err != nil {
				errs <- err
			}
		}()
		go func() {
			// Every fourth id is contended by two creates.
			defer wg.Done()
			err := s.CreateVM(VM{ID: fmt.Sprintf("dup-%d", i/2), Status: "created", Key: fmt.Sprint(i)})
			switch {
			case err == nil:
				created.Add(1)
			case errors.Is(err, ErrExists):
				dups.Add(1)
			default:
				errs <- err
			}
		}()
		go func() {
			defer wg.Done()
			v, err := s.Allocate("pool", 1, 1000, fmt.Sprint(i))
			if err != nil {
				errs <- err
			}
			vals[i] = v
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if created.Load() != n/2 || dups.Load() != n/2 {
		t.Fatalf("contended creates: %d created, %d refused, want %d each", created.Load(), dups.Load(), n/2)
	}
	recs, err := s.ListVMs()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != n+n/2 {
		t.Fatalf("%d records, want %d", len(recs), n+n/2)
	}
	seen := map[uint64]bool{}
	for _, v := range vals {
		if v < 1 || v > n || seen[v] {
			t.Fatalf("allocations %v: not %d distinct values from 1", vals, n)
		}
		seen[v] = true
	}
}
