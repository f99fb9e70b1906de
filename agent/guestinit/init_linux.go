package guestinit

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hearth-vm/hearth/agent/server"
)

// PrepareConfig says what Prepare does.
type PrepareConfig struct {
	Cmdline *Cmdline
	// Mount mounts EssentialMounts and creates DevLinks.
	Mount bool
	// ResolvConf is written from hearth.ip's DNS servers
	// (default /etc/resolv.conf).
	ResolvConf string
	Log        *slog.Logger
}

// Prepare readies the guest before the agent starts: mounts, hostname,
// network, entropy. Every step is attempted; the failures come back
// joined, for the log: init carries on regardless.
func Prepare(cfg PrepareConfig) error {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var errs []error
	if cfg.Mount {
		if err := MountAll(SystemMounter{}, EssentialMounts, log); err != nil {
			errs = append(errs, err)
		}
		if err := MakeDevLinks("/"); err != nil {
			errs = append(errs, fmt.Errorf("dev links: %w", err))
		}
	}
	cl := cfg.Cmdline
	if cl == nil {
		return errors.Join(errs...)
	}
	if cl.Hostname != "" {
		if err := unix.Sethostname([]byte(cl.Hostname)); err != nil {
			errs = append(errs, fmt.Errorf("hostname: %w", err))
		} else {
			log.Info("init: hostname set", "hostname", cl.Hostname)
		}
	}
	if cl.IP != nil {
		// Route netlink only: without arguments the handle also opens
		// XFRM and netfilter sockets, which a kernel with those as
		// unloaded modules (Debian's cloud kernel) refuses with
		// EPROTONOSUPPORT.
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			errs = append(errs, fmt.Errorf("netlink: %w", err))
		} else {
			iface, err := ApplyNetwork(h, cl.Iface, cl.IP)
			h.Close()
			if err != nil {
				errs = append(errs, fmt.Errorf("network: %w", err))
			} else {
				log.Info("init: network configured", "iface", iface, "ip", cl.IP.String())
			}
		}
		rc := cfg.ResolvConf
		if rc == "" {
			rc = "/etc/resolv.conf"
		}
		if err := WriteResolvConf(rc, cl.IP); err != nil {
			errs = append(errs, fmt.Errorf("resolv.conf: %w", err))
		}
	}
	if len(cl.Entropy) > 0 {
		credited, err := server.AddEntropy("/dev/urandom", cl.Entropy)
		if err != nil {
			errs = append(errs, fmt.Errorf("entropy: %w", err))
		} else {
			log.Info("init: entropy seeded", "bytes", len(cl.Entropy), "credited", credited)
		}
	}
	return errors.Join(errs...)
}

// Init supervises the agent as PID 1.
type Init struct {
	// Path, Args and Env start the agent child.
	Path string
	Args []string
	Env  []string
	// Stdout and Stderr of the child (the console).
	Stdout, Stderr io.Writer
	Log            *slog.Logger
	// ShutdownGrace is how long processes get between SIGTERM and
	// SIGKILL at shutdown (3 s).
	ShutdownGrace time.Duration
	// KillAll signals every process but init (kill(-1, sig)); Reboot
	// performs the final reboot(2). Tests replace neither lightly: the
	// defaults act on the whole (PID namespace of the) machine.
	KillAll func(sig syscall.Signal) error
	Reboot  func(cmd int) error
}

// Power actions as reboot(2) commands.
const (
	CmdPowerOff = unix.LINUX_REBOOT_CMD_POWER_OFF
	CmdRestart  = unix.LINUX_REBOOT_CMD_RESTART
)

// Run starts the agent and supervises it until a shutdown signal, then
// shuts the guest down. It returns only if the final reboot(2) fails.
func (in *Init) Run() error {
	log := in.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if in.ShutdownGrace <= 0 {
		in.ShutdownGrace = 3 * time.Second
	}
	if in.KillAll == nil {
		in.KillAll = func(sig syscall.Signal) error { return syscall.Kill(-1, sig) }
	}
	if in.Reboot == nil {
		in.Reboot = func(cmd int) error {
			unix.Sync()
			return unix.Reboot(cmd)
		}
	}
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPWR, syscall.SIGHUP)
	defer signal.Stop(sigs)
	// Ctrl-Alt-Del becomes SIGINT to init instead of an immediate reboot.
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF); err != nil {
		log.Debug("init: cannot disable ctrl-alt-del", "err", err)
	}

	var child *os.Process
	restart := make(chan struct{}, 1)
	backoff := 100 * time.Millisecond
	var started time.Time
	start := func() {
		null, _ := os.Open(os.DevNull)
		p, err := os.StartProcess(in.Path, in.Args, &os.ProcAttr{
			Env:   in.Env,
			Files: []*os.File{null, fileOr(in.Stdout, os.Stdout), fileOr(in.Stderr, os.Stderr)},
		})
		if null != nil {
			null.Close()
		}
		if err != nil {
			log.Error("init: start agent", "err", err)
			time.AfterFunc(backoff, func() { restart <- struct{}{} })
			backoff = min(backoff*2, 5*time.Second)
			return
		}
		child, started = p, time.Now()
		log.Info("init: agent started", "child", p.Pid)
	}
	start()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGCHLD:
			case syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPWR:
				return in.shutdown(CmdPowerOff, log)
			case syscall.SIGTERM, syscall.SIGINT:
				return in.shutdown(CmdRestart, log)
			default:
				continue
			}
		case <-tick.C:
			// A safety net for coalesced SIGCHLDs.
		case <-restart:
			start()
			continue
		}
		for _, r := range reapAll() {
			if child == nil || r.pid != child.Pid {
				continue
			}
			log.Warn("init: agent exited, restarting", "child", r.pid, "status", r.status.ExitStatus(), "signal", r.status.Signal(), "ran", time.Since(started))
			child.Release()
			child = nil
			if time.Since(started) > 10*time.Second {
				backoff = 100 * time.Millisecond
			}
			time.AfterFunc(backoff, func() { restart <- struct{}{} })
			backoff = min(backoff*2, 5*time.Second)
		}
	}
}

type reaped struct {
	pid    int
	status syscall.WaitStatus
}

// reapAll collects every exited child without blocking.
func reapAll() []reaped {
	var out []reaped
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return out
		}
		out = append(out, reaped{pid: pid, status: ws})
	}
}

// hasChildren reports whether any child (running or zombie) remains.
func hasChildren() bool {
	// Reaping here is fine: the caller reaps everything anyway.
	var ws syscall.WaitStatus
	_, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
	return !errors.Is(err, syscall.ECHILD)
}

func (in *Init) shutdown(cmd int, log *slog.Logger) error {
	what := "power off"
	if cmd == CmdRestart {
		what = "reboot"
	}
	log.Info("init: shutting down", "action", what)
	_ = in.KillAll(syscall.SIGTERM)
	deadline := time.Now().Add(in.ShutdownGrace)
	for time.Now().Before(deadline) {
		reapAll()
		if !hasChildren() {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = in.KillAll(syscall.SIGKILL)
	for end := time.Now().Add(time.Second); time.Now().Before(end) && hasChildren(); {
		reapAll()
		time.Sleep(10 * time.Millisecond)
	}
	if err := in.Reboot(cmd); err != nil {
		return fmt.Errorf("init: %s: %w", what, err)
	}
	return nil
}

func fileOr(w io.Writer, def *os.File) *os.File {
	if f, ok := w.(*os.File); ok {
		return f
	}
	return def
}
