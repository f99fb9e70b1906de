//go:build linux

package uffd

import (
	"log/slog"
	"testing"
)

// TestWindow walks sequences of faults through window and checks what
// each copies now and what it leaves to the background readahead.
func TestWindow(t *testing.T) {
	const base, pages = 0x7f0000000000, 4096
	type fault struct {
		page           uint64
		zero           bool
		lo, hi         uint64    // the copy the fault makes
		raStart, raEnd uint64    // the readahead it leaves (0, 0: none)
		around         [2]uint64 // the block it queues (0, 0: none)
		// raCopied is how many pages the background copies before the
		// next fault: all when 0, none when negative.
		raCopied int
	}
	tests := []struct {
		name      string
		recording bool
		faults    []fault
	}{
		{name: "an isolated fault copies its page and queues the rest of its block", faults: []fault{
			{page: 37, lo: 37, hi: 38, around: [2]uint64{32, 48}},
			{page: 1000, lo: 1000, hi: 1001, around: [2]uint64{992, 1008}},
		}},
		{name: "removed pages are zeroed a block at once", faults: []fault{
			{page: 37, zero: true, lo: 37, hi: 48},
		}},
		{name: "a stream copies a block and reads ahead a doubling window", faults: []fault{
			{page: 0, lo: 0, hi: 1, around: [2]uint64{0, 16}},
			{page: 16, lo: 16, hi: 32, raStart: 16, raEnd: 64},
			{page: 64, lo: 64, hi: 80, raStart: 64, raEnd: 144},
			{page: 144, lo: 144, hi: 160, raStart: 144, raEnd: 288},
			{page: 288, lo: 288, hi: 304, raStart: 288, raEnd: 560},
			{page: 560, lo: 560, hi: 576, raStart: 560, raEnd: 832}, // capped at 16 blocks
		}},
		{name: "a guest that overtakes its fault's block streams", faults: []fault{
			{page: 0, lo: 0, hi: 1, around: [2]uint64{0, 16}, raCopied: -1},
			{page: 1, lo: 1, hi: 17, raStart: 1, raEnd: 49},
		}},
		{name: "a fault behind an isolated fault is not a stream", faults: []fault{
			{page: 37, lo: 37, hi: 38, around: [2]uint64{32, 48}, raCopied: -1},
			{page: 36, lo: 36, hi: 37, around: [2]uint64{32, 48}},
		}},
		{name: "a guest that overtakes the readahead continues the stream", faults: []fault{
			{page: 0, lo: 0, hi: 1, around: [2]uint64{0, 16}},
			{page: 16, lo: 16, hi: 32, raStart: 16, raEnd: 64, raCopied: 8},
			{page: 40, lo: 40, hi: 56, raStart: 40, raEnd: 120},
		}},
		{name: "threads streaming side by side keep the window's rest", faults: []fault{
			{page: 0, lo: 0, hi: 1, around: [2]uint64{0, 16}},
			{page: 16, lo: 16, hi: 32, raStart: 16, raEnd: 64, raCopied: -1},
			{page: 40, lo: 40, hi: 56, raStart: 32, raEnd: 120},
		}},
		{name: "the stream survives an unrelated fault in between", faults: []fault{
			{page: 0, lo: 0, hi: 1, around: [2]uint64{0, 16}},
			{page: 16, lo: 16, hi: 32, raStart: 16, raEnd: 64},
			{page: 3000, lo: 3000, hi: 3001, raStart: 16, raEnd: 64, around: [2]uint64{2992, 3008}},
			{page: 64, lo: 64, hi: 80, raStart: 64, raEnd: 144},
		}},
		{name: "the readahead stops at the region's end", faults: []fault{
			{page: 4064, lo: 4064, hi: 4065, around: [2]uint64{4064, 4080}},
			{page: 4080, lo: 4080, hi: 4096, raStart: 4080, raEnd: 4096},
		}},
		{name: "recording copies what the guest touches, doubling from one page", recording: true, faults: []fault{
			{page: 37, lo: 37, hi: 38},
			{page: 38, lo: 38, hi: 39},
			{page: 39, lo: 39, hi: 41},
			{page: 41, lo: 41, hi: 45},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &server{o: Options{FaultAround: 16}, log: slog.New(slog.DiscardHandler)}
			if tt.recording {
				s.rec = &trace{}
			}
			r := &region{base: base, size: pages * PageSize4K, ps: PageSize4K}
			ss := &session{regions: []*region{r}, served: newBitmap(pages), zero: newBitmap(pages)}
			for i, f := range tt.faults {
				queued := len(ss.around)
				if f.zero {
					ss.zero.set(f.page, 64)
				}
				lo, hi := s.window(ss, r, f.page, f.zero)
				if lo != f.lo || hi != f.hi {
					t.Fatalf("fault %d at page %d copies [%d, %d), want [%d, %d)", i, f.page, lo, hi, f.lo, f.hi)
				}
				var raStart, raEnd uint64
				if ss.ra.r != nil {
					raStart, raEnd = ss.ra.start, ss.ra.end
				}
				if raStart != f.raStart || raEnd != f.raEnd {
					t.Fatalf("fault %d at page %d leaves readahead [%d, %d), want [%d, %d)", i, f.page, raStart, raEnd, f.raStart, f.raEnd)
				}
				var around [2]uint64
				if len(ss.around) > queued {
					a := ss.around[len(ss.around)-1]
					around = [2]uint64{a.next, a.end}
				}
				if around != f.around {
					t.Fatalf("fault %d at page %d queues block %v, want %v", i, f.page, around, f.around)
				}
				// The copies happen: what they cover is present for the
				// next fault.
				ss.served.set(lo, hi-lo)
				if f.raCopied >= 0 {
					for _, a := range ss.around {
						ss.served.set(a.next, a.end-a.next)
					}
					ss.around = ss.around[:0]
				}
				if ss.ra.r != nil && f.raCopied >= 0 {
					n := ss.ra.end - ss.ra.next
					if f.raCopied > 0 {
						n = uint64(f.raCopied)
					}
					ss.served.set(ss.ra.next, n)
					ss.ra.next += n
				}
			}
		})
	}
}
