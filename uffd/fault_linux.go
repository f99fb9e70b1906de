//go:build linux

package uffd

import (
	"errors"
	"fmt"
	"io"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// errAgain: the VMM's address space is changing (a non-cooperative event
// is queued); the copy must wait until the event has been read.
var errAgain = errors.New("mmap changing")

// errNoEnt: the destination is no longer registered (unmapped).
var errNoEnt = errors.New("range not registered")

func (s *server) fault(ss *session, addr uint64, t0 time.Time) error {
	r := ss.find(addr)
	if r == nil {
		return fmt.Errorf("%w: page fault at %#x is outside every guest memory region the VMM described", ErrFault, addr)
	}
	p := (addr - r.base) / r.ps
	zero := ss.zero.get(r.unit(p))
	// One copy serves p and the neighbours window picks.
	lo, hi := p, p+1
	if r.ps == PageSize4K && s.o.FaultAround > 1 {
		lo, hi = s.window(ss, r, p, zero)
	}
	copied, existed, err := s.fill(ss, r, lo, hi-lo, zero)
	switch {
	case errors.Is(err, errAgain):
		ss.deferred = append(ss.deferred, addr)
		return nil
	case errors.Is(err, errNoEnt):
		s.st.Errors++ // unmapped under us; the faulting thread is gone with it
		return nil
	case err != nil:
		return err
	}
	if existed > 0 {
		// Some page was already there (populated by a racing copy): make
		// sure the faulting thread is not left waiting for it.
		wake(ss.fd, r.base+p*r.ps, r.ps)
	}
	lat := time.Since(t0)
	s.latSum += lat
	s.latMax = max(s.latMax, lat)
	s.st.Faults++
	if zero {
		s.st.ZeroPages += copied
	} else {
		s.st.FaultBytes += copied * r.ps
		if s.rec != nil && !ss.child {
			s.record(r.unit(lo), (hi-lo)*r.ps/traceUnit)
		}
	}
	return nil
}

// window picks the pages one on-demand fault at page p copies: those of
// [b0, b1) that are missing and contiguous with p.
//
// Normally the fault copies p alone, which wakes the guest, and queues the
// rest of the aligned FaultAround block around p for the event loop to
// copy in the background (backgroundStep): the guest waits for one page,
// not the block. Removed pages are zeroed a whole block at once. A fault
// where the previous copy ended continues a sequential stream: like the
// kernel's readahead, the fault then copies one block forward from p and
// queues a readahead window behind it, which the event loop copies in the
// background while the guest consumes the block (backgroundStep). The
// window doubles with each fault of the stream, up to 16 blocks, and the
// stream's next fault is expected where it ends. Without it the guest
// would wait for every page of a stream to be copied; with it, the copy
// overlaps the guest's own work and the stream takes one round trip per
// window.
//
// While a trace is being replayed, the recorded working set says what the
// guest will touch: a fault copies the rest of its recorded run (what the
// prefetcher would copy next anyway) and nothing around it, since
// speculative neighbours would only compete with the prefetcher for the
// copy bandwidth that bounds a restore racing its prefetch.
//
// While recording a trace, an isolated fault copies only p and a stream's
// window doubles from one page, with no readahead, so that the trace
// holds the pages the guest touched rather than neighbours served
// speculatively (later restores prefetch exactly that), while a
// sequential first restore still streams.
func (s *server) window(ss *session, r *region, p uint64, zero bool) (lo, hi uint64) {
	w := uint64(s.o.FaultAround)
	recording := s.rec != nil && !ss.child
	seq := r.base+p*r.ps == ss.seqNext || ss.ra.holds(r, p)
	seq = seq || ss.blk.holds(r, p) // forward of the last isolated fault, in or right after its block
	ahead := false
	var b0, b1 uint64
	switch {
	case s.pf != nil && !ss.child:
		b0, b1 = p, p+1
		if end := s.pf.runEnd(r.unit(p)); end > 0 {
			b1 = p + min((end*traceUnit-(r.off+p*r.ps))/r.ps, 4*w)
		}
		ss.seqWin = 0
	case seq && recording:
		// 1, 2, 4, …: a run of 2^k pages is recorded exactly.
		ss.seqWin = min(max(2*ss.seqWin, 1), 4*w)
		b0, b1 = p, p+ss.seqWin
	case seq && !zero:
		b0, b1, ahead = p, p+w, true
	case recording:
		ss.seqWin = 0
		b0, b1 = p, p+1
	case zero:
		b0, b1 = p-p%w, p-p%w+w
	default:
		// The guest waits for p alone; its neighbours follow.
		b0, b1 = p, p+1
		blk := p - p%w
		if len(ss.around) == maxAround {
			ss.around = append(ss.around[:0], ss.around[1:]...)
		}
		ss.blk = readahead{r: r, start: p + 1, next: blk, end: min(blk+w, r.pages())}
		ss.around = append(ss.around, ss.blk)
	}
	b1 = min(b1, r.pages())
	lo, hi = p, p+1
	for lo > b0 && ss.missing(r, lo-1, zero) {
		lo--
	}
	for hi < b1 && ss.missing(r, hi, zero) {
		hi++
	}
	ss.seqNext = r.base + hi*r.ps
	if ahead {
		ra := readahead{r: r, start: p, next: hi, size: 2 * w}
		if old := ss.ra; old.holds(r, p) {
			ra.size = min(2*old.size, 16*w)
			if old.next < p {
				// Threads streaming side by side: keep what the window
				// had not copied yet behind the fault.
				ra.start, ra.next = old.next, old.next
			}
		}
		ra.end = min(hi+ra.size, r.pages())
		ss.ra = ra
		ss.seqNext = r.base + ra.end*r.ps
	}
	return lo, hi
}

// backgroundStep copies part of a session's pending background work (the
// stream's readahead first, then fault-around blocks in fault order),
// within the prefetcher's bounds per step, so that a fault queued
// meanwhile waits for one step at most.
func (s *server) backgroundStep(ss *session) error {
	budget, calls := uint64(prefetchUnits*traceUnit/PageSize4K), prefetchCalls
	if ss.ra.pending() {
		if err := s.copyAhead(ss, &ss.ra, &budget, &calls); err != nil {
			return err
		}
	}
	for len(ss.around) > 0 && budget > 0 && calls > 0 {
		if err := s.copyAhead(ss, &ss.around[0], &budget, &calls); err != nil {
			return err
		}
		if ss.around[0].pending() {
			break // out of budget, or an event must be read first
		}
		ss.around = append(ss.around[:0], ss.around[1:]...)
	}
	return nil
}

// copyAhead copies the missing pages of ra from ra.next on, spending
// budget pages and calls copies. Pages present or removed are skipped. A
// failed copy drops ra: it was speculative, and the fault path reports
// the error if the guest needs the page.
func (s *server) copyAhead(ss *session, ra *readahead, budget *uint64, calls *int) error {
	r := ra.r
	for ra.pending() && *budget > 0 && *calls > 0 {
		p := ra.next
		if !ss.missing(r, p, false) {
			ra.next++
			continue
		}
		n := ss.runLen(r, p, min(ra.end-p, *budget), false)
		copied, _, err := s.fill(ss, r, p, n, false)
		*calls--
		s.st.BackgroundPages += copied
		switch {
		case errors.Is(err, errAgain):
			*calls = 0 // an event is queued; the loop reads it first
			return nil
		case errors.Is(err, errVMMGone):
			return err
		case err != nil:
			if !errors.Is(err, errNoEnt) {
				s.st.Errors++
				s.log.Warn("background copy failed; dropping the range", "err", err)
			}
			*ra = readahead{}
			return nil
		}
		ra.next += n
		*budget -= n
	}
	return nil
}

func (s *server) retryDeferred(ss *session) error {
	if len(ss.deferred) == 0 {
		return nil
	}
	retry := ss.deferred
	ss.deferred = nil
	now := time.Now()
	for i, addr := range retry {
		if err := s.fault(ss, addr, now); err != nil {
			ss.deferred = append(ss.deferred, retry[i+1:]...)
			return err
		}
	}
	return nil
}

// stageFile reads n bytes of the memory file at off into the copy buffer
// and returns the buffer's address, the source of a UFFDIO_COPY.
//
// 4 KiB pages are copied through this buffer rather than straight from
// the file's mapping: the kernel then reads the page cache through its
// own mapping and the copy's source is a few hot pages, instead of a
// fresh user mapping of the file that the kernel walks page by page. It
// costs one memcpy of the page; on the shadow-paging host of the
// benchmarks it halved the copy and fault service time (bench/notes.md).
// The page cache is still shared by every clone of the snapshot.
func (s *server) stageFile(off, n uint64) (uint64, error) {
	buf := s.stage[:n]
	for got := 0; got < len(buf); {
		k, err := unix.Pread(s.memfd, buf[got:], int64(off)+int64(got))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, err
		case k == 0:
			return 0, fmt.Errorf("the file ends at %#x (truncated while serving?): %w", off+uint64(got), io.ErrUnexpectedEOF)
		}
		got += k
	}
	return uint64(uintptr(unsafe.Pointer(&buf[0]))), nil
}

