//go:build linux

package bench

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/uffd"
	"github.com/hearth-vm/hearth/uffd/uffdtest"
)

// The userfaultfd benchmarks run a fake VMM (uffdtest: this test binary,
// re-executed) that touches guest memory while the page-fault server runs
// in this process. init rather than TestMain turns the re-executed binary
// into that child, so the package's other benchmarks keep their own
// TestMain freedom.
func init() { uffdtest.RunChildIfRequested() }

const (
	imageSize = 1 << 30
	pageSize  = 4096
)

func requireUffd(b *testing.B) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root: userfaultfd for another process")
	}
	if err := uffdtest.Available(); err != nil {
		b.Skipf("userfaultfd unavailable: %v", err)
	}
}

// memImage writes a 1 GiB memory image; it stays in the page cache, so
// both the server and the kernel baseline read cached pages and the
// comparison is about fault handling, not the disk.
func memImage(b *testing.B) (dir, path string) {
	b.Helper()
	dir = b.TempDir()
	path = filepath.Join(dir, "mem")
	if err := uffdtest.WriteMemFile(path, imageSize); err != nil {
		b.Fatal(err)
	}
	return dir, path
}

// restore runs one fake-VMM restore. With file set, memory is the image
// mapped MAP_PRIVATE (Firecracker's File backend: the kernel serves the
// faults); otherwise anonymous memory served by an in-process page-fault
// server with o. It returns the child's step results and the server's
// status.
func restore(b *testing.B, mem string, file bool, o uffd.Options, steps ...uffdtest.Step) ([]uffdtest.StepResult, uffd.Status) {
	b.Helper()
	cfg := uffdtest.Config{MemFile: mem, Regions: []uffdtest.Region{{Size: imageSize, FileBacked: file}}, Steps: steps, Timeout: 2 * time.Minute}
	var done chan error
	if !file {
		o.MemFile, o.Logger = mem, slog.New(slog.DiscardHandler)
		os.Remove(o.StatusFile)
		done = make(chan error, 1)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() { done <- uffd.Serve(ctx, o) }()
		for {
			if st, err := uffd.ReadStatus(o.StatusFile); err == nil && st.State == uffd.StateListening {
				break
			}
			time.Sleep(time.Millisecond)
		}
		cfg.Socket = o.Socket
	}
	out, err := uffdtest.Run(cfg)
	if err != nil || out.ExitCode != 0 {
		b.Fatalf("fake VMM: %v, exit %d: %s", err, out.ExitCode, out.Stderr)
	}
	var st uffd.Status
	if done != nil {
		if err := <-done; err != nil {
			b.Fatalf("server: %v", err)
		}
		if st, err = uffd.ReadStatus(o.StatusFile); err != nil {
			b.Fatal(err)
		}
	}
	return out.Result.Steps, st
}

// last returns the last step's result: the timed touch.
func last(steps []uffdtest.StepResult) uffdtest.StepResult { return steps[len(steps)-1] }

func serverOptions(dir string) uffd.Options {
	return uffd.Options{Socket: filepath.Join(dir, "uffd.sock"), StatusFile: filepath.Join(dir, "uffd.status"), StatusInterval: time.Hour}
}

