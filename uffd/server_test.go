//go:build linux

package uffd

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/uffd/uffdtest"
)

// requireUffd skips unless the test can create userfaultfds (root, a
// kernel with userfaultfd).
func requireUffd(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the page-fault server tests use userfaultfd and SIGKILL across processes")
	}
	if err := uffdtest.Available(); err != nil {
		t.Skipf("userfaultfd is not available on this host: %v", err)
	}
}

// fixture is one memory file and the paths of one server.
type fixture struct {
	dir, mem, socket, status, trace string
	size                            uint64
}

func newFixture(t *testing.T, size uint64) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{dir: dir, mem: filepath.Join(dir, "mem"), socket: filepath.Join(dir, "uffd.sock"),
		status: filepath.Join(dir, "uffd.status"), trace: filepath.Join(dir, "mem.trace"), size: size}
	if err := uffdtest.WriteMemFile(f.mem, int64(size)); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) options() Options {
	return Options{Socket: f.socket, MemFile: f.mem, StatusFile: f.status, StatusInterval: 50 * time.Millisecond,
		AcceptTimeout: 20 * time.Second, Logger: slog.New(slog.NewTextHandler(testWriter{}, &slog.HandlerOptions{Level: slog.LevelDebug}))}
}

type testWriter struct{}

func (testWriter) Write(b []byte) (int, error) {
	if testing.Verbose() {
		os.Stderr.Write(b)
	}
	return len(b), nil
}

// served is an in-process server.
type served struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// serve starts Serve in the background and returns once it listens.
func serve(t *testing.T, o Options) *served {
	t.Helper()
	// A status left by an earlier server of the fixture would pass for
	// this one's.
	os.Remove(o.StatusFile)
	ctx, cancel := context.WithCancel(context.Background())
	s := &served{cancel: cancel, done: make(chan struct{})}
	go func() {
		s.err = Serve(ctx, o)
		close(s.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-s.done
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if st, err := ReadStatus(o.StatusFile); err == nil && st.State != StateStarting {
			return s
		}
		select {
		case <-s.done:
			t.Fatalf("server ended before listening: %v", s.err)
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("server not listening after 5s")
		}
	}
}

func (s *served) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-s.done:
		return s.err
	case <-time.After(30 * time.Second):
		t.Fatal("server did not end within 30s")
		return nil
	}
}

func runChild(t *testing.T, cfg uffdtest.Config) uffdtest.Outcome {
	t.Helper()
	out, err := uffdtest.Run(cfg)
	if err != nil {
		t.Fatalf("harness: %v (stderr: %s)", err, out.Stderr)
	}
	return out
}

func mustSucceed(t *testing.T, out uffdtest.Outcome) {
	t.Helper()
	if out.ExitCode != 0 {
		t.Fatalf("harness exit %d signal %q: %s", out.ExitCode, out.Signal, out.Stderr)
	}
}

// copied is what the server copied from the memory file for faults: on
// demand, and in the background after them (always 4 KiB pages).
func copied(st Status) uint64 { return st.FaultBytes + st.BackgroundPages*PageSize4K }

func readStatus(t *testing.T, path string) Status {
	t.Helper()
	st, err := ReadStatus(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestServeContents: every page, touched in random order from several
// threads, equals the memory file, for 4 KiB regions described with each
// spelling of the page size, and for several regions at shuffled offsets.
func TestServeContents(t *testing.T) {
	requireUffd(t)
	const mib = 1 << 20
	tests := []struct {
		name        string
		regions     []uffdtest.Region
		field       string
		faultAround int
	}{
		{name: "one region", regions: []uffdtest.Region{{Size: 16 * mib}}},
		{name: "one region without fault-around", regions: []uffdtest.Region{{Size: 8 * mib}}, faultAround: 1},
		{name: "deprecated page_size_kib in bytes", regions: []uffdtest.Region{{Size: 4 * mib}}, field: "kib-only"},
		{name: "deprecated page_size_kib in KiB", regions: []uffdtest.Region{{Size: 4 * mib}}, field: "kib-in-kib"},
		{name: "regions at offsets", regions: []uffdtest.Region{
			{Size: 4 * mib, Offset: 8 * mib},
			{Size: 2 * mib, Offset: 0},
			{Size: 1 * mib, Offset: 20 * mib},
			{Size: 4096, Offset: 31 * mib},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, 32*mib)
			o := f.options()
			o.FaultAround = tt.faultAround
			srv := serve(t, o)
			var steps []uffdtest.Step
			var total uint64
			for i, r := range tt.regions {
				steps = append(steps, uffdtest.Step{Op: "touch", Region: i, Threads: 4, Seed: uint64(i)})
				total += r.Size
			}
			mustSucceed(t, runChild(t, uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: tt.regions, PageSizeField: tt.field, Steps: steps}))
			if err := srv.wait(t); err != nil {
				t.Fatalf("Serve: %v", err)
			}
			st := readStatus(t, f.status)
			if st.State != StateExited || st.Faults == 0 || st.Regions != len(tt.regions) || st.PageSize != PageSize4K {
				t.Fatalf("status %+v", st)
			}
			// Every page was copied exactly once, on demand or (when
			// some thread's touches happened to run in order) by the
			// readahead.
			if copied(st) != total {
				t.Fatalf("fault bytes %d + background pages %d, want %d bytes", st.FaultBytes, st.BackgroundPages, total)
			}
			if st.MaxFaultLatencyUS <= 0 || st.ExitCode != 0 {
				t.Fatalf("status %+v", st)
			}
		})
	}
}

