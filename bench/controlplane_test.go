package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/firecracker"
	"github.com/hearth-vm/hearth/vmm/memvmm"
)

var (
	simOnce sync.Once
	simPath string
	simErr  error
)

// simulator builds the Firecracker simulator once.
func simulator(b *testing.B) string {
	b.Helper()
	simOnce.Do(func() {
		dir, err := os.MkdirTemp("", "bench-fc")
		if err != nil {
			simErr = err
			return
		}
		simPath = filepath.Join(dir, "firecracker")
		cmd := exec.Command("go", "build", "-o", simPath, "../cmd/hearth-fcsim")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			simErr = errors.New(string(out))
		}
	})
	if simErr != nil {
		b.Fatalf("build simulator: %v", simErr)
	}
	return simPath
}

type cpFixture struct {
	dir  string
	spec hearth.Spec
	rt   *hearth.Runtime
}

func newCP(b *testing.B) *cpFixture {
	b.Helper()
	dir, err := os.MkdirTemp("", "bcp")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	k, r := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4")
	os.WriteFile(k, []byte("k"), 0o600)
	os.WriteFile(r, make([]byte, 1<<20), 0o600)
	fc, err := firecracker.New(firecracker.Options{Binary: simulator(b), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	rt, err := hearth.Open(context.Background(), hearth.Config{StateDir: filepath.Join(dir, "s"), Backends: []vmm.Backend{fc}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rt.Close() })
	// Read-only rootfs: the rootfs clone is measured in the rootfs
	// benchmarks; here only the control plane counts.
	return &cpFixture{dir: dir, rt: rt, spec: hearth.Spec{Kernel: k, Rootfs: r, RootfsReadOnly: true, VCPUs: 1, MemoryMiB: 32}}
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p * float64(len(s)-1))
	return s[i]
}

// rawCreate is the baseline: the same VMM work hearth does — spawn the
// VMM, wait for its socket with the same backoff, send the same requests
// (logger, metrics, machine config, boot source, root drive,
// InstanceStart) — with no store, no pipeline, no records. hearth's
// control-plane overhead is its time minus this.
func rawCreate(b *testing.B, bin, dir, kernel, rootfs string) (*exec.Cmd, time.Duration) {
	t0 := time.Now()
	sock := filepath.Join(dir, "api.sock")
	cmd := exec.Command(bin, "--api-sock", sock, "--id", "raw")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for wait := 2 * time.Millisecond; ; wait = min(wait*2, 100*time.Millisecond) {
		if resp, err := c.Get("http://fc/"); err == nil {
			resp.Body.Close()
			break
		}
		time.Sleep(wait)
	}
	put := func(path, body string) {
		req, _ := http.NewRequest("PUT", "http://fc"+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil || resp.StatusCode != 204 {
			b.Fatalf("PUT %s: %v %v", path, resp, err)
		}
		resp.Body.Close()
	}
	put("/logger", fmt.Sprintf(`{"log_path":%q,"level":"Warning"}`, filepath.Join(dir, "fc.log")))
	put("/metrics", fmt.Sprintf(`{"metrics_path":%q}`, filepath.Join(dir, "metrics.json")))
	put("/machine-config", `{"vcpu_count":1,"mem_size_mib":32}`)
	put("/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":"console=ttyS0"}`, kernel))
	put("/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":true}`, rootfs))
	put("/actions", `{"action_type":"InstanceStart"}`)
	d := time.Since(t0)
	c.CloseIdleConnections()
	return cmd, d
}

