package snapshot

import (
	"context"
	"strings"
	"testing"
	"time"
)

func mk(name, vm, parent string, age int, bytes int64) Snapshot {
	return Snapshot{Manifest: Manifest{Name: name, SourceVM: vm, Parent: parent,
		Created: time.Unix(1000+int64(age), 0), Files: map[string]FileInfo{MemFile: {Allocated: bytes}}}}
}

func TestPlan(t *testing.T) {
	// Oldest first, as List returns them.
	all := []Snapshot{
		mk("a1", "a", "", 1, 100),
		mk("a2", "a", "", 2, 100),
		mk("b1", "b", "", 3, 100),
		mk("a3", "a", "a2", 4, 10), // diff of a2
		mk("a4", "a", "", 5, 100),
		mk("b2", "b", "", 6, 100),
		mk("gone-vm", "c", "", 7, 100), // its VM is long destroyed
	}
	cases := []struct {
		name string
		p    Policy
		want string
	}{
		{"no limits", Policy{}, ""},
		{"keep 1 per vm", Policy{KeepPerVM: 1}, "a3,a1,a2,b1"},
		{"keep 2 per vm spares a3's parent", Policy{KeepPerVM: 2}, "a1"},
		{"keep 3 per vm", Policy{KeepPerVM: 3}, "a1"},
		{"keep 4 per vm", Policy{KeepPerVM: 4}, ""},
		{"max bytes drops oldest leaf-first", Policy{MaxBytes: 420}, "a1,b1"},
		{"max bytes cannot drop a kept diff's parent before it", Policy{MaxBytes: 300}, "a3,a1,a2,b1"},
		{"both", Policy{KeepPerVM: 2, MaxBytes: 250}, "a3,a1,a2,b1,a4"},
		{"everything", Policy{MaxBytes: 1}, "a3,a1,a2,b1,a4,b2,gone-vm"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := strings.Join(plan(all, c.p), ",")
			if got != c.want {
				t.Errorf("plan = %s, want %s", got, c.want)
			}
		})
	}
}

func TestGCDeletes(t *testing.T) {
	s := openStore(t)
	for i, n := range []string{"s1", "s2", "s3"} {
		snap(t, s, n, "vm", "", map[int64][]byte{0: {byte(i)}}, 4096)
	}
	snap(t, s, "d", "vm", "s3", map[int64][]byte{0: {9}}, 4096)
	plan, _ := s.Plan(Policy{KeepPerVM: 1})
	got, err := s.GC(context.Background(), Policy{KeepPerVM: 1})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "s1,s2" || strings.Join(plan, ",") != "s1,s2" {
		t.Fatalf("GC deleted %v (plan %v), want s1,s2 (s3 is d's parent)", got, plan)
	}
	assertClean(t, s.Dir(), "d", "s3")
}
