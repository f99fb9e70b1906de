package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/vsock"
)

// fakePort is a virtio-serial port as the guest sees it, with QEMU's
// chardev socket as its host end, following Linux's virtio_console and
// QEMU's virtserialport: bytes from a host are queued in the guest until
// read (across host changes, as long as the guest keeps the port open); a
// read with nothing queued returns end-of-file while no host is
// connected and blocks while one is; a write blocks while no host is
// connected. Hosts connect through connect (QEMU accepting the next
// client once the previous one left) or swap (the guest misses the
// departure: a late reader, or a restored snapshot).
type fakePort struct {
	mu       sync.Mutex
	cond     *sync.Cond
	in       []byte
	host     net.Conn // QEMU's end of the current host's connection
	hostGen  int
	closed   bool
	rdl, wdl time.Time
	opens    int
	eofSeen  chan struct{} // closed when a guest read returns EOF
}

func newFakePort() *fakePort {
	p := &fakePort{eofSeen: make(chan struct{})}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// open is ServeSerial's open function.
func (p *fakePort) open() (io.ReadWriteCloser, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.opens++
	p.closed = false
	return (*fakeGuestEnd)(p), nil
}

func (p *fakePort) opened() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.opens
}

// attach makes q the connected host's end and pumps its bytes into the
// guest's queue. Caller holds mu.
func (p *fakePort) attach(q net.Conn) {
	p.hostGen++
	gen := p.hostGen
	p.host = q
	p.cond.Broadcast()
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := q.Read(b)
			p.mu.Lock()
			if p.hostGen != gen {
				p.mu.Unlock()
				return // replaced: its bytes no longer reach the guest
			}
			p.in = append(p.in, b[:n]...)
			if err != nil {
				p.host = nil
			}
			p.cond.Broadcast()
			p.mu.Unlock()
			if err != nil {
				q.Close()
				return
			}
		}
	}()
}

// connect is QEMU accepting a host: the previous host, if any, is gone
// first, and the guest reads end-of-file before the new one is there.
func (p *fakePort) connect() net.Conn {
	p.mu.Lock()
	if p.host != nil {
		p.host.Close()
		p.host = nil
		p.hostGen++
		p.eofSeen = make(chan struct{})
		p.cond.Broadcast()
		seen := p.eofSeen
		p.mu.Unlock()
		select {
		case <-seen:
		case <-time.After(10 * time.Second):
		}
		p.mu.Lock()
	}
	h, q := pipePair()
	p.attach(q)
	p.mu.Unlock()
	return h
}

// swap replaces the host with a new one the guest never sees leave.
func (p *fakePort) swap() net.Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.host != nil {
		p.host.Close()
	}
	h, q := pipePair()
	p.attach(q)
	return h
}

// inject queues bytes as if the current host had sent them.
func (p *fakePort) inject(b []byte) {
	p.mu.Lock()
	p.in = append(p.in, b...)
	p.cond.Broadcast()
	p.mu.Unlock()
}

// wakeAt broadcasts at t, so waits on a deadline end.
func (p *fakePort) wakeAt(t time.Time) {
	if d := time.Until(t); d > 0 {
		time.AfterFunc(d, func() { p.mu.Lock(); p.cond.Broadcast(); p.mu.Unlock() })
	}
}

// pipePair is a kernel-buffered stream pair: a host's connection and
// QEMU's end of it.
func pipePair() (net.Conn, net.Conn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		panic(err)
	}
	var cs [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			panic(err)
		}
		cs[i] = c
	}
	return cs[0], cs[1]
}

// fakeGuestEnd is the guest's open port device.
type fakeGuestEnd fakePort

func (g *fakeGuestEnd) Read(b []byte) (int, error) {
	p := (*fakePort)(g)
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		switch {
		case p.closed:
			return 0, os.ErrClosed
		case !p.rdl.IsZero() && !time.Now().Before(p.rdl):
			return 0, os.ErrDeadlineExceeded
		case len(p.in) > 0:
			n := copy(b, p.in)
			p.in = p.in[n:]
			return n, nil
		case p.host == nil:
			select {
			case <-p.eofSeen:
			default:
				close(p.eofSeen)
			}
			return 0, io.EOF
		}
		p.cond.Wait()
	}
}

func (g *fakeGuestEnd) Write(b []byte) (int, error) {
	p := (*fakePort)(g)
	p.mu.Lock()
	for {
		switch {
		case p.closed:
			p.mu.Unlock()
			return 0, os.ErrClosed
		case !p.wdl.IsZero() && !time.Now().Before(p.wdl):
			p.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		case p.host != nil:
			h := p.host
			p.mu.Unlock()
			if n, err := h.Write(b); err == nil {
				return n, nil
			}
			// The host left under the write: wait for the next one, as
			// the driver does.
			p.mu.Lock()
			continue
		}
		p.cond.Wait()
	}
}