// TestServeHugePages needs a hugetlbfs pool; it reserves one for the test
// when the host has none and gives it back afterwards.
func TestServeHugePages(t *testing.T) {
	requireUffd(t)
	const mib = 1 << 20
	reserveHugePages(t, 24)
	f := newFixture(t, 64*mib)
	srv := serve(t, f.options())
	regions := []uffdtest.Region{{Size: 16 * mib, Offset: 32 * mib, HugePages: true}, {Size: 8 * mib, Offset: 2 * mib, HugePages: true}}
	out := runChild(t, uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: regions, Steps: []uffdtest.Step{
		{Op: "touch", Region: 0, Threads: 3},
		{Op: "touch", Region: 1, Threads: 2, Seed: 1},
		// A removed hugepage reads zeros afterwards (served by copying a
		// zero page: hugetlbfs has no UFFDIO_ZEROPAGE).
		{Op: "remove", Region: 0, Offset: 4 * mib, Length: 4 * mib},
		{Op: "touch", Region: 0, Offset: 4 * mib, Length: 4 * mib, Expect: "zero"},
		{Op: "touch", Region: 0, Offset: 8 * mib, Expect: "file"},
	}})
	mustSucceed(t, out)
	if err := srv.wait(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	st := readStatus(t, f.status)
	if st.PageSize != PageSize2M || st.FaultBytes != 24*mib || st.ZeroPages != 2 || st.Events.Remove != 1 {
		t.Fatalf("status %+v", st)
	}
	// 2 MiB per fault: 12 faults for 24 MiB (plus 2 zero ones).
	if st.Faults != 14 {
		t.Fatalf("%d faults, want 14", st.Faults)
	}
}

var hugeMu sync.Mutex

func reserveHugePages(t *testing.T, n int) {
	t.Helper()
	free := func() int {
		b, err := os.ReadFile("/proc/meminfo")
		if err != nil {
			return 0
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "HugePages_Free:"); ok {
				n, _ := strconv.Atoi(strings.TrimSpace(v))
				return n
			}
		}
		return 0
	}
	hugeMu.Lock()
	t.Cleanup(hugeMu.Unlock)
	if free() >= n {
		return
	}
	const knob = "/proc/sys/vm/nr_hugepages"
	b, err := os.ReadFile(knob)
	if err != nil {
		t.Skipf("no hugetlbfs pool and %s unreadable: %v", knob, err)
	}
	old, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err := os.WriteFile(knob, []byte(strconv.Itoa(old+n)), 0); err != nil {
		t.Skipf("no hugetlbfs pool with %d free 2 MiB pages and cannot reserve one: %v", n, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(knob, []byte(strconv.Itoa(old)), 0); err != nil {
			t.Errorf("restore %s to %d: %v", knob, old, err)
		}
	})
	if free() < n {
		t.Skipf("the kernel could not reserve %d hugepages (fragmented memory?)", n)
	}
}

