package network

import (
	"fmt"
	"sync"
)

// Allocator is the persistent pool allocator the network manager keeps
// its slots in. *store.Store implements it; MemAllocator is an in-memory
// stand-in for tests and for embedders without a store.
type Allocator interface {
	// Allocate reserves the lowest free value in [lo, hi] of pool for
	// owner, or fails (wrapping a "pool exhausted" error) when none is
	// free.
	Allocate(pool string, lo, hi uint64, owner string) (uint64, error)
	// Release frees a value; releasing a free value is not an error.
	Release(pool string, v uint64) error
	// Allocations returns the taken values of pool and their owners.
	Allocations(pool string) (map[uint64]string, error)
}

// ErrPoolFull is returned by MemAllocator when a pool has no free value.
var ErrPoolFull = fmt.Errorf("allocation pool exhausted")

// MemAllocator is an in-memory Allocator with the store's semantics
// (lowest free value first). Safe for concurrent use.
type MemAllocator struct {
	mu    sync.Mutex
	pools map[string]map[uint64]string
}

// NewMemAllocator returns an empty MemAllocator.
func NewMemAllocator() *MemAllocator {
	return &MemAllocator{pools: map[string]map[uint64]string{}}
}

// Allocate implements Allocator.
func (m *MemAllocator) Allocate(pool string, lo, hi uint64, owner string) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if lo > hi {
		return 0, fmt.Errorf("pool %s: empty range %d-%d", pool, lo, hi)
	}
	p := m.pools[pool]
	if p == nil {
		p = map[uint64]string{}
		m.pools[pool] = p
	}
	// Lowest free value first, like the store's cursor, so the fake
	// hands out the same numbers as the real thing.
	next := lo
	for {
		if _, ok := p[next]; !ok {
			break
		}
		if next == hi {
			return 0, fmt.Errorf("pool %s (%d-%d): %w", pool, lo, hi, ErrPoolFull)
		}
		next++
	}
	p[next] = owner
	return next, nil
}

// Release implements Allocator.
func (m *MemAllocator) Release(pool string, v uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pools[pool], v)
	return nil
}

// Allocations implements Allocator.
func (m *MemAllocator) Allocations(pool string) (map[uint64]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[uint64]string, len(m.pools[pool]))
	for k, v := range m.pools[pool] {
		out[k] = v
	}
	return out, nil
}
