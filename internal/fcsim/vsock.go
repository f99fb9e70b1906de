package fcsim

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// vsockDevice is Firecracker's hybrid vsock: a unix socket at uds_path
// where host processes connect and ask for a guest port with
// "CONNECT <port>\n". The simulated guest's listeners are unix sockets
// <guest-vsock-dir>/<port>.sock, so a guest agent can run as a host process.
type vsockDevice struct {
	sim      *Sim
	cfg      vsockConfig
	guestDir string
	ln       *net.UnixListener

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	nextPort uint32
	closed   bool
	wakeCh   chan struct{} // closed and replaced when the VM resumes
}

// guestVsockDir is where the simulated guest listens.
func guestVsockDir(udsPath string) string {
	if d := os.Getenv(EnvGuestVsockDir); d != "" {
		return d
	}
	return udsPath + ".guest"
}

func newVsockDevice(s *Sim, cfg vsockConfig) (*vsockDevice, error) {
	// Like Firecracker, bind fails when the path exists: the manager must
	// remove a stale socket (or use vsock_override on restore).
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.UdsPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("bind %s: %w", cfg.UdsPath, err)
	}
	// Leave the socket file behind on close, as Firecracker does.
	ln.SetUnlinkOnClose(false)
	d := &vsockDevice{
		sim:      s,
		cfg:      cfg,
		guestDir: guestVsockDir(cfg.UdsPath),
		ln:       ln,
		conns:    map[net.Conn]struct{}{},
		nextPort: 1 << 30, // Firecracker's first host-side ephemeral port
		wakeCh:   make(chan struct{}),
	}
	if err := os.MkdirAll(d.guestDir, 0o700); err != nil {
		ln.Close()
		return nil, fmt.Errorf("create guest vsock dir: %w", err)
	}
	go d.acceptLoop()
	s.log.Info("vsock device listening", "uds_path", cfg.UdsPath, "guest_cid", cfg.GuestCID, "guest_dir", d.guestDir)
	return d, nil
}

func (d *vsockDevice) acceptLoop() {
	for {
		c, err := d.ln.AcceptUnix()
		if err != nil {
			return
		}
		if !d.track(c) {
			c.Close()
			return
		}
		go d.serve(c)
	}
}

func (d *vsockDevice) track(c net.Conn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.conns[c] = struct{}{}
	return true
}

func (d *vsockDevice) untrack(c net.Conn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.conns, c)
}

// waitRunning blocks until the guest runs: a connection request reaches
// the guest only when its vCPUs do. It returns false if the device closes.
func (d *vsockDevice) waitRunning() bool {
	for {
		d.sim.mu.Lock()
		running := d.sim.state == stateRunning
		d.sim.mu.Unlock()
		if running {
			return true
		}
		d.mu.Lock()
		ch, closed := d.wakeCh, d.closed
		d.mu.Unlock()
		if closed {
			return false
		}
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// wake releases connections waiting for the guest to run.
func (d *vsockDevice) wake() {
	d.mu.Lock()
	defer d.mu.Unlock()
	close(d.wakeCh)
	d.wakeCh = make(chan struct{})
}

func (d *vsockDevice) serve(host net.Conn) {
	defer d.untrack(host)
	defer host.Close()
	br := bufio.NewReaderSize(host, 64)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	f := strings.Fields(strings.TrimSpace(line))
	if len(f) != 2 || f[0] != "CONNECT" {
		d.sim.log.Debug("vsock: bad connection request", "line", strings.TrimSpace(line))
		return
	}
	port, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil {
		return
	}
	if !d.waitRunning() {
		return
	}
	guestPath := filepath.Join(d.guestDir, fmt.Sprintf("%d.sock", port))
	guest, err := net.Dial("unix", guestPath)
	if err != nil {
		// Nobody listens on that port in the guest: Firecracker resets
		// the connection without an answer.
		d.sim.log.Debug("vsock: guest not listening", "port", port, "err", err)
		d.sim.metrics.inc("vsock.conns_killed")
		return
	}
	if !d.track(guest) {
		guest.Close()
		return
	}
	defer d.untrack(guest)
	defer guest.Close()
	d.mu.Lock()
	hostPort := d.nextPort
	d.nextPort++
	d.mu.Unlock()
	if _, err := fmt.Fprintf(host, "OK %d\n", hostPort); err != nil {
		return
	}
	d.sim.metrics.inc("vsock.conns_added")
	d.sim.log.Debug("vsock: connected", "port", port, "host_port", hostPort)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		// br may hold bytes the host sent right after the CONNECT line.
		n, _ := io.Copy(guest, br)
		d.sim.metrics.add("vsock.tx_bytes_count", uint64(n))
		closeWrite(guest)
	}()
	go func() {
		defer wg.Done()
		n, _ := io.Copy(host, guest)
		d.sim.metrics.add("vsock.rx_bytes_count", uint64(n))
		closeWrite(host)
	}()
	wg.Wait()
	d.sim.metrics.inc("vsock.conns_removed")
}

func closeWrite(c net.Conn) {
	if uc, ok := c.(*net.UnixConn); ok {
		_ = uc.CloseWrite()
		return
	}
	c.Close()
}

// reset closes every open connection: a snapshot resets the vsock device
// and the guest driver drops its connections.
func (d *vsockDevice) reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for c := range d.conns {
		c.Close()
	}
	clear(d.conns)
}

func (d *vsockDevice) close() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.closed = true
	close(d.wakeCh)
	d.wakeCh = make(chan struct{})
	d.mu.Unlock()
	d.ln.Close()
	d.reset()
}
