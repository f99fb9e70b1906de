package vsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Addr is an AF_VSOCK address.
type Addr struct {
	CID  uint32
	Port uint32
}

// Network returns "vsock".
func (a *Addr) Network() string { return "vsock" }

func (a *Addr) String() string {
	if a.CID == unix.VMADDR_CID_ANY {
		return fmt.Sprintf("vsock:any:%d", a.Port)
	}
	return fmt.Sprintf("vsock:%d:%d", a.CID, a.Port)
}

// Listener accepts AF_VSOCK stream connections. Its descriptor is
// non-blocking and registered with the Go runtime's poller (through
// os.File), so Accept parks a goroutine instead of a thread and Close
// wakes a pending Accept.
type Listener struct {
	f      *os.File
	rc     syscall.RawConn
	addr   *Addr
	closed atomic.Bool
}

// Listen binds port on every CID of this machine (VMADDR_CID_ANY), as a
// guest agent does.
func Listen(port uint32) (*Listener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock: socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock: bind port %d: %w", port, err)
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock: listen port %d: %w", port, err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("vsock:%d", port))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vsock: %w", err)
	}
	return &Listener{f: f, rc: rc, addr: &Addr{CID: unix.VMADDR_CID_ANY, Port: port}}, nil
}

// Accept waits for the next connection.
func (l *Listener) Accept() (net.Conn, error) {
	var (
		nfd  int
		sa   unix.Sockaddr
		aerr error
	)
	err := l.rc.Read(func(fd uintptr) bool {
		nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		return !errors.Is(aerr, unix.EAGAIN)
	})
	if err != nil {
		if l.closed.Load() {
			// The poller reports its own "use of closed file" error.
			return nil, net.ErrClosed
		}
		return nil, fmt.Errorf("vsock: accept: %w", err)
	}
	if aerr != nil {
		return nil, fmt.Errorf("vsock: accept: %w", aerr)
	}
	remote := &Addr{}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		remote.CID, remote.Port = vm.CID, vm.Port
	}
	return newFileConn(nfd, l.addr, remote)
}

// Close stops listening; a blocked Accept returns net.ErrClosed.
func (l *Listener) Close() error {
	l.closed.Store(true)
	return l.f.Close()
}

// Addr returns the bound address.
func (l *Listener) Addr() net.Addr { return l.addr }

// fileConn is a connected AF_VSOCK socket.
type fileConn struct {
	f             *os.File
	rc            syscall.RawConn
	local, remote *Addr
}

func newFileConn(fd int, local, remote *Addr) (*fileConn, error) {
	f := os.NewFile(uintptr(fd), "vsock-conn")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vsock: %w", err)
	}
	return &fileConn{f: f, rc: rc, local: local, remote: remote}, nil
}

func (c *fileConn) Read(b []byte) (int, error)         { return c.f.Read(b) }
func (c *fileConn) Write(b []byte) (int, error)        { return c.f.Write(b) }
func (c *fileConn) Close() error                       { return c.f.Close() }
func (c *fileConn) LocalAddr() net.Addr                { return c.local }
func (c *fileConn) RemoteAddr() net.Addr               { return c.remote }
func (c *fileConn) SetDeadline(t time.Time) error      { return c.f.SetDeadline(t) }
func (c *fileConn) SetReadDeadline(t time.Time) error  { return c.f.SetReadDeadline(t) }
func (c *fileConn) SetWriteDeadline(t time.Time) error { return c.f.SetWriteDeadline(t) }

// CloseWrite shuts down the sending side, so the peer reads EOF.
func (c *fileConn) CloseWrite() error {
	var serr error
	if err := c.rc.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_WR) }); err != nil {
		return err
	}
	return serr
}
