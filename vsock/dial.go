package vsock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"syscall"
	"time"
)

// Dialer opens one byte stream to a guest service. Implementations retry
// transient failures until ctx or their own deadline ends.
type Dialer interface {
	DialContext(ctx context.Context) (net.Conn, error)
}

// DialFunc adapts a function to Dialer.
type DialFunc func(ctx context.Context) (net.Conn, error)

// DialContext calls f.
func (f DialFunc) DialContext(ctx context.Context) (net.Conn, error) { return f(ctx) }

// Defaults for the dialers. The seed waited 10 s for a connection and
// polled every 50 ms; a doubling backoff reaches a listener that appears
// quickly sooner and polls a slow guest less.
const (
	DefaultTimeout          = 10 * time.Second
	DefaultHandshakeTimeout = 2 * time.Second
	DefaultMinBackoff       = 5 * time.Millisecond
	DefaultMaxBackoff       = 200 * time.Millisecond
)

// Errors an attempt can end with. DialError wraps the last one, so callers
// test them with errors.Is.
var (
	// ErrNotListening: the socket file is missing or nobody accepts on it
	// (the VMM has not created it yet, or has exited).
	ErrNotListening = errors.New("socket not listening")
	// ErrRefused: Firecracker closed the connection without answering the
	// CONNECT, which it does when no guest process listens on the port.
	ErrRefused = errors.New("connection refused by the guest (nothing listening on the vsock port)")
	// ErrHandshakeTimeout: the VMM did not answer the CONNECT in time.
	ErrHandshakeTimeout = errors.New("handshake timed out")
	// ErrBadReply: the VMM answered something other than "OK <port>"; the
	// socket is not a Firecracker vsock device. Not retried.
	ErrBadReply = errors.New("unexpected reply to CONNECT")
)

// DialError reports a dial that gave up.
type DialError struct {
	Path     string
	Port     uint32 // 0 for plain unix sockets
	Attempts int
	Elapsed  time.Duration
	Err      error // the last attempt's error
	Cause    error // why the dialer stopped retrying (context error), if not Err
}

func (e *DialError) Error() string {
	target := e.Path
	if e.Port != 0 {
		target = fmt.Sprintf("%s port %d", e.Path, e.Port)
	}
	if e.Cause != nil {
		return fmt.Sprintf("vsock: dial %s: gave up after %d attempts in %s (%v): %v",
			target, e.Attempts, e.Elapsed.Round(time.Millisecond), e.Cause, e.Err)
	}
	return fmt.Sprintf("vsock: dial %s: %d attempts in %s: %v",
		target, e.Attempts, e.Elapsed.Round(time.Millisecond), e.Err)
}

// Unwrap exposes both the last attempt's error and the context error.
func (e *DialError) Unwrap() []error {
	if e.Cause != nil {
		return []error{e.Err, e.Cause}
	}
	return []error{e.Err}
}

// retryPolicy is shared by the dialers.
type retryPolicy struct {
	timeout    time.Duration
	minBackoff time.Duration
	maxBackoff time.Duration
	log        *slog.Logger
}

func newRetryPolicy(timeout, minB, maxB time.Duration, log *slog.Logger) retryPolicy {
	p := retryPolicy{timeout: timeout, minBackoff: minB, maxBackoff: maxB, log: log}
	if p.timeout <= 0 {
		p.timeout = DefaultTimeout
	}
	if p.minBackoff <= 0 {
		p.minBackoff = DefaultMinBackoff
	}
	if p.maxBackoff < p.minBackoff {
		p.maxBackoff = max(DefaultMaxBackoff, p.minBackoff)
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	return p
}

// retryable says whether an attempt's error may clear up by itself.
func retryable(err error) bool {
	switch {
	case errors.Is(err, ErrNotListening), errors.Is(err, ErrRefused), errors.Is(err, ErrHandshakeTimeout):
		return true
	}
	return false
}

// run calls attempt until it succeeds, fails for good, or time runs out.
func (p retryPolicy) run(ctx context.Context, path string, port uint32, attempt func(ctx context.Context) (net.Conn, error)) (net.Conn, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	backoff := p.minBackoff
	var last error
	for n := 1; ; n++ {
		c, err := attempt(ctx)
		if err == nil {
			if n > 1 {
				p.log.Debug("vsock: connected after retries", "path", path, "port", port, "attempts", n, "elapsed", time.Since(start))
			}
			return c, nil
		}
		last = err
		if !retryable(err) {
			return nil, &DialError{Path: path, Port: port, Attempts: n, Elapsed: time.Since(start), Err: err}
		}
		p.log.Debug("vsock: dial attempt failed, retrying", "path", path, "port", port, "attempt", n, "err", err, "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, &DialError{Path: path, Port: port, Attempts: n, Elapsed: time.Since(start), Err: last, Cause: ctx.Err()}
		case <-t.C:
		}
		backoff = min(backoff*2, p.maxBackoff)
	}
}

// dialUnix connects to a unix socket, mapping "not there yet" errors to
// ErrNotListening.
func dialUnix(ctx context.Context, path string) (*net.UnixConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w: %w", ErrNotListening, err)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", ErrHandshakeTimeout, err)
		}
		return nil, fmt.Errorf("connect %s: %w", path, err)
	}
	return c.(*net.UnixConn), nil
}
