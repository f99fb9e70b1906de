package vsock_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/vsock"
)

func roundTrip(t *testing.T, c net.Conn, msg string) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

// TestHybridDialerFcsim covers the handshake against the simulator's
// hybrid vsock: success, refusal and retry until the listener appears.
func TestHybridDialerFcsim(t *testing.T) {
	s := startSim(t, true)

	t.Run("handshake", func(t *testing.T) {
		s.listenGuest(1024)
		d := &vsock.HybridDialer{Path: s.uds, Port: 1024}
		c, err := d.DialContext(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if hp := c.(*vsock.Conn).HostPort; hp < 1<<30 {
			t.Errorf("host port %d, want Firecracker's range from 1<<30", hp)
		}
		if got := roundTrip(t, c, "hello"); got != "echo:hello" {
			t.Fatalf("got %q", got)
		}
	})

	t.Run("refused", func(t *testing.T) {
		d := &vsock.HybridDialer{Path: s.uds, Port: 9, Timeout: 300 * time.Millisecond}
		start := time.Now()
		_, err := d.DialContext(context.Background())
		var de *vsock.DialError
		if !errors.As(err, &de) || !errors.Is(err, vsock.ErrRefused) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want a DialError with ErrRefused and the deadline", err)
		}
		if de.Attempts < 2 || de.Port != 9 {
			t.Errorf("attempts %d port %d; want retries on port 9", de.Attempts, de.Port)
		}
		if el := time.Since(start); el < 250*time.Millisecond || el > 3*time.Second {
			t.Errorf("gave up after %s, want about the 300ms timeout", el)
		}
		if !strings.Contains(err.Error(), "port 9") {
			t.Errorf("error does not name the port: %v", err)
		}
	})

	t.Run("retry until the listener appears", func(t *testing.T) {
		go func() {
			time.Sleep(300 * time.Millisecond)
			s.listenGuest(2048)
		}()
		d := &vsock.HybridDialer{Path: s.uds, Port: 2048, Timeout: 5 * time.Second}
		start := time.Now()
		c, err := d.DialContext(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if el := time.Since(start); el < 250*time.Millisecond {
			t.Errorf("connected after %s, before the listener existed", el)
		}
		if got := roundTrip(t, c, "late"); got != "echo:late" {
			t.Fatalf("got %q", got)
		}
	})

	t.Run("context cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		d := &vsock.HybridDialer{Path: s.uds, Port: 77, Timeout: time.Minute}
		_, err := d.DialContext(ctx)
		if !errors.Is(err, context.Canceled) || !errors.Is(err, vsock.ErrRefused) {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestHybridDialerBeforeBoot checks a dial that starts before the VMM
// socket exists and before the guest runs: it connects once both happen.
func TestHybridDialerBeforeBoot(t *testing.T) {
	dir := shortDir(t)
	missing := filepath.Join(dir, "none.sock")
	_, err := (&vsock.HybridDialer{Path: missing, Port: 1, Timeout: 100 * time.Millisecond}).DialContext(context.Background())
	if !errors.Is(err, vsock.ErrNotListening) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("missing socket: %v", err)
	}

	s := startSim(t, false)
	s.listenGuest(1024)
	errc := make(chan error, 1)
	go func() {
		c, err := (&vsock.HybridDialer{Path: s.uds, Port: 1024, Timeout: 5 * time.Second}).DialContext(context.Background())
		if err == nil {
			c.Close()
		}
		errc <- err
	}()
	time.Sleep(200 * time.Millisecond)
	s.put("/actions", `{"action_type":"InstanceStart"}`)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// fakeVMM serves the hybrid vsock socket with a scripted reply.
func fakeVMM(t *testing.T, reply func(c net.Conn, line string)) string {
	t.Helper()
	path := filepath.Join(shortDir(t), "v.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				reply(c, line)
			}()
		}
	}()
	return path
}

func TestHybridDialerReplies(t *testing.T) {
	tests := []struct {
		name     string
		reply    func(c net.Conn, line string)
		want     error
		attempts int // exact when > 0
	}{
		{
			name:     "bad reply is not retried",
			reply:    func(c net.Conn, _ string) { io.WriteString(c, "NOPE\n") },
			want:     vsock.ErrBadReply,
			attempts: 1,
		},
		{
			name:     "garbage port",
			reply:    func(c net.Conn, _ string) { io.WriteString(c, "OK abc\n") },
			want:     vsock.ErrBadReply,
			attempts: 1,
		},
		{
			name:     "overlong reply",
			reply:    func(c net.Conn, _ string) { io.WriteString(c, strings.Repeat("x", 200)) },
			want:     vsock.ErrBadReply,
			attempts: 1,
		},
		{
			name:  "silent VMM times out each handshake",
			reply: func(c net.Conn, _ string) { time.Sleep(2 * time.Second) },
			want:  vsock.ErrHandshakeTimeout,
		},
		{
			name:  "closed without reply",
			reply: func(c net.Conn, _ string) {},
			want:  vsock.ErrRefused,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := fakeVMM(t, tt.reply)
			d := &vsock.HybridDialer{Path: path, Port: 5, Timeout: 400 * time.Millisecond, HandshakeTimeout: 100 * time.Millisecond}
			_, err := d.DialContext(context.Background())
			var de *vsock.DialError
			if !errors.As(err, &de) || !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if tt.attempts > 0 && de.Attempts != tt.attempts {
				t.Errorf("attempts = %d, want %d", de.Attempts, tt.attempts)
			}
		})
	}

	t.Run("CONNECT line and data after OK", func(t *testing.T) {
		path := fakeVMM(t, func(c net.Conn, line string) {
			if line != "CONNECT 5555\n" {
				io.WriteString(c, "bad request\n")
				return
			}
			// The guest's first bytes may arrive right behind the OK.
			io.WriteString(c, "OK 1073741830\nguest-hello")
		})
		c, err := (&vsock.HybridDialer{Path: path, Port: 5555}).DialContext(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if hp := c.(*vsock.Conn).HostPort; hp != 1073741830 {
			t.Errorf("host port %d", hp)
		}
		b, _ := io.ReadAll(c)
		if string(b) != "guest-hello" {
			t.Fatalf("bytes after OK: %q", b)
		}
	})
}

func TestParseConnectReply(t *testing.T) {
	tests := []struct {
		in   string
		port uint32
		ok   bool
	}{
		{"OK 1073741824", 1073741824, true},
		{"OK 5\r", 5, true},
		{"OK", 0, false},
		{"ok 5", 0, false},
		{"OK -1", 0, false},
		{"OK 4294967296", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		p, err := vsock.ParseConnectReply(tt.in)
		if (err == nil) != tt.ok || p != tt.port {
			t.Errorf("ParseConnectReply(%q) = %d, %v", tt.in, p, err)
		}
		if err != nil && !errors.Is(err, vsock.ErrBadReply) {
			t.Errorf("ParseConnectReply(%q): %v is not ErrBadReply", tt.in, err)
		}
	}
}

func TestUnixDialerWaitsForSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "qemu.sock")
	go func() {
		time.Sleep(200 * time.Millisecond)
		ln, err := net.Listen("unix", path)
		if err != nil {
			return
		}
		t.Cleanup(func() { ln.Close() })
		echoServe(ln)
	}()
	c, err := (&vsock.UnixDialer{Path: path, Timeout: 5 * time.Second}).DialContext(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := roundTrip(t, c, "serial"); got != "echo:serial" {
		t.Fatalf("got %q", got)
	}

	_, err = (&vsock.UnixDialer{Path: path + ".none", Timeout: 100 * time.Millisecond}).DialContext(context.Background())
	if !errors.Is(err, vsock.ErrNotListening) {
		t.Fatalf("missing socket: %v", err)
	}
	if _, err := (&vsock.UnixDialer{}).DialContext(context.Background()); err == nil {
		t.Fatal("dialer without a path succeeded")
	}
}

// TestListen binds a real AF_VSOCK socket where the kernel offers one
// (this is what a guest agent does); Close must wake a pending Accept.
func TestListen(t *testing.T) {
	ln, err := vsock.Listen(0)
	if err != nil {
		if errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL) || os.IsNotExist(err) {
			t.Skipf("no AF_VSOCK here: %v", err)
		}
		t.Fatal(err)
	}
	if ln.Addr().Network() != "vsock" || !strings.HasPrefix(ln.Addr().String(), "vsock:any:") {
		t.Errorf("addr %s %s", ln.Addr().Network(), ln.Addr())
	}
	errc := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	ln.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept not woken by Close")
	}
}
