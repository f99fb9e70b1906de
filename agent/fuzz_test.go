package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FuzzFrameRoundTrip: frames written by WriteFrame are read back by
// FrameReader exactly (type, payload, order), the stream ends cleanly
// after the last one, and a stream cut anywhere inside a frame is
// io.ErrUnexpectedEOF, never a short frame taken as whole.
func FuzzFrameRoundTrip(f *testing.F) {
	f.Add([]byte{byte(FrameStarted), byte(FrameStdout), byte(FrameExit)}, []byte(`{"id":"1","pid":2}hello{"exit_code":0}`), uint16(7))
	f.Add([]byte{byte(FrameStdinEOF)}, []byte{}, uint16(0))
	f.Add([]byte{0xff, 0}, bytes.Repeat([]byte{0}, 300), uint16(1))
	f.Fuzz(func(t *testing.T, types, data []byte, cut uint16) {
		if len(types) == 0 || len(types) > 64 {
			return
		}
		// Split data into len(types) payloads of varying sizes.
		payloads := make([][]byte, len(types))
		rest := data
		for i := range types {
			n := len(rest)
			if i < len(types)-1 && n > 0 {
				n = int(types[i]) % (n + 1)
			}
			payloads[i], rest = rest[:n], rest[n:]
		}
		var buf bytes.Buffer
		for i, ty := range types {
			if err := WriteFrame(&buf, FrameType(ty), payloads[i]); err != nil {
				t.Fatalf("WriteFrame: %v", err)
			}
		}
		wire := buf.Bytes()
		fr := NewFrameReader(bytes.NewReader(wire))
		for i, ty := range types {
			gt, gp, err := fr.Next()
			if err != nil || gt != FrameType(ty) || !bytes.Equal(gp, payloads[i]) {
				t.Fatalf("frame %d: got %s %q %v, want %s %q", i, gt, gp, err, FrameType(ty), payloads[i])
			}
		}
		if _, _, err := fr.Next(); err != io.EOF {
			t.Fatalf("after the last frame: %v, want io.EOF", err)
		}
		// Cut the stream at an arbitrary point: every frame before the cut
		// comes back whole, then a clean EOF exactly at a frame boundary or
		// io.ErrUnexpectedEOF inside one.
		at := int(cut) % (len(wire) + 1)
		fr = NewFrameReader(bytes.NewReader(wire[:at]))
		off := 0
		for i := 0; ; i++ {
			gt, gp, err := fr.Next()
			if err != nil {
				want := io.ErrUnexpectedEOF
				if off == at {
					want = io.EOF
				}
				if err != want {
					t.Fatalf("cut at %d of %d (frame %d at %d): %v, want %v", at, len(wire), i, off, err, want)
				}
				break
			}
			if gt != FrameType(types[i]) || !bytes.Equal(gp, payloads[i]) {
				t.Fatalf("cut at %d: frame %d differs", at, i)
			}
			off += FrameHeaderSize + len(payloads[i])
		}
	})
}

// FuzzServerHandshake: whatever precedes it, the agent finds a hello line
// or gives up within MaxHelloDiscard bytes; it answers only a well-formed
// hello, echoing its nonce; and the bytes after the hello line are left
// for the session, none lost.
func FuzzServerHandshake(f *testing.F) {
	f.Add([]byte("HEARTH-AGENT/1 abc123\nsession"))
	f.Add([]byte("stale\x00bytes\r\nmore HEARTH-AGENT/1 00ff\r\n"))
	f.Add([]byte("HEARTH-AGENT/2 ab\n"))
	f.Add([]byte("HEARTH-AGENT/1 xyz\nHEARTH-AGENT/0001 AB\nrest"))
	f.Add([]byte("HEARTH-AGENT/1 " + strings.Repeat("a", 65) + "\n"))
	f.Add([]byte(strings.Repeat("x", 300) + "HEARTH-AGENT/1 1\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		rw := struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(in), &out}
		br, err := ServerHandshake(rw)
		answer := out.String()
		if err != nil {
			if errors.Is(err, ErrProtocol) && strings.Contains(err.Error(), "client asked for version") {
				if !unsupportedRE.MatchString(answer) {
					t.Fatalf("refused version with answer %q", answer)
				}
				return
			}
			if answer != "" {
				t.Fatalf("failed (%v) but answered %q", err, answer)
			}
			return
		}
		m := okRE.FindStringSubmatch(answer)
		if m == nil {
			t.Fatalf("accepted with answer %q", answer)
		}
		// The hello line ends at the first newline after which the
		// remaining input equals what br still holds.
		rest, _ := io.ReadAll(br)
		consumed := len(in) - len(rest)
		if consumed <= 0 || !bytes.Equal(in[consumed:], rest) || in[consumed-1] != '\n' {
			t.Fatalf("session bytes lost: consumed %d of %d, rest %q", consumed, len(in), rest)
		}
		line := strings.TrimSuffix(string(in[:consumed-1]), "\r")
		if !strings.HasSuffix(line, " "+m[1]) {
			t.Fatalf("answered nonce %q not at the end of the hello line %q", m[1], line)
		}
		if consumed > MaxHelloDiscard+2 {
			t.Fatalf("read %d bytes before the hello", consumed)
		}
	})
}

