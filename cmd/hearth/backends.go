package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os/exec"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/jail"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/firecracker"
	"github.com/hearth-vm/hearth/vmm/memvmm"
	"github.com/spf13/pflag"
)

// backendFlags select and configure the VMM backends of an in-process
// runtime (serve, demo).
type backendFlags struct {
	backend        string
	firecrackerBin string
	jailerBin      string
	useJailer      bool
}

func (f *backendFlags) register(fs *pflag.FlagSet, def string) {
	fs.StringVar(&f.backend, "backend", def, "VMM backend: auto, firecracker, mem (auto picks firecracker when its binary is found)")
	fs.StringVar(&f.firecrackerBin, "firecracker-bin", "firecracker", "Firecracker binary (name in PATH or path)")
	fs.StringVar(&f.jailerBin, "jailer-bin", "", "jailer binary; set to run VMMs under the jailer")
	fs.BoolVar(&f.useJailer, "jailer", false, "refuse to run a VMM without the jailer")
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
		b, err := newFC()
		if err == nil {
			return []vmm.Backend{b}, b.Name(), nil
		}
		if !errors.Is(err, exec.ErrNotFound) {
			return nil, "", bad(err)
		}
		return nil, "", &hearth.Error{Kind: hearth.KindUnsupported, Op: "backend",
			Err: fmt.Errorf("no VMM found: %v; install Firecracker, pass --firecracker-bin, or use --backend mem", err)}
	case "qemu":
		return nil, "", &hearth.Error{Kind: hearth.KindUnsupported, Op: "backend", Err: errors.New("the qemu backend is not part of this build yet")}
	}
	return nil, "", bad(fmt.Errorf("unknown backend %q (want auto, firecracker, mem)", f.backend))
}
