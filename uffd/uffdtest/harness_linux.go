//go:build linux

package uffdtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const envConfig = "HEARTH_UFFDTEST_CONFIG"

// Exit codes of the child.
const (
	ExitOK      = 0
	ExitFailed  = 1 // setup error or wrong memory contents (see Stderr)
	ExitTimeout = 3 // faults were not served within Config.Timeout
)

// UFFD_FEATURE_* bits a Config may add to EVENT_REMOVE (which is always
// requested, as Firecracker does).
const (
	FeatureEventFork   = 1 << 1
	FeatureEventRemap  = 1 << 2
	FeatureEventRemove = 1 << 3
	FeatureEventUnmap  = 1 << 6
)

// Region is one guest memory region of the child.
type Region struct {
	Size   uint64 `json:"size"`   // bytes described to the server
	Offset uint64 `json:"offset"` // in the memory file
	// HugePages backs the region with 2 MiB hugetlbfs pages.
	HugePages bool `json:"huge_pages,omitempty"`
	// Extra bytes are registered after Size but not described, so a
	// fault there is outside every region the server knows.
	Extra uint64 `json:"extra,omitempty"`
	// FileBacked maps the memory file at Offset MAP_PRIVATE instead of
	// anonymous memory with a userfaultfd: the kernel serves the faults.
	FileBacked bool `json:"file_backed,omitempty"`
	// Plain is anonymous memory without a userfaultfd: the kernel fills
	// it with zeros on first touch (a baseline for what a fresh page
	// costs on the host).
	Plain bool `json:"plain,omitempty"`
}

// Step is one action of the child.
type Step struct {
	// Op is "touch", "remove" (MADV_DONTNEED), "remap" (move the region
	// elsewhere with mremap), "populate" (the child copies the range in
	// from the memory file itself with UFFDIO_COPY, PopulateChunk bytes
	// per call: a page-fault server's work without the round trips, so a
	// baseline), "sleep", or "wait" (until the file Path contains
	// Contains: a VMM holding its vCPUs until the server is ready).
	Op     string `json:"op"`
	Region int    `json:"region"`
	// Offset and Length select a byte range of the region (Length 0: to
	// the end of Size+Extra).
	Offset uint64 `json:"offset,omitempty"`
	Length uint64 `json:"length,omitempty"`
	// Touch: Pages lists page indexes of the region to touch in that
	// order; otherwise every page of the range is touched, in Order
	// "sequential" or "random" (default).
	Pages   []uint64 `json:"pages,omitempty"`
	Order   string   `json:"order,omitempty"`
	Threads int      `json:"threads,omitempty"`
	Seed    uint64   `json:"seed,omitempty"`
	// PopulateChunk is the populate op's copy size (default 256 KiB).
	PopulateChunk uint64 `json:"populate_chunk,omitempty"`
	// Expect is "file" (default: the page equals the memory file),
	// "zero", "any" (read one word only: for timing) or "write" (write
	// one word: a guest dirtying memory, for timing).
	Expect string `json:"expect,omitempty"`
	// PageDelay sleeps after each page (to keep a child busy).
	PageDelay time.Duration `json:"page_delay,omitempty"`
	Sleep     time.Duration `json:"sleep,omitempty"`
	// Path and Contains: the wait op's file and text.
	Path     string `json:"path,omitempty"`
	Contains string `json:"contains,omitempty"`
}

// Config is what the child does.
type Config struct {
	Socket  string   `json:"socket"`
	MemFile string   `json:"mem_file"`
	Regions []Region `json:"regions"`
	// Features are UFFD_FEATURE_* bits requested besides EVENT_REMOVE.
	Features uint64 `json:"features,omitempty"`
	// Send is how the handshake goes: "" (like Firecracker), "nofd" (no
	// fd attached), "notuffd" (an fd that is not a userfaultfd), "raw"
	// (Raw as the message, with the fd), "split" (the JSON in two
	// writes, 50 ms apart).
	Send string `json:"send,omitempty"`
	Raw  string `json:"raw,omitempty"`
	// PageSizeField is how the page size is sent: "" (page_size and
	// page_size_kib, both in bytes, as Firecracker does), "kib-only"
	// (only the deprecated field), "kib-in-kib" (only it, in KiB).
	PageSizeField string `json:"page_size_field,omitempty"`
	Steps         []Step `json:"steps"`
	// Timeout bounds the whole child (default 30 s).
	Timeout time.Duration `json:"timeout,omitempty"`
}

