//go:build linux

package fcsim

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// requireUffd skips unless this process can create a userfaultfd the way
// the simulator will (root, or unprivileged_userfaultfd=1).
func requireUffd(t *testing.T) {
	t.Helper()
	requireRoot(t, "userfaultfd restore")
	fd, _, err := NewUffd()
	if err != nil {
		t.Skipf("userfaultfd unavailable: %v", err)
	}
	unix.Close(fd)
}

type serveMode int

const (
	serveFromFile serveMode = iota // UFFDIO_COPY from the memory file
	serveZeros                     // UFFDIO_ZEROPAGE: wrong contents
	serveNothing                   // take the fd, never serve
)

// pageFaultServer is a minimal userfaultfd page-fault handler, written the
// way the Firecracker documentation describes one: listen on a unix socket,
// receive the uffd and the region layout, map the memory file privately and
// resolve each fault with UFFDIO_COPY of the page at the region's offset.
type pageFaultServer struct {
	mu      sync.Mutex
	regions []GuestRegionUffdMapping
	faults  int
	peer    int
	stop    chan struct{}
	done    chan struct{}
}

func startPageFaultServer(t *testing.T, sock, memFile string, mode serveMode) *pageFaultServer {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	s := &pageFaultServer{stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() {
		close(s.stop)
		ln.Close()
		<-s.done
	})
	go func() {
		defer close(s.done)
		if err := s.run(ln, memFile, mode); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("page-fault server: %v", err)
		}
	}()
	return s
}

func (s *pageFaultServer) stats() ([]GuestRegionUffdMapping, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.regions, s.faults
}

func (s *pageFaultServer) peerPid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peer
}

func (s *pageFaultServer) run(ln *net.UnixListener, memFile string, mode serveMode) error {
	conn, err := ln.AcceptUnix()
	if err != nil {
		return err
	}
	defer conn.Close()
	// The handler learns the VMM's pid from the socket, as the docs
	// suggest, to be able to signal it.
	if raw, err := conn.SyscallConn(); err == nil {
		_ = raw.Control(func(fd uintptr) {
			if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
				s.mu.Lock()
				s.peer = int(cred.Pid)
				s.mu.Unlock()
			}
		})
	}
	regions, uffd, err := ReceiveUffdHandshake(conn)
	if err != nil {
		return err
	}
	defer unix.Close(uffd)
	s.mu.Lock()
	s.regions = regions
	s.mu.Unlock()

	f, err := os.Open(memFile)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_PRIVATE)
	f.Close()
	if err != nil {
		return err
	}
	defer unix.Munmap(mem)

	buf := make([]byte, 64*UffdMsgSize)
	pfd := []unix.PollFd{{Fd: int32(uffd), Events: unix.POLLIN}}
	for {
		select {
		case <-s.stop:
			return nil
		default:
		}
		n, err := unix.Poll(pfd, 50)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
		if n == 0 || mode == serveNothing {
			continue
		}
		r, err := unix.Read(uffd, buf)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		for _, m := range ParseUffdMsgs(buf[:r]) {
			if m.Event != UffdEventPagefault {
				continue
			}
			reg, ok := regionFor(regions, m.Address)
			if !ok {
				return errors.New("fault outside every region")
			}
			page := m.Address &^ (reg.PageSize - 1)
			off := reg.Offset + (page - reg.BaseHostVirtAddr)
			switch mode {
			case serveFromFile:
				err = UffdCopy(uffd, page, uint64(uintptr(unsafe.Pointer(&mem[off]))), reg.PageSize)
			case serveZeros:
				err = UffdZeropage(uffd, page, reg.PageSize)
			}
			if err != nil {
				return err
			}
			s.mu.Lock()
			s.faults++
			s.mu.Unlock()
		}
	}
}

func regionFor(regions []GuestRegionUffdMapping, addr uint64) (GuestRegionUffdMapping, bool) {
	for _, r := range regions {
		if addr >= r.BaseHostVirtAddr && addr < r.BaseHostVirtAddr+r.Size {
			return r, true
		}
	}
	return GuestRegionUffdMapping{}, false
}

// TestUffdPlumbing exercises the syscall layer in-process: register an
// anonymous mapping, fault it from another goroutine, serve with
// UFFDIO_COPY, and unregister to wake a stuck reader.
func TestUffdPlumbing(t *testing.T) {
	requireUffd(t)
	fd, _, err := NewUffd()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	const size = 4 * pageSize
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	base := uint64(uintptrOf(mem))
	if err := UffdRegister(fd, base, size); err != nil {
		t.Fatal(err)
	}
	src := make([]byte, pageSize)
	for i := range src {
		src[i] = 0xA5
	}
	got := make(chan byte, 1)
	go func() { got <- mem[pageSize+7] }()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); err != nil || n != 1 {
		t.Fatalf("poll: %d %v", n, err)
	}
	buf := make([]byte, UffdMsgSize)
	if _, err := unix.Read(fd, buf); err != nil {
		t.Fatal(err)
	}
	msgs := ParseUffdMsgs(buf)
	if len(msgs) != 1 || msgs[0].Event != UffdEventPagefault || msgs[0].Address&^(pageSize-1) != base+pageSize {
		t.Fatalf("msgs = %+v (base %#x)", msgs, base)
	}
	if err := UffdCopy(fd, base+pageSize, uint64(uintptrOf(src)), pageSize); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if b != 0xA5 {
			t.Fatalf("read %#x after UFFDIO_COPY", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("faulting reader not woken")
	}
	go func() { got <- mem[3*pageSize] }()
	time.Sleep(50 * time.Millisecond)
	if err := UffdUnregister(fd, base, size); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if b != 0 {
			t.Fatalf("read %#x after unregister, want 0", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("unregister did not wake the reader")
	}
}

func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
