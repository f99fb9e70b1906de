package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/api/client"
	"github.com/hearth-vm/hearth/internal/testbin"
)

// The daemon benchmarks run `hearth serve` as its own process, as an
// operator does, fill it with idle VMs through the API and measure what
// the daemon holds per VM (its resident set, from /proc) and how long
// listing them takes (GET /v1/vms and the `hearth ps` command).
//
// Two backends, because each is honest about something different:
//   - the Firecracker simulator: the daemon holds everything it holds for a
//     real Firecracker VM (the machine's API client, pidfd, exit watch,
//     metrics FIFO drain, console, record); each VM is also a real VMM
//     process (about 9 MiB), so this runs with fewer VMs (HEARTH_BENCH_FC_VMS,
//     default 200);
//   - the in-memory backend with 1,000 VMs: the daemon's records, views,
//     store and API at full scale, without any VMM process; its per-VM
//     machine is smaller than Firecracker's, so its RSS per VM is a lower
//     bound and the simulator's figure is the one to hold against the
//     200 KiB target.

// hearthBinary builds cmd/hearth once.
func hearthBinary(b *testing.B) string {
	b.Helper()
	return testbin.Build(b, "cmd/hearth", "hearth")
}

// daemon is a running `hearth serve`.
type daemon struct {
	cmd    *exec.Cmd
	socket string
	c      *client.Client
	spec   hearth.Spec
}

func startDaemon(b *testing.B, backend string) *daemon {
	b.Helper()
	bin := hearthBinary(b)
	dir, err := os.MkdirTemp("", "bdm")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	k, r := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4")
	os.WriteFile(k, []byte("k"), 0o600)
	os.WriteFile(r, make([]byte, 1<<20), 0o600)
	d := &daemon{socket: filepath.Join(dir, "h.sock"),
		spec: hearth.Spec{Kernel: k, Rootfs: r, RootfsReadOnly: true, VCPUs: 1, MemoryMiB: 32}}
	args := []string{"serve", "--backend", backend, "--socket", d.socket, "--state-dir", filepath.Join(dir, "s"), "--stop-vms-on-exit"}
	if backend == "firecracker" {
		args = append(args, "--firecracker-bin", simulator(b))
	}
	d.cmd = exec.Command(bin, args...)
	// Idle guests: the simulated guest's periodic work would otherwise
	// wake hundreds of processes ten times a second.
	d.cmd.Env = append(os.Environ(), "HEARTH_FCSIM_TICK=1h")
	d.cmd.Stderr = nil
	if err := d.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		d.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Minute):
			d.cmd.Process.Kill()
			<-done
		}
	})
	d.c = client.New(d.socket)
	b.Cleanup(func() { d.c.Close() })
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := d.c.System(context.Background()); err == nil {
			return d
		} else if time.Now().After(deadline) {
			b.Fatalf("daemon did not answer: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rssKiB is a process's resident set in KiB.
func rssKiB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, errors.New("no VmRSS")
}

// settledRSS samples the daemon's RSS a few times over a second and
// keeps the lowest, so a transient allocation does not count.
func (d *daemon) settledRSS(b *testing.B) int64 {
	var best int64
	for i := 0; i < 5; i++ {
		time.Sleep(200 * time.Millisecond)
		v, err := rssKiB(d.cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		if best == 0 || v < best {
			best = v
		}
	}
	return best
}

// fill creates and starts VMs [from, to) with a few concurrent clients.
func (d *daemon) fill(b *testing.B, from, to int) {
	ctx := context.Background()
	ids := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ids {
				if _, err := d.c.CreateAndStart(ctx, fmt.Sprintf("idle-%04d", i), d.spec); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := from; i < to; i++ {
		ids <- i
	}
	close(ids)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
}

// drain destroys every VM.
func (d *daemon) drain(b *testing.B) {
	ctx := context.Background()
	vs, err := d.c.List(ctx)
	if err != nil {
		b.Fatal(err)
	}
	ids := make(chan string)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				d.c.Destroy(ctx, id)
			}
		}()
	}
	for _, v := range vs {
		ids <- v.ID
	}
	close(ids)
	wg.Wait()
}

