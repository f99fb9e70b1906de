//go:build linux

package uffd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hearth-vm/hearth/proc"
)

// Options configure one page-fault server (one restored VM).
type Options struct {
	// Socket is where the VMM connects (the snapshot/load backend_path).
	Socket string
	// MemFile is the snapshot's guest memory file.
	MemFile string
	// TraceFile holds the working-set trace, next to the snapshot. When it
	// does not exist (or is stale) this restore records one; when it
	// exists and Prefetch is set, it is replayed. Empty disables both.
	TraceFile string
	// Prefetch replays TraceFile in the background.
	Prefetch bool
	// StatusFile receives the Status JSON; empty disables it.
	StatusFile string
	// VMMPid is the VMM to kill when a fault cannot be served and whose
	// exit ends the server. 0 means the peer of the connection
	// (SO_PEERCRED). When set, the server also stops waiting for a
	// connection if that process exits first.
	VMMPid int
	// AcceptTimeout bounds the wait for the VMM's connection and message
	// (default 1 minute).
	AcceptTimeout time.Duration
	// StatusInterval is how often the status file is rewritten while
	// serving (default 1 s).
	StatusInterval time.Duration
	// TraceWindow is how long after the handshake faults are recorded
	// (default 10 s): the working set of a restore, not the VM's whole
	// life.
	TraceWindow time.Duration
	// FaultAround is how many 4 KiB pages one on-demand fault serves: the
	// aligned block around the faulting page (its pages not yet present).
	// The faulting page is copied first, which wakes the guest; the rest
	// of the block follows in the background. The kernel does the same
	// for file mappings (fault_around_bytes, 64 KiB), which is what the
	// File backend gets; a userfaultfd round trip costs far more than a
	// kernel fault, so serving neighbours pays even more here. Default
	// 16; 1 copies only the faulting page. A sequential stream gets one block forward
	// from the fault and a readahead window behind it, copied in the
	// background while the guest works (doubling up to 16× this); a
	// restore recording a trace copies only what the guest touches (see
	// server.window). Hugepage regions always copy one page.
	FaultAround int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

const (
	defaultAcceptTimeout  = time.Minute
	defaultStatusInterval = time.Second
	defaultTraceWindow    = 10 * time.Second
	defaultFaultAround    = 16
	// prefetchUnits and prefetchCalls bound one prefetch step (4 KiB
	// units copied, copy calls made) before the server looks for faults
	// again: they bound how long an on-demand fault waits behind the
	// prefetcher (~100 µs), while amortising the poll over several
	// copies, since a syscall costs as much as copying a few pages.
	prefetchUnits = 64
	prefetchCalls = 8
	// efaultRetries: a read of the memory file that fails (EIO from
	// pread, or EFAULT from UFFDIO_COPY reading the mapping) is retried
	// with backoff before the VM is declared lost.
	efaultRetries = 3
	// stageSize is the copy buffer of 4 KiB pages: the largest single
	// copy (a fault's block with a full readahead window is 272 pages).
	stageSize = 1 << 20
)

// Errors returned by Serve, each with its own exit code (ExitCode).
var (
	// ErrSetup: the server could not start (memory file, socket, …).
	ErrSetup = errors.New("uffd server setup failed")
	// ErrHandshake: no valid handshake (no connection in time, no fd,
	// malformed or invalid regions). A connected VMM is killed.
	ErrHandshake = errors.New("uffd handshake failed")
	// ErrFault: a fault or event could not be served; the VMM is killed.
	ErrFault = errors.New("uffd fault could not be served")
)

// Exit codes of `hearth _uffd`.
const (
	ExitOK        = 0
	ExitSetup     = 1
	ExitHandshake = 2
	ExitFault     = 3
	ExitUsage     = 64
)

// ExitCode maps an error from Serve to the process exit code.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrHandshake):
		return ExitHandshake
	case errors.Is(err, ErrFault):
		return ExitFault
	default:
		return ExitSetup
	}
}

