//go:build linux

package uffd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hearth-vm/hearth/proc"
)

// LaunchSpec describes a server process to start.
type LaunchSpec struct {
	// Options are passed as flags; Logger is ignored (the process logs to
	// LogFile). StatusFile is required: readiness is read from it.
	Options
	// Binary is the executable; empty means this one (os.Executable).
	Binary string
	// Args come before the server flags; nil means {"_uffd"} (hearth's
	// hidden subcommand). Tests that re-execute their own binary pass an
	// empty, non-nil slice.
	Args []string
	// Env is the process environment; nil inherits this one.
	Env []string
	// LogFile receives the server's log (stdout and stderr), appended;
	// empty discards it.
	LogFile string
	// ReadyTimeout bounds the wait for the socket to listen (default 10 s).
	ReadyTimeout time.Duration
}

// Launch starts a page-fault server as a detached process (own session,
// output to LogFile), so it survives the daemon that started it, and
// returns once its socket listens: the VMM may connect right away. If the
// server fails to start, the error carries the reason from its status file
// and the tail of its log, and no process is left running.
//
// The caller owns the process: see the package documentation for what to
// do when it exits while the VMM still runs.
func Launch(ctx context.Context, spec LaunchSpec) (*proc.Process, error) {
	if spec.Socket == "" || spec.MemFile == "" || spec.StatusFile == "" {
		return nil, errors.New("uffd launch: Socket, MemFile and StatusFile are required")
	}
	bin := spec.Binary
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("uffd launch: find the hearth binary: %w", err)
		}
		bin = exe
	}
	args := spec.Args
	if args == nil {
		args = []string{Command}
	}
	args = append(append([]string(nil), args...), spec.Options.Args()...)
	// A status file from an earlier server must not pass for this one's.
	if err := os.Remove(spec.StatusFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("uffd launch: remove old status file: %w", err)
	}
	p, err := proc.Start(proc.StartSpec{Path: bin, Args: args, Env: spec.Env, Output: spec.LogFile})
	if err != nil {
		return nil, fmt.Errorf("uffd launch: %w", err)
	}
	timeout := spec.ReadyTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	wait := time.Millisecond
	for {
		if st, err := ReadStatus(spec.StatusFile); err == nil && st.Pid == p.Pid() {
			switch st.State {
			case StateListening, StateServing:
				return p, nil
			}
		}
		select {
		case <-p.Done():
			return nil, fmt.Errorf("uffd launch: server exited before listening (%s): %s", p.Exit(), failureReason(spec))
		case <-ctx.Done():
			p.Kill()
			return nil, fmt.Errorf("uffd launch: %w", ctx.Err())
		case <-deadline.C:
			p.Kill()
			return nil, fmt.Errorf("uffd launch: server not listening after %s: %s", timeout, failureReason(spec))
		case <-time.After(wait):
			wait = min(2*wait, 50*time.Millisecond)
		}
	}
}

// failureReason is the status file's error, else the end of the log.
func failureReason(spec LaunchSpec) string {
	if st, err := ReadStatus(spec.StatusFile); err == nil && st.Error != "" {
		return st.Error
	}
	if spec.LogFile != "" {
		if b, err := os.ReadFile(spec.LogFile); err == nil {
			b = bytes.TrimSpace(b)
			if len(b) > 512 {
				b = b[len(b)-512:]
			}
			if len(b) > 0 {
				return string(b)
			}
		}
	}
	return "no status or log"
}
