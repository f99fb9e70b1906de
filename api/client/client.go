package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/api"
	"github.com/hearth-vm/hearth/metrics"
	"github.com/hearth-vm/hearth/rootfs"
)

// Client talks to a hearth daemon.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// New returns a client for the daemon listening on a unix socket.
func New(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConnsPerHost: 16,
	}
	return &Client{base: "http://hearth", http: &http.Client{Transport: tr}}
}

// NewTCP returns a client for a daemon's TCP listener (which requires the
// bearer token). addr is host:port.
func NewTCP(addr, token string) *Client {
	return &Client{base: "http://" + addr, token: token, http: &http.Client{}}
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

// do sends a request and decodes a JSON response into out (unless nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return &hearth.Error{Kind: hearth.KindStatePoisoned, Op: method + " " + path, Err: fmt.Errorf("daemon unreachable: %w", err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s response: %w", method, path, err)
	}
	return nil
}

func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var env api.ErrorEnvelope
	if err := json.Unmarshal(b, &env); err != nil || env.Error.Message == "" {
		return &hearth.Error{Kind: hearth.KindUnknown, Err: fmt.Errorf("daemon answered %s: %s", resp.Status, strings.TrimSpace(string(b)))}
	}
	return env.Error.ToError()
}

func esc(s string) string { return url.PathEscape(s) }

// Create creates a VM.
func (c *Client) Create(ctx context.Context, id string, spec hearth.Spec) (hearth.View, error) {
	var v hearth.View
	err := c.do(ctx, "POST", "/v1/vms", api.CreateRequest{ID: id, Spec: spec}, &v)
	return v, err
}

// CreateAndStart creates a VM and boots it in one request.
func (c *Client) CreateAndStart(ctx context.Context, id string, spec hearth.Spec) (hearth.View, error) {
	var v hearth.View
	err := c.do(ctx, "POST", "/v1/vms", api.CreateRequest{ID: id, Spec: spec, Start: true}, &v)
	return v, err
}

// Get returns one VM.
func (c *Client) Get(ctx context.Context, id string) (hearth.View, error) {
	var v hearth.View
	err := c.do(ctx, "GET", "/v1/vms/"+esc(id), nil, &v)
	return v, err
}

// List returns every VM.
func (c *Client) List(ctx context.Context) ([]hearth.View, error) {
	return c.ListFiltered(ctx, nil, "")
}

// ListFiltered returns the VMs carrying every label (key or key=value)
// and, when status is set, in that status.
func (c *Client) ListFiltered(ctx context.Context, labels []string, status hearth.Status) ([]hearth.View, error) {
	q := url.Values{}
	for _, l := range labels {
		q.Add("label", l)
	}
	if status != "" {
		q.Set("status", string(status))
	}
	path := "/v1/vms"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out api.VMList
	err := c.do(ctx, "GET", path, nil, &out)
	return out.VMs, err
}

func (c *Client) action(ctx context.Context, id, verb string) (hearth.View, error) {
	var v hearth.View
	err := c.do(ctx, "POST", "/v1/vms/"+esc(id)+"/"+verb, nil, &v)
	return v, err
}

// Start boots a VM.
func (c *Client) Start(ctx context.Context, id string) (hearth.View, error) {
	return c.action(ctx, id, "start")
}

// Pause pauses a VM.
func (c *Client) Pause(ctx context.Context, id string) (hearth.View, error) {
	return c.action(ctx, id, "pause")
}

// Resume resumes a VM.
func (c *Client) Resume(ctx context.Context, id string) (hearth.View, error) {
	return c.action(ctx, id, "resume")
}

// Stop shuts a VM down.
func (c *Client) Stop(ctx context.Context, id string) (hearth.View, error) {
	return c.action(ctx, id, "stop")
}

// Destroy destroys a VM.
func (c *Client) Destroy(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/vms/"+esc(id), nil, nil)
}

// Rename gives a VM a new id.
func (c *Client) Rename(ctx context.Context, id, newID string) (hearth.View, error) {
	var v hearth.View
	err := c.do(ctx, "POST", "/v1/vms/"+esc(id)+"/rename", api.RenameRequest{NewID: newID}, &v)
	return v, err
}

// Snapshot snapshots a VM.
func (c *Client) Snapshot(ctx context.Context, id, name string) (hearth.SnapshotView, error) {
	var v hearth.SnapshotView
	err := c.do(ctx, "POST", "/v1/vms/"+esc(id)+"/snapshots", api.SnapshotRequest{Name: name}, &v)
	return v, err
}

// Restore creates a VM from a snapshot.
func (c *Client) Restore(ctx context.Context, rs hearth.RestoreSpec) (hearth.View, error) {
	var v hearth.View
	err := c.do(ctx, "POST", "/v1/snapshots/"+esc(rs.Snapshot)+"/restore", api.RestoreRequest{VM: rs.VM, Paused: rs.Paused,
		MemoryBackend: rs.MemoryBackend, Prefetch: rs.Prefetch, PrefetchWaitMs: rs.PrefetchWaitMs, Labels: rs.Labels}, &v)
	return v, err
}