// StepResult reports one step.
type StepResult struct {
	Op      string        `json:"op"`
	Pages   int           `json:"pages"`
	Elapsed time.Duration `json:"elapsed"`
	// MinorFaults is the child's minor page faults during the step
	// (getrusage): the kernel's own faults, for the File-backend baseline.
	MinorFaults int64 `json:"minor_faults"`
}

// Result is what a child that finished reports.
type Result struct {
	Pid   int          `json:"pid"`
	Steps []StepResult `json:"steps"`
}

// Outcome is how a child ended.
type Outcome struct {
	Result   Result
	ExitCode int    // -1 when killed by a signal
	Signal   string // e.g. "killed"
	Stderr   string
}

// Killed reports whether the child died of SIGKILL (as a page-fault
// server kills a VMM whose fault it cannot serve).
func (o Outcome) Killed() bool { return o.Signal == syscall.SIGKILL.String() }

// Child is a running fake VMM.
type Child struct {
	cmd    *exec.Cmd
	dir    string
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   chan struct{}
	err    error
}

// Start runs a child with cfg.
func Start(cfg Config) (*Child, error) {
	dir, err := os.MkdirTemp("", "uffdtest")
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	c := &Child{dir: dir, done: make(chan struct{})}
	c.cmd = exec.Command(os.Args[0])
	c.cmd.Env = append(os.Environ(), envConfig+"="+path)
	c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
	if err := c.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start uffdtest child: %w", err)
	}
	go func() {
		c.err = c.cmd.Wait()
		os.RemoveAll(dir)
		close(c.done)
	}()
	return c, nil
}

// Pid is the child's pid.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Kill kills the child (idempotent) and waits for it.
func (c *Child) Kill() {
	_ = c.cmd.Process.Kill()
	<-c.done
}

// Wait waits for the child. The error is only about running it; how it
// ended is in the Outcome.
func (c *Child) Wait() (Outcome, error) {
	<-c.done
	o := Outcome{ExitCode: c.cmd.ProcessState.ExitCode(), Stderr: c.stderr.String()}
	if ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		o.Signal = ws.Signal().String()
	}
	var ee *exec.ExitError
	if c.err != nil && !errors.As(c.err, &ee) {
		return o, c.err
	}
	if o.ExitCode == ExitOK {
		if err := json.Unmarshal(c.stdout.Bytes(), &o.Result); err != nil {
			return o, fmt.Errorf("decode child result %q: %w", c.stdout.String(), err)
		}
	}
	return o, nil
}

// Run starts a child and waits for it.
func Run(cfg Config) (Outcome, error) {
	c, err := Start(cfg)
	if err != nil {
		return Outcome{}, err
	}
	return c.Wait()
}

// RunChildIfRequested turns the process into a child when it was started
// by Start; it returns otherwise. Call it before anything else.
func RunChildIfRequested() {
	path := os.Getenv(envConfig)
	if path == "" {
		return
	}
	os.Exit(runChild(path))
}

// Available reports why userfaultfd cannot be used here, or nil.
func Available() error {
	fd, err := newUffd(0)
	if err != nil {
		return err
	}
	unix.Close(fd)
	return nil
}

// ---- the child ----

type child struct {
	cfg     Config
	ref     []byte   // the memory file, MAP_SHARED read-only, for checks
	mems    [][]byte // per region (Size+Extra)
	uffd    int
	conn    int
	step    atomic.Int64
	done    atomic.Int64 // pages of the current step done
	total   atomic.Int64
	sink    atomic.Uint64
	results []StepResult
}

