package bench

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/agent/server"
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

func usec(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

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
		b.ReportMetric(usec(ap50), "agent-p50-us")
		b.ReportMetric(usec(ap99), "agent-p99-us")
		b.ReportMetric(usec(rp50), "raw-p50-us")
		b.ReportMetric(usec(rp99), "raw-p99-us")
		b.ReportMetric(usec(ap50-rp50), "overhead-p50-us")
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
