package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/hearth-vm/hearth/agent"
)

// A virtio-serial port is one byte stream that outlives the hosts at its
// far end: a host (a hearth runtime connected to QEMU's chardev socket)
// may go away and another connect, and the guest only learns of it
// through the port's state. Linux's virtio_console reports a host that is
// not connected as end-of-file: read returns 0 when no data is queued and
// the host is away, and poll reports POLLHUP (so there is no event to
// wait on). It never blocks a reader that is woken by the host's
// departure, but a reader that is scheduled late, after the next host has
// already connected and sent its hello, sees no end-of-file at all, only
// the new host's bytes. A snapshot restore is the same case: the clone
// resumes in the middle of its source's session, and the new host's hello
// may come before the guest notices that its peer changed.
//
// So the agent keeps the port open for its whole life (closing it would
// discard the bytes the kernel queued, which may be the next hello) and
// ends a session on either of two signs:
//
//   - end-of-file: the host went away; whatever of its frames is still
//     incomplete is void;
//   - at a yamux frame boundary, a byte that cannot start a yamux header:
//     a hello ("HEARTH-AGENT/…", which starts with 'H', never yamux's
//     version 0) from a host that connected while the guest was not
//     looking. The bytes from the boundary on are the next session's.
//
// A host that died in the middle of a frame and was replaced without the
// guest seeing end-of-file leaves a frame whose body swallows the new
// hello; the bytes after it then fail the header check and the next
// handshake skips to the following hello, which the host sends on a new
// connection once its hello timed out.

// yamux header layout (github.com/hashicorp/yamux, protocol version 0).
const (
	yamuxHeaderSize = 12
	yamuxVersion    = 0
	yamuxTypeData   = 0
	yamuxTypeMax    = 3 // go away
	yamuxFlagsMask  = 0xF
	// maxSerialFrame bounds a data frame's body: yamux never sends more
	// than the receive window, which is far smaller.
	maxSerialFrame = 64 << 20
)

// serialWaitMax bounds how long the agent waits between looks at a port
// whose host is away; a host-connect event (SIGIO on a virtio port) ends
// the wait earlier.
const serialWaitMax = 250 * time.Millisecond

// portDeadlines is what lets a session's blocked read or write on the
// port be interrupted without closing the port.
type portDeadlines interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// hostWaiter is a port that can tell when a host may have connected.
type hostWaiter interface {
	// WaitHost returns when a host may be connected, ctx ends, or max
	// passed.
	WaitHost(ctx context.Context, max time.Duration)
}

// serialPort is the agent's open port and the bytes read from it that
// belong to the next session.
type serialPort struct {
	rw      io.ReadWriteCloser
	pending []byte
	// broken: the port had to be closed (or failed); open it again.
	broken atomic.Bool
}

// interrupt makes the port's blocked read and write return, through
// deadlines, or by closing the port when it has none.
func (p *serialPort) interrupt() {
	if d, ok := p.rw.(portDeadlines); ok {
		past := time.Unix(1, 0)
		if d.SetReadDeadline(past) == nil && d.SetWriteDeadline(past) == nil {
			return
		}
	}
	p.broken.Store(true)
	p.rw.Close()
}

// resume clears what interrupt set.
func (p *serialPort) resume() {
	if d, ok := p.rw.(portDeadlines); ok && !p.broken.Load() {
		_ = d.SetReadDeadline(time.Time{})
		_ = d.SetWriteDeadline(time.Time{})
	}
}

// errNoHost: the port read end-of-file before a hello, so no host is
// connected.
var errNoHost = errors.New("no host connected to the serial port")

// ServeSerial serves sessions on a virtio-serial port, one at a time,
// until ctx ends or Close is called. open is called once, and again only
// if the port fails; see the comment at the top of this file for how
// sessions are told apart on the one stream.
func (s *Server) ServeSerial(ctx context.Context, open func() (io.ReadWriteCloser, error)) error {
	var mu sync.Mutex
	var cur io.Closer
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if cur != nil {
			cur.Close()
		}
	})
	defer stop()
	setCur := func(c io.Closer) {
		mu.Lock()
		defer mu.Unlock()
		cur = c
		if c != nil && ctx.Err() != nil {
			c.Close()
		}
	}
	wait := func(port *serialPort, d time.Duration) {
		if port != nil {
			if w, ok := port.rw.(hostWaiter); ok {
				w.WaitHost(ctx, d)
				return
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	var port *serialPort
	defer func() {
		if port != nil {
			s.untrack(port.rw)
			port.rw.Close()
		}
	}()
	lastErr := ""
	for ctx.Err() == nil && !s.isClosed() {
		if port == nil {
			rwc, err := open()
			if err != nil {
				// Once per distinct error: a missing port is retried often.
				if err.Error() != lastErr {
					s.log.Warn("agent: open serial port", "err", err)
					lastErr = err.Error()
				}
				wait(nil, serialWaitMax)
				continue
			}
			lastErr = ""
			if !s.track(rwc) {
				rwc.Close()
				return nil
			}
			port = &serialPort{rw: rwc}
			setCur(rwc)
		}
		err := s.serialSession(port)
		switch {
		case port.broken.Load():
			s.untrack(port.rw)
			port.rw.Close()
			setCur(nil)
			port = nil
			s.log.Debug("agent: serial port closed; opening it again", "err", err)
		case errors.Is(err, errNoHost):
			wait(port, serialWaitMax)
		case err != nil:
			s.log.Debug("agent: serial session ended", "err", err)
		}
	}
	return nil
}

// serialSession answers one hello on port and serves the session that
// follows until it ends; bytes read past its end stay in port.pending.
func (s *Server) serialSession(port *serialPort) error {
	in := io.MultiReader(bytes.NewReader(port.pending), port.rw)
	port.pending = nil
	br, err := agent.ServerHandshake(struct {
		io.Reader
		io.Writer
	}{in, port.rw})
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return errNoHost
		}
		if !errors.Is(err, agent.ErrProtocol) {
			// The port itself failed (hot-unplugged, closed under us).
			port.broken.Store(true)
		}
		return err
	}
	rest, _ := br.Peek(br.Buffered())
	conn := &serialConn{port: port, buf: bytes.Clone(rest)}
	conn.cond = sync.NewCond(&conn.mu)
	sess, err := yamux.Server(conn, agent.YamuxConfig(s.cfg.KeepAlive, s.log))
	if err != nil {
		return fmt.Errorf("agent server: session: %w", err)
	}
	if !s.track(sess) {
		sess.Close()
		conn.Close()
		conn.wait()
		return net.ErrClosed
	}
	s.log.Debug("agent: serial session started")
	err = s.http.Serve(sess)
	sess.Close()
	s.untrack(sess)
	// yamux closed conn, which interrupted the port; once no read or
	// write of this session is left, the next session may use it.
	conn.Close()
	conn.wait()
	port.resume()
	port.pending = conn.leftover()
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, io.EOF) {
		err = nil
	}
	return err
}

