package metrics

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestReadProcessIOFake(t *testing.T) {
	root := writeTree(t, map[string]string{
		"42/io":     "rchar: 1000\nwchar: 2000\nsyscr: 10\nsyscw: 20\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n",
		"43/io":     "garbage\n",
		"44/stat":   "44 (fire cracker) S 1 44 44 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 98765 1000 100",
		"44/status": "Name:\tfirecracker\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nRssAnon:\t  100000 kB\nRssFile:\t    2400 kB\n",
	})
	old := procRoot
	procRoot = root
	t.Cleanup(func() { procRoot = old })

	io, err := ReadProcessIO(42)
	if err != nil {
		t.Fatal(err)
	}
	if want := (BlockIO{ReadBytes: 4096, WriteBytes: 8192, ReadChars: 1000, WriteChars: 2000, ReadSyscalls: 10, WriteSyscalls: 20}); io != want {
		t.Fatalf("io %+v", io)
	}
	if _, err := ReadProcessIO(43); err == nil {
		t.Fatal("garbage io accepted")
	}
	cpu, err := ReadProcessCPU(44)
	if err != nil || cpu.UsageNanos != 3e9 || cpu.UserNanos != 2.5e9 || cpu.Source != "process" {
		t.Fatalf("cpu %+v %v", cpu, err)
	}
	mem, err := ReadProcessMemory(44)
	if err != nil || mem.UsageBytes != 100<<20 || mem.PeakBytes != 200<<20 || mem.Source != "process" {
		t.Fatalf("mem %+v %v", mem, err)
	}
}

func TestReadProcessReal(t *testing.T) {
	pid := os.Getpid()
	if _, err := ReadProcessCPU(pid); err != nil {
		t.Fatal(err)
	}
	if m, err := ReadProcessMemory(pid); err != nil || m.UsageBytes == 0 {
		t.Fatalf("%+v %v", m, err)
	}
	if _, err := os.Stat("/proc/self/io"); err == nil {
		if _, err := ReadProcessIO(pid); err != nil {
			t.Fatal(err)
		}
	}
}

func TestParseProcNetDev(t *testing.T) {
	in := `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
hth-tap0: 123456     789    1    2    0     0          0         0   654321      987    0    3    0     0       0          0
`
	got, err := parseProcNetDev([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := NetStats{Device: "hth-tap0", RxBytes: 123456, RxPackets: 789, RxDropped: 2, TxBytes: 654321, TxPackets: 987, TxDropped: 3}
	if got["hth-tap0"] != want || got["lo"].RxBytes != 1000 {
		t.Fatalf("%+v", got)
	}
	if _, err := parseProcNetDev([]byte("header only\n")); err == nil {
		t.Fatal("no devices accepted")
	}
}

func TestReadNetStatsSysfsFake(t *testing.T) {
	files := map[string]string{}
	for k, v := range map[string]int{"rx_bytes": 100, "rx_packets": 2, "rx_dropped": 0, "tx_bytes": 300, "tx_packets": 4, "tx_dropped": 1} {
		files["tap0/statistics/"+k] = strconv.Itoa(v) + "\n"
	}
	root := writeTree(t, files)
	old := sysClassNet
	sysClassNet = root
	t.Cleanup(func() { sysClassNet = old })
	got, err := ReadNetStats("", []string{"tap0"})
	if err != nil || len(got) != 1 || got[0] != (NetStats{Device: "tap0", RxBytes: 100, RxPackets: 2, TxBytes: 300, TxPackets: 4, TxDropped: 1}) {
		t.Fatalf("%+v %v", got, err)
	}
	got, err = ReadNetStats("", []string{"tap0", "missing", "../etc"})
	if err == nil || len(got) != 1 {
		t.Fatalf("missing devices: %+v %v", got, err)
	}
}

// TestReadNetStatsInNetNS creates a network namespace (held by a sleep
// process) with a TAP in it, injects one frame into the TAP (which the
// namespace's own stack receives and drops: no traffic leaves it), and
// reads the counters from outside through the namespace path.
func TestReadNetStatsInNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and TAP devices")
	}
	holder := exec.Command("sleep", "30")
	holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := holder.Start(); err != nil {
		t.Skipf("cannot create a network namespace: %v", err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	ns := fmt.Sprintf("/proc/%d/ns/net", holder.Process.Pid)

	const dev = "hth-mtest0"
	frame := make([]byte, 60)
	copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5})
	tapFd, err := inNetNS(ns, func() (int, error) {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		ifr, err := unix.NewIfreq(dev)
		if err != nil {
			unix.Close(fd)
			return -1, err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("TUNSETIFF: %w", err)
		}
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			unix.Close(fd)
			return -1, err
		}
		defer unix.Close(s)
		up, _ := unix.NewIfreq(dev)
		if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, up); err != nil {
			unix.Close(fd)
			return -1, err
		}
		up.SetUint16(up.Uint16() | unix.IFF_UP)
		if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, up); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("set %s up: %w", dev, err)
		}
		return fd, nil
	})
	if err != nil {
		t.Skipf("cannot create a TAP in the namespace: %v", err)
	}
	t.Cleanup(func() { unix.Close(tapFd) }) // a non-persistent TAP goes with its fd
	for range 3 {
		if _, err := unix.Write(tapFd, frame); err != nil {
			t.Fatalf("inject frame: %v", err)
		}
	}
	var got []NetStats
	deadline := time.Now().Add(2 * time.Second)
	for {
		got, err = ReadNetStats(ns, []string{dev})
		if err != nil {
			t.Fatal(err)
		}
		if got[0].RxPackets >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got[0].RxPackets != 3 || got[0].RxBytes != 3*uint64(len(frame)) {
		t.Fatalf("%+v, want 3 packets of %d bytes received", got[0], len(frame))
	}
	// The device is not in the caller's namespace.
	if b, _ := os.ReadFile("/proc/self/net/dev"); bytes.Contains(b, []byte(dev)) {
		t.Fatal("TAP visible in the root namespace")
	}
	if _, err := ReadNetStats(ns, []string{"nope0"}); err == nil {
		t.Fatal("missing device in netns not reported")
	}
}

// inNetNS runs fn on a locked thread inside the namespace at ns.
func inNetNS(ns string, fn func() (int, error)) (int, error) {
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- res{-1, err}
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- res{-1, err}
			return
		}
		err = unix.Setns(target, unix.CLONE_NEWNET)
		unix.Close(target)
		if err != nil {
			ch <- res{-1, err}
			return
		}
		fd, err := fn()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- res{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

func osPid() int { return os.Getpid() }