// BenchmarkControlPlane measures create→running on the Firecracker
// simulator (no guest boot: the simulator's guest is ready at once)
// against the raw baseline, and concurrent creates against a single one.
func BenchmarkControlPlane(b *testing.B) {
	const samples = 30
	f := newCP(b)
	ctx := context.Background()
	bin := simulator(b)

	b.Run("sequential", func(b *testing.B) {
		var hearthD, rawD []time.Duration
		for i := 0; i < b.N; i++ {
			for j := 0; j < samples; j++ {
				id := fmt.Sprintf("s%d-%d", i, j)
				t0 := time.Now()
				if _, err := f.rt.Create(ctx, id, f.spec); err != nil {
					b.Fatal(err)
				}
				if _, err := f.rt.Start(ctx, id); err != nil {
					b.Fatal(err)
				}
				hearthD = append(hearthD, time.Since(t0))
				if err := f.rt.Destroy(ctx, id); err != nil {
					b.Fatal(err)
				}
				rdir, _ := os.MkdirTemp(f.dir, "raw")
				cmd, d := rawCreate(b, bin, rdir, f.spec.Kernel, f.spec.Rootfs)
				rawD = append(rawD, d)
				cmd.Process.Kill()
				cmd.Wait()
			}
		}
		hp50, hp99 := percentile(hearthD, .5), percentile(hearthD, .99)
		rp50, rp99 := percentile(rawD, .5), percentile(rawD, .99)
		b.ReportMetric(float64(hp50.Microseconds())/1000, "hearth-p50-ms")
		b.ReportMetric(float64(hp99.Microseconds())/1000, "hearth-p99-ms")
		b.ReportMetric(float64(rp50.Microseconds())/1000, "raw-p50-ms")
		b.ReportMetric(float64(rp99.Microseconds())/1000, "raw-p99-ms")
		b.ReportMetric(float64((hp50-rp50).Microseconds())/1000, "overhead-p50-ms")
		b.ReportMetric(float64((hp99-rp99).Microseconds())/1000, "overhead-p99-ms")
	})

	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("concurrent-%d", n), func(b *testing.B) {
			var one, all time.Duration
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				id := fmt.Sprintf("one%d", i)
				if _, err := f.rt.Create(ctx, id, f.spec); err != nil {
					b.Fatal(err)
				}
				if _, err := f.rt.Start(ctx, id); err != nil {
					b.Fatal(err)
				}
				one += time.Since(t0)
				f.rt.Destroy(ctx, id)

				var wg sync.WaitGroup
				errs := make(chan error, n)
				t0 = time.Now()
				for j := 0; j < n; j++ {
					wg.Add(1)
					go func(j int) {
						defer wg.Done()
						id := fmt.Sprintf("c%d-%d", i, j)
						if _, err := f.rt.Create(ctx, id, f.spec); err != nil {
							errs <- err
							return
						}
						if _, err := f.rt.Start(ctx, id); err != nil {
							errs <- err
						}
					}(j)
				}
				wg.Wait()
				all += time.Since(t0)
				close(errs)
				for err := range errs {
					b.Fatal(err)
				}
				for j := 0; j < n; j++ {
					f.rt.Destroy(ctx, fmt.Sprintf("c%d-%d", i, j))
				}
			}
			b.ReportMetric(float64(one.Microseconds())/1000/float64(b.N), "one-create-ms")
			b.ReportMetric(float64(all.Microseconds())/1000/float64(b.N), "all-creates-ms")
			b.ReportMetric(float64(all)/float64(one), "x-one-create")
			b.ReportMetric(float64(n)*float64(b.N)/all.Seconds(), "vms/s")
		})
	}
}

// BenchmarkRuntimeConcurrency isolates hearth's own concurrency from VMM
// process start-up (which, on the simulator, is CPU-bound on small
// machines): the in-memory backend, 100 concurrent creates+starts against
// one. Target (DESIGN §15): within 3× of one create.
func BenchmarkRuntimeConcurrency(b *testing.B) {
	dir := b.TempDir()
	k, r := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4")
	os.WriteFile(k, []byte("k"), 0o600)
	os.WriteFile(r, []byte("r"), 0o600)
	rt, err := hearth.Open(context.Background(), hearth.Config{StateDir: filepath.Join(dir, "s"), Backends: []vmm.Backend{memvmm.New()}})
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close()
	spec := hearth.Spec{Kernel: k, Rootfs: r, RootfsReadOnly: true}
	ctx := context.Background()
	const n = 100
	var one, all time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := rt.Create(ctx, fmt.Sprint("one", i), spec); err != nil {
			b.Fatal(err)
		}
		if _, err := rt.Start(ctx, fmt.Sprint("one", i)); err != nil {
			b.Fatal(err)
		}
		one += time.Since(t0)
		var wg sync.WaitGroup
		t0 = time.Now()
		for j := 0; j < n; j++ {
			wg.Add(1)
			go func(id string) {
				defer wg.Done()
				if _, err := rt.Create(ctx, id, spec); err != nil {
					b.Error(err)
					return
				}
				if _, err := rt.Start(ctx, id); err != nil {
					b.Error(err)
				}
			}(fmt.Sprintf("c%d-%d", i, j))
		}
		wg.Wait()
		all += time.Since(t0)
		views, _ := rt.List(ctx)
		for _, v := range views {
			rt.Destroy(ctx, v.ID)
		}
	}
	b.ReportMetric(float64(one.Microseconds())/1000/float64(b.N), "one-create-ms")
	b.ReportMetric(float64(all.Microseconds())/1000/float64(b.N), "100-creates-ms")
	b.ReportMetric(float64(all)/float64(one), "x-one-create")
}