// serialConn is one session's view of the port. Its reads stop at the
// session's end (see the top of this file); its Close interrupts the
// port's blocked calls without closing the port.
type serialConn struct {
	port *serialPort

	mu     sync.Mutex
	cond   *sync.Cond
	closed bool
	active int // reads and writes in progress

	// Reader state; only yamux's receive loop reads.
	buf  []byte // read from the port, not yet handed out
	ok   int    // buf[:ok] is checked and belongs to this session
	body int    // bytes of the current data frame's body not yet checked
	end  error  // why this session's input ended
	next []byte // bytes from a session boundary on: the next session's
	gone bool   // the host went away (end-of-file)
}

func (c *serialConn) begin() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.active++
	return true
}

func (c *serialConn) done() {
	c.mu.Lock()
	c.active--
	if c.active == 0 {
		c.cond.Broadcast()
	}
	c.mu.Unlock()
}

// wait returns once no read or write is in progress; Close must have
// been called.
func (c *serialConn) wait() {
	c.mu.Lock()
	for c.active > 0 {
		c.cond.Wait()
	}
	c.mu.Unlock()
}

// Close ends the session's use of the port.
func (c *serialConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.port.interrupt()
	return nil
}

func (c *serialConn) Write(p []byte) (int, error) {
	if !c.begin() {
		return 0, net.ErrClosed
	}
	defer c.done()
	return c.port.rw.Write(p)
}

func (c *serialConn) Read(p []byte) (int, error) {
	if !c.begin() {
		return 0, net.ErrClosed
	}
	defer c.done()
	var tmp []byte
	for {
		if c.ok > 0 {
			n := copy(p, c.buf[:c.ok])
			c.buf = c.buf[n:]
			c.ok -= n
			return n, nil
		}
		if c.end != nil {
			return 0, c.end
		}
		if c.scan(); c.ok > 0 || c.end != nil {
			continue
		}
		if tmp == nil {
			tmp = make([]byte, max(len(p), 32<<10))
		}
		n, err := c.port.rw.Read(tmp)
		c.buf = append(c.buf, tmp[:n]...)
		if err == nil {
			continue
		}
		c.scan()
		if errors.Is(err, io.EOF) {
			// The host went away: the rest of its last frame is void,
			// and what it completed is still delivered.
			c.buf = c.buf[:c.ok]
			c.gone = true
		}
		if c.end == nil {
			c.end = err
		}
	}
}

// scan checks the bytes after buf[:ok] frame by frame and extends ok over
// those that belong to this session; at a byte that cannot start a yamux
// header it ends the session and keeps the rest for the next one.
func (c *serialConn) scan() {
	pos := c.ok
	for pos < len(c.buf) && c.end == nil {
		if c.body > 0 {
			n := min(c.body, len(c.buf)-pos)
			pos += n
			c.body -= n
			continue
		}
		h := c.buf[pos:]
		if !yamuxHeaderPrefix(h) {
			c.next = bytes.Clone(h)
			c.buf = c.buf[:pos]
			c.end = io.EOF
			break
		}
		if len(h) < yamuxHeaderSize {
			break
		}
		if h[1] == yamuxTypeData {
			c.body = int(binary.BigEndian.Uint32(h[8:12]))
		}
		pos += yamuxHeaderSize
	}
	c.ok = pos
}

// yamuxHeaderPrefix reports whether h (possibly shorter than a header)
// can start a yamux frame header.
func yamuxHeaderPrefix(h []byte) bool {
	if len(h) >= 1 && h[0] != yamuxVersion {
		return false
	}
	if len(h) >= 2 && h[1] > yamuxTypeMax {
		return false
	}
	if len(h) >= 4 && binary.BigEndian.Uint16(h[2:4])&^yamuxFlagsMask != 0 {
		return false
	}
	if len(h) >= yamuxHeaderSize && h[1] == yamuxTypeData && binary.BigEndian.Uint32(h[8:12]) > maxSerialFrame {
		return false
	}
	return true
}

// leftover is what the next session starts with, once this one ended:
// the bytes after a session boundary, or, if the session ended for
// another reason, whatever was read and not yet checked (the next
// handshake skips all but a hello). Nothing, if the host went away.
func (c *serialConn) leftover() []byte {
	switch {
	case c.next != nil:
		return c.next
	case c.gone:
		return nil
	}
	return bytes.Clone(c.buf[c.ok:])
}