func (o *Options) defaults() {
	if o.AcceptTimeout <= 0 {
		o.AcceptTimeout = defaultAcceptTimeout
	}
	if o.StatusInterval <= 0 {
		o.StatusInterval = defaultStatusInterval
	}
	if o.TraceWindow <= 0 {
		o.TraceWindow = defaultTraceWindow
	}
	if o.FaultAround <= 0 {
		o.FaultAround = defaultFaultAround
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// server is the state of one Serve call. All serving happens on one
// goroutine (the event loop): faults, events and prefetch steps are
// interleaved there, which orders a REMOVE before any later copy into its
// range without locks, and lets faults pre-empt the prefetcher between
// chunks.
type server struct {
	o    Options
	log  *slog.Logger
	mem  []byte
	base uint64 // address of mem
	size uint64
	zero []byte // a read-only zero mapping, the source of zeroed hugepages
	// memfd is the memory file, and stage a buffer 4 KiB pages are read
	// into (pread, from the page cache) and copied from: see stageFile.
	memfd int
	stage []byte

	stopfd, lfd, connfd, vmmfd int
	vmmPid                     int
	sessions                   []*session
	pfds                       []unix.PollFd
	buf                        []byte

	st         Status
	latSum     time.Duration
	latMax     time.Duration
	nextStatus time.Time

	rec      *trace // recording, until recUntil
	recUntil time.Time
	pf       *prefetcher
	doneCh   chan struct{}  // closed when Serve ends
	bg       sync.WaitGroup // the goroutines that watch doneCh
}

// Serve runs one page-fault server until the VMM goes away, ctx is
// cancelled (then it detaches: see State Detached), or an error. It
// returns nil when the VMM exited or closed the connection and when it
// detached; otherwise an error wrapping ErrSetup, ErrHandshake or ErrFault.
// It writes the status file throughout.
func Serve(ctx context.Context, o Options) (err error) {
	o.defaults()
	if o.Socket == "" || o.MemFile == "" {
		return fmt.Errorf("%w: socket and memory file are required", ErrSetup)
	}
	s := &server{o: o, log: o.Logger, stopfd: -1, lfd: -1, connfd: -1, vmmfd: -1, memfd: -1, doneCh: make(chan struct{})}
	s.st = Status{Pid: os.Getpid(), State: StateStarting, Socket: o.Socket, MemFile: o.MemFile, Started: time.Now(), Trace: TraceOff, TraceFile: o.TraceFile}
	if st, err := proc.StartTimeOf(s.st.Pid); err == nil {
		s.st.StartTime = st
	}
	defer func() { s.finish(err) }()
	s.writeStatus()

	if err := s.setup(); err != nil {
		return fmt.Errorf("%w: %w", ErrSetup, err)
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		select {
		case <-ctx.Done():
			unix.Write(s.stopfd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		case <-s.doneCh:
		}
	}()
	s.st.State = StateListening
	s.writeStatus()
	s.log.Info("uffd server listening", "socket", o.Socket, "mem", o.MemFile, "mem_bytes", s.size)

	if err := s.handshake(); err != nil {
		if errors.Is(err, errStopped) {
			s.log.Info("stopped before a VMM connected")
			return nil
		}
		return err
	}
	s.st.State = StateServing
	s.writeStatus()
	return s.run()
}

func (s *server) setup() error {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	s.stopfd = efd
	f, err := os.Open(s.o.MemFile)
	if err != nil {
		return fmt.Errorf("open memory file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat memory file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("memory file %s is not a regular file", s.o.MemFile)
	}
	if fi.Size() == 0 {
		return fmt.Errorf("memory file %s is empty", s.o.MemFile)
	}
	s.size = uint64(fi.Size())
	s.st.MemBytes = s.size
	// Read-only and shared: the copy source is the page cache itself, so
	// every clone of a snapshot shares one cached copy of the file and
	// nothing is duplicated in this process.
	s.mem, err = unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap memory file: %w", err)
	}
	s.base = uint64(uintptr(unsafe.Pointer(&s.mem[0])))
	if s.memfd, err = unix.Dup(int(f.Fd())); err != nil {
		return fmt.Errorf("memory file: %w", err)
	}
	unix.CloseOnExec(s.memfd)
	s.stage, err = unix.Mmap(-1, 0, stageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("map the copy buffer: %w", err)
	}
	s.buf = make([]byte, 64*msgSize)

	if s.o.TraceFile != "" {
		s.loadTrace()
	}
	if s.o.VMMPid > 0 {
		fd, err := unix.PidfdOpen(s.o.VMMPid, 0)
		if err != nil {
			return fmt.Errorf("pidfd of the VMM (pid %d): %w", s.o.VMMPid, err)
		}
		s.vmmfd, s.vmmPid = fd, s.o.VMMPid
		s.st.VMMPid = s.vmmPid
	}
	s.lfd, err = listen(s.o.Socket)
	return err
}

// loadTrace decides between recording and replaying. A broken or stale
// trace is not fatal: it is replaced by this restore's recording.
func (s *server) loadTrace() {
	t, err := readTrace(s.o.TraceFile, s.size)
	if err != nil {
		s.log.Warn("ignoring prefetch trace; recording a new one", "err", err)
		t = nil
	}
	switch {
	case t == nil:
		s.rec = &trace{fileSize: s.size}
		s.st.Trace = TraceRecording
	case s.o.Prefetch:
		s.pf = &prefetcher{t: t}
		s.st.Trace = TraceReplaying
		s.st.TracePages = t.pages()
	default:
		s.st.Trace = TraceIgnored
	}
}

func (s *server) handshake() error {
	deadline := time.Now().Add(s.o.AcceptTimeout)
	cfd, err := acceptOne(s.lfd, s.stopfd, s.vmmfd, deadline)
	// One VMM per server: the socket's job is done either way, and
	// removing it keeps a stale path from looking like a live server.
	unix.Close(s.lfd)
	s.lfd = -1
	os.Remove(s.o.Socket)
	switch {
	case err == errDeadline:
		return fmt.Errorf("%w: no VMM connected to %s within %s", ErrHandshake, s.o.Socket, s.o.AcceptTimeout)
	case err == errVMMGone:
		return fmt.Errorf("%w: the VMM (pid %d) exited before connecting", ErrHandshake, s.vmmPid)
	case err != nil:
		return fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	s.connfd = cfd
	cred, err := unix.GetsockoptUcred(cfd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return fmt.Errorf("%w: SO_PEERCRED: %w", ErrHandshake, err)
	}
	if s.vmmPid == 0 {
		fd, err := unix.PidfdOpen(int(cred.Pid), 0)
		if err != nil {
			return fmt.Errorf("%w: pidfd of the connected VMM (pid %d): %w", ErrHandshake, cred.Pid, err)
		}
		s.vmmfd, s.vmmPid = fd, int(cred.Pid)
		s.st.VMMPid = s.vmmPid
	} else if int(cred.Pid) != s.vmmPid {
		s.log.Warn("connection from another process than the VMM pid given", "peer_pid", cred.Pid, "vmm_pid", s.vmmPid)
	}
	data, fd, err := receiveHandshake(cfd, s.stopfd, deadline)
	if err != nil {
		// Stopped or not, a connected VMM that got no server would hang
		// in its first fault: this is a failed handshake (and kills it).
		if errors.Is(err, errStopped) {
			return fmt.Errorf("%w: stopped while the VMM was sending its regions", ErrHandshake)
		}
		return fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	ss := &session{fd: fd, served: newBitmap(s.size / traceUnit), zero: newBitmap(s.size / traceUnit)}
	s.sessions = append(s.sessions, ss) // closed by finish from here on
	if err := checkUffd(fd); err != nil {
		return fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	rs, err := ParseRegions(data, s.size)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	for _, r := range rs {
		ss.regions = append(ss.regions, &region{base: r.BaseHostVirtAddr, size: r.Size, off: r.Offset, ps: r.PageSize})
	}
	sort.Slice(ss.regions, func(i, j int) bool { return ss.regions[i].base < ss.regions[j].base })
	s.st.Regions, s.st.PageSize = len(rs), rs[0].PageSize
	// The server reads until EAGAIN; a VMM that created a blocking
	// userfaultfd would otherwise stall the loop on a spurious wakeup.
	if err := unix.SetNonblock(fd, true); err != nil {
		return fmt.Errorf("%w: set userfaultfd non-blocking: %w", ErrHandshake, err)
	}
	s.log.Info("VMM connected", "vmm_pid", s.vmmPid, "regions", len(rs), "page_size", rs[0].PageSize, "trace", s.st.Trace)
	return nil
}

// checkUffd rejects an fd that is not a userfaultfd, so that a confused
// sender gets a clear error instead of EINVAL from the first read.
func checkUffd(fd int) error {
	l, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return fmt.Errorf("inspect received fd: %w", err)
	}
	if !strings.Contains(l, "userfaultfd") {
		return fmt.Errorf("the file descriptor received is not a userfaultfd (%s)", l)
	}
	return nil
}

// finish records the outcome, kills the VMM when the VM cannot go on, and
// releases everything. It runs exactly once, at the end of Serve.
func (s *server) finish(err error) {
	// The helper goroutines use the stop eventfd and the mapping: they
	// must be gone before those are released (a write to a closed fd
	// number could hit whatever file reuses it).
	close(s.doneCh)
	s.bg.Wait()
	switch {
	case err == nil && s.st.State == StateDetached:
	case err == nil:
		s.st.State = StateExited
	default:
		s.st.State = StateFailed
		s.st.Error = err.Error()
		// A VMM whose memory cannot be served would hang in its next
		// fault forever; end it now, with the reason on record.
		if s.vmmfd >= 0 && s.connfd >= 0 {
			if kerr := unix.PidfdSendSignal(s.vmmfd, unix.SIGKILL, nil, 0); kerr == nil {
				s.st.VMMKilled = true
			} else if !errors.Is(kerr, unix.ESRCH) {
				s.log.Error("kill the VMM", "pid", s.vmmPid, "err", kerr)
			}
		}
		s.log.Error("uffd server failed", "err", err, "vmm_pid", s.vmmPid, "vmm_killed", s.st.VMMKilled)
	}
	s.st.ExitCode = ExitCode(err)
	if s.rec != nil && err == nil {
		s.saveTrace()
	}
	s.writeStatus()
	if s.st.State != StateFailed {
		s.log.Info("uffd server done", "state", s.st.State, "faults", s.st.Faults, "fault_bytes", s.st.FaultBytes,
			"prefetched_pages", s.st.PrefetchedPages, "zero_pages", s.st.ZeroPages, "max_fault_latency_us", s.st.MaxFaultLatencyUS)
	}
	for _, ss := range s.sessions {
		unix.Close(ss.fd)
	}
	for _, fd := range []int{s.stopfd, s.lfd, s.connfd, s.vmmfd, s.memfd} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	if s.lfd >= 0 {
		os.Remove(s.o.Socket)
	}
	if s.mem != nil {
		unix.Munmap(s.mem)
	}
	if s.zero != nil {
		unix.Munmap(s.zero)
	}
	if s.stage != nil {
		unix.Munmap(s.stage)
	}
}

func (s *server) writeStatus() {
	if s.o.StatusFile == "" {
		return
	}
	s.st.Updated = time.Now()
	if s.st.Faults > 0 {
		s.st.MeanFaultLatencyUS = float64(s.latSum.Nanoseconds()) / float64(s.st.Faults) / 1e3
	}
	s.st.MaxFaultLatencyUS = float64(s.latMax.Nanoseconds()) / 1e3
	if err := writeStatus(s.o.StatusFile, &s.st); err != nil {
		s.log.Warn("write status", "err", err)
	}
}

// run is the event loop.
func (s *server) run() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	now := time.Now()
	s.nextStatus = now.Add(s.o.StatusInterval)
	if s.rec != nil {
		s.recUntil = now.Add(s.o.TraceWindow)
	}
	if s.pf != nil {
		s.pf.start(s)
	}
	s.rebuildPoll()
	for {
		n, err := unix.Poll(s.pfds, s.pollTimeout())
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("%w: poll: %w", ErrFault, err)
		}
		if n > 0 {
			if s.pfds[0].Revents != 0 {
				return s.detach()
			}
			if s.pfds[1].Revents != 0 && s.connClosed() {
				s.log.Info("the VMM closed the connection")
				return nil
			}
			if s.pfds[2].Revents != 0 {
				s.log.Info("the VMM exited", "pid", s.vmmPid)
				return nil
			}
			for i := 3; i < len(s.pfds); i++ {
				if s.pfds[i].Revents == 0 {
					continue
				}
				if s.pfds[i].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
					return fmt.Errorf("%w: the userfaultfd reports an error (was UFFDIO_API done?)", ErrFault)
				}
				if err := s.drain(s.sessions[i-3]); err != nil {
					return s.fatal(err)
				}
			}
		}
		if len(s.sessions[0].deferred) > 0 {
			if err := s.retryDeferred(s.sessions[0]); err != nil {
				return s.fatal(err)
			}
		}
		if s.pf != nil {
			if err := s.prefetchStep(s.sessions[0]); err != nil {
				return s.fatal(err)
			}
		}
		for _, ss := range s.sessions {
			if ss.background() {
				if err := s.backgroundStep(ss); err != nil {
					return s.fatal(err)
				}
			}
		}
		s.periodic()
	}
}

// fatal turns a serving error into Serve's result: the VMM exiting under
// us ends the server normally; anything else is an unservable fault.
func (s *server) fatal(err error) error {
	if errors.Is(err, errVMMGone) {
		s.log.Info("the VMM's memory is gone (it exited)")
		return nil
	}
	if errors.Is(err, ErrFault) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrFault, err)
}

func (s *server) rebuildPoll() {
	s.pfds = s.pfds[:0]
	s.pfds = append(s.pfds,
		unix.PollFd{Fd: int32(s.stopfd), Events: unix.POLLIN},
		unix.PollFd{Fd: int32(s.connfd), Events: unix.POLLIN},
		unix.PollFd{Fd: int32(s.vmmfd), Events: unix.POLLIN})
	for _, ss := range s.sessions {
		s.pfds = append(s.pfds, unix.PollFd{Fd: int32(ss.fd), Events: unix.POLLIN})
	}
}

func (s *server) pollTimeout() int {
	if s.pf != nil {
		return 0 // prefetching: only look for faults between chunks
	}
	for _, ss := range s.sessions {
		if ss.background() {
			return 0
		}
		if len(ss.deferred) > 0 {
			return 1
		}
	}
	next := s.nextStatus
	if s.rec != nil && s.recUntil.Before(next) {
		next = s.recUntil
	}
	return max(1, int(time.Until(next).Milliseconds())+1)
}

func (s *server) periodic() {
	now := time.Now()
	if s.rec != nil && now.After(s.recUntil) {
		s.saveTrace()
	}
	if now.After(s.nextStatus) {
		s.writeStatus()
		s.nextStatus = now.Add(s.o.StatusInterval)
	}
}

// connClosed reads what the connection has: EOF (the VMM closed it or
// exited) ends the server; Firecracker never sends anything after the
// handshake, so data is discarded (and fds closed).
func (s *server) connClosed() bool {
	buf := make([]byte, 512)
	oob := make([]byte, unix.CmsgSpace(8*4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(s.connfd, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return false
		}
		if err != nil || (n == 0 && oobn == 0) {
			return true
		}
		if oobn > 0 {
			fds, _ := parseRights(oob[:oobn])
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
		s.log.Warn("ignoring unexpected data from the VMM after the handshake", "bytes", n)
	}
}

// drain reads and handles every queued event of a session.
func (s *server) drain(ss *session) error {
	for {
		n, err := unix.Read(ss.fd, s.buf)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			return fmt.Errorf("read userfaultfd: %w", err)
		}
		t0 := time.Now()
		for off := 0; off+msgSize <= n; off += msgSize {
			if err := s.handle(ss, decodeMsg(s.buf[off:off+msgSize]), t0); err != nil {
				return err
			}
		}
		if n < len(s.buf) {
			break // a short read emptied the queue; poll tells of new ones
		}
	}
	return s.retryDeferred(ss)
}

func (s *server) handle(ss *session, m msg, t0 time.Time) error {
	switch m.event {
	case eventPagefault:
		return s.fault(ss, m.b, t0)
	case eventRemove:
		s.st.Events.Remove++
		ss.markZero(m.a, m.b)
	case eventUnmap:
		// The range is gone from the VMM; should it map and register it
		// again it would be fresh anonymous memory, i.e. zeros.
		s.st.Events.Unmap++
		ss.markZero(m.a, m.b)
	case eventRemap:
		s.st.Events.Remap++
		ss.remap(m.a, m.b, m.c)
		s.log.Info("VMM remapped guest memory", "from", fmt.Sprintf("%#x", m.a), "to", fmt.Sprintf("%#x", m.b), "len", m.c)
	case eventFork:
		// The VMM forked with EVENT_FORK: its child has its own
		// userfaultfd, and its missing pages fault there. Serve them on
		// demand from the same file, with the parent's removed ranges.
		s.st.Events.Fork++
		if err := unix.SetNonblock(m.fd, true); err != nil {
			unix.Close(m.fd)
			return fmt.Errorf("fork event: %w", err)
		}
		child := &session{fd: m.fd, child: true, served: newBitmap(s.size / traceUnit), zero: append(bitmap(nil), ss.zero...)}
		for _, r := range ss.regions {
			cp := *r
			child.regions = append(child.regions, &cp)
		}
		s.sessions = append(s.sessions, child)
		s.rebuildPoll()
		s.log.Info("VMM forked; serving the child's userfaultfd too", "fd", m.fd)
	default:
		s.log.Warn("ignoring unknown userfaultfd event", "event", m.event)
	}
	return nil
}