// listLatency times n GET /v1/vms and checks the count.
func (d *daemon) listLatency(b *testing.B, n, want int) []time.Duration {
	ctx := context.Background()
	out := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		t0 := time.Now()
		vs, err := d.c.List(ctx)
		out = append(out, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		if len(vs) != want {
			b.Fatalf("listed %d VMs, want %d", len(vs), want)
		}
	}
	return out
}

// cliLatency times n runs of the hearth binary with args.
func (d *daemon) cliLatency(b *testing.B, n int, args ...string) []time.Duration {
	bin := hearthBinary(b)
	out := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		cmd := exec.Command(bin, append(args, "--socket", d.socket)...)
		t0 := time.Now()
		if o, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("hearth %v: %v: %s", args, err, o)
		}
		out = append(out, time.Since(t0))
	}
	return out
}

// vmmRSS is the mean RSS of the VMs' VMM processes (none on the
// in-memory backend).
func (d *daemon) vmmRSS(b *testing.B) (float64, int) {
	vs, err := d.c.List(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	var sum int64
	n := 0
	for _, v := range vs {
		if v.Pid <= 0 {
			continue
		}
		if kib, err := rssKiB(v.Pid); err == nil {
			sum += kib
			n++
		}
	}
	if n == 0 {
		return 0, 0
	}
	return float64(sum) / float64(n), n
}

// BenchmarkDaemonScale: RSS per idle VM and list latency with many VMs,
// each against its baseline in the same daemon: the RSS with no VM, the
// list latency with no VM, `hearth version` for the CLI's own start-up,
// and (on the simulator) the RSS of one VMM process.
func BenchmarkDaemonScale(b *testing.B) {
	fcVMs := 200
	if v, err := strconv.Atoi(os.Getenv("HEARTH_BENCH_FC_VMS")); err == nil && v > 0 {
		fcVMs = v
	}
	for _, c := range []struct {
		backend string
		n       int
	}{{"mem", 1000}, {"firecracker", fcVMs}} {
		b.Run(fmt.Sprintf("%s-%d", c.backend, c.n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				benchDaemon(b, c.backend, c.n)
			}
		})
	}
}

func benchDaemon(b *testing.B, backend string, n int) {
	d := startDaemon(b, backend)
	// Warm the code paths (and the netns-free backend's first-use
	// allocations) so the zero-VM baseline is a working daemon.
	d.fill(b, 0, 8)
	d.drain(b)
	rss0 := d.settledRSS(b)
	list0 := d.listLatency(b, 30, 0)
	half := n / 2
	d.fill(b, 0, half)
	rssHalf := d.settledRSS(b)
	d.fill(b, half, n)
	rssN := d.settledRSS(b)
	listN := d.listLatency(b, 30, n)
	ps := d.cliLatency(b, 10, "ps")
	version := d.cliLatency(b, 10, "version")

	perVM := float64(rssN-rss0) / float64(n)
	b.ReportMetric(float64(rss0), "rss-0-KiB")
	b.ReportMetric(float64(rssN), "rss-n-KiB")
	b.ReportMetric(perVM, "rss-KiB/vm")
	// The second half alone: one-time growth (pools, tables) is already
	// paid, so this is the marginal cost of one more VM.
	b.ReportMetric(float64(rssN-rssHalf)/float64(n-half), "rss-marginal-KiB/vm")
	if v, k := d.vmmRSS(b); k > 0 {
		b.ReportMetric(v, "vmm-rss-KiB")
		b.ReportMetric(perVM/v, "x-vmm-rss")
	}
	b.ReportMetric(ms(percentile(listN, .5)), "list-p50-ms")
	b.ReportMetric(ms(percentile(listN, .99)), "list-p99-ms")
	b.ReportMetric(ms(percentile(list0, .5)), "list-empty-p50-ms")
	b.ReportMetric(float64(percentile(listN, .5))/float64(percentile(list0, .5)), "x-list-empty")
	b.ReportMetric(ms(percentile(ps, .5)), "ps-p50-ms")
	b.ReportMetric(ms(percentile(version, .5)), "version-p50-ms")
	b.ReportMetric(float64(percentile(ps, .5))/float64(percentile(version, .5)), "x-version")
	saveSamples(b, map[string][]time.Duration{
		fmt.Sprintf("GET /v1/vms, %d VMs", n): listN, "GET /v1/vms, 0 VMs": list0,
		fmt.Sprintf("hearth ps, %d VMs", n): ps, "hearth version": version,
	})
	d.drain(b)
}
