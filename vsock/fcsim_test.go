package vsock_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/internal/testbin"
)

// simBin is hearth-fcsim, built once by TestMain.
var simBin string

func TestMain(m *testing.M) {
	p, err := testbin.Path("cmd/hearth-fcsim", "firecracker")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		testbin.Cleanup()
		os.Exit(1)
	}
	simBin = p
	testbin.Main(m)
}

// shortDir is a temp dir with a short path: unix socket paths are
// limited to 107 bytes.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "vs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// sim is one running simulated Firecracker with a vsock device.
type sim struct {
	t        *testing.T
	dir      string
	api      string
	uds      string // the vsock device's uds_path
	guestDir string // where simulated guest listeners live
	client   *http.Client
}

// startSim runs hearth-fcsim, configures a vsock device and, if boot,
// starts the guest.
func startSim(t *testing.T, boot bool) *sim {
	t.Helper()
	dir := shortDir(t)
	s := &sim{t: t, dir: dir, api: filepath.Join(dir, "api.sock"), uds: filepath.Join(dir, "v.sock"), guestDir: filepath.Join(dir, "g")}
	var stderr bytes.Buffer
	cmd := exec.Command(simBin, "--api-sock", s.api, "--id", "vsock-test")
	cmd.Env = append(os.Environ(), "HEARTH_FCSIM_GUEST_VSOCK_DIR="+s.guestDir)
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("fcsim stderr:\n%s", stderr.String())
		}
	})
	s.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", s.api)
		},
	}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, err := s.client.Get("http://fc/"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("fcsim API socket never came up")
		}
		time.Sleep(5 * time.Millisecond)
	}
	kernel := filepath.Join(dir, "vmlinux")
	rootfs := filepath.Join(dir, "rootfs")
	for _, f := range []string{kernel, rootfs} {
		if err := os.WriteFile(f, []byte("fake"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.put("/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, s.uds))
	s.put("/machine-config", `{"vcpu_count":1,"mem_size_mib":16}`)
	s.put("/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, kernel))
	s.put("/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":false}`, rootfs))
	if boot {
		s.put("/actions", `{"action_type":"InstanceStart"}`)
	}
	return s
}

func (s *sim) put(path, body string) {
	s.t.Helper()
	req, _ := http.NewRequest(http.MethodPut, "http://fc"+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatalf("PUT %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		s.t.Fatalf("PUT %s: %d %s", path, resp.StatusCode, b.String())
	}
}

// listenGuest makes a simulated guest listener on port that echoes what
// it reads, prefixed with "echo:".
func (s *sim) listenGuest(port uint32) net.Listener {
	s.t.Helper()
	if err := os.MkdirAll(s.guestDir, 0o700); err != nil {
		s.t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(s.guestDir, fmt.Sprintf("%d.sock", port)))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { ln.Close() })
	go echoServe(ln)
	return ln
}

func echoServe(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 256)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(append([]byte("echo:"), buf[:n]...)); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}