// TestServeRemove: after MADV_DONTNEED (UFFD_EVENT_REMOVE, as a balloon
// inflation does) a range reads zeros, whether it had been faulted in or
// not, and the rest of memory keeps the file's contents.
func TestServeRemove(t *testing.T) {
	requireUffd(t)
	const mib = 1 << 20
	f := newFixture(t, 8*mib)
	srv := serve(t, f.options())
	out := runChild(t, uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: []uffdtest.Region{{Size: 8 * mib}}, Steps: []uffdtest.Step{
		{Op: "touch", Region: 0, Length: 4 * mib, Threads: 2},
		{Op: "remove", Region: 0, Offset: 1 * mib, Length: 1 * mib},   // faulted in before
		{Op: "remove", Region: 0, Offset: 6 * mib, Length: 512 << 10}, // never faulted
		{Op: "touch", Region: 0, Offset: 1 * mib, Length: 1 * mib, Expect: "zero", Threads: 2},
		{Op: "touch", Region: 0, Offset: 6 * mib, Length: 512 << 10, Expect: "zero", Order: "sequential"},
		{Op: "touch", Region: 0, Offset: 0, Length: 1 * mib},
		{Op: "touch", Region: 0, Offset: 2 * mib, Length: 4 * mib},
		{Op: "touch", Region: 0, Offset: 6*mib + 512<<10},
	}})
	mustSucceed(t, out)
	if err := srv.wait(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	st := readStatus(t, f.status)
	if st.Events.Remove != 2 || st.ZeroPages != (1*mib+512<<10)/4096 {
		t.Fatalf("status %+v", st)
	}
}

// TestReadahead: a guest streaming through memory is served a block per
// fault and a growing readahead window copied in the background, so the
// stream takes a fraction of fault-around's faults. Every page still
// equals the memory file and is copied once, and the readahead leaves a
// removed range in the stream's path zero.
func TestReadahead(t *testing.T) {
	requireUffd(t)
	const mib = 1 << 20
	f := newFixture(t, 16*mib)
	srv := serve(t, f.options())
	mustSucceed(t, runChild(t, uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: []uffdtest.Region{{Size: 16 * mib}}, Steps: []uffdtest.Step{
		{Op: "remove", Region: 0, Offset: 9 * mib, Length: 512 << 10}, // never faulted: zeros from now on
		{Op: "touch", Region: 0, Length: 9 * mib, Order: "sequential"},
		{Op: "touch", Region: 0, Offset: 9 * mib, Length: 512 << 10, Order: "sequential", Expect: "zero"},
		{Op: "touch", Region: 0, Offset: 9*mib + 512<<10, Order: "sequential"},
	}}))
	if err := srv.wait(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	st := readStatus(t, f.status)
	const pages, removed = 16 * mib / PageSize4K, 512 << 10 / PageSize4K
	if got := st.FaultBytes/PageSize4K + st.BackgroundPages + st.ZeroPages; got != pages || st.ZeroPages != removed {
		t.Fatalf("%d pages served (%d on demand, %d read ahead, %d zero), want %d with %d zero",
			got, st.FaultBytes/PageSize4K, st.BackgroundPages, st.ZeroPages, pages, removed)
	}
	// Fault-around alone takes one fault per 16 pages; the readahead is
	// allowed to fall behind the guest now and then (a loaded machine).
	if st.BackgroundPages < pages/2 || st.Faults > pages/32 {
		t.Fatalf("%d faults, %d pages read ahead, of %d pages", st.Faults, st.BackgroundPages, pages)
	}
	t.Logf("%d faults, %d pages read ahead, %d existing", st.Faults, st.BackgroundPages, st.ExistingPages)
}

// TestHarnessBaselines: the harness's baselines measure what they claim:
// pages the fake VMM copies in itself hold the memory file and cost the
// server no fault, and a plain region reads zeros without a server.
func TestHarnessBaselines(t *testing.T) {
	requireUffd(t)
	const mib = 1 << 20
	f := newFixture(t, 4*mib)
	srv := serve(t, f.options())
	mustSucceed(t, runChild(t, uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: []uffdtest.Region{{Size: 2 * mib, Offset: 1 * mib}}, Steps: []uffdtest.Step{
		{Op: "populate", Region: 0, PopulateChunk: 64 << 10},
		{Op: "touch", Region: 0, Threads: 2},
	}}))
	if err := srv.wait(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if st := readStatus(t, f.status); st.Faults != 0 || st.FaultBytes != 0 {
		t.Fatalf("the server served faults after the harness populated: %+v", st)
	}
	out := runChild(t, uffdtest.Config{MemFile: f.mem, Regions: []uffdtest.Region{{Size: 1 * mib, Plain: true}}, Steps: []uffdtest.Step{
		{Op: "touch", Region: 0, Expect: "zero"},
		{Op: "populate", Region: 0},
	}})
	if out.ExitCode == 0 || !strings.Contains(out.Stderr, "populate needs a region registered") {
		t.Fatalf("populate of a plain region: exit %d, %s", out.ExitCode, out.Stderr)
	}
}

