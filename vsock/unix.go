package vsock

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"
)

// UnixDialer dials a plain unix socket: QEMU's chardev socket behind the
// guest's virtio-serial port (-chardev socket,path=P,server=on,wait=off),
// or an agent listening on a unix socket in tests. It retries while the
// socket does not exist or refuses connections.
//
// A virtio-serial port is a single byte stream: QEMU serves one
// connection at a time and queues the others, so only one client should
// use a VM's chardev socket.
type UnixDialer struct {
	Path string
	// Timeout bounds one DialContext call, retries included (DefaultTimeout).
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the pause between attempts.
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
}

// DialContext connects, retrying until ctx ends or Timeout passes.
func (d *UnixDialer) DialContext(ctx context.Context) (net.Conn, error) {
	if d.Path == "" {
		return nil, errors.New("vsock: unix dialer without a socket path")
	}
	p := newRetryPolicy(d.Timeout, d.MinBackoff, d.MaxBackoff, d.Logger)
	return p.run(ctx, d.Path, 0, func(ctx context.Context) (net.Conn, error) {
		c, err := dialUnix(ctx, d.Path)
		if err != nil {
			return nil, err
		}
		return c, nil
	})
}