// BenchmarkUffdFault: touching a 1 GiB image page by page (one 8-byte
// access per 4 KiB page, one thread), sequentially and in random order,
// reading (a guest reading restored memory) and writing (a guest dirtying
// it), served by the page-fault server, next to baselines in the same
// run:
//
//   - kernel-file: the kernel's own faults on a MAP_PRIVATE mapping of the
//     same file (Firecracker's File backend), the goal's reference;
//   - present: the fake VMM copies the whole image in itself with
//     UFFDIO_COPY first (untimed), then touches it: the first touch of
//     pages already there, with no fault, no server and no copy in the
//     timed part, which no userfaultfd server can go below (on this host
//     the first touch of a page installed writable costs a hypervisor
//     exit: see bench/notes.md);
//   - anon (writes): the kernel's zero-fill faults on fresh anonymous
//     memory, what a new page costs on this host whoever fills it.
//
// ns/op is the time to touch the whole image;
// µs/fault divides it by the faults taken (the server's on-demand faults,
// or the kernel's minor faults, which map up to 16 pages each on reads:
// fault-around). The uffd case reports x-kernel-file (its ns/page over
// kernel-file's) and x-kernel-file-floor (present's over kernel-file's:
// the ratio the host imposes on any userfaultfd server).
func BenchmarkUffdFault(b *testing.B) {
	requireUffd(b)
	dir, mem := memImage(b)
	for _, order := range []string{"sequential", "random"} {
		for _, access := range []string{"read", "write"} {
			expect := map[string]string{"read": "any", "write": "write"}[access]
			touch := uffdtest.Step{Op: "touch", Region: 0, Order: order, Expect: expect, Seed: 1}
			var kernelNS, floorNS float64 // ns/page of the baselines
			b.Run(order+"/"+access+"/kernel-file", func(b *testing.B) {
				var total time.Duration
				var faults int64
				for b.Loop() {
					r := last(restoreKernel(b, mem, touch))
					total += r.Elapsed
					faults += r.MinorFaults
				}
				kernelNS = report(b, total, uint64(faults))
			})
			b.Run(order+"/"+access+"/present", func(b *testing.B) {
				var total time.Duration
				for b.Loop() {
					rs, _ := restore(b, mem, false, serverOptions(dir), uffdtest.Step{Op: "populate", Region: 0}, touch)
					total += last(rs).Elapsed
				}
				floorNS = report(b, total, 0)
			})
			if access == "write" {
				b.Run(order+"/"+access+"/anon", func(b *testing.B) {
					var total time.Duration
					var faults int64
					for b.Loop() {
						out, err := uffdtest.Run(uffdtest.Config{MemFile: mem, Regions: []uffdtest.Region{{Size: imageSize, Plain: true}}, Steps: []uffdtest.Step{touch}, Timeout: 2 * time.Minute})
						if err != nil || out.ExitCode != 0 {
							b.Fatalf("fake VMM: %v, exit %d: %s", err, out.ExitCode, out.Stderr)
						}
						r := last(out.Result.Steps)
						total += r.Elapsed
						faults += r.MinorFaults
					}
					report(b, total, uint64(faults))
				})
			}
			b.Run(order+"/"+access+"/uffd", func(b *testing.B) {
				var total time.Duration
				var faults, readahead uint64
				var maxLat, meanLat float64
				for b.Loop() {
					rs, st := restore(b, mem, false, serverOptions(dir), touch)
					total += last(rs).Elapsed
					faults += st.Faults
					readahead += st.BackgroundPages
					maxLat = max(maxLat, st.MaxFaultLatencyUS)
					meanLat += st.MeanFaultLatencyUS
				}
				ns := report(b, total, faults)
				b.ReportMetric(maxLat, "max-service-µs")
				b.ReportMetric(meanLat/float64(b.N), "mean-service-µs")
				b.ReportMetric(float64(readahead)/float64(b.N), "background-pages/op")
				if kernelNS > 0 {
					b.ReportMetric(ns/kernelNS, "x-kernel-file")
					if floorNS > 0 {
						b.ReportMetric(floorNS/kernelNS, "x-kernel-file-floor")
					}
				}
			})
		}
	}
}

func restoreKernel(b *testing.B, mem string, steps ...uffdtest.Step) []uffdtest.StepResult {
	rs, _ := restore(b, mem, true, uffd.Options{}, steps...)
	return rs
}

// report reports the touch figures and returns ns/page.
func report(b *testing.B, total time.Duration, faults uint64) float64 {
	n := float64(b.N)
	nsPage := float64(total.Nanoseconds()) / n / float64(imageSize/pageSize)
	b.ReportMetric(float64(total.Nanoseconds())/n, "ns/op")
	b.ReportMetric(float64(imageSize)*n/total.Seconds()/1e9, "GB/s")
	b.ReportMetric(nsPage, "ns/page")
	if faults > 0 {
		b.ReportMetric(float64(total.Microseconds())/float64(faults), "µs/fault")
		b.ReportMetric(float64(faults)/n, "faults/op")
	}
	return nsPage
}

