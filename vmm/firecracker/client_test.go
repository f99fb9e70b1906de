package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearth-vm/hearth/vmm"
)

// shortTempDir returns a directory whose path leaves room for socket
// names (sockaddr_un holds 107 bytes; t.TempDir paths can be long).
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "fc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// serveUnix runs h on a unix socket and counts accepted connections.
func serveUnix(t *testing.T, h http.Handler) (sock string, conns *atomic.Int32) {
	t.Helper()
	sock = filepath.Join(shortTempDir(t), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	conns = new(atomic.Int32)
	srv := &http.Server{Handler: h, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock, conns
}

// serveRaw answers every connection with the bytes resp, after reading one
// request, then closes it.
func serveRaw(t *testing.T, resp string) string {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "raw.sock")
	ln, err := net.Listen("unix", sock)
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
				if req, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
					io.Copy(io.Discard, req.Body)
				}
				io.WriteString(c, resp)
			}()
		}
	}()
	return sock
}

func TestClientKeepAlive(t *testing.T) {
	sock, conns := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	c := NewClient(sock, time.Second)
	defer c.Close()
	for i := 0; i < 5; i++ {
		if err := c.Do(context.Background(), mustRequest("PATCH", "/vm", VMStateBody(i%2 == 0)), nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for 5 sequential requests, want 1 (keep-alive)", n)
	}
}

func TestClientFraming(t *testing.T) {
	type seen struct {
		method, path, ctype, accept, body string
		length                            int64
	}
	got := make(chan seen, 2)
	sock, _ := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Method, r.URL.Path, r.Header.Get("Content-Type"), r.Header.Get("Accept"), string(b), r.ContentLength}
		if r.Method == "GET" {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"app_name":"Firecracker","id":"a","state":"Not started","vmm_version":"1.17.0"}`)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	c := NewClient(sock, time.Second)
	defer c.Close()
	r := mustRequest("PUT", "/machine-config", MachineConfiguration{VCPUCount: 1, MemSizeMiB: 128})
	if err := c.Do(context.Background(), r, nil); err != nil {
		t.Fatal(err)
	}
	s := <-got
	if s.method != "PUT" || s.path != "/machine-config" || s.ctype != "application/json" || s.accept != "application/json" {
		t.Fatalf("request %+v", s)
	}
	if s.length != int64(len(r.Body)) || s.body != string(r.Body) {
		t.Fatalf("body framed with length %d, body %q; want %d, %q", s.length, s.body, len(r.Body), r.Body)
	}
	var info InstanceInfo
	if err := c.Do(context.Background(), Request{Method: "GET", Path: "/"}, &info); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s.ctype != "" || s.length != 0 {
		t.Fatalf("GET sent a body: %+v", s)
	}
	if info.State != InstanceNotStarted || info.VMMVersion != "1.17.0" {
		t.Fatalf("decoded %+v", info)
	}
}

func TestClientResponses(t *testing.T) {
	cases := []struct {
		name    string
		handler http.HandlerFunc
		check   func(t *testing.T, err error, out map[string]any)
	}{
		{"204 without body", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) },
			func(t *testing.T, err error, out map[string]any) {
				if err != nil || out != nil {
					t.Fatalf("err %v, out %v", err, out)
				}
			}},
		{"200 with JSON", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"a":1}`) },
			func(t *testing.T, err error, out map[string]any) {
				if err != nil || out["a"] != 1.0 {
					t.Fatalf("err %v, out %v", err, out)
				}
			}},
		{"200 with garbage", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"a":`) },
			func(t *testing.T, err error, _ map[string]any) {
				if err == nil || IsRequestError(err) || !strings.Contains(err.Error(), "GET /x") {
					t.Fatalf("err %v", err)
				}
			}},
		{"400 with fault_message", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(400)
			io.WriteString(w, `{"fault_message":"The requested operation is not supported after starting the microVM."}`)
		}, func(t *testing.T, err error, _ map[string]any) {
			var re *vmm.RequestError
			if !errors.As(err, &re) {
				t.Fatalf("err %v is not a RequestError", err)
			}
			if re.Method != "GET" || re.Path != "/x" || re.Status != 400 ||
				re.Body != "The requested operation is not supported after starting the microVM." {
				t.Fatalf("%+v", re)
			}
		}},
		{"500 with non-JSON body kept raw", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(500)
			io.WriteString(w, "  internal breakage\n")
		}, func(t *testing.T, err error, _ map[string]any) {
			var re *vmm.RequestError
			if !errors.As(err, &re) || re.Status != 500 || re.Body != "internal breakage" {
				t.Fatalf("err %#v", err)
			}
		}},
		{"404 with JSON lacking fault_message kept raw", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(404)
			io.WriteString(w, `{"error":"nope"}`)
		}, func(t *testing.T, err error, _ map[string]any) {
			var re *vmm.RequestError
			if !errors.As(err, &re) || re.Status != 404 || re.Body != `{"error":"nope"}` {
				t.Fatalf("err %#v", err)
			}
		}},
		{"oversize headers rejected", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Big", strings.Repeat("a", maxResponseHeaderBytes+1024))
			w.WriteHeader(204)
		}, func(t *testing.T, err error, _ map[string]any) {
			if err == nil || IsRequestError(err) {
				t.Fatalf("err %v, want a transport error", err)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sock, _ := serveUnix(t, c.handler)
			cl := NewClient(sock, time.Second)
			defer cl.Close()
			var out map[string]any
			err := cl.Do(context.Background(), Request{Method: "GET", Path: "/x"}, &out)
			c.check(t, err, out)
		})
	}
}

func TestClientTruncatedBody(t *testing.T) {
	sock := serveRaw(t, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"app_name\":")
	c := NewClient(sock, time.Second)
	defer c.Close()
	var info InstanceInfo
	err := c.Do(context.Background(), Request{Method: "GET", Path: "/"}, &info)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err %v, want unexpected EOF", err)
	}
	if !strings.Contains(err.Error(), "GET /") {
		t.Fatalf("error %q does not name the request", err)
	}
}

func TestClientOversizeBody(t *testing.T) {
	sock, _ := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(make([]byte, maxResponseBodyBytes+10))
	}))
	c := NewClient(sock, 5*time.Second)
	defer c.Close()
	if err := c.Do(context.Background(), Request{Method: "GET", Path: "/"}, nil); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("err %v", err)
	}
}

func TestClientDeadline(t *testing.T) {
	sock, _ := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
		w.WriteHeader(204)
	}))
	c := NewClient(sock, 50*time.Millisecond)
	defer c.Close()
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"client timeout", func() error {
			return c.Do(context.Background(), Request{Method: "GET", Path: "/"}, nil)
		}},
		{"context deadline earlier than timeout", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			return c.DoTimeout(ctx, Request{Method: "GET", Path: "/"}, time.Minute, nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := tc.call()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("err %v, want deadline exceeded", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("took %v", d)
			}
		})
	}
}

func TestClientUnreachable(t *testing.T) {
	c := NewClient(filepath.Join(shortTempDir(t), "nobody.sock"), time.Second)
	err := c.Do(context.Background(), Request{Method: "PUT", Path: "/actions"}, nil)
	if err == nil || IsRequestError(err) || !strings.Contains(err.Error(), "PUT /actions") {
		t.Fatalf("err %v", err)
	}
	if !errors.Is(err, unix.ENOENT) {
		t.Fatalf("err %v does not wrap ENOENT", err)
	}
}

// TestClientLongSocketPath covers sockets deeper than a sockaddr_un can
// name, as in a jail under a long base directory.
func TestClientLongSocketPath(t *testing.T) {
	dir := shortTempDir(t)
	deep := filepath.Join(dir, strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(deep, "firecracker.socket")
	if len(sock) <= maxSunPath {
		t.Fatalf("test path too short: %d", len(sock))
	}
	dfd, err := unix.Open(deep, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", "/proc/self/fd/"+strconv.Itoa(dfd)+"/firecracker.socket")
	unix.Close(dfd)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })}
	go srv.Serve(ln)
	defer srv.Close()
	c := NewClient(sock, time.Second)
	defer c.Close()
	if err := c.Do(context.Background(), Request{Method: "GET", Path: "/"}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestFaultMessage(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`{"fault_message":"x"}`, "x"},
		{`{"fault_message":""}`, `{"fault_message":""}`},
		{"", ""},
		{"plain", "plain"},
		{strings.Repeat("z", maxFaultBytes+5), strings.Repeat("z", maxFaultBytes) + "…"},
	} {
		if got := faultMessage([]byte(c.in)); got != c.want {
			t.Errorf("faultMessage(%.20q) = %.20q, want %.20q", c.in, got, c.want)
		}
	}
}

// FuzzDecodeResponse: no status/body combination panics, errors carry the
// status, and a 2xx never turns into a RequestError.
func FuzzDecodeResponse(f *testing.F) {
	f.Add(204, []byte(""))
	f.Add(200, []byte(`{"app_name":"Firecracker","id":"x","state":"Running","vmm_version":"1.17.0"}`))
	f.Add(400, []byte(`{"fault_message":"bad"}`))
	f.Add(500, []byte("\xff\xfe"))
	f.Add(200, []byte(`{"state":1}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		var info InstanceInfo
		err := decodeResponse("GET", "/", status, body, &info)
		var re *vmm.RequestError
		isRE := errors.As(err, &re)
		if status >= 200 && status <= 299 {
			if isRE {
				t.Fatalf("2xx became a RequestError: %v", err)
			}
			return
		}
		if !isRE || re.Status != status {
			t.Fatalf("status %d gave %v", status, err)
		}
	})
}