func runChild(path string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "uffdtest: "+format+"\n", a...)
		return ExitFailed
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fail("%v", err)
	}
	c := &child{uffd: -1, conn: -1}
	if err := json.Unmarshal(b, &c.cfg); err != nil {
		return fail("config: %v", err)
	}
	if c.cfg.Timeout <= 0 {
		c.cfg.Timeout = 30 * time.Second
	}
	// Threads blocked in a page fault look busy to the Go runtime: keep
	// the collector from waiting on them and leave Ps for the watchdog.
	debug.SetGCPercent(-1)
	runtime.GOMAXPROCS(maxThreads(c.cfg.Steps) + 2)

	timer := time.AfterFunc(c.cfg.Timeout, func() {
		i := c.step.Load()
		op := "handshake"
		if i >= 0 && int(i) < len(c.cfg.Steps) {
			op = c.cfg.Steps[i].Op
		}
		fmt.Fprintf(os.Stderr, "uffdtest: timed out after %s in step %d (%s) with %d of %d pages done: the page-fault server is not serving faults\n",
			c.cfg.Timeout, i, op, c.done.Load(), c.total.Load())
		os.Exit(ExitTimeout)
	})
	defer timer.Stop()
	c.step.Store(-1)
	if err := c.setup(); err != nil {
		return fail("%v", err)
	}
	for i, s := range c.cfg.Steps {
		c.step.Store(int64(i))
		f0 := minorFaults()
		t0 := time.Now()
		n, err := c.run(s)
		if err != nil {
			return fail("step %d (%s): %v", i, s.Op, err)
		}
		c.results = append(c.results, StepResult{Op: s.Op, Pages: n, Elapsed: time.Since(t0), MinorFaults: minorFaults() - f0})
	}
	if c.conn >= 0 {
		unix.Close(c.conn) // the server sees EOF and exits
	}
	out, _ := json.Marshal(Result{Pid: os.Getpid(), Steps: c.results})
	os.Stdout.Write(out)
	return ExitOK
}

func minorFaults() int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Minflt
}

func maxThreads(steps []Step) int {
	n := 1
	for _, s := range steps {
		n = max(n, s.Threads)
	}
	return n
}

func pageSize(r Region) uint64 {
	if r.HugePages {
		return 2 << 20
	}
	return 4 << 10
}

func (c *child) setup() error {
	f, err := os.Open(c.cfg.MemFile)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if c.ref, err = unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED); err != nil {
		return fmt.Errorf("map memory file: %w", err)
	}
	needUffd := false
	for _, r := range c.cfg.Regions {
		var m []byte
		switch {
		case r.FileBacked:
			m, err = unix.Mmap(int(f.Fd()), int64(r.Offset), int(r.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_NORESERVE)
		case r.Plain:
			m, err = unix.Mmap(-1, 0, int(r.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		default:
			flags := unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_NORESERVE
			if r.HugePages {
				flags |= unix.MAP_HUGETLB
			}
			m, err = unix.Mmap(-1, 0, int(r.Size+r.Extra), unix.PROT_READ|unix.PROT_WRITE, flags)
			needUffd = true
		}
		if err != nil {
			return fmt.Errorf("map guest memory: %w", err)
		}
		c.mems = append(c.mems, m)
	}
	if !needUffd {
		return nil
	}
	if c.uffd, err = newUffd(FeatureEventRemove | c.cfg.Features); err != nil {
		return err
	}
	for i, r := range c.cfg.Regions {
		if r.FileBacked || r.Plain {
			continue
		}
		// struct uffdio_register { range{start,len}, mode, ioctls }
		reg := [4]uint64{addrOf(c.mems[i]), r.Size + r.Extra, 1 /* MISSING */, 0}
		if errno := ioctl(c.uffd, 0xC020AA00, unsafe.Pointer(&reg[0])); errno != 0 {
			return fmt.Errorf("UFFDIO_REGISTER: %w", errno)
		}
	}
	return c.handshake()
}

func addrOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&b[0]))) }

func ioctl(fd int, req uintptr, arg unsafe.Pointer) unix.Errno {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	return errno
}

// newUffd creates a userfaultfd the way Firecracker does: the syscall, or
// /dev/userfaultfd where the syscall is not allowed; non-blocking; then
// UFFDIO_API with the features asked for (0: no API call, for probing).
func newUffd(features uint64) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(unix.O_CLOEXEC|unix.O_NONBLOCK), 0, 0)
	fd := int(r)
	if errno != 0 {
		dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, fmt.Errorf("userfaultfd unavailable: syscall: %w; /dev/userfaultfd: %w", errno, err)
		}
		defer unix.Close(dev)
		r, _, errno2 := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), 0xAA00, uintptr(unix.O_CLOEXEC|unix.O_NONBLOCK))
		if errno2 != 0 {
			return -1, fmt.Errorf("userfaultfd unavailable: syscall: %w; USERFAULTFD_IOC_NEW: %w", errno, errno2)
		}
		fd = int(r)
	}
	if features == 0 {
		return fd, nil
	}
	api := [3]uint64{0xAA, features, 0}
	if errno := ioctl(fd, 0xC018AA3F, unsafe.Pointer(&api[0])); errno != 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("UFFDIO_API (features %#x): %w", features, errno)
	}
	return fd, nil
}

