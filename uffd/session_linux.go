//go:build linux

package uffd

import "sort"

// region is a validated Region in the server's terms. Regions move when
// the VMM mremaps them; their file range never changes.
type region struct {
	base, size, off, ps uint64
}

func (r *region) end() uint64 { return r.base + r.size }

// unit returns the first 4 KiB file unit of page p.
func (r *region) unit(p uint64) uint64 { return (r.off + p*r.ps) / traceUnit }

func (r *region) pages() uint64 { return r.size / r.ps }

// bitmap holds one bit per 4 KiB unit of the memory file. A hugepage is
// marked in all its units, and tested in its first.
type bitmap []uint64

func newBitmap(units uint64) bitmap { return make(bitmap, (units+63)/64) }

func (b bitmap) get(u uint64) bool { return b[u/64]&(1<<(u%64)) != 0 }

func (b bitmap) set(u, n uint64) {
	for ; n > 0; u, n = u+1, n-1 {
		b[u/64] |= 1 << (u % 64)
	}
}

func (b bitmap) clear(u, n uint64) {
	for ; n > 0; u, n = u+1, n-1 {
		b[u/64] &^= 1 << (u % 64)
	}
}

// session is one userfaultfd: the VMM's, or the child's after a fork
// event. Page state is kept per session because a forked child's memory
// diverges from its parent's.
type session struct {
	fd      int
	child   bool
	regions []*region // sorted by base
	last    *region
	// served: the page was populated (or found present); zero: the page
	// was removed (REMOVE/UNMAP) and must be served with zeros.
	served, zero bitmap
	deferred     []uint64 // faults to retry after the next events are read
	// Sequential detection: the address just past the last on-demand
	// copy (or readahead window), and a recording stream's window (pages).
	seqNext, seqWin uint64
	// ra is the stream's pending readahead, and around the rest of
	// isolated faults' blocks (oldest first): both copied between events.
	ra     readahead
	around []readahead
	blk    readahead // the last isolated fault's block, to detect a stream
	gen    int       // bumped when regions move
}

// maxAround bounds the fault-around blocks waiting to be copied; past it
// the oldest is dropped (speculative: its pages fault if needed).
const maxAround = 16

// background reports whether copies are waiting for the event loop.
func (ss *session) background() bool { return ss.ra.pending() || len(ss.around) > 0 }

// dropBackground forgets the pending copies (the layout or page state
// changed under them).
func (ss *session) dropBackground() {
	ss.ra, ss.blk, ss.around = readahead{}, readahead{}, ss.around[:0]
}

// readahead is pages of r copied in the background, up to end: the
// window that follows a sequential fault, or the rest of an isolated
// fault's block. Pages from next on are still to be copied; a fault in
// [start, end] continues a stream (for a block, start is the page after
// its fault: only a fault forward of it is sequential).
type readahead struct {
	r                *region
	start, next, end uint64
	size             uint64 // pages after the fault's block; doubles per fault
}

func (ra *readahead) pending() bool { return ra.r != nil && ra.next < ra.end }

// holds reports whether page p of r lies in the window (copied or not)
// or right after it: a fault there continues the stream, even when other
// faults came between.
func (ra *readahead) holds(r *region, p uint64) bool {
	return ra.r == r && p >= ra.start && p <= ra.end
}

func (ss *session) find(addr uint64) *region {
	if r := ss.last; r != nil && addr >= r.base && addr < r.end() {
		return r
	}
	i := sort.Search(len(ss.regions), func(i int) bool { return ss.regions[i].end() > addr })
	if i < len(ss.regions) && addr >= ss.regions[i].base {
		ss.last = ss.regions[i]
		return ss.last
	}
	return nil
}

// regionOfUnit finds the region backed by file unit u.
func (ss *session) regionOfUnit(u uint64) *region {
	off := u * traceUnit
	for _, r := range ss.regions {
		if off >= r.off && off < r.off+r.size {
			return r
		}
	}
	return nil
}

// missing reports whether page p of r is not populated yet and in the
// given zero state.
func (ss *session) missing(r *region, p uint64, zero bool) bool {
	u := r.unit(p)
	return !ss.served.get(u) && ss.zero.get(u) == zero
}

// runLen counts the pages from p (included whatever its state) that are
// missing and in the same zero state, up to max and the region end.
func (ss *session) runLen(r *region, p, max uint64, zero bool) uint64 {
	n := uint64(1)
	for pages := r.pages(); n < max && p+n < pages && ss.missing(r, p+n, zero); n++ {
	}
	return n
}

// markZero handles REMOVE and UNMAP events: the kernel drops the pages of
// [start, end); a later fault there must read zeros, as anonymous memory
// does after MADV_DONTNEED, not the snapshot's bytes.
func (ss *session) markZero(start, end uint64) {
	for _, r := range ss.regions {
		lo, hi := max(start, r.base), min(end, r.end())
		if lo >= hi {
			continue
		}
		// Whole pages only: the kernel only drops whole pages.
		p0 := (lo - r.base + r.ps - 1) / r.ps
		p1 := (hi - r.base) / r.ps
		if p1 <= p0 {
			continue
		}
		u, n := r.unit(p0), (p1-p0)*r.ps/traceUnit
		ss.zero.set(u, n)
		ss.served.clear(u, n)
	}
	ss.seqNext = 0
	ss.dropBackground()
}

// remap handles a REMAP event: the VMM moved [from, from+length) to to.
// The moved part of each region keeps its file range, and page state is
// keyed by file units, so only addresses change.
func (ss *session) remap(from, to, length uint64) {
	var out []*region
	for _, r := range ss.regions {
		lo, hi := max(from, r.base), min(from+length, r.end())
		if lo >= hi {
			out = append(out, r)
			continue
		}
		if r.base < lo {
			out = append(out, &region{base: r.base, size: lo - r.base, off: r.off, ps: r.ps})
		}
		out = append(out, &region{base: to + (lo - from), size: hi - lo, off: r.off + (lo - r.base), ps: r.ps})
		if hi < r.end() {
			out = append(out, &region{base: hi, size: r.end() - hi, off: r.off + (hi - r.base), ps: r.ps})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].base < out[j].base })
	ss.regions, ss.last, ss.seqNext = out, nil, 0
	ss.dropBackground()
	ss.gen++
}