// FuzzResponseFraming feeds arbitrary bytes as the VMM's answer through
// the real HTTP client: it must return (no hang, no panic), and any
// success must have been a 2xx.
func FuzzResponseFraming(f *testing.F) {
	f.Add([]byte("HTTP/1.1 204 No Content\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}"))
	f.Add([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 22\r\n\r\n{\"fault_message\":\"x\"}"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, resp []byte) {
		c := newClientWithDialer("fuzz", time.Second, func(context.Context) (net.Conn, error) {
			client, server := net.Pipe()
			go func() {
				defer server.Close()
				server.SetDeadline(time.Now().Add(time.Second))
				if req, err := http.ReadRequest(bufio.NewReader(server)); err == nil {
					io.Copy(io.Discard, req.Body)
				}
				server.Write(resp)
			}()
			return client, nil
		})
		defer c.Close()
		var out json.RawMessage
		err := c.Do(context.Background(), Request{Method: "GET", Path: "/"}, &out)
		var re *vmm.RequestError
		if errors.As(err, &re) && re.Status >= 200 && re.Status <= 299 {
			t.Fatalf("2xx reported as refusal: %v", err)
		}
	})
}

// IsRequestError reports whether err wraps a *vmm.RequestError.
func IsRequestError(err error) bool {
	var re *vmm.RequestError
	return errors.As(err, &re)
}
