package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path"
	"strings"
	"testing"
	"time"
)

func TestCleanPath(t *testing.T) {
	tests := []struct {
		in, abs, rel string
		ok           bool
	}{
		{"/", "/", ".", true},
		{"/etc/passwd", "/etc/passwd", "etc/passwd", true},
		{"//a//b/", "/a/b", "a/b", true},
		{"/a/./b", "/a/b", "a/b", true},
		{"/a/b/.", "/a/b", "a/b", true},
		{"/..", "", "", false},
		{"/a/../b", "", "", false},
		{"/a/..", "", "", false},
		{"/a/...", "/a/...", "a/...", true},
		{"/a/..b", "/a/..b", "a/..b", true},
		{"a/b", "", "", false},
		{"./a", "", "", false},
		{"", "", "", false},
		{"/a\x00b", "", "", false},
		{"/" + strings.Repeat("a", MaxPath), "", "", false},
	}
	for _, tt := range tests {
		abs, rel, err := CleanPath(tt.in)
		if (err == nil) != tt.ok || abs != tt.abs || rel != tt.rel {
			t.Errorf("CleanPath(%.40q) = %q, %q, %v", tt.in, abs, rel, err)
		}
	}
}

// FuzzCleanPath: an accepted path is absolute and clean, its relative
// form stays inside the root, and the two agree.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"/", "/a/b", "/a/../b", "//x/./y/", "/..", "a", "/a\x00", "/.../..."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		abs, rel, err := CleanPath(p)
		if err != nil {
			return
		}
		if !strings.HasPrefix(abs, "/") || path.Clean(abs) != abs {
			t.Fatalf("abs %q not clean", abs)
		}
		for _, el := range strings.Split(abs, "/") {
			if el == ".." {
				t.Fatalf("abs %q has ..", abs)
			}
		}
		if rel != "." && (strings.HasPrefix(rel, "/") || !isLocal(rel)) {
			t.Fatalf("rel %q escapes", rel)
		}
		if path.Join("/", rel) != abs {
			t.Fatalf("abs %q and rel %q disagree", abs, rel)
		}
		if strings.IndexByte(abs, 0) >= 0 {
			t.Fatalf("NUL in %q", abs)
		}
	})
}

func isLocal(rel string) bool {
	c := path.Clean(rel)
	return c != ".." && !strings.HasPrefix(c, "../") && !strings.HasPrefix(c, "/")
}

func TestValidators(t *testing.T) {
	keys := map[string]bool{"A": true, "_": true, "a_B9": true, "": false, "9A": false, "A-B": false, "A B": false, "A=B": false, "É": false, strings.Repeat("K", MaxEnvKey+1): false}
	for k, ok := range keys {
		if (ValidateEnvKey(k) == nil) != ok {
			t.Errorf("ValidateEnvKey(%.20q) ok=%v", k, !ok)
		}
	}
	vals := map[string]bool{"": true, "x y=z": true, "a\nb": false, "a\rb": false, "a\x00b": false, strings.Repeat("v", MaxEnvValue+1): false}
	for v, ok := range vals {
		if (ValidateEnvValue("K", v) == nil) != ok {
			t.Errorf("ValidateEnvValue(%.20q) ok=%v", v, !ok)
		}
	}
	names := map[string]bool{"a": true, "A-b_9": true, "-x": true, "": false, "..": false, ".x": false, "a/b": false, `a\b`: false, "a b": false, "a.b": false}
	for n, ok := range names {
		if (ValidateSecretName(n) == nil) != ok {
			t.Errorf("ValidateSecretName(%q) ok=%v", n, !ok)
		}
	}
	toks := map[string]bool{"abcdefgh": true, "short": false, "with space 123": false, "tab\tabcdefg": false, strings.Repeat("t", MaxToken+1): false, "ünïcode-token": false}
	for tok, ok := range toks {
		if (ValidateToken(tok) == nil) != ok {
			t.Errorf("ValidateToken(%.20q) ok=%v", tok, !ok)
		}
	}
}

func TestParseHello(t *testing.T) {
	tests := []struct {
		line    string
		version int
		nonce   string
		ok      bool
	}{
		{"HEARTH-AGENT/1 abc123", 1, "abc123", true},
		{"garbage\x00HEARTH-AGENT/1 ff", 1, "ff", true},
		{"HEARTH-AGENT/2 ff", 2, "ff", true},
		{"HEARTH-AGENT/1 OK ff", 0, "", false},
		{"HEARTH-AGENT/1 ", 0, "", false},
		{"HEARTH-AGENT/1 xyz", 0, "", false},
		{"HEARTH-AGENT/0 ff", 0, "", false},
		{"HEARTH-AGENT/x ff", 0, "", false},
		{"HEARTH-AGENT/1 " + strings.Repeat("a", 65), 0, "", false},
		{"", 0, "", false},
	}
	for _, tt := range tests {
		v, n, ok := parseHello([]byte(tt.line))
		if ok != tt.ok || v != tt.version || string(n) != tt.nonce {
			t.Errorf("parseHello(%q) = %d %q %v", tt.line, v, n, ok)
		}
	}
}