// wireRegion is Firecracker's GuestRegionUffdMapping.
type wireRegion struct {
	Base        uint64  `json:"base_host_virt_addr"`
	Size        uint64  `json:"size"`
	Offset      uint64  `json:"offset"`
	PageSize    *uint64 `json:"page_size,omitempty"`
	PageSizeKiB *uint64 `json:"page_size_kib,omitempty"`
}

func (c *child) handshake() error {
	var wire []wireRegion
	for i, r := range c.cfg.Regions {
		if r.FileBacked || r.Plain {
			continue
		}
		ps, kib := pageSize(r), pageSize(r)
		w := wireRegion{Base: addrOf(c.mems[i]), Size: r.Size, Offset: r.Offset}
		switch c.cfg.PageSizeField {
		case "kib-only":
			w.PageSizeKiB = &kib
		case "kib-in-kib":
			kib /= 1024
			w.PageSizeKiB = &kib
		default:
			w.PageSize, w.PageSizeKiB = &ps, &kib
		}
		wire = append(wire, w)
	}
	body, err := json.Marshal(wire)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	c.conn = fd
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: c.cfg.Socket}); err != nil {
		return fmt.Errorf("connect to %s: %w", c.cfg.Socket, err)
	}
	rights := unix.UnixRights(c.uffd)
	switch c.cfg.Send {
	case "":
	case "nofd":
		rights = nil
	case "notuffd":
		null, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(null)
		rights = unix.UnixRights(null)
	case "raw":
		body = []byte(c.cfg.Raw)
	case "split":
		half := len(body) / 2
		if err := unix.Sendmsg(fd, body[:half], rights, nil, 0); err != nil {
			return fmt.Errorf("sendmsg: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
		body, rights = body[half:], nil
	default:
		return fmt.Errorf("unknown send mode %q", c.cfg.Send)
	}
	// Like Firecracker: one sendmsg, and the connection stays open.
	if err := unix.Sendmsg(fd, body, rights, nil, 0); err != nil {
		return fmt.Errorf("sendmsg: %w", err)
	}
	return nil
}

func (c *child) run(s Step) (int, error) {
	switch s.Op {
	case "sleep":
		time.Sleep(s.Sleep)
		return 0, nil
	case "wait":
		// Bounded by the child's Timeout, like a fault never served.
		for {
			if b, err := os.ReadFile(s.Path); err == nil && bytes.Contains(b, []byte(s.Contains)) {
				return 0, nil
			}
			time.Sleep(time.Millisecond)
		}
	}
	if s.Region < 0 || s.Region >= len(c.mems) {
		return 0, fmt.Errorf("no region %d", s.Region)
	}
	r, mem := c.cfg.Regions[s.Region], c.mems[s.Region]
	length := s.Length
	if length == 0 {
		length = uint64(len(mem)) - s.Offset
	}
	if s.Offset+length > uint64(len(mem)) {
		return 0, fmt.Errorf("range [%#x, +%#x) outside the region", s.Offset, length)
	}
	switch s.Op {
	case "remove":
		return 0, unix.Madvise(mem[s.Offset:s.Offset+length], unix.MADV_DONTNEED)
	case "remap":
		return 0, c.remap(s.Region)
	case "touch":
		return c.touch(s, r, mem[s.Offset:s.Offset+length], s.Offset)
	case "populate":
		return c.populate(s, r, mem[s.Offset:s.Offset+length], s.Offset)
	}
	return 0, fmt.Errorf("unknown op %q", s.Op)
}

// populate copies mem (at base in region r) in from the memory file with
// UFFDIO_COPY through the child's own userfaultfd, as a server would but
// without a fault to wait for.
func (c *child) populate(s Step, r Region, mem []byte, base uint64) (int, error) {
	if r.FileBacked || r.Plain || c.uffd < 0 {
		return 0, fmt.Errorf("populate needs a region registered with the userfaultfd")
	}
	chunk := s.PopulateChunk
	if chunk == 0 {
		chunk = 256 << 10
	}
	ps := pageSize(r)
	if chunk%ps != 0 || uint64(len(mem))%ps != 0 || r.Offset+base+uint64(len(mem)) > uint64(len(c.ref)) {
		return 0, fmt.Errorf("populate: chunk %d or range %#x+%#x does not fit the page size or the memory file", chunk, base, len(mem))
	}
	for off := uint64(0); off < uint64(len(mem)); off += chunk {
		n := min(chunk, uint64(len(mem))-off)
		// struct uffdio_copy { dst, src, len, mode, copy }
		cp := [5]uint64{addrOf(mem[off:]), addrOf(c.ref[r.Offset+base+off:]), n, 0, 0}
		if errno := ioctl(c.uffd, 0xC028AA03, unsafe.Pointer(&cp[0])); errno != 0 {
			return 0, fmt.Errorf("UFFDIO_COPY at %#x: %w", base+off, errno)
		}
		c.done.Add(int64(n / ps))
	}
	return int(uint64(len(mem)) / ps), nil
}

// remap moves a region to a new address with mremap (the registration
// moves with it when EVENT_REMAP was requested).
func (c *child) remap(i int) error {
	old := c.mems[i]
	n := uintptr(len(old))
	// Reserve a destination, then move onto it.
	dst, err := unix.Mmap(-1, 0, len(old), unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return err
	}
	p, err := unix.MremapPtr(unsafe.Pointer(&old[0]), n, unsafe.Pointer(&dst[0]), n, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED)
	if err != nil {
		return fmt.Errorf("mremap: %w", err)
	}
	c.mems[i] = unsafe.Slice((*byte)(p), len(old))
	return nil
}

func (c *child) touch(s Step, r Region, mem []byte, base uint64) (int, error) {
	ps := pageSize(r)
	pages := s.Pages
	if pages == nil {
		n := uint64(len(mem)) / ps
		pages = make([]uint64, n)
		for i := range pages {
			pages[i] = base/ps + uint64(i)
		}
		if s.Order != "sequential" {
			rng := rand.New(rand.NewPCG(s.Seed, 0x9e3779b97f4a7c15))
			rng.Shuffle(len(pages), func(i, j int) { pages[i], pages[j] = pages[j], pages[i] })
		}
	}
	full := c.mems[s.Region]
	for _, p := range pages {
		if (p+1)*ps > uint64(len(full)) {
			return 0, fmt.Errorf("page %d outside the region", p)
		}
	}
	c.done.Store(0)
	c.total.Store(int64(len(pages)))
	threads := max(1, s.Threads)
	zero := make([]byte, ps)
	var wg sync.WaitGroup
	var first atomic.Pointer[error]
	for t := 0; t < threads; t++ {
		wg.Add(1)
		go func(t int) {
			defer wg.Done()
			runtime.LockOSThread()
			var sum uint64
			for i := t; i < len(pages); i += threads {
				o := pages[i] * ps
				page := full[o : o+ps]
				var err error
				switch s.Expect {
				case "any":
					sum += *(*uint64)(unsafe.Pointer(&page[0]))
				case "write":
					*(*uint64)(unsafe.Pointer(&page[0])) ^= 1
				case "zero":
					if !bytes.Equal(page, zero) {
						err = fmt.Errorf("page %d (region offset %#x) is not zero", pages[i], o)
					}
				default:
					fo := r.Offset + o
					if fo+ps > uint64(len(c.ref)) {
						err = fmt.Errorf("page %d is beyond the memory file", pages[i])
					} else if !bytes.Equal(page, c.ref[fo:fo+ps]) {
						err = fmt.Errorf("page %d (file offset %#x) differs from the memory file", pages[i], fo)
					}
				}
				if err != nil {
					first.CompareAndSwap(nil, &err)
					return
				}
				c.done.Add(1)
				if s.PageDelay > 0 {
					time.Sleep(s.PageDelay)
				}
			}
			c.sink.Add(sum)
		}(t)
	}
	wg.Wait()
	if e := first.Load(); e != nil {
		return 0, *e
	}
	return len(pages), nil
}

// WriteMemFile writes a memory file of size bytes whose every 8-byte word
// is distinct and non-zero, so a misplaced, stale or zeroed page cannot
// pass a content check.
func WriteMemFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		for i := int64(0); i+8 <= n; i += 8 {
			*(*uint64)(unsafe.Pointer(&buf[i])) = word(uint64(off+i) / 8)
		}
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// word is splitmix64 of the word index, forced non-zero.
func word(i uint64) uint64 {
	z := i + 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return (z ^ (z >> 31)) | 1
}
