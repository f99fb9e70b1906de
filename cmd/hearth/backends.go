package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os/exec"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/firewall"
	"github.com/hearth-vm/hearth/jail"
	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/firecracker"
	"github.com/hearth-vm/hearth/vmm/memvmm"
	"github.com/hearth-vm/hearth/vmm/qemu"
	"github.com/spf13/pflag"
)

// backendFlags select and configure the VMM backends of an in-process
// runtime (serve, demo).
type backendFlags struct {
	backend        string
	firecrackerBin string
	jailerBin      string
	useJailer      bool
	qemuBin        string
	accel          string
	netMode        string
	egressIface    string
	firewall       string
}

func (f *backendFlags) register(fs *pflag.FlagSet, def string) {
	fs.StringVar(&f.backend, "backend", def, "VMM backend: auto, firecracker, qemu, mem (auto: firecracker when found, else qemu)")
	fs.StringVar(&f.qemuBin, "qemu-bin", "qemu-system-x86_64", "QEMU binary (name in PATH or path)")
	fs.StringVar(&f.accel, "accel", "tcg", "QEMU accelerator: tcg, kvm or auto")
	fs.StringVar(&f.firecrackerBin, "firecracker-bin", "firecracker", "Firecracker binary (name in PATH or path)")
	fs.StringVar(&f.jailerBin, "jailer-bin", "", "jailer binary; set to run VMMs under the jailer")
	fs.BoolVar(&f.useJailer, "jailer", false, "refuse to run a VMM without the jailer")
	fs.StringVar(&f.netMode, "network", "none", "VM networking: netns (a namespace per VM), bridge (hearth0), or none")
	fs.StringVar(&f.egressIface, "egress-iface", "", "host interface VM traffic leaves by (default: the default route's)")
	fs.StringVar(&f.firewall, "firewall", "nftables", "egress firewall backend: nftables or iptables")
}

// network returns the runtime's network configuration, nil for none.
func (f *backendFlags) network() (*hearth.NetworkConfig, error) {
	bad := func(err error) error {
		return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "network", Err: err}
	}
	var fw firewall.Backend
	switch f.firewall {
	case "nftables":
		fw = firewall.NFTables
	case "iptables":
		fw = firewall.IPTables
	default:
		return nil, bad(fmt.Errorf("--firewall %q: want nftables or iptables", f.firewall))
	}
	switch f.netMode {
	case "none", "":
		return nil, nil
	case "netns":
		return &hearth.NetworkConfig{Network: network.Config{Mode: network.ModeNetNS, EgressIface: f.egressIface}, Firewall: fw}, nil
	case "bridge":
		return &hearth.NetworkConfig{Network: network.Config{Mode: network.ModeBridge, EgressIface: f.egressIface}, Firewall: fw}, nil
	}
	return nil, bad(fmt.Errorf("--network %q: want netns, bridge or none", f.netMode))
}

// build returns the backends to register and the default one.
func (f *backendFlags) build(log *slog.Logger) ([]vmm.Backend, string, error) {
	bad := func(err error) error {
		return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "backend", Err: err}
	}
	newFC := func() (vmm.Backend, error) {
		// The jailer's parent cgroup must be the runtime's, so that the
		// runtime can tear down and reconcile the VMs' cgroups.
		return firecracker.New(firecracker.Options{Binary: f.firecrackerBin, JailerBinary: f.jailerBin, UseJailer: f.useJailer,
			ParentCgroup: jail.DefaultCgroupParent, Logger: log})
	}
	switch f.backend {
	case "mem":
		return []vmm.Backend{memvmm.New()}, memvmm.Name, nil
	case "firecracker":
		b, err := newFC()
		if err != nil {
			return nil, "", bad(err)
		}
		return []vmm.Backend{b}, b.Name(), nil
	case "auto":
		// Firecracker when installed, else QEMU (DESIGN §1).
		b, err := newFC()
		if err == nil {
			return []vmm.Backend{b}, b.Name(), nil
		}
		if !errors.Is(err, exec.ErrNotFound) {
			return nil, "", bad(err)
		}
		q, qerr := qemu.New(qemu.Options{Binary: f.qemuBin, Accel: f.accel, Logger: log})
		if qerr == nil {
			return []vmm.Backend{q}, q.Name(), nil
		}
		return nil, "", &hearth.Error{Kind: hearth.KindUnsupported, Op: "backend",
			Err: fmt.Errorf("no VMM found: %v; %v; install Firecracker or QEMU, or use --backend mem", err, qerr)}
	case "qemu":
		q, err := qemu.New(qemu.Options{Binary: f.qemuBin, Accel: f.accel, Logger: log})
		if err != nil {
			return nil, "", bad(err)
		}
		return []vmm.Backend{q}, q.Name(), nil
	}
	return nil, "", bad(fmt.Errorf("unknown backend %q (want auto, firecracker, qemu, mem)", f.backend))
}