// fill populates pages [p, p+n) of r: from the memory file, or with zeros.
// It returns the pages it populated and the pages it found present. On
// success every page of the range is present.
func (s *server) fill(ss *session, r *region, p, n uint64, zero bool) (copied, existed uint64, err error) {
	ps, done, retries := r.ps, uint64(0), 0
	// retry says whether a failed read of the memory file at the current
	// page is worth another try (an I/O error may pass), backing off.
	retry := func(cause error) bool {
		if retries++; retries > efaultRetries {
			return false
		}
		s.st.Errors++
		s.log.Warn("reading the memory file failed; retrying", "offset", r.off+(p+done)*ps, "attempt", retries, "err", cause)
		time.Sleep(time.Duration(retries*retries) * time.Millisecond)
		return true
	}
	for done < n {
		dst := r.base + (p+done)*ps
		var bytes uint64
		var errno unix.Errno
		switch {
		case zero && ps == PageSize4K:
			bytes, errno = zeroPages(ss.fd, dst, (n-done)*ps)
		case zero:
			// No UFFDIO_ZEROPAGE for hugetlbfs: copy from zeros.
			if s.zero == nil {
				if s.zero, err = unix.Mmap(-1, 0, PageSize2M, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
					return copied, existed, fmt.Errorf("map a zero hugepage: %w", err)
				}
			}
			bytes, errno = copyPages(ss.fd, dst, uint64(uintptr(unsafe.Pointer(&s.zero[0]))), ps)
		case ps == PageSize4K:
			l := min((n-done)*ps, uint64(len(s.stage)))
			src, rerr := s.stageFile(r.off+(p+done)*ps, l)
			if rerr != nil {
				if !errors.Is(rerr, io.ErrUnexpectedEOF) && retry(rerr) {
					continue
				}
				return copied, existed, fmt.Errorf("%w: cannot read the memory file at offset %#x: %w", ErrFault, r.off+(p+done)*ps, rerr)
			}
			bytes, errno = copyPages(ss.fd, dst, src, l)
		default:
			bytes, errno = copyPages(ss.fd, dst, s.base+r.off+(p+done)*ps, (n-done)*ps)
		}
		if k := bytes / ps; k > 0 {
			ss.served.set(r.unit(p+done), k*ps/traceUnit)
			if zero {
				ss.zero.clear(r.unit(p+done), k*ps/traceUnit)
			}
			done += k
			copied += k
		}
		switch errno {
		case 0:
		case unix.EAGAIN:
			if bytes == 0 {
				return copied, existed, errAgain
			}
			// Partial progress: the next call reports why it stopped.
		case unix.EEXIST:
			// Present already (a racing fault, the prefetcher, or a
			// page the VMM wrote): benign, skip it.
			existed++
			ss.served.set(r.unit(p+done), ps/traceUnit)
			s.st.ExistingPages++
			done++
		case unix.ESRCH:
			return copied, existed, errVMMGone
		case unix.ENOENT:
			return copied, existed, errNoEnt
		case unix.EFAULT:
			if retry(errno) {
				continue
			}
			return copied, existed, fmt.Errorf("%w: cannot read the memory file at offset %#x (I/O error or truncated file): %w",
				ErrFault, r.off+(p+done)*ps, errno)
		case unix.ENOMEM:
			return copied, existed, fmt.Errorf("%w: no memory for the page at %#x (hugepage pool or cgroup limit exhausted?): %w", ErrFault, dst, errno)
		default:
			op := "UFFDIO_COPY"
			if zero && ps == PageSize4K {
				op = "UFFDIO_ZEROPAGE"
			}
			return copied, existed, fmt.Errorf("%w: %s at %#x (+%#x): %w", ErrFault, op, dst, (n-done)*ps, errno)
		}
	}
	return copied, existed, nil
}

