package vsock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// HybridDialer dials a guest port through Firecracker's hybrid vsock.
// The zero value of every field but Path and Port means its default.
type HybridDialer struct {
	// Path is the vsock device's uds_path on the host.
	Path string
	// Port is the guest AF_VSOCK port to connect to.
	Port uint32
	// Timeout bounds one DialContext call, retries included
	// (DefaultTimeout); an earlier ctx deadline wins.
	Timeout time.Duration
	// HandshakeTimeout bounds the wait for "OK <port>" in each attempt
	// (DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
	// MinBackoff and MaxBackoff bound the pause between attempts.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives retry diagnostics at debug level (discarded if nil).
	Logger *slog.Logger
}

// Conn is a connection established through hybrid vsock.
type Conn struct {
	*net.UnixConn
	// HostPort is the host-side port Firecracker assigned ("OK <n>").
	HostPort uint32
}

// maxReplyLine bounds the CONNECT reply; "OK 4294967295\n" is 14 bytes.
const maxReplyLine = 64

// DialContext connects, retrying while the VMM socket is missing or the
// guest is not listening yet, until ctx ends or Timeout passes.
func (d *HybridDialer) DialContext(ctx context.Context) (net.Conn, error) {
	if d.Path == "" {
		return nil, errors.New("vsock: hybrid dialer without a socket path")
	}
	p := newRetryPolicy(d.Timeout, d.MinBackoff, d.MaxBackoff, d.Logger)
	return p.run(ctx, d.Path, d.Port, d.attempt)
}

func (d *HybridDialer) attempt(ctx context.Context) (net.Conn, error) {
	c, err := dialUnix(ctx, d.Path)
	if err != nil {
		return nil, err
	}
	hostPort, err := d.handshake(ctx, c)
	if err != nil {
		c.Close()
		return nil, err
	}
	return &Conn{UnixConn: c, HostPort: hostPort}, nil
}

func (d *HybridDialer) handshake(ctx context.Context, c *net.UnixConn) (uint32, error) {
	ht := d.HandshakeTimeout
	if ht <= 0 {
		ht = DefaultHandshakeTimeout
	}
	deadline := time.Now().Add(ht)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	if err := c.SetDeadline(deadline); err != nil {
		return 0, fmt.Errorf("set handshake deadline: %w", err)
	}
	// A cancelled ctx must end a handshake stuck in Read as well.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := fmt.Fprintf(c, "CONNECT %d\n", d.Port); err != nil {
		// Firecracker may already have closed the stream.
		return 0, classifyHandshakeErr(err)
	}
	line, err := readReplyLine(c)
	if err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("%w: %w", ErrHandshakeTimeout, ctx.Err())
		}
		return 0, classifyHandshakeErr(err)
	}
	port, err := ParseConnectReply(line)
	if err != nil {
		return 0, err
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return 0, fmt.Errorf("clear handshake deadline: %w", err)
	}
	return port, nil
}

// readReplyLine reads up to and including '\n' one byte at a time, so
// that no byte of the guest's stream is consumed past the reply.
func readReplyLine(r io.Reader) (string, error) {
	var b [1]byte
	var sb strings.Builder
	for sb.Len() < maxReplyLine {
		n, err := r.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				return sb.String(), nil
			}
			sb.WriteByte(b[0])
			continue
		}
		if err != nil {
			if err == io.EOF && sb.Len() > 0 {
				return "", fmt.Errorf("%w: %q without a newline", ErrBadReply, sb.String())
			}
			return "", err
		}
	}
	return "", fmt.Errorf("%w: reply longer than %d bytes: %q", ErrBadReply, maxReplyLine, sb.String())
}

// ParseConnectReply parses Firecracker's acknowledgement "OK <port>"
// (without the newline) and returns the host-side port.
func ParseConnectReply(line string) (uint32, error) {
	line = strings.TrimSuffix(line, "\r")
	rest, ok := strings.CutPrefix(line, "OK ")
	if !ok {
		return 0, fmt.Errorf("%w: %q", ErrBadReply, line)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(rest), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: %q: bad port: %w", ErrBadReply, line, err)
	}
	return uint32(n), nil
}

func classifyHandshakeErr(err error) error {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("%w: %w", ErrRefused, err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w: %w", ErrHandshakeTimeout, err)
	}
	return fmt.Errorf("handshake: %w", err)
}
