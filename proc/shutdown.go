//go:build linux

package proc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Outcome says which rung of the shutdown ladder ended a process.
type Outcome string

// Outcomes of Shutdown.
const (
	// OutcomeAlreadyExited: the process was gone before anything was sent
	// (or its identity no longer matched a live process, so nothing was).
	OutcomeAlreadyExited Outcome = "already exited"
	// OutcomeGraceful: it exited after the backend's graceful request
	// (Ctrl+Alt+Del, system_powerdown) and before any signal.
	OutcomeGraceful Outcome = "graceful"
	// OutcomeTerminated: it exited after SIGTERM.
	OutcomeTerminated Outcome = "terminated"
	// OutcomeKilled: it had to be SIGKILLed.
	OutcomeKilled Outcome = "killed"
)

// Defaults of ShutdownOptions.
const (
	DefaultGracefulWait = 10 * time.Second
	DefaultTermWait     = 2 * time.Second
	DefaultKillWait     = 10 * time.Second
)

// ErrStillRunning means a process survived SIGKILL for KillWait (stuck in
// uninterruptible sleep, typically on a hung disk or FUSE mount).
var ErrStillRunning = errors.New("process still running after SIGKILL")

// ShutdownOptions configures the ladder. Zero durations take the
// defaults; a negative GracefulWait or TermWait skips that wait (the next
// rung follows at once).
type ShutdownOptions struct {
	// GracefulWait is how long the process gets to exit after the
	// graceful request. It also bounds the request itself.
	GracefulWait time.Duration
	// TermWait is the wait between SIGTERM and SIGKILL.
	TermWait time.Duration
	// KillWait bounds the wait after SIGKILL.
	KillWait time.Duration
}

func (o ShutdownOptions) withDefaults() ShutdownOptions {
	if o.GracefulWait == 0 {
		o.GracefulWait = DefaultGracefulWait
	}
	if o.TermWait == 0 {
		o.TermWait = DefaultTermWait
	}
	if o.KillWait <= 0 {
		o.KillWait = DefaultKillWait
	}
	return o
}

// ShutdownResult reports how a shutdown went.
type ShutdownResult struct {
	Outcome Outcome
	// Exit is the process's exit status (Known is false for adopted
	// processes and for OutcomeAlreadyExited via ShutdownIdentity).
	Exit Exit
	// GracefulErr is the error of the graceful request, if it failed
	// (the ladder then went straight to SIGTERM).
	GracefulErr error
	// Time spent on each rung and in total. A rung not reached is 0.
	Graceful, Term, Kill, Total time.Duration
}

func (r ShutdownResult) String() string {
	s := fmt.Sprintf("%s after %v (%s)", r.Outcome, r.Total.Round(time.Millisecond), r.Exit)
	if r.GracefulErr != nil {
		s += "; graceful request failed: " + r.GracefulErr.Error()
	}
	return s
}

// Shutdown stops p through the ladder: graceful(ctx) (the backend's
// request to the guest; nil skips it) → wait GracefulWait → SIGTERM →
// wait TermWait → SIGKILL → wait until the process is gone (and, for our
// own child, reaped). Every signal goes through p's pidfd, so a recycled
// pid is never hit.
//
// A graceful request that fails (API not answering, guest not booted)
// is recorded in the result and the ladder moves on to SIGTERM at once.
// When ctx ends, the remaining waits are cut short and the process is
// killed: Shutdown never returns with the process half-stopped. The error
// is non-nil only when a signal could not be sent or the process
// survived SIGKILL for KillWait.
func Shutdown(ctx context.Context, p *Process, graceful func(context.Context) error, opts ShutdownOptions) (ShutdownResult, error) {
	opts = opts.withDefaults()
	start := time.Now()
	var res ShutdownResult
	finish := func(o Outcome) (ShutdownResult, error) {
		res.Outcome = o
		res.Exit = p.Exit()
		res.Total = time.Since(start)
		return res, nil
	}
	if exited(p) {
		return finish(OutcomeAlreadyExited)
	}

	if graceful != nil && opts.GracefulWait > 0 {
		t0 := time.Now()
		gctx, cancel := context.WithTimeout(ctx, opts.GracefulWait)
		err := graceful(gctx)
		if err != nil {
			res.GracefulErr = err
		} else if waitExit(gctx, p, opts.GracefulWait-time.Since(t0)) {
			cancel()
			res.Graceful = time.Since(t0)
			return finish(OutcomeGraceful)
		}
		cancel()
		res.Graceful = time.Since(t0)
		if exited(p) {
			// It exited on its own while the request failed: still the
			// guest's doing, not a signal's.
			return finish(OutcomeGraceful)
		}
	}

	termSent := false
	if opts.TermWait > 0 && ctx.Err() == nil {
		t0 := time.Now()
		if err := p.Signal(unix.SIGTERM); err != nil {
			return res, err
		}
		termSent = true
		ok := waitExit(ctx, p, opts.TermWait)
		res.Term = time.Since(t0)
		if ok {
			return finish(OutcomeTerminated)
		}
	}

	t0 := time.Now()
	if exited(p) {
		if termSent {
			return finish(OutcomeTerminated)
		}
		return finish(OutcomeGraceful)
	}
	if err := p.Signal(unix.SIGKILL); err != nil {
		return res, err
	}
	// The kill wait ignores ctx: after SIGKILL the only useful thing left
	// is to see the process go.
	ok := waitExit(context.Background(), p, opts.KillWait)
	res.Kill = time.Since(t0)
	if !ok {
		res.Outcome = OutcomeKilled
		res.Total = time.Since(start)
		return res, fmt.Errorf("pid %d: %w for %v", p.Pid(), ErrStillRunning, opts.KillWait)
	}
	return finish(OutcomeKilled)
}

// ShutdownIdentity runs the ladder on the process recorded as id (for
// example a VMM known only from the store). When no live process has that
// pid and start time, nothing is signalled and the outcome is
// OutcomeAlreadyExited: a pid reused by an unrelated process is never
// touched, because the pidfd is opened and the identity re-checked
// before the first signal.
func ShutdownIdentity(ctx context.Context, id Identity, graceful func(context.Context) error, opts ShutdownOptions) (ShutdownResult, error) {
	start := time.Now()
	p, err := Adopt(id)
	if errors.Is(err, ErrNotFound) {
		return ShutdownResult{Outcome: OutcomeAlreadyExited, Exit: Exit{Code: -1}, Total: time.Since(start)}, nil
	}
	if err != nil {
		return ShutdownResult{}, err
	}
	defer p.Release()
	res, err := Shutdown(ctx, p, graceful, opts)
	res.Total = time.Since(start)
	return res, err
}

func exited(p *Process) bool {
	select {
	case <-p.Done():
		return true
	default:
		return false
	}
}

// waitExit waits up to d for p to exit; it reports whether it did.
func waitExit(ctx context.Context, p *Process, d time.Duration) bool {
	if d <= 0 {
		return exited(p)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.Done():
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return exited(p)
}
