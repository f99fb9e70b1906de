package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/agent/server"
	"github.com/hearth-vm/hearth/internal/testbin"
	"github.com/hearth-vm/hearth/vsock"
)

const agentBenchToken = "bench-token-0123456789"

// agentFixture serves the agent in process on a unix socket (the whole
// protocol: hello, yamux, HTTP; only the vsock hop is missing) and
// returns a connected client.
func agentFixture(b *testing.B) (*agent.Client, string) {
	b.Helper()
	dir, err := os.MkdirTemp("", "bag")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	srv, err := server.New(server.Config{
		Token:      agentBenchToken,
		EnvFile:    filepath.Join(dir, "env"),
		SecretsDir: filepath.Join(dir, "secrets"),
		System:     &server.SimulatedSystem{},
	})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := server.ListenUnix(filepath.Join(dir, "a.sock"))
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	c, err := agent.Dial(context.Background(), &vsock.UnixDialer{Path: ln.Addr().String()}, agentBenchToken)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close(); srv.Close(); <-done })
	return c, dir
}

func agentPercentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func agentUsec(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// agentBinaries builds hearth-fcsim and hearth-agent (static).
func agentBinaries(b *testing.B) (sim, agentBin string) {
	b.Helper()
	return testbin.Build(b, "cmd/hearth-fcsim", "firecracker"), testbin.Build(b, "cmd/hearth-agent", "hearth-agent")
}

// agentViaFcsim runs hearth-agent as the guest process of a simulated
// Firecracker and connects through its hybrid vsock, the production path
// minus the virtio queues (the simulator splices unix sockets instead).
func agentViaFcsim(b *testing.B) *agent.Client {
	b.Helper()
	dir, err := os.MkdirTemp("", "bfc")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	simBin, agentBin := agentBinaries(b)
	api, uds := filepath.Join(dir, "api.sock"), filepath.Join(dir, "v.sock")
	guest := fmt.Sprintf(`[%q,"--token",%q,"--token-file",%q,"--env-file",%q,"--secrets-dir",%q,"--init","never","--cmdline","/nonexistent","--log-level","warn"]`,
		agentBin, agentBenchToken, filepath.Join(dir, "token"), filepath.Join(dir, "env"), filepath.Join(dir, "secrets"))
	sim := exec.Command(simBin, "--api-sock", api, "--id", "bench-agent")
	sim.Env = append(os.Environ(), "HEARTH_FCSIM_GUEST_CMD="+guest, "HEARTH_FCSIM_GUEST_VSOCK_DIR="+filepath.Join(dir, "g"))
	sim.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sim.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sim.Process.Signal(syscall.SIGTERM); _ = sim.Wait() })
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&vsock.UnixDialer{Path: api}).DialContext(ctx)
	}}}
	for _, f := range []string{"vmlinux", "rootfs"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("fake"), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range [][2]string{
		{"/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, uds)},
		{"/machine-config", `{"vcpu_count":1,"mem_size_mib":16}`},
		{"/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, filepath.Join(dir, "vmlinux"))},
		{"/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":false}`, filepath.Join(dir, "rootfs"))},
		{"/actions", `{"action_type":"InstanceStart"}`},
	} {
		req, _ := http.NewRequest("PUT", "http://fc"+c[0], strings.NewReader(c[1]))
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			b.Fatalf("PUT %s: %s", c[0], resp.Status)
		}
	}
	cl, err := agent.Dial(context.Background(), &vsock.HybridDialer{Path: uds, Port: agent.DefaultPort}, agentBenchToken)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cl.Close() })
	return cl
}

// BenchmarkAgentExec measures the round trip of running `true` through
// the agent (request, fork/exec in the agent, exit status back) against
// fork/exec of `true` by the benchmark itself in the same run.
func BenchmarkAgentExec(b *testing.B) {
	c, _ := agentFixture(b)
	ctx := context.Background()
	b.Run("true", func(b *testing.B) {
		var agentD, rawD []time.Duration
		for b.Loop() {
			start := time.Now()
			st, err := c.Exec(ctx, &agent.Cmd{Args: []string{"true"}})
			if err != nil || !st.Success() {
				b.Fatalf("%v %+v", err, st)
			}
			agentD = append(agentD, time.Since(start))
			start = time.Now()
			if err := exec.Command("true").Run(); err != nil {
				b.Fatal(err)
			}
			rawD = append(rawD, time.Since(start))
		}
		ap50, ap99 := agentPercentile(agentD, .5), agentPercentile(agentD, .99)
		rp50, rp99 := agentPercentile(rawD, .5), agentPercentile(rawD, .99)
		b.ReportMetric(agentUsec(ap50), "agent-p50-us")
		b.ReportMetric(agentUsec(ap99), "agent-p99-us")
		b.ReportMetric(agentUsec(rp50), "raw-p50-us")
		b.ReportMetric(agentUsec(rp99), "raw-p99-us")
		b.ReportMetric(agentUsec(ap50-rp50), "overhead-p50-us")
	})
	b.Run("true-via-fcsim-vsock", func(b *testing.B) {
		vc := agentViaFcsim(b)
		var d []time.Duration
		for b.Loop() {
			start := time.Now()
			st, err := vc.Exec(ctx, &agent.Cmd{Args: []string{"true"}})
			if err != nil || !st.Success() {
				b.Fatalf("%v %+v", err, st)
			}
			d = append(d, time.Since(start))
		}
		b.ReportMetric(agentUsec(agentPercentile(d, .5)), "agent-p50-us")
		b.ReportMetric(agentUsec(agentPercentile(d, .99)), "agent-p99-us")
	})
	b.Run("parallel-16", func(b *testing.B) {
		// Many execs share one session: throughput, not latency.
		var wg sync.WaitGroup
		work := make(chan struct{})
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range work {
					if st, err := c.Exec(ctx, &agent.Cmd{Args: []string{"true"}}); err != nil || !st.Success() {
						b.Errorf("%v %+v", err, st)
					}
				}
			}()
		}
		start := time.Now()
		n := 0
		for b.Loop() {
			work <- struct{}{}
			n++
		}
		close(work)
		wg.Wait()
		b.ReportMetric(float64(n)/time.Since(start).Seconds(), "execs/s")
	})
}

// BenchmarkAgentFiles measures file throughput over the channel (PUT
// with SHA-256 and fsync on the agent side, GET with SHA-256), against
// copying the same bytes over a bare unix socket in the same run.
func BenchmarkAgentFiles(b *testing.B) {
	c, dir := agentFixture(b)
	ctx := context.Background()
	const size = 64 << 20
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{7})
	_, _ = rng.Read(data)
	target := filepath.Join(dir, "bench.bin")
	b.Run("put", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			if _, err := c.WriteFile(ctx, target, bytes.NewReader(data), &agent.WriteOptions{Size: size}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("get", func(b *testing.B) {
		if _, err := c.WriteFile(ctx, target, bytes.NewReader(data), &agent.WriteOptions{Size: size}); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(size)
		for b.Loop() {
			if fi, err := c.ReadFile(ctx, target, io.Discard); err != nil || fi.Size != size {
				b.Fatalf("%v %+v", err, fi)
			}
		}
	})
	b.Run("raw-unix-socket", func(b *testing.B) {
		ln, err := net.Listen("unix", filepath.Join(dir, "raw.sock"))
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { _, _ = io.Copy(io.Discard, conn); conn.Close() }()
			}
		}()
		b.SetBytes(size)
		for b.Loop() {
			conn, err := net.Dial("unix", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(conn, bytes.NewReader(data)); err != nil {
				b.Fatal(err)
			}
			conn.Close()
		}
	})
}