var (
	okRE          = regexp.MustCompile(`^HEARTH-AGENT/1 OK ([0-9a-fA-F]{1,64})\n$`)
	unsupportedRE = regexp.MustCompile(`^HEARTH-AGENT/1 UNSUPPORTED ([0-9a-fA-F]{1,64})\n$`)
)

// FuzzClientHandshake: against an agent answering arbitrary bytes (where
// "{N}" stands for the nonce the client sent), the host's hello never
// hangs past its deadline, succeeds exactly when the first line ending in
// its own nonce's answer is OK, and hands the session every byte that
// followed that line.
func FuzzClientHandshake(f *testing.F) {
	f.Add([]byte("HEARTH-AGENT/1 OK {N}\nyamux"))
	f.Add([]byte("garbage\nHEARTH-AGENT/1 OK 0000\nstale HEARTH-AGENT/1 OK {N}\r\n{N}"))
	f.Add([]byte("HEARTH-AGENT/1 UNSUPPORTED {N}\nHEARTH-AGENT/1 OK {N}\n"))
	f.Add([]byte("HEARTH-AGENT/1 OK {N}"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, script []byte) {
		// A real socket pair (as vsock and virtio-serial give): the agent
		// half-closes after its answer, so the host sees the end of the
		// stream but its own end stays usable.
		host, guest := socketPair(t)
		done := make(chan struct{})
		var sent []byte
		go func() {
			defer close(done)
			defer guest.CloseWrite()
			guest.SetDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(guest).ReadString('\n')
			if err != nil {
				return
			}
			_, nonce, _ := strings.Cut(strings.TrimSpace(line), " ")
			sent = bytes.ReplaceAll(script, []byte("{N}"), []byte(nonce))
			guest.Write(sent)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := ClientHandshake(ctx, host)
		if ctx.Err() != nil {
			t.Fatalf("handshake ran into its deadline: %v", err)
		}
		var rest []byte
		if err == nil {
			rest, _ = io.ReadAll(conn)
		}
		host.Close()
		<-done
		guest.Close()
		// What the client must have concluded from the bytes it was sent.
		var want []byte
		wantOK := false
		if sent != nil {
			nonce := nonceIn(sent, script)
			ok, unsup := "HEARTH-AGENT/1 OK "+nonce, "HEARTH-AGENT/1 UNSUPPORTED "+nonce
			for off := 0; off < len(sent); {
				nl := bytes.IndexByte(sent[off:], '\n')
				if nl < 0 {
					break
				}
				l := strings.TrimSuffix(string(sent[off:off+nl]), "\r")
				if strings.HasSuffix(l, ok) {
					wantOK, want = true, sent[off+nl+1:]
					break
				}
				if strings.HasSuffix(l, unsup) {
					break
				}
				off += nl + 1
			}
		}
		if (err == nil) != wantOK {
			t.Fatalf("script %q: handshake error %v, want success %v", sent, err, wantOK)
		}
		if wantOK && !bytes.Equal(rest, want) {
			t.Fatalf("session got %q after the hello, want %q", rest, want)
		}
	})
}

// socketPair returns the two ends of a connected unix stream socket pair.
func socketPair(t *testing.T) (a, b *net.UnixConn) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]*net.UnixConn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1]
}

// nonceIn recovers the nonce substituted into sent (script with "{N}"
// replaced), or "-" (matching nothing) when the script had none.
func nonceIn(sent, script []byte) string {
	i := bytes.Index(script, []byte("{N}"))
	if i < 0 {
		return "-"
	}
	// Bytes before the first placeholder are unchanged, and the nonce is
	// 16 hex digits.
	return string(sent[i : i+16])
}

// FuzzExecRequest: ValidateExec never panics, and an accepted request
// survives the JSON trip to the agent unchanged and still validates.
func FuzzExecRequest(f *testing.F) {
	for _, s := range []string{
		`{"args":["sh","-c","echo hi"],"env":{"A":"1"},"dir":"/tmp","timeout_ms":1000,"stdin":true}`,
		`{"args":["true"],"uid":0,"gid":0,"tty":true,"rows":24,"cols":80}`,
		`{"args":[""]}`,
		`{"args":["a\u0000b"]}`,
		`{"args":["x"],"env":{"1A":"x"}}`,
		`{"args":["x"],"env":{"A":"a\nb"}}`,
		`{"args":["x"],"dir":"relative"}`,
		`{"args":["x"],"dir":"/../../etc"}`,
		`{"args":["x"],"timeout_ms":-1}`,
		`{"args":[]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req ExecRequest
		if json.Unmarshal(b, &req) != nil {
			return
		}
		if err := ValidateExec(&req); err != nil {
			return
		}
		if len(req.Args) == 0 || len(req.Args) > MaxArgs || req.Args[0] == "" || req.TimeoutMS < 0 || len(req.Dir) > MaxPath {
			t.Fatalf("accepted %+v", req)
		}
		j, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		var back ExecRequest
		if err := json.Unmarshal(j, &back); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(normExec(back), normExec(req)) {
			t.Fatalf("JSON round trip changed %+v into %+v", req, back)
		}
		if err := ValidateExec(&back); err != nil {
			t.Fatalf("accepted request no longer validates after the trip: %v", err)
		}
	})
}

// normExec maps an empty env to nil (omitempty drops it on the wire).
func normExec(r ExecRequest) ExecRequest {
	if len(r.Env) == 0 {
		r.Env = nil
	}
	return r
}