// Snapshots lists snapshots.
func (c *Client) Snapshots(ctx context.Context) ([]hearth.SnapshotView, error) {
	var out api.SnapshotList
	err := c.do(ctx, "GET", "/v1/snapshots", nil, &out)
	return out.Snapshots, err
}

// GetSnapshot returns one snapshot.
func (c *Client) GetSnapshot(ctx context.Context, name string) (hearth.SnapshotView, error) {
	var v hearth.SnapshotView
	err := c.do(ctx, "GET", "/v1/snapshots/"+esc(name), nil, &v)
	return v, err
}

// DeleteSnapshot deletes a snapshot.
func (c *Client) DeleteSnapshot(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/snapshots/"+esc(name), nil, nil)
}

// System describes the daemon.
func (c *Client) System(ctx context.Context) (api.System, error) {
	var s api.System
	err := c.do(ctx, "GET", "/v1/system", nil, &s)
	return s, err
}

// Ping checks that the daemon answers.
func (c *Client) Ping(ctx context.Context) error {
	return c.do(ctx, "GET", "/healthz", nil, nil)
}

// Events streams lifecycle events (optionally of one VM) until ctx ends
// or the connection drops; the channel is closed then.
func (c *Client) Events(ctx context.Context, vm string) (<-chan hearth.Event, error) {
	path := "/v1/events"
	if vm != "" {
		path += "?vm=" + url.QueryEscape(vm)
	}
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &hearth.Error{Kind: hearth.KindStatePoisoned, Op: "events", Err: fmt.Errorf("daemon unreachable: %w", err)}
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	ch := make(chan hearth.Event, 16)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			data, ok := strings.CutPrefix(line, "data: ")
			if !ok || data == "{}" {
				continue
			}
			var e hearth.Event
			if json.Unmarshal([]byte(data), &e) != nil {
				continue
			}
			select {
			case ch <- e:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// Console writes the last tail lines of a VM's console to w and, with
// follow, keeps copying new output until ctx ends.
func (c *Client) Console(ctx context.Context, id string, tail int, follow bool, w io.Writer) error {
	q := url.Values{"tail": {fmt.Sprint(tail)}}
	if follow {
		q.Set("follow", "true")
	}
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/v1/vms/"+esc(id)+"/console?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return &hearth.Error{Kind: hearth.KindStatePoisoned, Op: "console", Err: fmt.Errorf("daemon unreachable: %w", err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp)
	}
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// Stats returns a VM's resource use now.
func (c *Client) Stats(ctx context.Context, id string) (metrics.Stats, error) {
	var st metrics.Stats
	err := c.do(ctx, "GET", "/v1/vms/"+esc(id)+"/stats", nil, &st)
	return st, err
}

// SetEgress replaces a VM's egress policy.
func (c *Client) SetEgress(ctx context.Context, id string, allow, dns []string) error {
	return c.do(ctx, "PUT", "/v1/vms/"+esc(id)+"/egress", api.EgressRequest{Allow: allow, DNS: dns}, nil)
}

// Exec runs a command in a VM, copying its output to stdout and stderr,
// and returns its exit status.
func (c *Client) Exec(ctx context.Context, id string, req api.ExecRequest, stdout, stderr io.Writer) (*agent.ExitStatus, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hreq, err := http.NewRequestWithContext(ctx, "POST", c.base+"/v1/vms/"+esc(id)+"/exec", bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		hreq.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(hreq)
	if err != nil {
		return nil, &hearth.Error{Kind: hearth.KindStatePoisoned, Op: "exec", Err: fmt.Errorf("daemon unreachable: %w", err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, decodeError(resp)
	}
	for {
		stream, payload, err := api.ReadFrame(resp.Body)
		if err != nil {
			return nil, &hearth.Error{Kind: hearth.KindGuestMetadata, Op: "exec", VM: id, Err: fmt.Errorf("output ended without an exit status (guest connection lost?): %w", err)}
		}
		switch stream {
		case api.FrameStdout:
			if stdout != nil {
				stdout.Write(payload)
			}
		case api.FrameStderr:
			if stderr != nil {
				stderr.Write(payload)
			}
		case api.FrameExit:
			var st agent.ExitStatus
			if err := json.Unmarshal(payload, &st); err != nil {
				// Typed like a lost stream: the status is unknown either way.
				return nil, &hearth.Error{Kind: hearth.KindGuestMetadata, Op: "exec", VM: id, Err: fmt.Errorf("decode exit status: %w", err)}
			}
			return &st, nil
		}
	}
}

// VerifySnapshot re-hashes a snapshot's files against its manifest.
func (c *Client) VerifySnapshot(ctx context.Context, name string) error {
	return c.do(ctx, "POST", "/v1/snapshots/"+esc(name)+"/verify", nil, nil)
}

// GCSnapshots deletes the snapshots the policy does not keep.
func (c *Client) GCSnapshots(ctx context.Context, p hearth.GCPolicy) ([]string, error) {
	var out api.GCResult
	err := c.do(ctx, "POST", "/v1/snapshots/gc", p, &out)
	return out.Removed, err
}

// PutFile writes r (size bytes, or -1 if unknown) to path in the VM.
func (c *Client) PutFile(ctx context.Context, id, path string, r io.Reader, size int64, perm os.FileMode) (*agent.FileInfo, error) {
	q := url.Values{"path": {path}, "perm": {fmt.Sprintf("%o", perm.Perm())}}
	req, err := http.NewRequestWithContext(ctx, "PUT", c.base+"/v1/vms/"+esc(id)+"/files?"+q.Encode(), r)
	if err != nil {
		return nil, err
	}
	if size >= 0 {
		req.ContentLength = size
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &hearth.Error{Kind: hearth.KindStatePoisoned, Op: "put-file", Err: fmt.Errorf("daemon unreachable: %w", err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, decodeError(resp)
	}
	var fi agent.FileInfo
	if err := json.NewDecoder(resp.Body).Decode(&fi); err != nil {
		return nil, err
	}
	return &fi, nil
}

// GetFile copies the file at path in the VM to w.
func (c *Client) GetFile(ctx context.Context, id, path string, w io.Writer) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/v1/vms/"+esc(id)+"/files?"+url.Values{"path": {path}}.Encode(), nil)
	if err != nil {
		return 0, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, &hearth.Error{Kind: hearth.KindStatePoisoned, Op: "get-file", Err: fmt.Errorf("daemon unreachable: %w", err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, decodeError(resp)
	}
	n, err := io.Copy(w, resp.Body)
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = fmt.Errorf("file truncated: %d of %d bytes", n, resp.ContentLength)
	}
	return n, err
}

// SetRateLimits replaces the rate limits of a VM's drives and network
// interface (see hearth.RateLimits) and returns the updated VM.
func (c *Client) SetRateLimits(ctx context.Context, id string, u hearth.RateLimits) (hearth.View, error) {
	var v hearth.View
	err := c.do(ctx, "PATCH", "/v1/vms/"+esc(id), u, &v)
	return v, err
}

// Images lists the daemon's image catalog.
func (c *Client) Images(ctx context.Context) ([]rootfs.Image, error) {
	var out api.ImageList
	err := c.do(ctx, "GET", "/v1/images", nil, &out)
	return out.Images, err
}

// GetImage returns one image.
func (c *Client) GetImage(ctx context.Context, name string) (rootfs.Image, error) {
	var im rootfs.Image
	err := c.do(ctx, "GET", "/v1/images/"+esc(name), nil, &im)
	return im, err
}

// DeleteImage removes an image from the catalog.
func (c *Client) DeleteImage(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/images/"+esc(name), nil, nil)
}

// VerifyImage re-hashes an image's files against its manifest.
func (c *Client) VerifyImage(ctx context.Context, name string, cached bool) ([]rootfs.FileCheck, error) {
	path := "/v1/images/" + esc(name) + "/verify"
	if cached {
		path += "?cached=true"
	}
	var out api.VerifyImageResult
	err := c.do(ctx, "POST", path, nil, &out)
	return out.Files, err
}

// BuildImage builds an image on the daemon, calling progress (if not nil)
// for each step as it happens. It returns when the build is done, which
// may take minutes: bound it with ctx.
func (c *Client) BuildImage(ctx context.Context, req api.BuildImageRequest, progress func(api.Progress)) (api.BuildImageResult, error) {
	var res api.BuildImageResult
	err := c.stream(ctx, "POST", "/v1/images/build", req, progress, &res)
	return res, err
}

// ImportImage imports an image on the daemon (paths are the daemon
// host's), calling progress (if not nil) for each step.
func (c *Client) ImportImage(ctx context.Context, req api.ImportImageRequest, progress func(api.Progress)) (rootfs.Image, error) {
	var im rootfs.Image
	err := c.stream(ctx, "POST", "/v1/images", req, progress, &im)
	return im, err
}

// stream sends a request answered either by plain JSON (or an error) or
// by an NDJSON progress stream ending in a result or error line.
func (c *Client) stream(ctx context.Context, method, path string, in any, progress func(api.Progress), out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return &hearth.Error{Kind: hearth.KindStatePoisoned, Op: method + " " + path, Err: fmt.Errorf("daemon unreachable: %w", err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/x-ndjson") {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return fmt.Errorf("decode %s %s response: %w", method, path, err)
		}
		return nil
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var l api.StreamLine
		if err := dec.Decode(&l); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return &hearth.Error{Kind: hearth.KindUnknown, Op: method + " " + path, Err: fmt.Errorf("progress stream ended without a result: %w", err)}
		}
		switch {
		case l.Error != nil:
			return l.Error.ToError()
		case l.Result != nil:
			if err := json.Unmarshal(l.Result, out); err != nil {
				return fmt.Errorf("decode %s %s result: %w", method, path, err)
			}
			return nil
		case l.Progress != nil && progress != nil:
			progress(*l.Progress)
		}
	}
}
