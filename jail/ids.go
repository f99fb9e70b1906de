package jail

import (
	"errors"
	"fmt"
	"sort"
	"sync"
)

// IDPool is the allocation pool of per-VM uids/gids.
const IDPool = "jail-uid"

// DefaultIDRange is far above login users (1000+) and the usual
// subordinate-id ranges (100000+ in steps of 65536), so a VM's uid owns
// nothing on the host but its own jail.
var DefaultIDRange = Range{Lo: 7_000_000, Hi: 7_065_535}

// Range is an inclusive range of ids.
type Range struct {
	Lo, Hi uint32
}

// Validate checks the range is non-empty and never includes root.
func (r Range) Validate() error {
	if r.Lo == 0 {
		return errors.New("jail id range must not include 0 (root)")
	}
	if r.Lo > r.Hi {
		return fmt.Errorf("jail id range %d-%d is empty", r.Lo, r.Hi)
	}
	return nil
}

// Allocator reserves values from named pools persistently. The runtime's
// store (store.Store.Allocate/Release) implements it; MemAllocator is an
// in-memory one for tests.
type Allocator interface {
	// Allocate reserves the lowest free value in [lo, hi] of pool for
	// owner.
	Allocate(pool string, lo, hi uint64, owner string) (uint64, error)
	// Release frees a value; releasing a free value is not an error.
	Release(pool string, v uint64) error
}

// ErrPoolFull is returned by MemAllocator when a range is exhausted.
var ErrPoolFull = errors.New("allocation pool full")

// MemAllocator is an in-memory Allocator for tests.
type MemAllocator struct {
	mu    sync.Mutex
	pools map[string]map[uint64]string
}

// NewMemAllocator returns an empty in-memory allocator.
func NewMemAllocator() *MemAllocator {
	return &MemAllocator{pools: map[string]map[uint64]string{}}
}

// Allocate implements Allocator.
func (a *MemAllocator) Allocate(pool string, lo, hi uint64, owner string) (uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pools[pool]
	if p == nil {
		p = map[uint64]string{}
		a.pools[pool] = p
	}
	for v := lo; v <= hi; v++ {
		if _, taken := p[v]; !taken {
			p[v] = owner
			return v, nil
		}
		if v == hi { // hi may be the largest uint64
			break
		}
	}
	return 0, fmt.Errorf("pool %s (%d-%d): %w", pool, lo, hi, ErrPoolFull)
}

// Release implements Allocator.
func (a *MemAllocator) Release(pool string, v uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.pools[pool], v)
	return nil
}

// Allocations returns the taken values of pool, sorted.
func (a *MemAllocator) Allocations(pool string) []uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []uint64
	for v := range a.pools[pool] {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Credential is the uid and gid a VMM runs as. hearth gives each VM its
// own uid and a gid of the same number (a group of its own), so one
// jailed VMM that escapes its chroot still cannot read another's files.
type Credential struct {
	UID int `json:"uid"`
	GID int `json:"gid"`
}

// AllocateCredential reserves a uid/gid for owner (the VM's id) from r.
func AllocateCredential(a Allocator, r Range, owner string) (Credential, error) {
	if err := r.Validate(); err != nil {
		return Credential{}, err
	}
	v, err := a.Allocate(IDPool, uint64(r.Lo), uint64(r.Hi), owner)
	if err != nil {
		return Credential{}, fmt.Errorf("allocate jail uid for %s: %w", owner, err)
	}
	return Credential{UID: int(v), GID: int(v)}, nil
}

// ReleaseCredential frees c's uid.
func ReleaseCredential(a Allocator, c Credential) error {
	if err := a.Release(IDPool, uint64(c.UID)); err != nil {
		return fmt.Errorf("release jail uid %d: %w", c.UID, err)
	}
	return nil
}