// pipePair returns a buffered connected pair.
func pipePair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestHandshake(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	t.Run("stale bytes both ways", func(t *testing.T) {
		host, guest := pipePair(t)
		// Stale bytes longer than the hello buffer, with no newline.
		guest.Write([]byte(strings.Repeat("Z", 5000) + "HEARTH-AGENT/1 OK 00\n"))
		host.Write([]byte(strings.Repeat("\x01", 3000)))
		errc := make(chan error, 1)
		var br *bufio.Reader
		go func() {
			var err error
			br, err = ServerHandshake(guest)
			errc <- err
		}()
		hc, err := ClientHandshake(ctx, host)
		if err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		// The stream continues past the hello, in both directions.
		guest.Write([]byte("after"))
		buf := make([]byte, 5)
		if _, err := io.ReadFull(hc, buf); err != nil || string(buf) != "after" {
			t.Fatalf("%q %v", buf, err)
		}
		hc.Write([]byte("more"))
		if _, err := io.ReadFull(br, buf[:4]); err != nil || string(buf[:4]) != "more" {
			t.Fatalf("%q %v", buf[:4], err)
		}
	})

	t.Run("unsupported version", func(t *testing.T) {
		host, guest := pipePair(t)
		go func() {
			// A host from the future.
			host.Write([]byte("HEARTH-AGENT/9 abcd\n"))
		}()
		_, err := ServerHandshake(guest)
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("server: %v", err)
		}
		line, _ := bufio.NewReader(host).ReadString('\n')
		if line != "HEARTH-AGENT/1 UNSUPPORTED abcd\n" {
			t.Fatalf("answer %q", line)
		}
	})

	t.Run("client sees unsupported", func(t *testing.T) {
		host, guest := pipePair(t)
		go func() {
			r := bufio.NewReader(guest)
			line, _ := r.ReadString('\n')
			_, nonce, _ := parseHello([]byte(strings.TrimSpace(line)))
			guest.Write([]byte("HEARTH-AGENT/1 UNSUPPORTED " + string(nonce) + "\n"))
		}()
		if _, err := ClientHandshake(ctx, host); !errors.Is(err, ErrProtocol) {
			t.Fatalf("client: %v", err)
		}
	})

	t.Run("silent peer times out", func(t *testing.T) {
		host, _ := pipePair(t)
		sctx, scancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer scancel()
		if _, err := ClientHandshake(sctx, host); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("client: %v", err)
		}
	})

	t.Run("peer closes", func(t *testing.T) {
		host, guest := pipePair(t)
		guest.Close()
		if _, err := ClientHandshake(ctx, host); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("client: %v", err)
		}
	})

	t.Run("endless garbage is bounded", func(t *testing.T) {
		r := io.LimitReader(zeroReader{}, MaxHelloDiscard+10)
		_, err := ServerHandshake(struct {
			io.Reader
			io.Writer
		}{r, io.Discard})
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("server: %v", err)
		}
	})
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestFrames(t *testing.T) {
	var buf bytes.Buffer
	WriteFrame(&buf, FrameStdout, []byte("out"))
	WriteFrame(&buf, FrameExit, nil)
	if err := WriteFrame(&buf, FrameStdin, make([]byte, MaxFramePayload+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized write: %v", err)
	}
	fr := NewFrameReader(&buf)
	if ty, p, err := fr.Next(); ty != FrameStdout || string(p) != "out" || err != nil {
		t.Fatalf("%v %q %v", ty, p, err)
	}
	if ty, p, err := fr.Next(); ty != FrameExit || len(p) != 0 || err != nil {
		t.Fatalf("%v %q %v", ty, p, err)
	}
	if _, _, err := fr.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
	// Truncated payload, oversized length.
	fr = NewFrameReader(bytes.NewReader([]byte{0x11, 0, 0, 0, 9, 'a'}))
	if _, _, err := fr.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated: %v", err)
	}
	fr = NewFrameReader(bytes.NewReader([]byte{0x11, 0xff, 0xff, 0xff, 0xff}))
	if _, _, err := fr.Next(); !errors.Is(err, ErrProtocol) {
		t.Fatalf("oversized: %v", err)
	}
	if FrameType(0x77).String() != "frame(0x77)" || FrameStdinEOF.String() != "stdin-eof" {
		t.Error("frame names")
	}
}

// FuzzFrameReader: any byte stream yields frames within the limit or an
// error, never a panic or an oversized allocation.
func FuzzFrameReader(f *testing.F) {
	f.Add([]byte{0x11, 0, 0, 0, 2, 'h', 'i', 0x13, 0, 0, 0, 0})
	f.Add([]byte{0x01, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := NewFrameReader(bytes.NewReader(b))
		for {
			_, p, err := fr.Next()
			if err != nil {
				return
			}
			if len(p) > MaxFramePayload {
				t.Fatalf("payload %d", len(p))
			}
		}
	})
}
