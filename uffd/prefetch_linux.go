//go:build linux

package uffd

import (
	"cmp"
	"errors"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

func (s *server) saveTrace() {
	rec := s.rec
	s.rec = nil
	if len(rec.runs) == 0 {
		s.st.Trace = TraceOff
		return
	}
	if err := writeTrace(s.o.TraceFile, rec); err != nil {
		s.log.Warn("save prefetch trace", "err", err)
		return
	}
	s.st.Trace, s.st.TracePages = TraceRecorded, rec.pages()
	s.log.Info("prefetch trace recorded", "file", s.o.TraceFile, "runs", len(rec.runs), "pages", s.st.TracePages)
}

func (s *server) record(u, n uint64) {
	rs := s.rec.runs
	if k := len(rs) - 1; k >= 0 && rs[k].start+rs[k].count == u {
		rs[k].count += n
		return
	}
	if len(rs) >= maxTraceRuns {
		return
	}
	s.rec.runs = append(rs, run{u, n})
}

// prefetcher replays a trace: runs in recorded order, a chunk per loop
// iteration, skipping pages already present.
type prefetcher struct {
	t       *trace
	i       int    // current run
	u       uint64 // next unit within run i
	started time.Time
	stop    chan struct{}
	// byStart is the trace's runs sorted by start, so that an on-demand
	// fault can find the recorded run it falls in (runEnd).
	byStart []run
}

func (pf *prefetcher) start(s *server) {
	pf.started = time.Now()
	pf.index()
	pf.stop = make(chan struct{})
	if len(pf.t.runs) > 0 {
		pf.u = pf.t.runs[0].start
	}
	// Ask the kernel to read the working set into the page cache ahead of
	// the copies (it matters when the cache is cold); madvise only queues
	// I/O, so this goroutine never touches the mapping itself.
	s.bg.Add(1)
	go func(runs []run, mem []byte, done <-chan struct{}) {
		defer s.bg.Done()
		for _, r := range runs {
			select {
			case <-done:
				return
			default:
			}
			_ = unix.Madvise(mem[r.start*traceUnit:(r.start+r.count)*traceUnit], unix.MADV_WILLNEED)
		}
	}(pf.t.runs, s.mem, s.doneCh)
}

// prefetchStep copies up to prefetchUnits of the trace in at most
// prefetchCalls copies, then returns to the event loop so that pending
// faults are served first. It ends prefetching (s.pf = nil) after the
// last run.
func (s *server) prefetchStep(ss *session) error {
	pf := s.pf
	var units uint64
	for calls := 0; pf.i < len(pf.t.runs) && units < prefetchUnits && calls < prefetchCalls; {
		rn := pf.t.runs[pf.i]
		end := rn.start + rn.count
		if pf.u < rn.start || pf.u >= end {
			pf.u = rn.start
		}
		r := ss.regionOfUnit(pf.u)
		if r == nil { // not guest memory in this restore's layout
			pf.next()
			continue
		}
		p := (pf.u*traceUnit - r.off) / r.ps
		last := min(end*traceUnit, r.off+r.size) // file offset just past what this run needs here
		pages := (last - (r.off + p*r.ps) + r.ps - 1) / r.ps
		for pages > 0 && !ss.missing(r, p, false) {
			p, pages = p+1, pages-1
		}
		if pages == 0 {
			pf.advance(r, p, end)
			continue
		}
		n := ss.runLen(r, p, min(pages, max(1, (prefetchUnits-units)*traceUnit/r.ps)), false)
		copied, _, err := s.fill(ss, r, p, n, false)
		calls++
		switch {
		case errors.Is(err, errAgain):
			return nil // an event is queued; the loop reads it first
		case errors.Is(err, errNoEnt):
			ss.served.set(r.unit(p), n*r.ps/traceUnit)
		case errors.Is(err, errVMMGone):
			return err
		case err != nil:
			// Best effort: the fault path reports it if the VMM needs
			// the page.
			s.st.Errors++
			s.log.Warn("prefetch copy failed; skipping the run", "err", err)
			pf.next()
			continue
		}
		s.st.PrefetchedPages += copied
		s.st.PrefetchedBytes += copied * r.ps
		units += n * r.ps / traceUnit
		pf.advance(r, p+n, end)
	}
	if pf.i < len(pf.t.runs) {
		return nil
	}
	s.st.Trace = TraceReplayed
	s.st.PrefetchMS = float64(time.Since(pf.started).Microseconds()) / 1e3
	s.log.Info("prefetch done", "pages", s.st.PrefetchedPages, "bytes", s.st.PrefetchedBytes, "took", time.Since(pf.started))
	s.pf = nil
	// A runtime holding the vCPUs until the working set is in (REAP)
	// watches the status file for this.
	s.writeStatus()
	return nil
}

func (pf *prefetcher) index() {
	pf.byStart = slices.Clone(pf.t.runs)
	slices.SortFunc(pf.byStart, func(a, b run) int { return cmp.Compare(a.start, b.start) })
}

// runEnd returns the end unit of the recorded run holding unit u, or 0
// when u is not in the working set.
func (pf *prefetcher) runEnd(u uint64) uint64 {
	i, _ := slices.BinarySearchFunc(pf.byStart, u, func(r run, u uint64) int { return cmp.Compare(r.start, u) })
	// byStart[i-1] is the last run starting at or before u (or i itself
	// when it starts at u exactly).
	if i < len(pf.byStart) && pf.byStart[i].start == u {
		return u + pf.byStart[i].count
	}
	if i > 0 && u < pf.byStart[i-1].start+pf.byStart[i-1].count {
		return pf.byStart[i-1].start + pf.byStart[i-1].count
	}
	return 0
}

func (pf *prefetcher) next() {
	pf.i++
	if pf.i < len(pf.t.runs) {
		pf.u = pf.t.runs[pf.i].start
	}
}

// advance moves past page nextPage-1 of r. A run may continue in the
// next region's file range (runs of adjacent faults merge), so only the
// run's end moves to the next run; the next step looks the region up.
func (pf *prefetcher) advance(r *region, nextPage, end uint64) {
	pf.u = r.unit(nextPage)
	if pf.u >= end {
		pf.next()
	}
}
