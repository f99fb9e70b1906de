//go:build linux

package fcsim

// userfaultfd plumbing: the syscall, the ioctls and the wire messages, kept
// apart from the simulator logic so that the tests' page-fault server (and
// anything else in this package) can reuse them. golang.org/x/sys/unix has
// no UFFDIO_* definitions, so the ioctl numbers and struct layouts from
// <linux/userfaultfd.h> are spelled out here.

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	uffdAPI = 0xAA

	// _IOWR/_IOR(0xAA, nr, struct) with the struct sizes of the kernel ABI.
	uffdioAPI        = 0xC018AA3F // struct uffdio_api (24 bytes)
	uffdioRegister   = 0xC020AA00 // struct uffdio_register (32 bytes)
	uffdioUnregister = 0x8010AA01 // struct uffdio_range (16 bytes)
	uffdioWake       = 0x8010AA02 // struct uffdio_range
	uffdioCopy       = 0xC028AA03 // struct uffdio_copy (40 bytes)
	uffdioZeropage   = 0xC020AA04 // struct uffdio_zeropage (32 bytes)

	uffdioRegisterModeMissing = 1

	// UFFD_FEATURE_EVENT_REMOVE: Firecracker asks for it so that a
	// balloon's MADV_DONTNEED reaches the handler.
	uffdFeatureEventRemove = 1 << 3

	// Event codes in struct uffd_msg.
	UffdEventPagefault = 0x12
	UffdEventFork      = 0x13
	UffdEventRemap     = 0x14
	UffdEventRemove    = 0x15
	UffdEventUnmap     = 0x16

	// UffdMsgSize is sizeof(struct uffd_msg).
	UffdMsgSize = 32
)

// GuestRegionUffdMapping is one element of the JSON array Firecracker sends
// to the page-fault handler together with the userfaultfd. page_size is in
// bytes; page_size_kib is the deprecated field older handlers read.
type GuestRegionUffdMapping struct {
	BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
	Size             uint64 `json:"size"`
	Offset           uint64 `json:"offset"`
	PageSize         uint64 `json:"page_size"`
	PageSizeKiB      uint64 `json:"page_size_kib"`
}

// UffdMsg is the decoded part of struct uffd_msg the simulator and its
// tests care about.
type UffdMsg struct {
	Event   uint8
	Flags   uint64 // pagefault flags
	Address uint64 // pagefault address, or remove/unmap start
	End     uint64 // remove/unmap end
}

// NewUffd creates a userfaultfd (O_CLOEXEC|O_NONBLOCK, as Firecracker does)
// and completes the UFFDIO_API handshake. It asks for EVENT_REMOVE and
// falls back to no optional features on kernels that refuse it. It returns
// the fd and the features the kernel granted.
func NewUffd() (int, uint64, error) {
	fd, features, err := newUffd(uffdFeatureEventRemove)
	if err == nil {
		return fd, features, nil
	}
	fd, features, err2 := newUffd(0)
	if err2 != nil {
		return -1, 0, fmt.Errorf("userfaultfd: %w (with EVENT_REMOVE: %v)", err2, err)
	}
	return fd, features, nil
}

// userfaultfdDev is the device Firecracker 1.17 opens for a userfaultfd:
// unlike the syscall, it works for an unprivileged (jailed) process when
// vm.unprivileged_userfaultfd is 0, as long as the jail has the node.
const userfaultfdDev = "/dev/userfaultfd"

// USERFAULTFD_IOC_NEW is _IO(0xAA, 0x00).
const userfaultfdIocNew = 0xAA00

func openUffd() (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(unix.O_CLOEXEC|unix.O_NONBLOCK), 0, 0)
	if errno == 0 {
		return int(r), nil
	}
	dev, err := unix.Open(userfaultfdDev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("userfaultfd syscall: %w; %s: %w", errno, userfaultfdDev, err)
	}
	defer unix.Close(dev)
	fd, _, errno2 := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), userfaultfdIocNew, uintptr(unix.O_CLOEXEC|unix.O_NONBLOCK))
	if errno2 != 0 {
		return -1, fmt.Errorf("userfaultfd syscall: %w; USERFAULTFD_IOC_NEW: %w", errno, errno2)
	}
	return int(fd), nil
}

func newUffd(features uint64) (int, uint64, error) {
	fd, err := openUffd()
	if err != nil {
		return -1, 0, err
	}
	// struct uffdio_api { __u64 api; __u64 features; __u64 ioctls; }
	var api [3]uint64
	api[0] = uffdAPI
	api[1] = features
	if err := ioctlPtr(fd, uffdioAPI, unsafe.Pointer(&api[0])); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("UFFDIO_API: %w", err)
	}
	return fd, api[1], nil
}

// UffdRegister registers [addr, addr+length) in MISSING mode.
func UffdRegister(fd int, addr, length uint64) error {
	// struct uffdio_register { struct uffdio_range range; __u64 mode; __u64 ioctls; }
	reg := [4]uint64{addr, length, uffdioRegisterModeMissing, 0}
	if err := ioctlPtr(fd, uffdioRegister, unsafe.Pointer(&reg[0])); err != nil {
		return fmt.Errorf("UFFDIO_REGISTER %#x+%#x: %w", addr, length, err)
	}
	return nil
}

