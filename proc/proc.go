//go:build linux

package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotFound means no process with the given identity exists.
var ErrNotFound = errors.New("process not found")

// Identity names one process across pid reuse.
type Identity struct {
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
}

// StartTimeOf returns the start time of pid in clock ticks after boot.
func StartTimeOf(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("pid %d: %w", pid, ErrNotFound)
		}
		return 0, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	return parseStartTime(b)
}

// parseStartTime extracts field 22 of a /proc/<pid>/stat line. The command
// name (field 2) may contain spaces and parentheses, so parsing starts
// after its last ')'.
func parseStartTime(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat: no ')'")
	}
	fields := bytes.Fields(stat[i+1:])
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 {
		return 0, fmt.Errorf("malformed /proc stat: %d fields after comm", len(fields))
	}
	v, err := strconv.ParseUint(string(fields[19]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("malformed /proc stat start time: %w", err)
	}
	return v, nil
}

// Lookup returns the identity of the running process pid.
func Lookup(pid int) (Identity, error) {
	st, err := StartTimeOf(pid)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Pid: pid, StartTime: st}, nil
}

// Alive reports whether the process named by id still runs (a zombie
// counts as gone).
func (id Identity) Alive() bool {
	if id.Pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(id.Pid) + "/stat")
	if err != nil {
		return false
	}
	st, err := parseStartTime(b)
	if err != nil || st != id.StartTime {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	f := bytes.Fields(b[i+1:])
	return len(f) > 0 && f[0][0] != 'Z' && f[0][0] != 'X'
}

// Exit describes how a process ended.
type Exit struct {
	Code   int    // exit code; -1 when killed by a signal or unknown
	Signal string // the terminating signal, if any
	// Known is false for adopted processes, whose exit status only their
	// parent can collect.
	Known bool
}

func (e Exit) String() string {
	switch {
	case !e.Known:
		return "exited (status unknown)"
	case e.Signal != "":
		return "killed by " + e.Signal
	default:
		return "exit code " + strconv.Itoa(e.Code)
	}
}

// Process is a supervised process.
type Process struct {
	id    Identity
	pidfd int
	cmd   *exec.Cmd // nil for adopted processes

	done       chan struct{}
	stopPoll   int           // eventfd that wakes the pidfd poller of adopted processes
	pollerDone chan struct{} // closed when the poller of an adopted process returns
	mu         sync.Mutex
	exit       Exit
	closed     bool
	// fdsClosed: pidfd and stopPoll are closed. It is set, under mu, once
	// the process has exited (its pidfd is of no more use) or has been
	// released; Signal checks it under mu, so it never uses a descriptor
	// number that may already name another file.
	fdsClosed bool
}

// StartSpec describes a process to start.
type StartSpec struct {
	Path string
	Args []string // without argv[0]
	Env  []string // full environment; nil inherits the caller's
	Dir  string
	// Output receives stdout and stderr; empty means /dev/null. It is
	// opened for appending and only the child keeps it open.
	Output string
	// Files are extra open files passed as fds 3, 4, …
	Files []*os.File
	// SysProcAttr additions; Setsid and PidFD are always set.
	Cloneflags uintptr
}

// Start starts a detached process: own session, stdin /dev/null, output to
// a file. The caller must eventually Kill or Wait-for (Done) it.
func Start(s StartSpec) (*Process, error) {
	var out *os.File
	var err error
	if s.Output != "" {
		out, err = os.OpenFile(s.Output, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	} else {
		out, err = os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open output: %w", err)
	}
	defer out.Close()

	pidfd := -1
	cmd := exec.Command(s.Path, s.Args...)
	cmd.Env = s.Env
	cmd.Dir = s.Dir
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.ExtraFiles = s.Files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, PidFD: &pidfd, Cloneflags: s.Cloneflags}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", s.Path, err)
	}
	st, err := StartTimeOf(cmd.Process.Pid)
	if err != nil {
		// The child died before we could read its stat; it is a zombie we
		// still reap below, so its identity is known well enough.
		st = 0
	}
	p := &Process{
		id:       Identity{Pid: cmd.Process.Pid, StartTime: st},
		pidfd:    pidfd,
		cmd:      cmd,
		done:     make(chan struct{}),
		stopPoll: -1,
	}
	go p.reapChild()
	return p, nil
}

