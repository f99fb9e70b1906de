package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hearth-vm/hearth/agent"
)

// LinuxSystem performs power, clock and entropy actions on this kernel.
type LinuxSystem struct {
	// PowerFunc, if set, performs power actions (PID 1 hands them to its
	// init loop). Otherwise the poweroff/reboot commands of the guest's
	// own init are run.
	PowerFunc func(action string) error
}

// Power implements System.
func (l *LinuxSystem) Power(action string) error {
	if l.PowerFunc != nil {
		return l.PowerFunc(action)
	}
	name := "poweroff"
	if action == agent.Reboot {
		name = "reboot"
	}
	out, err := exec.Command(name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, out)
	}
	return nil
}

// SetClock implements System with clock_settime(CLOCK_REALTIME).
func (l *LinuxSystem) SetClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("clock_settime: %w", err)
	}
	return nil
}

// SetHostname implements System.
func (l *LinuxSystem) SetHostname(name string) error {
	return unix.Sethostname([]byte(name))
}

// AddEntropy implements System. RNDADDENTROPY both mixes and credits the
// bytes but needs CAP_SYS_ADMIN; without it, writing to /dev/urandom still
// mixes them in (uncredited), which is what matters after a restore: the
// clones' pools diverge.
func (l *LinuxSystem) AddEntropy(b []byte) (bool, error) {
	return AddEntropy("/dev/urandom", b)
}

// AddEntropy feeds b to the random device at dev (see LinuxSystem).
func AddEntropy(dev string, b []byte) (bool, error) {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b)+3)
	binary.NativeEndian.PutUint32(info[0:4], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(info[4:8], uint32(len(b)))
	copy(info[8:], b)
	rc, err := f.SyscallConn()
	if err != nil {
		return false, err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0])))
		if errno != 0 {
			ierr = errno
		}
	}); err != nil {
		return false, err
	}
	if ierr == nil {
		return true, nil
	}
	if !errors.Is(ierr, unix.EPERM) && !errors.Is(ierr, unix.ENOTTY) && !errors.Is(ierr, unix.EINVAL) {
		return false, fmt.Errorf("RNDADDENTROPY: %w", ierr)
	}
	if _, err := f.Write(b); err != nil {
		return false, fmt.Errorf("write %s: %w", dev, err)
	}
	return false, nil
}

// openPTY opens a pseudo-terminal pair (master for the agent, slave for
// the process).
func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	rc, err := m.SyscallConn()
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	var (
		sfd  = -1
		ptn  int
		cerr error
	)
	_ = rc.Control(func(fd uintptr) {
		if cerr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); cerr != nil {
			return
		}
		// TIOCGPTPEER opens the slave without a path lookup, immune to
		// a /dev/pts that is not the master's instance.
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
		if errno == 0 {
			sfd = int(r)
			return
		}
		ptn, cerr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN)
	})
	if cerr != nil {
		m.Close()
		return nil, nil, cerr
	}
	if sfd >= 0 {
		return m, os.NewFile(uintptr(sfd), "/dev/pts/?"), nil
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(ptn), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, s, nil
}

func setWinsize(f *os.File, rows, cols uint16) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	}); err != nil {
		return err
	}
	return ierr
}

// SimulatedSystem stands in for the kernel when the agent runs as a host
// process playing a guest (under the Firecracker simulator, or in
// tests): it logs power, clock and entropy requests instead of acting on
// the host.
type SimulatedSystem struct {
	Log *slog.Logger
	// PowerFunc, if set, performs power actions (a supervised agent hands
	// them to its init, which is safe inside a PID namespace).
	PowerFunc func(action string) error
}

// Power implements System.
func (s *SimulatedSystem) Power(action string) error {
	if s.PowerFunc != nil {
		return s.PowerFunc(action)
	}
	s.log().Info("agent: simulated power action", "action", action)
	return nil
}

// SetClock implements System without touching the host's clock.
func (s *SimulatedSystem) SetClock(t time.Time) error {
	s.log().Info("agent: simulated clock set", "time", t)
	return nil
}

// SetHostname implements System without touching the host's name.
func (s *SimulatedSystem) SetHostname(name string) error {
	s.log().Info("agent: simulated hostname set", "hostname", name)
	return nil
}

// AddEntropy implements System; nothing is credited.
func (s *SimulatedSystem) AddEntropy(b []byte) (bool, error) {
	s.log().Debug("agent: simulated entropy", "bytes", len(b))
	return false, nil
}

func (s *SimulatedSystem) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}