// TestServeRemap: with UFFD_FEATURE_EVENT_REMAP a region the VMM moves
// with mremap keeps being served from the right file offsets.
func TestServeRemap(t *testing.T) {
	requireUffd(t)
	const mib = 1 << 20
	f := newFixture(t, 8*mib)
	srv := serve(t, f.options())
	out := runChild(t, uffdtest.Config{Socket: f.socket, MemFile: f.mem, Features: uffdtest.FeatureEventRemap,
		Regions: []uffdtest.Region{{Size: 2 * mib, Offset: 4 * mib}, {Size: 2 * mib}},
		Steps: []uffdtest.Step{
			{Op: "touch", Region: 0, Length: 1 * mib},
			{Op: "remap", Region: 0},
			{Op: "touch", Region: 0, Threads: 2},
			{Op: "touch", Region: 1},
		}})
	mustSucceed(t, out)
	if err := srv.wait(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if st := readStatus(t, f.status); st.Events.Remap != 1 || copied(st) != 4*mib {
		t.Fatalf("status %+v", st)
	}
}

// TestHandshakeRejected: a bad handshake is refused with a clear error
// and the VMM, which would otherwise hang in its first fault, is killed.
func TestHandshakeRejected(t *testing.T) {
	requireUffd(t)
	const mib = 1 << 20
	tests := []struct {
		name    string
		send    string
		raw     string
		regions []uffdtest.Region
		want    string
	}{
		{name: "malformed JSON", send: "raw", raw: `[{"base_host_virt_addr": }]`, want: "decode JSON"},
		{name: "not an array", send: "raw", raw: `{"regions":[]}`, want: "not a JSON array"},
		{name: "no fd", want: "carried no userfaultfd"},
		{name: "fd is not a userfaultfd", send: "notuffd", want: "not a userfaultfd"},
		{name: "region beyond the file", regions: []uffdtest.Region{{Size: 2 * mib, Offset: 3 * mib}}, want: "extends beyond the memory file"},
		{name: "unaligned region", send: "raw", raw: `[{"base_host_virt_addr":140000000000001,"size":4096,"offset":0,"page_size":4096}]`, want: "not aligned"},
		{name: "unsupported page size", send: "raw", raw: `[{"base_host_virt_addr":1048576,"size":65536,"offset":0,"page_size":65536}]`, want: "not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, 4*mib)
			srv := serve(t, f.options())
			regions := tt.regions
			if regions == nil {
				regions = []uffdtest.Region{{Size: 1 * mib}}
			}
			send := tt.send
			if tt.name == "no fd" {
				send = "nofd"
			}
			start := time.Now()
			out := runChild(t, uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: regions, Send: send, Raw: tt.raw,
				Steps: []uffdtest.Step{{Op: "sleep", Sleep: 20 * time.Second}}})
			if !out.Killed() {
				t.Fatalf("harness not killed: exit %d %q: %s", out.ExitCode, out.Signal, out.Stderr)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("killed only after %s", d)
			}
			err := srv.wait(t)
			if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Serve: %v, want ErrHandshake with %q", err, tt.want)
			}
			st := readStatus(t, f.status)
			if st.State != StateFailed || !st.VMMKilled || !strings.Contains(st.Error, tt.want) || st.ExitCode != ExitHandshake {
				t.Fatalf("status %+v", st)
			}
			if _, err := os.Stat(f.socket); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("socket left behind: %v", err)
			}
		})
	}
}

// TestFaultOutsideRegions: a fault the server cannot serve kills the VMM
// and records why, instead of leaving the vCPU blocked forever.
func TestFaultOutsideRegions(t *testing.T) {
	requireUffd(t)
	const mib = 1 << 20
	f := newFixture(t, 4*mib)
	srv := serve(t, f.options())
	out := runChild(t, uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: []uffdtest.Region{{Size: 1 * mib, Extra: 64 << 10}},
		Steps: []uffdtest.Step{
			{Op: "touch", Region: 0, Length: 1 * mib},
			{Op: "touch", Region: 0, Offset: 1 * mib, Length: 4096, Expect: "any"},
		}, Timeout: 20 * time.Second})
	if !out.Killed() {
		t.Fatalf("harness not killed: exit %d: %s", out.ExitCode, out.Stderr)
	}
	err := srv.wait(t)
	if !errors.Is(err, ErrFault) || !strings.Contains(err.Error(), "outside every guest memory region") {
		t.Fatalf("Serve: %v", err)
	}
	if ExitCode(err) != ExitFault {
		t.Fatalf("exit code %d", ExitCode(err))
	}
	st := readStatus(t, f.status)
	if st.State != StateFailed || !st.VMMKilled || !strings.Contains(st.Error, "outside") || copied(st) != 1*mib {
		t.Fatalf("status %+v", st)
	}
}

