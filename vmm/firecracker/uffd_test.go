package firecracker

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A minimal userfaultfd page-fault server, as Firecracker's
// handling-page-faults-on-snapshot-resume.md describes it, so the Uffd
// restore path is exercised end to end. The real server lives in uffd/.

const (
	uffdEventPagefault = 0x12
	uffdMsgSize        = 32
	// UFFDIO_COPY = _IOWR(0xAA, 0x03, struct uffdio_copy) with a 40-byte
	// struct.
	uffdioCopy = 3<<30 | 40<<16 | 0xAA<<8 | 0x03
)

type uffdRegion struct {
	Base        uint64 `json:"base_host_virt_addr"`
	Size        uint64 `json:"size"`
	Offset      uint64 `json:"offset"`
	PageSize    uint64 `json:"page_size"`
	PageSizeKiB uint64 `json:"page_size_kib"`
}

func (r uffdRegion) pageSize() uint64 {
	switch {
	case r.PageSize > 0:
		return r.PageSize
	case r.PageSizeKiB > 0:
		return r.PageSizeKiB << 10
	}
	return 4096
}

type uffdioCopyArg struct {
	dst, src, len, mode uint64
	copied              int64
}

// startPageFaultServer listens on sock and, once the VMM connects, serves
// its page faults from memFile until the test ends. It returns sock.
func startPageFaultServer(t *testing.T, sock, memFile string) string {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(memFile)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_PRIVATE)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var serveErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveErr = servePageFaults(ln, mem, stop)
	}()
	t.Cleanup(func() {
		close(stop)
		ln.Close()
		wg.Wait()
		unix.Munmap(mem)
		os.Remove(sock)
		if serveErr != nil {
			t.Errorf("page-fault server: %v", serveErr)
		}
	})
	return sock
}

func servePageFaults(ln *net.UnixListener, mem []byte, stop <-chan struct{}) error {
	ln.SetDeadline(time.Now().Add(20 * time.Second))
	conn, err := ln.AcceptUnix()
	if err != nil {
		select {
		case <-stop:
			return nil // the test ended before a restore used us
		default:
			return err
		}
	}
	defer conn.Close()
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) == 0 {
		return errors.Join(errors.New("no control message with the userfaultfd"), err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) == 0 {
		return errors.Join(errors.New("no userfaultfd received"), err)
	}
	uffd := fds[0]
	defer unix.Close(uffd)
	var regions []uffdRegion
	if err := json.Unmarshal(buf[:n], &regions); err != nil {
		return err
	}
	zero := make([]byte, 2<<20)
	msg := make([]byte, uffdMsgSize)
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		pfd := []unix.PollFd{{Fd: int32(uffd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, 50); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		if pfd[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 {
			return nil // the VMM is gone
		}
		if pfd[0].Revents&unix.POLLIN == 0 {
			continue
		}
		if _, err := unix.Read(uffd, msg); err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		if msg[0] != uffdEventPagefault {
			continue
		}
		addr := binary.LittleEndian.Uint64(msg[16:24])
		for _, r := range regions {
			if addr < r.Base || addr >= r.Base+r.Size {
				continue
			}
			ps := r.pageSize()
			page := addr &^ (ps - 1)
			off := r.Offset + (page - r.Base)
			src := zero[:ps]
			if off+ps <= uint64(len(mem)) {
				src = mem[off : off+ps]
			}
			arg := uffdioCopyArg{dst: page, src: uint64(uintptr(unsafe.Pointer(&src[0]))), len: ps}
			_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(uffd), uffdioCopy, uintptr(unsafe.Pointer(&arg)))
			if errno != 0 && errno != unix.EEXIST {
				return errno
			}
			break
		}
	}
}
