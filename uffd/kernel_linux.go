//go:build linux

package uffd

// The userfaultfd ABI from <linux/userfaultfd.h>. golang.org/x/sys/unix has
// no UFFDIO_* definitions, so the ioctl numbers and struct layouts are
// spelled out here (amd64 and arm64 share them: all fields are 64-bit).

import (
	"encoding/binary"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// _IOWR/_IOR(0xAA, nr, struct) with the kernel's struct sizes.
	ioctlAPI        = 0xC018AA3F // UFFDIO_API, struct uffdio_api (24 bytes)
	ioctlRegister   = 0xC020AA00 // UFFDIO_REGISTER, struct uffdio_register (32 bytes)
	ioctlUnregister = 0x8010AA01 // UFFDIO_UNREGISTER, struct uffdio_range (16 bytes)
	ioctlWake       = 0x8010AA02 // UFFDIO_WAKE, struct uffdio_range
	ioctlCopy       = 0xC028AA03 // UFFDIO_COPY, struct uffdio_copy (40 bytes)
	ioctlZeropage   = 0xC020AA04 // UFFDIO_ZEROPAGE, struct uffdio_zeropage (32 bytes)

	// Event codes of struct uffd_msg.
	eventPagefault = 0x12
	eventFork      = 0x13
	eventRemap     = 0x14
	eventRemove    = 0x15
	eventUnmap     = 0x16

	// msgSize is sizeof(struct uffd_msg): an 8-byte header and a 24-byte
	// union of event arguments.
	msgSize = 32
)

// The UFFD_FEATURE_* bits a VMM may ask for in UFFDIO_API; the server
// itself never calls UFFDIO_API (the VMM did), but the test harness and
// documentation refer to them.
const (
	FeatureEventFork   = 1 << 1
	FeatureEventRemap  = 1 << 2
	FeatureEventRemove = 1 << 3
	FeatureEventUnmap  = 1 << 6
)

func ioctl(fd int, req uintptr, arg unsafe.Pointer) unix.Errno {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	return errno
}

// uffdioCopy is struct uffdio_copy.
type uffdioCopy struct {
	dst, src, len, mode uint64
	copied              int64
}

// uffdioZeropage is struct uffdio_zeropage.
type uffdioZeropage struct {
	start, len, mode uint64
	zeroed           int64
}

// copyPages runs UFFDIO_COPY of length bytes from src (an address in this
// process) to dst (an address in the VMM) and wakes the threads waiting on
// the range. It returns the bytes copied before an error: the kernel stops
// at the first page it cannot fill (EEXIST for a present page) and then
// reports the partial progress with EAGAIN.
func copyPages(fd int, dst, src, length uint64) (uint64, unix.Errno) {
	c := uffdioCopy{dst: dst, src: src, len: length}
	errno := ioctl(fd, ioctlCopy, unsafe.Pointer(&c))
	if c.copied > 0 {
		return uint64(c.copied), errno
	}
	return 0, errno
}

// zeroPages runs UFFDIO_ZEROPAGE on [dst, dst+length), with the same
// partial-progress convention as copyPages. Hugetlb ranges do not support
// it; the server copies from a zeroed buffer there instead.
func zeroPages(fd int, dst, length uint64) (uint64, unix.Errno) {
	z := uffdioZeropage{start: dst, len: length}
	errno := ioctl(fd, ioctlZeropage, unsafe.Pointer(&z))
	if z.zeroed > 0 {
		return uint64(z.zeroed), errno
	}
	return 0, errno
}

// wake wakes threads blocked on faults in [addr, addr+length).
func wake(fd int, addr, length uint64) unix.Errno {
	r := [2]uint64{addr, length}
	return ioctl(fd, ioctlWake, unsafe.Pointer(&r[0]))
}

// unregister drops [addr, addr+length) from the userfaultfd. The ioctl
// acts on the VMM's address space (the one the fd was created in), so a
// server can unregister the VMM's ranges; blocked faulters are woken and
// see ordinary anonymous memory afterwards.
func unregister(fd int, addr, length uint64) unix.Errno {
	r := [2]uint64{addr, length}
	return ioctl(fd, ioctlUnregister, unsafe.Pointer(&r[0]))
}

// msg is the decoded part of a struct uffd_msg.
type msg struct {
	event uint8
	a, b  uint64 // pagefault: flags, address; remove/unmap: start, end; remap: from, to
	c     uint64 // remap: len
	fd    int    // fork: the child's userfaultfd, already installed in this process
}

func decodeMsg(b []byte) msg {
	le := binary.LittleEndian
	m := msg{event: b[0], fd: -1}
	switch m.event {
	case eventPagefault, eventRemove, eventUnmap:
		m.a, m.b = le.Uint64(b[8:]), le.Uint64(b[16:])
	case eventRemap:
		m.a, m.b, m.c = le.Uint64(b[8:]), le.Uint64(b[16:]), le.Uint64(b[24:])
	case eventFork:
		m.fd = int(le.Uint32(b[8:]))
	}
	return m
}