// TestMemoryFileUnreadable: a memory file that can no longer be read
// (here truncated under the server) is a fault the server cannot serve:
// the VMM is killed, not left waiting, and the status says why.
func TestMemoryFileUnreadable(t *testing.T) {
	requireUffd(t)
	const mib = 1 << 20
	f := newFixture(t, 4*mib)
	srv := serve(t, f.options())
	child, err := uffdtest.Start(uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: []uffdtest.Region{{Size: 4 * mib}},
		Steps: []uffdtest.Step{
			{Op: "touch", Region: 0, Length: 1 * mib},
			{Op: "sleep", Sleep: 500 * time.Millisecond},
			{Op: "touch", Region: 0, Offset: 2 * mib, Length: 1 * mib, Expect: "any"},
		}, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { st, _ := ReadStatus(f.status); return copied(st) == 1*mib })
	if err := os.Truncate(f.mem, 1*mib+mib/2); err != nil {
		t.Fatal(err)
	}
	out, err := child.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if !out.Killed() {
		t.Fatalf("harness not killed: exit %d: %s", out.ExitCode, out.Stderr)
	}
	if err := srv.wait(t); !errors.Is(err, ErrFault) || !strings.Contains(err.Error(), "cannot read the memory file") {
		t.Fatalf("Serve: %v", err)
	}
	if st := readStatus(t, f.status); st.State != StateFailed || !st.VMMKilled || !strings.Contains(st.Error, "truncated") {
		t.Fatalf("status %+v", st)
	}
}

// TestPrefetch: the first restore records the working set, the second
// copies it before the VMM asks, so the VMM hardly faults; with prefetch
// off the trace is left alone.
func TestPrefetch(t *testing.T) {
	requireUffd(t)
	const mib = 1 << 20
	f := newFixture(t, 64*mib)
	pages := workingSet(64*mib/4096, 3000, 7)
	touch := uffdtest.Step{Op: "touch", Region: 0, Pages: pages}
	restore := func(prefetch bool, steps ...uffdtest.Step) Status {
		t.Helper()
		o := f.options()
		o.TraceFile, o.Prefetch = f.trace, prefetch
		srv := serve(t, o)
		mustSucceed(t, runChild(t, uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: []uffdtest.Region{{Size: 64 * mib}}, Steps: steps}))
		if err := srv.wait(t); err != nil {
			t.Fatalf("Serve: %v", err)
		}
		return readStatus(t, f.status)
	}

	// Recording copies single pages for isolated faults and a doubling
	// window for streams, so the trace is close to the pages touched.
	first := restore(true, touch)
	if first.Trace != TraceRecorded || first.TracePages < uint64(len(pages)) || first.TracePages > 2*uint64(len(pages)) || first.PrefetchedPages != 0 {
		t.Fatalf("first restore: %+v", first)
	}
	tr, err := readTrace(f.trace, f.size)
	if err != nil || tr == nil {
		t.Fatalf("trace: %v", err)
	}

	// Give the prefetcher a head start, as a VMM restoring device state
	// does, then touch the working set.
	second := restore(true, uffdtest.Step{Op: "sleep", Sleep: 300 * time.Millisecond}, touch)
	if second.Trace != TraceReplayed || second.PrefetchedPages < uint64(len(pages)) {
		t.Fatalf("second restore: %+v", second)
	}
	if second.Faults > first.Faults/20 {
		t.Fatalf("with prefetch %d faults, without %d", second.Faults, first.Faults)
	}

	third := restore(false, touch)
	if third.Trace != TraceIgnored || third.PrefetchedPages != 0 || third.Faults == 0 || second.Faults > third.Faults/4 {
		t.Fatalf("prefetch off: %+v", third)
	}
	if after, _ := readTrace(f.trace, f.size); after == nil || len(after.runs) != len(tr.runs) {
		t.Fatal("trace changed by a restore that did not record")
	}
}