// BenchmarkUffdPrefetch: restoring with the recorded working set
// prefetched against on demand. The working set is 128 MiB of the 1 GiB
// image in short runs at random places; the fake VMM touches it in the
// recorded order once it "resumes": right after the handshake (the worst
// case for the prefetcher, which races the guest), or after a head start
// that stands for the VMM restoring device state before resuming vCPUs;
// by then the prefetch is done, so that case is the most prefetching can
// give on this host: the guest's first touch of pages already present.
// A third way holds the vCPUs until the prefetch is complete, as REAP
// does and RestoreSpec.PrefetchWaitMs offers (resume-when-prefetched);
// its time counts that wait.
// ns/op is the time to touch the working set after the resume (plus the
// wait where there is one); x-faster is on-demand's time over the
// case's, and the resume-at-once case reports the head-start case's as
// x-faster-floor.
func BenchmarkUffdPrefetch(b *testing.B) {
	requireUffd(b)
	dir, mem := memImage(b)
	ws := workingSet(imageSize/pageSize, 128<<20/pageSize, 42)
	touch := uffdtest.Step{Op: "touch", Region: 0, Pages: ws, Expect: "any"}
	o := serverOptions(dir)
	o.TraceFile = filepath.Join(dir, "mem.trace")
	if _, st := restore(b, mem, false, o, touch); st.Trace != uffd.TraceRecorded {
		b.Fatalf("recording run: %+v", st)
	}
	var onDemand, headStart float64 // ns/op
	for _, c := range []struct {
		name      string
		prefetch  bool
		headStart time.Duration
	}{
		{"on-demand", false, 0},
		{"prefetch/resume-after-1s", true, time.Second},
		{"prefetch/resume-at-once", true, 0},
		{"prefetch/resume-when-prefetched", true, -1},
	} {
		b.Run(c.name, func(b *testing.B) {
			var total time.Duration
			var faults, prefetched uint64
			var prefetchMS float64
			for b.Loop() {
				o.Prefetch = c.prefetch
				steps := []uffdtest.Step{touch}
				switch {
				case c.headStart > 0:
					steps = []uffdtest.Step{{Op: "sleep", Sleep: c.headStart}, touch}
				case c.headStart < 0:
					steps = []uffdtest.Step{{Op: "wait", Path: o.StatusFile, Contains: `"trace": "` + uffd.TraceReplayed + `"`}, touch}
				}
				rs, st := restore(b, mem, false, o, steps...)
				total += last(rs).Elapsed
				if c.headStart < 0 {
					total += rs[0].Elapsed
				}
				faults += st.Faults
				prefetched += st.PrefetchedPages
				prefetchMS += st.PrefetchMS
			}
			n := float64(b.N)
			ns := float64(total.Nanoseconds()) / n
			b.ReportMetric(ns, "ns/op")
			b.ReportMetric(float64(faults)/n, "faults/op")
			switch {
			case !c.prefetch:
				onDemand = ns
				return
			case c.headStart > 0:
				headStart = ns
			case c.headStart == 0 && headStart > 0 && onDemand > 0:
				b.ReportMetric(onDemand/headStart, "x-faster-floor")
			}
			b.ReportMetric(float64(prefetched)/n, "prefetched-pages/op")
			b.ReportMetric(prefetchMS/n, "prefetch-ms")
			if onDemand > 0 {
				b.ReportMetric(onDemand/ns, "x-faster")
			}
		})
	}
}

// workingSet picks n pages of total, in random short runs (1–8 pages), in
// a random order of runs: roughly how a guest's first touches after a
// restore scatter over its memory.
func workingSet(total, n int, seed uint64) []uint64 {
	seen := make(map[uint64]bool, n)
	out := make([]uint64, 0, n)
	x := seed*0x9e3779b97f4a7c15 + 1
	next := func() uint64 { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x }
	for len(out) < n {
		start, l := next()%uint64(total), 1+next()%8
		for p := start; p < start+l && p < uint64(total) && len(out) < n; p++ {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}