// detach hands the VM over on a stop request: it populates every page not
// yet present (zeros where removed), then unregisters the guest memory, so
// the VMM runs on without this server and a later fault in a removed range
// gets the kernel's zero page rather than hanging.
func (s *server) detach() error {
	s.log.Info("stop requested: populating the rest of guest memory and detaching")
	s.pf = nil
	for _, ss := range s.sessions {
		if err := s.populateAll(ss); err != nil {
			return s.fatal(fmt.Errorf("detach: %w", err))
		}
	}
	for _, ss := range s.sessions {
		for _, r := range ss.regions {
			if errno := unregister(ss.fd, r.base, r.size); errno != 0 && errno != unix.ESRCH && errno != unix.ENOENT {
				return s.fatal(fmt.Errorf("detach: UFFDIO_UNREGISTER %#x: %w", r.base, errno))
			}
		}
		// Release a VMM thread still waiting for its REMOVE event to be
		// read (it queued the event before the range was unregistered).
		if err := s.drain(ss); err != nil && !errors.Is(err, errVMMGone) {
			s.log.Warn("detach: final event drain", "err", err)
		}
	}
	s.st.State = StateDetached
	return nil
}

func (s *server) populateAll(ss *session) error {
	for {
		restart, err := s.populatePass(ss)
		if err != nil || !restart {
			return err
		}
	}
}

// populatePass walks the session's regions once; it stops early (restart)
// when a remap event moved regions under it.
func (s *server) populatePass(ss *session) (restart bool, err error) {
	for _, r := range ss.regions {
		chunk := max(1, uint64(64*PageSize4K)/r.ps)
		for p := uint64(0); p < r.pages(); {
			u := r.unit(p)
			if ss.served.get(u) {
				p++
				continue
			}
			zero := ss.zero.get(u)
			n := ss.runLen(r, p, chunk, zero)
			copied, _, err := s.fill(ss, r, p, n, zero)
			switch {
			case errors.Is(err, errAgain):
				// An event is queued: read it below, then retry p.
			case errors.Is(err, errNoEnt):
				ss.served.set(u, r.ps/traceUnit) // unmapped: nothing to populate
				p++
			case err != nil:
				return false, err
			default:
				p += n
			}
			if zero {
				s.st.ZeroPages += copied
			}
			// Events keep flowing while memory is populated: a REMOVE
			// changes what the rest must hold, a remap moves regions.
			gen := ss.gen
			if err := s.drain(ss); err != nil {
				return false, err
			}
			if ss.gen != gen {
				return true, nil
			}
		}
	}
	return false, nil
}
