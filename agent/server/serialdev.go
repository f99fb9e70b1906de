package server

import (
	"context"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// serialDevice is an open virtio-serial port device. The driver supports
// poll, so the file's deadlines work (they interrupt a session without
// closing the port), and it signals the owner of an O_ASYNC port with
// SIGIO when the host opens or closes its end (and when data arrives),
// which is how WaitHost learns that a host connected.
type serialDevice struct {
	*os.File
}

// sigio delivers SIGIO to WaitHost; one channel for the process, since
// the signal does not say which port it is for (a spurious wake-up only
// costs one more look at the port).
var sigio struct {
	once sync.Once
	ch   chan os.Signal
}

// WaitHost returns when the host may have connected, ctx ends or max
// passed. The port raises SIGIO only while it waits: during a session
// every arriving buffer would raise one.
func (d *serialDevice) WaitHost(ctx context.Context, max time.Duration) {
	sigio.once.Do(func() {
		sigio.ch = make(chan os.Signal, 1)
		signal.Notify(sigio.ch, syscall.SIGIO)
	})
	select {
	case <-sigio.ch:
	default:
	}
	if d.setAsync(true) == nil {
		defer d.setAsync(false)
		// A host that connected before the port was armed raised no
		// signal; the driver reports POLLHUP only while the host is away.
		if d.hostConnected() {
			return
		}
	}
	t := time.NewTimer(max)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-sigio.ch:
	}
}

func (d *serialDevice) setAsync(on bool) error {
	rc, err := d.SyscallConn()
	if err != nil {
		return err
	}
	cerr := rc.Control(func(fd uintptr) {
		if on {
			if _, err = unix.FcntlInt(fd, unix.F_SETOWN, os.Getpid()); err != nil {
				return
			}
		}
		var fl int
		if fl, err = unix.FcntlInt(fd, unix.F_GETFL, 0); err != nil {
			return
		}
		if on {
			fl |= unix.O_ASYNC
		} else {
			fl &^= unix.O_ASYNC
		}
		_, err = unix.FcntlInt(fd, unix.F_SETFL, fl)
	})
	if cerr != nil {
		return cerr
	}
	return err
}

func (d *serialDevice) hostConnected() bool {
	rc, err := d.SyscallConn()
	if err != nil {
		return false
	}
	connected := false
	_ = rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		connected = err == nil && n >= 0 && fds[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) == 0
	})
	return connected
}