func (g *fakeGuestEnd) Close() error {
	p := (*fakePort)(g)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	p.cond.Broadcast()
	return nil
}

func (g *fakeGuestEnd) SetReadDeadline(t time.Time) error {
	p := (*fakePort)(g)
	p.mu.Lock()
	p.rdl = t
	p.cond.Broadcast()
	p.mu.Unlock()
	p.wakeAt(t)
	return nil
}

func (g *fakeGuestEnd) SetWriteDeadline(t time.Time) error {
	p := (*fakePort)(g)
	p.mu.Lock()
	p.wdl = t
	p.cond.Broadcast()
	p.mu.Unlock()
	p.wakeAt(t)
	return nil
}

// WaitHost waits on the port's state, as the device does through SIGIO.
func (g *fakeGuestEnd) WaitHost(ctx context.Context, max time.Duration) {
	p := (*fakePort)(g)
	end := time.Now().Add(max)
	p.wakeAt(end)
	stop := context.AfterFunc(ctx, func() { p.mu.Lock(); p.cond.Broadcast(); p.mu.Unlock() })
	defer stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.host == nil && len(p.in) == 0 && !p.closed && ctx.Err() == nil && time.Now().Before(end) {
		p.cond.Wait()
	}
}

// serveFake runs ServeSerial on a fake port until the test ends.
func serveFake(t *testing.T) (*Server, *fakePort) {
	t.Helper()
	dir := shortDir(t)
	s, err := New(Config{NoAuth: true, SecretsDir: filepath.Join(dir, "s")})
	if err != nil {
		t.Fatal(err)
	}
	p := newFakePort()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.ServeSerial(ctx, p.open) }()
	t.Cleanup(func() {
		cancel()
		s.Close()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("ServeSerial did not return after Close")
		}
	})
	return s, p
}

// countingDialer hands out host connections from next and counts them.
type countingDialer struct {
	n    atomic.Int32
	next func(i int) net.Conn
}

func (d *countingDialer) DialContext(ctx context.Context) (net.Conn, error) {
	return d.next(int(d.n.Add(1))), nil
}

func pingWith(t *testing.T, d agent.Dialer, opts ...agent.Option) {
	t.Helper()
	c := agent.New(d, "", opts...)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
}

// TestServeSerialHosts: hosts come and go on one open port, in every way
// the guest can see it, and each new host's first hello is answered.
func TestServeSerialHosts(t *testing.T) {
	tests := []struct {
		name string
		// between runs after the first host's session and before the
		// second host connects; it returns the second host's dialer.
		between func(p *fakePort) *countingDialer
		// wantDials is how many connections the second host needs.
		wantDials int
	}{
		{
			name: "host leaves, guest sees it, next host connects",
			between: func(p *fakePort) *countingDialer {
				return &countingDialer{next: func(int) net.Conn { return p.connect() }}
			},
			wantDials: 1,
		},
		{
			// A late reader or a restored snapshot: the new host's hello
			// arrives in the old session's stream, at a frame boundary.
			name: "guest misses the departure",
			between: func(p *fakePort) *countingDialer {
				return &countingDialer{next: func(int) net.Conn { return p.swap() }}
			},
			wantDials: 1,
		},
		{
			// The old host died in the middle of a frame: its body
			// swallows the first hello; the host's retry on a new
			// connection is answered.
			name: "old host died mid-frame and the guest missed it",
			between: func(p *fakePort) *countingDialer {
				hdr := make([]byte, 12)
				binary.BigEndian.PutUint32(hdr[4:8], 1)
				binary.BigEndian.PutUint32(hdr[8:12], 100)
				p.inject(append(hdr, "ten bytes."...))
				return &countingDialer{next: func(i int) net.Conn {
					if i == 1 {
						return p.swap()
					}
					return p.connect()
				}}
			},
			wantDials: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, p := serveFake(t)
			first := &countingDialer{next: func(int) net.Conn { return p.connect() }}
			c := agent.New(first, "")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := c.Ping(ctx); err != nil {
				t.Fatalf("first host: %v", err)
			}
			// The first host leaves without closing its session (its
			// process died); the client is dropped without Close, so
			// nothing tells the guest but the port.
			d := tt.between(p)
			pingWith(t, d, agent.WithHelloTimeout(2*time.Second))
			if got := int(d.n.Load()); got != tt.wantDials {
				t.Errorf("second host dialed %d times, want %d", got, tt.wantDials)
			}
			// And a third host after that, the ordinary way.
			pingWith(t, &countingDialer{next: func(int) net.Conn { return p.connect() }})
			if n := p.opened(); n != 1 {
				t.Errorf("port opened %d times, want once (closing it discards queued bytes)", n)
			}
			c.Close()
		})
	}
}