// TestAwaitPrefetch: the wait a runtime makes before resuming a VM whose
// working set is being prefetched ends when the status file says the
// replay is over (or was never on), and not before; the server writes
// that status as soon as the prefetch completes, while it keeps serving.
func TestAwaitPrefetch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status")
	put := func(st Status) {
		t.Helper()
		if err := writeStatus(path, &st); err != nil {
			t.Fatal(err)
		}
	}
	waitFile := func(path string, d time.Duration) (Status, error) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		return AwaitPrefetch(ctx, path, time.Millisecond)
	}
	wait := func(d time.Duration) (Status, error) { return waitFile(path, d) }
	if _, err := wait(20 * time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("no status file yet: %v", err)
	}
	put(Status{State: StateStarting, Trace: TraceOff})
	if _, err := wait(20 * time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("server still starting: %v", err)
	}
	for _, st := range []Status{
		{State: StateServing, Trace: TraceOff}, {State: StateServing, Trace: TraceRecording},
		{State: StateServing, Trace: TraceIgnored}, {State: StateFailed, Trace: TraceReplaying},
	} {
		put(st)
		if got, err := wait(time.Second); err != nil || got.State != st.State || got.Trace != st.Trace {
			t.Fatalf("status %+v: %+v, %v", st, got, err)
		}
	}
	put(Status{State: StateListening, Trace: TraceReplaying})
	if _, err := wait(20 * time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("replay in progress: %v", err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		put(Status{State: StateServing, Trace: TraceReplayed, PrefetchedPages: 7})
	}()
	if got, err := wait(5 * time.Second); err != nil || got.Trace != TraceReplayed || got.PrefetchedPages != 7 {
		t.Fatalf("replay over: %+v, %v", got, err)
	}

	requireUffd(t)
	const mib = 1 << 20
	f := newFixture(t, 32*mib)
	touch := uffdtest.Step{Op: "touch", Region: 0, Pages: workingSet(32*mib/4096, 2000, 3)}
	o := f.options()
	o.TraceFile, o.Prefetch = f.trace, true
	srv := serve(t, o)
	mustSucceed(t, runChild(t, uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: []uffdtest.Region{{Size: 32 * mib}}, Steps: []uffdtest.Step{touch}}))
	if err := srv.wait(t); err != nil {
		t.Fatalf("recording: %v", err)
	}
	o.StatusInterval = time.Hour // only the completion itself writes the status
	srv = serve(t, o)
	child, err := uffdtest.Start(uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: []uffdtest.Region{{Size: 32 * mib}},
		Steps: []uffdtest.Step{{Op: "sleep", Sleep: 5 * time.Second}, touch}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := waitFile(f.status, 4*time.Second)
	if err != nil || st.Trace != TraceReplayed || st.State != StateServing || st.PrefetchedPages == 0 {
		t.Fatalf("waiting for the prefetch of a VM that has not resumed: %+v, %v", st, err)
	}
	out, err := child.Wait()
	if err != nil {
		t.Fatal(err)
	}
	mustSucceed(t, out)
	if err := srv.wait(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if st := readStatus(t, f.status); st.Faults > 10 {
		t.Fatalf("the guest faulted %d times on a working set prefetched before it ran", st.Faults)
	}
}

// TestPrefetchWhileFaulting: the VMM touches its working set at once, racing
// the prefetcher; contents stay right and both kinds of copies happen.
func TestPrefetchWhileFaulting(t *testing.T) {
	requireUffd(t)
	const mib = 1 << 20
	f := newFixture(t, 32*mib)
	pages := workingSet(32*mib/4096, 4000, 3)
	touch := uffdtest.Step{Op: "touch", Region: 0, Pages: pages, Threads: 2}
	for i, steps := range [][]uffdtest.Step{
		{touch}, // records
		{touch}, // replays while the VMM faults the same pages
		// Removed pages must not be resurrected by the prefetcher.
		{{Op: "remove", Region: 0}, {Op: "touch", Region: 0, Pages: pages, Expect: "zero"}},
	} {
		o := f.options()
		o.TraceFile, o.Prefetch = f.trace, true
		srv := serve(t, o)
		mustSucceed(t, runChild(t, uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: []uffdtest.Region{{Size: 32 * mib}}, Steps: steps}))
		if err := srv.wait(t); err != nil {
			t.Fatalf("Serve: %v", err)
		}
		st := readStatus(t, f.status)
		t.Logf("restore %d: faults %d, prefetched %d, existing %d, zero %d", i, st.Faults, st.PrefetchedPages, st.ExistingPages, st.ZeroPages)
		if i == 1 && (st.PrefetchedPages == 0 || st.Trace != TraceReplayed) {
			t.Fatalf("restore %d: %+v", i, st)
		}
	}
}

