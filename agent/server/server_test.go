package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/hearth-vm/hearth/agent"
)

func newTestServer(t *testing.T) *Server {
	t.Helper()
	dir := shortDir(t)
	s, err := New(Config{Token: lineToken, EnvFile: filepath.Join(dir, "env"), SecretsDir: filepath.Join(dir, "secrets"), System: &SimulatedSystem{}, MaxFileSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestBadRequests: malformed input gets a clean JSON error with the
// right status and code, never a crash.
func TestBadRequests(t *testing.T) {
	s := newTestServer(t)
	tests := []struct {
		name, method, target, body string
		header                     map[string]string
		status                     int
		code                       string
	}{
		{"unknown endpoint", "GET", "/v1/nope", "", nil, 404, agent.CodeNotFound},
		{"wrong method", "DELETE", "/v1/ping", "", nil, 404, agent.CodeNotFound},
		{"env: invalid JSON", "POST", "/v1/env", `{"env":`, nil, 400, agent.CodeInvalid},
		{"env: not an object", "POST", "/v1/env", `[1]`, nil, 400, agent.CodeInvalid},
		{"env: no env", "POST", "/v1/env", `{}`, nil, 400, agent.CodeInvalid},
		{"env: bad key", "POST", "/v1/env", `{"env":{"a b":"1"}}`, nil, 400, agent.CodeInvalid},
		{"env: wrong value type", "POST", "/v1/env", `{"env":{"A":1}}`, nil, 400, agent.CodeInvalid},
		{"exec without upgrade", "POST", "/v1/exec", `{"args":["true"]}`, nil, 400, agent.CodeInvalid},
		{"exec: invalid JSON", "POST", "/v1/exec", `{"args":`, map[string]string{"Upgrade": agent.ExecUpgrade, "Connection": "Upgrade"}, 400, agent.CodeInvalid},
		{"exec: NUL in args", "POST", "/v1/exec", `{"args":["a\u0000b"]}`, map[string]string{"Upgrade": agent.ExecUpgrade, "Connection": "Upgrade"}, 400, agent.CodeInvalid},
		{"exec: negative timeout", "POST", "/v1/exec", `{"args":["true"],"timeout_ms":-1}`, map[string]string{"Upgrade": agent.ExecUpgrade, "Connection": "Upgrade"}, 400, agent.CodeInvalid},
		{"signal unknown exec", "POST", "/v1/exec/feedface/signal", `{"signal":"TERM"}`, nil, 404, agent.CodeNotFound},
		{"resize unknown exec", "POST", "/v1/exec/feedface/resize", `{"rows":1,"cols":1}`, nil, 404, agent.CodeNotFound},
		{"file: no path", "GET", "/v1/files", "", nil, 400, agent.CodeInvalid},
		{"file: traversal", "GET", "/v1/files?path=/tmp/../etc/passwd", "", nil, 400, agent.CodeInvalid},
		{"file: relative", "GET", "/v1/files/stat?path=etc", "", nil, 400, agent.CodeInvalid},
		{"file: NUL", "GET", "/v1/files/stat?path=/a%00b", "", nil, 400, agent.CodeInvalid},
		{"file: bad perm", "PUT", "/v1/files?path=/tmp/x&perm=999", "x", nil, 400, agent.CodeInvalid},
		{"file: bad uid", "PUT", "/v1/files?path=/tmp/x&uid=-1", "x", nil, 400, agent.CodeInvalid},
		{"file: too large", "PUT", "/v1/files?path=/tmp/x", strings.Repeat("x", 1<<20+1), nil, 413, agent.CodeTooLarge},
		{"file: write the root", "PUT", "/v1/files?path=/", "x", nil, 400, agent.CodeInvalid},
		{"mkdir: bad perm", "POST", "/v1/files/mkdir", `{"path":"/tmp/x","perm":65535}`, nil, 400, agent.CodeInvalid},
		{"power: unknown action", "POST", "/v1/power", `{"action":"explode"}`, nil, 400, agent.CodeInvalid},
		{"clock: zero", "POST", "/v1/clock", `{"unix_nano":0}`, nil, 400, agent.CodeInvalid},
		{"entropy: empty", "POST", "/v1/entropy", ``, nil, 400, agent.CodeInvalid},
		{"entropy: too much", "POST", "/v1/entropy", strings.Repeat("e", agent.MaxEntropy+1), nil, 413, agent.CodeTooLarge},
		{"token: short", "POST", "/v1/token", `{"token":"x"}`, nil, 400, agent.CodeInvalid},
		{"body too large", "POST", "/v1/token", `{"token":"` + strings.Repeat("t", 8<<10) + `"}`, nil, 413, agent.CodeTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.target, strings.NewReader(tt.body))
			req.Header.Set("Authorization", "Bearer "+lineToken)
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, req)
			var er agent.ErrorResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &er); err != nil {
				t.Fatalf("status %d, body %q is not an error JSON", rec.Code, rec.Body.String())
			}
			if rec.Code != tt.status || er.Code != tt.code || er.Error == "" {
				t.Fatalf("got %d %+v, want %d %s", rec.Code, er, tt.status, tt.code)
			}
		})
	}
}

// rawSession connects a yamux client to the server by hand, to send what
// the real client never would.
func rawSession(t *testing.T, s *Server) *yamux.Session {
	t.Helper()
	host, guest := net.Pipe()
	go s.ServeConn(guest)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := agent.ClientHandshake(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := yamux.Client(c, agent.YamuxConfig(0, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// TestExecOversizedFrame: a frame longer than the limit ends the exec
// (the process is killed) and nothing else; the session keeps serving.
func TestExecOversizedFrame(t *testing.T) {
	s := newTestServer(t)
	sess := rawSession(t, s)
	st, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	body := `{"args":["sleep","30"],"stdin":true}`
	fmt.Fprintf(st, "POST /v1/exec HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		lineToken, agent.ExecUpgrade, len(body), body)
	br := bufio.NewReader(st)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("%v %v", resp, err)
	}
	// A header announcing 4 GiB of stdin.
	st.Write([]byte{byte(agent.FrameStdin), 0xff, 0xff, 0xff, 0xff})
	fr := agent.NewFrameReader(br)
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	var exit agent.ExitStatus
	for {
		ty, p, err := fr.Next()
		if err != nil {
			t.Fatalf("no exit frame: %v", err)
		}
		if ty == agent.FrameExit {
			json.Unmarshal(p, &exit)
			break
		}
	}
	if exit.Signal != "SIGKILL" || exit.Error == "" {
		t.Fatalf("exit %+v", exit)
	}

	// The same session still answers.
	st2, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(st2, "GET /v1/ping HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer %s\r\n\r\n", lineToken)
	resp, err = http.ReadResponse(bufio.NewReader(st2), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("ping after a bad frame: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
}

// TestGarbageConnection: a peer that sends no hello, or garbage after
// it, costs one connection and nothing more.
func TestGarbageConnection(t *testing.T) {
	s := newTestServer(t)
	host, guest := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.ServeConn(guest) }()
	go func() {
		host.Write([]byte("HEARTH-AGENT/1 00ff\n"))
		io.Copy(io.Discard, host)
	}()
	time.Sleep(50 * time.Millisecond)
	host.Write([]byte("this is not yamux at all"))
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("garbage session ended without an error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("garbage session still being served")
	}
	host.Close()
	// A fresh session works.
	sess := rawSession(t, s)
	if _, err := sess.Ping(); err != nil {
		t.Fatal(err)
	}
}