// TestServeSerialStaleBytes: bytes of an earlier session in both
// directions are skipped by the hello.
func TestServeSerialStaleBytes(t *testing.T) {
	_, p := serveFake(t)
	p.inject([]byte("\x00\x00stale yamux bytes\nHEARTH-AGENT/1 OK 1234\n"))
	pingWith(t, vsock.DialFunc(func(ctx context.Context) (net.Conn, error) {
		h := p.connect()
		h.Write([]byte("garbage from an old host session"))
		return h, nil
	}))
}

// TestServeSerialSessionError: a session yamux ends by itself (a
// protocol error from the host) is interrupted through the port's
// deadlines, not by closing it, and the next hello is answered.
func TestServeSerialSessionError(t *testing.T) {
	_, p := serveFake(t)
	h := p.connect()
	defer h.Close()
	br := bufio.NewReader(h)
	hello := func(nonce string) {
		t.Helper()
		fmt.Fprintf(h, "HEARTH-AGENT/%d %s\n", agent.ProtocolVersion, nonce)
		h.SetReadDeadline(time.Now().Add(30 * time.Second))
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("hello %s: %v", nonce, err)
			}
			if strings.HasSuffix(strings.TrimSpace(line), "OK "+nonce) {
				return
			}
		}
	}
	hello("aa")
	// Two SYNs for stream 1: yamux ends the session (duplicate stream).
	syn := make([]byte, 12)
	binary.BigEndian.PutUint16(syn[2:4], 1)
	binary.BigEndian.PutUint32(syn[4:8], 1)
	h.Write(append(bytes.Clone(syn), syn...))
	hello("bb")
	if n := p.opened(); n != 1 {
		t.Errorf("port opened %d times, want once", n)
	}
}

// TestServeSerialClose: Close ends ServeSerial with no host, and with a
// session in progress.
func TestServeSerialClose(t *testing.T) {
	for _, withHost := range []bool{false, true} {
		dir := shortDir(t)
		s, err := New(Config{NoAuth: true, SecretsDir: filepath.Join(dir, "s")})
		if err != nil {
			t.Fatal(err)
		}
		p := newFakePort()
		done := make(chan struct{})
		go func() { defer close(done); _ = s.ServeSerial(context.Background(), p.open) }()
		if withHost {
			pingWith(t, &countingDialer{next: func(int) net.Conn { return p.connect() }})
		}
		s.Close()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("host=%v: ServeSerial still running after Close", withHost)
		}
	}
}

// TestSerialConnFrames: a session's reads carry whole yamux frames and
// stop where a byte cannot start a header.
func TestSerialConnFrames(t *testing.T) {
	frame := func(typ byte, flags uint16, body string) []byte {
		h := make([]byte, 12)
		h[1] = typ
		binary.BigEndian.PutUint16(h[2:4], flags)
		binary.BigEndian.PutUint32(h[4:8], 3)
		if typ == 0 {
			binary.BigEndian.PutUint32(h[8:12], uint32(len(body)))
		} else {
			binary.BigEndian.PutUint32(h[8:12], 0xFFFFFFFF) // a window delta, not a length
		}
		return append(h, body...)
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	hello := []byte("HEARTH-AGENT/1 abcd\n")
	frames := cat(frame(0, 1, "HEARTH-AGENT/1 ff\n"), frame(1, 2, ""), frame(2, 0, ""), frame(0, 4, ""))
	badFlags := frame(1, 0x10, "")
	tests := []struct {
		name      string
		in        []byte
		hostStays bool
		want      []byte // the session's bytes
		next      []byte // the next session's
	}{
		{"frames then a hello", cat(frames, hello), true, frames, hello},
		{"a hello at once", hello, true, nil, hello},
		{"frames, host gone", frames, false, frames, nil},
		{"partial frame, host gone", cat(frames, frame(0, 0, "0123456789")[:15]), false, cat(frames, frame(0, 0, "0123456789")[:15]), nil},
		{"garbage header", cat(frames, badFlags, hello), true, frames, cat(badFlags, hello)},
		{"oversized data frame", cat(frames, []byte{0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0}), true, frames, []byte{0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newFakePort()
			if tt.hostStays {
				h, q := pipePair()
				defer h.Close()
				p.host = q
			}
			p.in = bytes.Clone(tt.in)
			rw, _ := p.open()
			port := &serialPort{rw: rw}
			c := &serialConn{port: port}
			c.cond = sync.NewCond(&c.mu)
			var got []byte
			b := make([]byte, 7) // small reads split frames
			for {
				n, err := c.Read(b)
				got = append(got, b[:n]...)
				if err != nil {
					if !errors.Is(err, io.EOF) {
						t.Fatalf("read: %v", err)
					}
					break
				}
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("session read\n%q\nwant\n%q", got, tt.want)
			}
			if next := c.leftover(); !bytes.Equal(next, tt.next) {
				t.Errorf("next session starts with %q, want %q", next, tt.next)
			}
		})
	}
}
