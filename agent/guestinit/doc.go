// Package guestinit does what hearth-agent must do when it is the guest's
// init (PID 1): mount the essential filesystems, set the hostname, apply
// the network configuration the host put on the kernel command line,
// seed the entropy pool, then supervise the agent (run as a child
// process, restarted if it dies) while reaping every orphan, and shut the
// guest down cleanly on request.
//
// Kernel command line contract (all optional):
//
//	hearth.token=<token>                       agent token
//	hearth.ip=<addr>/<prefix>[,<gw>[,<dns>...]] IPv4 or IPv6, e.g. 172.30.0.2/24,172.30.0.1,1.1.1.1
//	hearth.iface=<name>                        interface for hearth.ip (default: eth0, else the first non-loopback link)
//	hearth.hostname=<name>
//	hearth.entropy=<hex>                       seed bytes for the random pool
//	hearth.debug=1                             debug logging
//
// Why the agent runs as a child of init rather than in init itself: Go's
// os/exec waits for its children by pid, and an init that reaps every
// child with wait4(-1) would steal those exit statuses; a crash of the
// agent would also panic the kernel (init must never exit). The init
// loop is small and does not serve requests.
//
// Signals to init (busybox conventions): SIGUSR2 or SIGPWR power off,
// SIGTERM reboots, SIGINT (what the kernel sends on Ctrl-Alt-Del, which
// init disables so Firecracker's SendCtrlAltDel arrives as a signal)
// reboots. On Firecracker with reboot=k a reboot ends the VMM.
//
// Nothing here runs unless the process is init (or asked to act like
// one); the package must not change the host when imported by tests.
package guestinit