// workingSet picks n page indexes of a memory of total pages, in a random
// order, mostly in short runs, as a guest's working set is.
func workingSet(total, n int, seed uint64) []uint64 {
	seen := make(map[uint64]bool)
	var out []uint64
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

// TestDetach: a stop request while the VMM runs populates the rest of
// memory and unregisters it; the VMM then runs on without a server, and a
// range it removes afterwards reads zeros from the kernel.
func TestDetach(t *testing.T) {
	requireUffd(t)
	const mib = 1 << 20
	f := newFixture(t, 16*mib)
	srv := serve(t, f.options())
	child, err := uffdtest.Start(uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: []uffdtest.Region{{Size: 16 * mib}},
		Steps: []uffdtest.Step{
			{Op: "touch", Region: 0, Length: 4 * mib},
			{Op: "remove", Region: 0, Offset: 0, Length: 1 * mib},
			{Op: "sleep", Sleep: time.Second},
			{Op: "touch", Region: 0, Offset: 1 * mib, Threads: 2},
			{Op: "touch", Region: 0, Length: 1 * mib, Expect: "zero"},
			{Op: "remove", Region: 0, Offset: 8 * mib, Length: 1 * mib},
			{Op: "touch", Region: 0, Offset: 8 * mib, Length: 1 * mib, Expect: "zero"},
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer child.Kill()
	waitFor(t, func() bool { st, _ := ReadStatus(f.status); return st.Events.Remove == 1 })
	srv.cancel()
	if err := srv.wait(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	st := readStatus(t, f.status)
	if st.State != StateDetached || st.ExitCode != 0 || st.VMMKilled {
		t.Fatalf("status %+v", st)
	}
	out, err := child.Wait()
	if err != nil {
		t.Fatal(err)
	}
	mustSucceed(t, out)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
	}
}

// TestStopBeforeConnect: a server stopped before any VMM connected exits
// cleanly and removes its socket.
func TestStopBeforeConnect(t *testing.T) {
	requireUffd(t)
	f := newFixture(t, 1<<20)
	srv := serve(t, f.options())
	srv.cancel()
	if err := srv.wait(t); err != nil {
		t.Fatal(err)
	}
	if st := readStatus(t, f.status); st.State != StateExited {
		t.Fatalf("status %+v", st)
	}
	if _, err := os.Stat(f.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left: %v", err)
	}
}

// TestAcceptTimeout: nobody connects.
func TestAcceptTimeout(t *testing.T) {
	requireUffd(t)
	f := newFixture(t, 1<<20)
	o := f.options()
	o.AcceptTimeout = 100 * time.Millisecond
	err := serve(t, o).wait(t)
	if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), "no VMM connected") {
		t.Fatalf("Serve: %v", err)
	}
}

// TestSetupErrors are reported before listening, with the reason.
func TestSetupErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"no socket", Options{MemFile: empty}, "required"},
		{"missing memory file", Options{Socket: filepath.Join(dir, "s"), MemFile: filepath.Join(dir, "nope")}, "open memory file"},
		{"empty memory file", Options{Socket: filepath.Join(dir, "s"), MemFile: empty}, "is empty"},
		{"directory", Options{Socket: filepath.Join(dir, "s"), MemFile: dir}, "not a regular file"},
		{"socket path taken", Options{Socket: empty, MemFile: "/proc/self/exe"}, "non-socket file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.StatusFile = filepath.Join(t.TempDir(), "status")
			tt.o.Logger = slog.New(slog.DiscardHandler)
			err := Serve(context.Background(), tt.o)
			if !errors.Is(err, ErrSetup) || !strings.Contains(err.Error(), tt.want) || ExitCode(err) != ExitSetup {
				t.Fatalf("err = %v, want ErrSetup with %q", err, tt.want)
			}
			if tt.o.Socket != "" {
				if st := readStatus(t, tt.o.StatusFile); st.State != StateFailed || !strings.Contains(st.Error, tt.want) {
					t.Fatalf("status %+v", st)
				}
			}
		})
	}
}