// UffdUnregister unregisters a range. The kernel wakes every thread blocked
// on a fault in it, which then sees ordinary (zero-filled) memory; the
// simulator relies on this to unblock its reader after a timeout.
func UffdUnregister(fd int, addr, length uint64) error {
	rng := [2]uint64{addr, length}
	if err := ioctlPtr(fd, uffdioUnregister, unsafe.Pointer(&rng[0])); err != nil {
		return fmt.Errorf("UFFDIO_UNREGISTER: %w", err)
	}
	return nil
}

// UffdCopy resolves a fault by copying length bytes from src (an address in
// the caller's memory) to dst (an address in the registered range) and
// waking the faulting thread. EEXIST (page already present, e.g. served by
// a racing copy) is not an error.
func UffdCopy(fd int, dst, src, length uint64) error {
	// struct uffdio_copy { __u64 dst, src, len, mode; __s64 copy; }
	cp := [5]uint64{dst, src, length, 0, 0}
	err := ioctlPtr(fd, uffdioCopy, unsafe.Pointer(&cp[0]))
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("UFFDIO_COPY dst=%#x len=%#x: %w", dst, length, err)
	}
	return nil
}

// UffdZeropage resolves a fault with zero pages.
func UffdZeropage(fd int, dst, length uint64) error {
	zp := [4]uint64{dst, length, 0, 0}
	err := ioctlPtr(fd, uffdioZeropage, unsafe.Pointer(&zp[0]))
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("UFFDIO_ZEROPAGE dst=%#x: %w", dst, err)
	}
	return nil
}

// UffdWake wakes threads blocked on faults in a range.
func UffdWake(fd int, addr, length uint64) error {
	rng := [2]uint64{addr, length}
	return ioctlPtr(fd, uffdioWake, unsafe.Pointer(&rng[0]))
}

// ParseUffdMsgs decodes the uffd_msg records in buf (a read from the fd).
func ParseUffdMsgs(buf []byte) []UffdMsg {
	var out []UffdMsg
	le := binary.LittleEndian
	for len(buf) >= UffdMsgSize {
		m := UffdMsg{Event: buf[0]}
		switch m.Event {
		case UffdEventPagefault:
			m.Flags = le.Uint64(buf[8:])
			m.Address = le.Uint64(buf[16:])
		case UffdEventRemove, UffdEventUnmap:
			m.Address = le.Uint64(buf[8:])
			m.End = le.Uint64(buf[16:])
		}
		out = append(out, m)
		buf = buf[UffdMsgSize:]
	}
	return out
}

// SendUffdHandshake connects to the handler's socket and sends the region
// array as the message body with the userfaultfd in SCM_RIGHTS, in one
// sendmsg, the way Firecracker does. Nothing else is ever sent on the
// connection, which is returned so that the caller decides when to close.
func SendUffdHandshake(socketPath string, uffd int, regions []GuestRegionUffdMapping) (*net.UnixConn, error) {
	body, err := json.Marshal(regions)
	if err != nil {
		return nil, fmt.Errorf("encode uffd regions: %w", err)
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socketPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("connect to uffd handler: %w", err)
	}
	n, oobn, err := conn.WriteMsgUnix(body, unix.UnixRights(uffd), nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("send uffd handshake: %w", err)
	}
	if n != len(body) || oobn == 0 {
		conn.Close()
		return nil, fmt.Errorf("send uffd handshake: short write (%d of %d bytes)", n, len(body))
	}
	return conn, nil
}

// ReceiveUffdHandshake is the handler side of SendUffdHandshake: it reads
// one message from conn and returns the regions and the received fd.
func ReceiveUffdHandshake(conn *net.UnixConn) ([]GuestRegionUffdMapping, int, error) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, -1, fmt.Errorf("read uffd handshake: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, -1, fmt.Errorf("parse control message: %w", err)
	}
	fd := -1
	for i := range msgs {
		fds, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			continue
		}
		for _, f := range fds {
			if fd == -1 {
				fd = f
			} else {
				unix.Close(f)
			}
		}
	}
	if fd == -1 {
		return nil, -1, errors.New("uffd handshake carried no file descriptor")
	}
	var regions []GuestRegionUffdMapping
	if err := json.Unmarshal(buf[:n], &regions); err != nil {
		unix.Close(fd)
		return nil, -1, fmt.Errorf("decode uffd regions: %w", err)
	}
	return regions, fd, nil
}

func ioctlPtr(fd int, req uintptr, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

// mincore reports which pages of b are resident; Firecracker uses it to
// pick the pages of a Diff snapshot when dirty-page tracking is off.
func mincore(b []byte, pageSize int) ([]byte, error) {
	if len(b) == 0 {
		return nil, nil
	}
	vec := make([]byte, (len(b)+pageSize-1)/pageSize)
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return nil, fmt.Errorf("mincore: %w", errno)
	}
	return vec, nil
}

func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }
