package snapshot

import (
	"context"
	"errors"
	"sort"
)

// Policy bounds the store. Zero fields are no limit.
type Policy struct {
	// KeepPerVM keeps the newest N snapshots of each source VM.
	KeepPerVM int
	// MaxBytes caps the disk space of all snapshots; the oldest go first.
	MaxBytes int64
}

// Plan returns the snapshots GC would delete under p, in deletion order
// (every snapshot after its descendants). A snapshot that a kept diff
// snapshot is based on is never deleted, whatever the policy says, since
// the diff could not be restored without it.
func (s *Store) Plan(p Policy) ([]string, error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	return plan(all, p), nil
}

func plan(all []Snapshot, p Policy) []string {
	byName := map[string]Snapshot{}
	for _, sn := range all {
		byName[sn.Name] = sn
	}
	del := map[string]bool{}
	if p.KeepPerVM > 0 {
		byVM := map[string][]Snapshot{}
		for _, sn := range all {
			byVM[sn.SourceVM] = append(byVM[sn.SourceVM], sn)
		}
		for _, list := range byVM {
			// all is oldest first; keep the tail.
			for i := 0; i < len(list)-p.KeepPerVM; i++ {
				del[list[i].Name] = true
			}
		}
	}
	// Spare the ancestors of everything kept.
	protect := func() {
		for _, sn := range all {
			if del[sn.Name] {
				continue
			}
			// Bounded: a corrupt manifest could make the chain a cycle.
			for a, n := sn.Parent, 0; a != "" && n < len(all); a, n = byName[a].Parent, n+1 {
				if _, ok := byName[a]; !ok {
					break
				}
				delete(del, a)
			}
		}
	}
	protect()
	if p.MaxBytes > 0 {
		var total int64
		for _, sn := range all {
			if !del[sn.Name] {
				total += sn.Bytes()
			}
		}
		for total > p.MaxBytes {
			// The oldest kept snapshot no kept snapshot depends on.
			victim := ""
			for _, sn := range all {
				if del[sn.Name] || hasKeptChild(all, del, sn.Name) {
					continue
				}
				victim = sn.Name
				break
			}
			if victim == "" {
				break
			}
			del[victim] = true
			total -= byName[victim].Bytes()
		}
	}
	return descendantsFirstOf(all, del)
}

func hasKeptChild(all []Snapshot, del map[string]bool, name string) bool {
	for _, sn := range all {
		if sn.Parent == name && !del[sn.Name] {
			return true
		}
	}
	return false
}

// descendantsFirstOf orders the set so children precede parents and,
// otherwise, older precede newer.
func descendantsFirstOf(all []Snapshot, set map[string]bool) []string {
	depth := map[string]int{}
	byName := map[string]Snapshot{}
	for _, sn := range all {
		byName[sn.Name] = sn
	}
	for _, sn := range all {
		d := 0
		for a := sn.Parent; a != "" && d < len(all); a = byName[a].Parent {
			d++
		}
		depth[sn.Name] = d
	}
	var out []string
	for _, sn := range all {
		if set[sn.Name] {
			out = append(out, sn.Name)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return depth[out[i]] > depth[out[j]] })
	return out
}

// GC deletes what Plan(p) names and returns the names deleted. It stops
// at the first failure, reporting what it deleted so far.
func (s *Store) GC(ctx context.Context, p Policy) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	var done []string
	for _, name := range plan(all, p) {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		if err := s.remove(name); err != nil && !errors.Is(err, ErrNotFound) {
			return done, err
		}
		done = append(done, name)
	}
	if len(done) > 0 {
		s.log.Info("snapshot: gc", "deleted", done, "keep_per_vm", p.KeepPerVM, "max_bytes", p.MaxBytes)
	}
	return done, nil
}
