//go:build linux

package uffd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The socket side uses raw fds rather than package net: the server polls
// the connection together with the userfaultfd, the VMM's pidfd and its
// stop eventfd in one poll(2), which the net poller cannot join.

// maxHandshake bounds the region message; Firecracker's is a few hundred
// bytes.
const maxHandshake = 64 << 10

// listen binds a unix stream socket at path, replacing a stale socket
// left by a crashed server (but never a file of another kind).
func listen(path string) (int, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return -1, fmt.Errorf("listen on %s: a non-socket file is in the way", path)
		}
		if err := os.Remove(path); err != nil {
			return -1, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", path, err)
	}
	// Only the VMM (the same user, or a jailed one the runtime chowns the
	// socket to) may connect.
	if err := os.Chmod(path, 0o600); err != nil {
		unix.Close(fd)
		os.Remove(path)
		return -1, fmt.Errorf("chmod %s: %w", path, err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		unix.Close(fd)
		os.Remove(path)
		return -1, fmt.Errorf("listen on %s: %w", path, err)
	}
	return fd, nil
}

var (
	errStopped  = errors.New("stopped")
	errVMMGone  = errors.New("the VMM exited")
	errDeadline = errors.New("deadline")
)

// waitReadable polls fd until it is readable, the deadline passes, stopfd
// is signalled or (when watchfd >= 0) watchfd becomes readable (the VMM's
// pidfd: the VMM exited).
func waitReadable(fd, stopfd, watchfd int, deadline time.Time) error {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(stopfd), Events: unix.POLLIN}}
	if watchfd >= 0 {
		fds = append(fds, unix.PollFd{Fd: int32(watchfd), Events: unix.POLLIN})
	}
	for {
		ms := time.Until(deadline).Milliseconds()
		if ms <= 0 {
			return errDeadline
		}
		n, err := unix.Poll(fds, int(ms))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		if n == 0 {
			continue
		}
		if fds[1].Revents != 0 {
			return errStopped
		}
		if len(fds) > 2 && fds[2].Revents != 0 {
			return errVMMGone
		}
		if fds[0].Revents != 0 {
			return nil
		}
	}
}

// acceptOne waits for the VMM's connection.
func acceptOne(lfd, stopfd, vmmfd int, deadline time.Time) (int, error) {
	for {
		if err := waitReadable(lfd, stopfd, vmmfd, deadline); err != nil {
			return -1, err
		}
		cfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		if err == unix.EAGAIN || err == unix.EINTR || err == unix.ECONNABORTED {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("accept: %w", err)
		}
		return cfd, nil
	}
}

// receiveHandshake reads the VMM's one message: the region JSON as data
// with the userfaultfd in SCM_RIGHTS. Firecracker sends it with a single
// sendmsg and then keeps the connection open without ever writing again,
// so completeness is decided by the JSON itself: reading stops once the
// bytes hold one complete value (or cannot become one), or at EOF.
func receiveHandshake(cfd, stopfd int, deadline time.Time) (data []byte, uffd int, err error) {
	uffd = -1
	defer func() {
		if err != nil && uffd >= 0 {
			unix.Close(uffd)
			uffd = -1
		}
	}()
	buf := make([]byte, maxHandshake+1)
	oob := make([]byte, unix.CmsgSpace(8*4))
	var got []byte
	for {
		if err := waitReadable(cfd, stopfd, -1, deadline); err != nil {
			if err == errDeadline {
				return nil, -1, fmt.Errorf("no complete region message within the handshake timeout (%d bytes received)", len(got))
			}
			return nil, -1, err
		}
		n, oobn, flags, _, err := unix.Recvmsg(cfd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, -1, fmt.Errorf("recvmsg: %w", err)
		}
		if oobn > 0 {
			fds, perr := parseRights(oob[:oobn])
			for _, fd := range fds {
				if uffd < 0 {
					uffd = fd
				} else {
					unix.Close(fd) // only one fd is expected; never leak extras
				}
			}
			if perr != nil {
				return nil, -1, perr
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return nil, -1, errors.New("control message truncated (too many file descriptors sent)")
		}
		if n == 0 { // EOF
			if len(got) == 0 {
				return nil, -1, errors.New("the VMM closed the connection without sending the region message")
			}
			break
		}
		got = append(got, buf[:n]...)
		if len(got) > maxHandshake {
			return nil, -1, fmt.Errorf("region message exceeds %d bytes", maxHandshake)
		}
		if jsonComplete(got) {
			break
		}
	}
	if uffd < 0 {
		return got, -1, errors.New("the message carried no userfaultfd (SCM_RIGHTS file descriptor)")
	}
	return got, uffd, nil
}

// jsonComplete reports whether b holds a whole JSON value or is already
// malformed; false means a well-formed prefix that more bytes may
// complete.
func jsonComplete(b []byte) bool {
	var v json.RawMessage
	err := json.NewDecoder(bytes.NewReader(b)).Decode(&v)
	return !(errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF))
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var fds []int
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		f, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return fds, fmt.Errorf("parse SCM_RIGHTS: %w", err)
		}
		fds = append(fds, f...)
	}
	return fds, nil
}