// launchSpec runs this test binary as the server (see TestMain).
func (f *fixture) launchSpec() LaunchSpec {
	return LaunchSpec{
		Options: Options{Socket: f.socket, MemFile: f.mem, StatusFile: f.status, StatusInterval: 50 * time.Millisecond, AcceptTimeout: 20 * time.Second},
		Binary:  os.Args[0], Args: []string{}, Env: append(os.Environ(), envServe+"=1"),
		LogFile: filepath.Join(f.dir, "uffd.log"),
	}
}

// TestLaunch runs the server as its own process, as the runtime does, and
// checks a VMM restores through it and the process exits afterwards.
func TestLaunch(t *testing.T) {
	requireUffd(t)
	f := newFixture(t, 8<<20)
	p, err := Launch(context.Background(), f.launchSpec())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	mustSucceed(t, runChild(t, uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: []uffdtest.Region{{Size: 8 << 20}},
		Steps: []uffdtest.Step{{Op: "touch", Region: 0, Threads: 3}}}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	exit, err := p.Wait(ctx)
	if err != nil || exit.Code != 0 {
		t.Fatalf("server: %v %v", exit, err)
	}
	st := readStatus(t, f.status)
	if st.Pid != p.Pid() || st.State != StateExited || copied(st) != 8<<20 || st.StartTime != p.Identity().StartTime {
		t.Fatalf("status %+v", st)
	}
	if log, _ := os.ReadFile(filepath.Join(f.dir, "uffd.log")); !strings.Contains(string(log), "uffd server done") {
		t.Fatalf("log: %s", log)
	}
}

// TestLaunchFails: a server that cannot start is reported with its reason
// and leaves no process.
func TestLaunchFails(t *testing.T) {
	f := newFixture(t, 4096)
	spec := f.launchSpec()
	spec.MemFile = filepath.Join(f.dir, "missing")
	p, err := Launch(context.Background(), spec)
	if err == nil {
		p.Kill()
		t.Fatal("launched without a memory file")
	}
	if !strings.Contains(err.Error(), "open memory file") || !strings.Contains(err.Error(), "exit code 1") {
		t.Fatalf("err = %v", err)
	}
	if _, err := Launch(context.Background(), LaunchSpec{Options: Options{Socket: "s", MemFile: "m"}}); err == nil {
		t.Fatal("launched without a status file")
	}
}

// TestServerKilled: when the server dies (SIGKILL, nothing it can catch),
// the VMM's faults are not served; the harness detects that within its
// timeout and says so instead of hanging.
func TestServerKilled(t *testing.T) {
	requireUffd(t)
	f := newFixture(t, 8<<20)
	p, err := Launch(context.Background(), f.launchSpec())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	child, err := uffdtest.Start(uffdtest.Config{Socket: f.socket, MemFile: f.mem, Regions: []uffdtest.Region{{Size: 8 << 20}},
		Timeout: 3 * time.Second,
		Steps:   []uffdtest.Step{{Op: "touch", Region: 0, PageDelay: 2 * time.Millisecond}}})
	if err != nil {
		t.Fatal(err)
	}
	defer child.Kill()
	waitFor(t, func() bool { st, _ := ReadStatus(f.status); return st.Faults > 10 })
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := child.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if out.ExitCode != uffdtest.ExitTimeout || !strings.Contains(out.Stderr, "not serving faults") {
		t.Fatalf("harness: exit %d %q: %s", out.ExitCode, out.Signal, out.Stderr)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the harness noticed only after %s", d)
	}
	t.Log(strings.TrimSpace(out.Stderr))
}

// TestMainFlags: the command line Launch builds is the one Main parses.
func TestMainFlags(t *testing.T) {
	o := Options{Socket: "/s", MemFile: "/m", StatusFile: "/st", TraceFile: "/t", Prefetch: false, VMMPid: 42,
		AcceptTimeout: time.Second, StatusInterval: 2 * time.Second, TraceWindow: 3 * time.Second, FaultAround: 8}
	want := "--socket /s --mem /m --status /st --trace /t --prefetch=false --vmm-pid 42 --accept-timeout 1s --status-interval 2s --trace-window 3s --fault-around 8"
	if got := strings.Join(o.Args(), " "); got != want {
		t.Fatalf("Args() = %s", got)
	}
	var sb strings.Builder
	if code := Main(context.Background(), []string{"--bogus"}, &sb); code != ExitUsage {
		t.Fatalf("bad flag: exit %d", code)
	}
	if code := Main(context.Background(), []string{"--mem", "/m"}, &sb); code != ExitUsage || !strings.Contains(sb.String(), "required") {
		t.Fatalf("missing socket: exit %d: %s", code, sb.String())
	}
}
