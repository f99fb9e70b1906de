package fcsim

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// guestProcess is the optional host process standing in for software in
// the guest (HEARTH_FCSIM_GUEST_CMD), typically a guest agent listening on
// <guest-vsock-dir>/<port>.sock. It is stopped (SIGSTOP) while the VM is
// paused, continued on resume and killed when the simulator exits.
type guestProcess struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// parseGuestCmd accepts a JSON array or a space-separated command line.
func parseGuestCmd(v string) ([]string, error) {
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, "[") {
		var argv []string
		if err := json.Unmarshal([]byte(v), &argv); err != nil {
			return nil, fmt.Errorf("%s: %w", EnvGuestCmd, err)
		}
		if len(argv) == 0 {
			return nil, fmt.Errorf("%s: empty command", EnvGuestCmd)
		}
		return argv, nil
	}
	argv := strings.Fields(v)
	if len(argv) == 0 {
		return nil, fmt.Errorf("%s: empty command", EnvGuestCmd)
	}
	return argv, nil
}

// startGuestProcess starts the guest process once, when the guest first
// runs (boot, or resume after a snapshot load).
func (s *Sim) startGuestProcess() error {
	v := os.Getenv(EnvGuestCmd)
	if v == "" || s.guest != nil {
		return nil
	}
	argv, err := parseGuestCmd(v)
	if err != nil {
		return err
	}
	dir := ""
	if s.vsock != nil {
		dir = s.vsock.guestDir
	} else if d := os.Getenv(EnvGuestVsockDir); d != "" {
		dir = d
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	// The guest's kernel command line, as a real guest finds it in
	// /proc/cmdline (the agent reads its token there).
	bootArgs := ""
	if s.boot != nil && s.boot.BootArgs != nil {
		bootArgs = *s.boot.BootArgs
	}
	cmd.Env = append(os.Environ(), EnvGuestVsockDir+"="+dir, "HEARTH_FCSIM_VM_ID="+s.opts.ID, "HEARTH_FCSIM_BOOT_ARGS="+bootArgs)
	cmd.Stdout = s.console.w
	cmd.Stderr = s.console.w
	// The guest dies with the VMM even when the simulator is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start guest process: %w", err)
	}
	g := &guestProcess{cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		s.log.Info("guest process exited", "err", err)
		close(g.done)
	}()
	s.guest = g
	s.log.Info("guest process started", "argv", argv, "pid", cmd.Process.Pid, "vsock_dir", dir)
	return nil
}

func (g *guestProcess) signal(sig syscall.Signal) {
	select {
	case <-g.done:
	default:
		_ = g.cmd.Process.Signal(sig)
	}
}

func (g *guestProcess) pause()  { g.signal(syscall.SIGSTOP) }
func (g *guestProcess) resume() { g.signal(syscall.SIGCONT) }

func (g *guestProcess) kill() {
	g.signal(syscall.SIGKILL)
	<-g.done
}
