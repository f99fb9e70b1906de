package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearth-vm/hearth/vmm"
)

// DefaultAPITimeout bounds one ordinary API call.
const DefaultAPITimeout = 5 * time.Second

const (
	// maxResponseHeaderBytes caps the header block of a response; the
	// API's headers are a few hundred bytes, so anything near this is not
	// Firecracker talking.
	maxResponseHeaderBytes = 64 << 10
	// maxResponseBodyBytes caps a response body. The largest legitimate
	// answers (GET /vm/config, GET /mmds) are far smaller.
	maxResponseBodyBytes = 4 << 20
	// maxFaultBytes caps how much of a non-JSON error body is kept.
	maxFaultBytes = 4 << 10
	// maxSunPath is the longest path a sockaddr_un can carry with its NUL.
	maxSunPath = 107
)

// Client talks HTTP/1.1 to one Firecracker API socket. Connections are
// kept alive (Firecracker keeps them open and frames every response with
// Content-Length). It is safe for concurrent use.
type Client struct {
	socket  string
	timeout time.Duration
	tr      *http.Transport
	hc      *http.Client
}

// NewClient returns a client for the API socket at socketPath. timeout
// bounds each call that has no explicit timeout (0 means
// DefaultAPITimeout).
func NewClient(socketPath string, timeout time.Duration) *Client {
	return newClientWithDialer(socketPath, timeout, func(ctx context.Context) (net.Conn, error) {
		return dialUnix(ctx, socketPath)
	})
}

func newClientWithDialer(socketPath string, timeout time.Duration, dial func(context.Context) (net.Conn, error)) *Client {
	if timeout <= 0 {
		timeout = DefaultAPITimeout
	}
	tr := &http.Transport{
		// No proxy: the default transport would honour HTTP_PROXY, which
		// must never apply to a unix socket.
		Proxy: nil,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dial(ctx)
		},
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		DisableCompression:     true,
		MaxIdleConns:           4,
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        time.Minute,
	}
	return &Client{socket: socketPath, timeout: timeout, tr: tr, hc: &http.Client{Transport: tr}}
}

// SocketPath returns the API socket the client talks to.
func (c *Client) SocketPath() string { return c.socket }

// Close drops idle connections. The client stays usable.
func (c *Client) Close() { c.tr.CloseIdleConnections() }

// Do sends r with the client's default timeout and decodes a 2xx answer
// into out (nil discards it).
func (c *Client) Do(ctx context.Context, r Request, out any) error {
	return c.DoTimeout(ctx, r, c.timeout, out)
}

// DoTimeout is Do with an explicit timeout; the call ends at the earlier
// of ctx's deadline and now+timeout.
//
// A non-2xx answer is a *vmm.RequestError carrying Firecracker's
// fault_message (or the raw body when it is not the API's Error object).
// Every other failure is wrapped with the method and path.
func (c *Client) DoTimeout(ctx context.Context, r Request, timeout time.Duration, out any) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var body io.Reader
	if r.Body != nil {
		body = bytes.NewReader(r.Body)
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, "http://localhost"+r.Path, body)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", r.Method, r.Path, err)
	}
	req.Header.Set("Accept", "application/json")
	if r.Body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", r.Method, r.Path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBodyBytes+1))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read response: %w", r.Method, r.Path, err)
	}
	if len(data) > maxResponseBodyBytes {
		return fmt.Errorf("firecracker %s %s: response body exceeds %d bytes", r.Method, r.Path, maxResponseBodyBytes)
	}
	return decodeResponse(r.Method, r.Path, resp.StatusCode, data, out)
}

// decodeResponse maps a status and body to the call's result.
func decodeResponse(method, path string, status int, body []byte, out any) error {
	if status < 200 || status > 299 {
		return &vmm.RequestError{Method: method, Path: path, Status: status, Body: faultMessage(body)}
	}
	if out == nil || len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("firecracker %s %s: decode %d response: %w", method, path, status, err)
	}
	return nil
}

// faultMessage extracts Firecracker's fault_message, or keeps the raw body
// (trimmed and capped) when it is anything else, so nothing the VMM said is
// lost.
func faultMessage(body []byte) string {
	var e Error
	if json.Unmarshal(body, &e) == nil && e.FaultMessage != "" {
		return e.FaultMessage
	}
	s := strings.TrimSpace(string(body))
	if len(s) > maxFaultBytes {
		s = s[:maxFaultBytes] + "…"
	}
	return s
}

// dialUnix connects to a unix socket, also when its path is longer than a
// sockaddr_un can hold (a jailer chroot under a long base directory easily
// is): the directory is opened with O_PATH and the socket reached through
// /proc/self/fd/N, which is short.
func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	if len(path) <= maxSunPath {
		return d.DialContext(ctx, "unix", path)
	}
	dfd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open directory of long socket path %s: %w", path, err)
	}
	defer unix.Close(dfd)
	short := "/proc/self/fd/" + strconv.Itoa(dfd) + "/" + filepath.Base(path)
	if len(short) > maxSunPath {
		return nil, fmt.Errorf("socket name %q is too long", filepath.Base(path))
	}
	return d.DialContext(ctx, "unix", short)
}