func (p *Process) reapChild() {
	err := p.cmd.Wait()
	e := Exit{Code: -1, Known: true}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = unix.SignalName(ws.Signal())
		} else {
			e.Code = ee.ExitCode()
		}
	} else if err == nil {
		e.Code = 0
	}
	p.finish(e)
}

// Adopt attaches to a running process that is not our child. The identity
// is re-checked after the pidfd is open, so the pidfd provably refers to
// the recorded process and not to one that reused its pid.
func Adopt(id Identity) (*Process, error) {
	fd, err := unix.PidfdOpen(id.Pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("pid %d: %w", id.Pid, ErrNotFound)
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", id.Pid, err)
	}
	if !id.Alive() {
		unix.Close(fd)
		return nil, fmt.Errorf("pid %d with start time %d: %w", id.Pid, id.StartTime, ErrNotFound)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	p := &Process{id: id, pidfd: fd, done: make(chan struct{}), stopPoll: efd, pollerDone: make(chan struct{})}
	go p.pollPidfd()
	return p, nil
}

func (p *Process) pollPidfd() {
	defer close(p.pollerDone)
	fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}, {Fd: int32(p.stopPoll), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil || fds[0].Revents != 0 {
			p.finish(Exit{Code: -1})
			return
		}
		if fds[1].Revents != 0 {
			return // Release: stop watching without declaring an exit
		}
	}
}

// finish records the exit and frees the descriptors: a runtime that
// creates and destroys VMs all day must not keep a pidfd per dead VMM.
func (p *Process) finish(e Exit) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
	default:
		p.exit = e
		close(p.done)
	}
	p.closeFDsLocked()
}

func (p *Process) closeFDsLocked() {
	if p.fdsClosed {
		return
	}
	p.fdsClosed = true
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
	}
	if p.stopPoll >= 0 {
		unix.Close(p.stopPoll)
	}
}

// Identity returns the process identity.
func (p *Process) Identity() Identity { return p.id }

// Pid returns the process id.
func (p *Process) Pid() int { return p.id.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exit returns the exit status; valid once Done is closed.
func (p *Process) Exit() Exit {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit
}

// Signal sends sig through the pidfd. Signalling an exited process is not
// an error.
func (p *Process) Signal(sig unix.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fdsClosed {
		return nil
	}
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %s to pid %d: %w", unix.SignalName(sig), p.id.Pid, err)
	}
	return nil
}

// Kill sends SIGKILL and waits until the process is gone. It is
// idempotent.
func (p *Process) Kill() error {
	if err := p.Signal(unix.SIGKILL); err != nil {
		return err
	}
	<-p.done
	return nil
}

// Stop runs the signal ladder: SIGTERM, wait up to grace, then SIGKILL.
// It returns once the process is gone.
func (p *Process) Stop(grace time.Duration) error {
	if err := p.Signal(unix.SIGTERM); err != nil {
		return err
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	return p.Kill()
}

// Wait blocks until the process exits or ctx ends.
func (p *Process) Wait(ctx context.Context) (Exit, error) {
	select {
	case <-p.done:
		return p.Exit(), nil
	case <-ctx.Done():
		return Exit{}, ctx.Err()
	}
}

// Release stops watching the process without touching it and frees the
// pidfd; the process keeps running. Used when the runtime closes while
// VMs stay up. No other method may be called after Release.
func (p *Process) Release() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	if p.cmd != nil || p.fdsClosed {
		// Our own child keeps being reaped by its goroutine (so it never
		// lingers as a zombie), which frees its pidfd once it has exited;
		// an adopted process that exited already freed its descriptors.
		p.mu.Unlock()
		return
	}
	unix.Write(p.stopPoll, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	p.mu.Unlock()
	<-p.pollerDone
	p.mu.Lock()
	p.closeFDsLocked()
	p.mu.Unlock()
}
