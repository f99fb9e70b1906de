package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hearth-vm/hearth/network"
	"github.com/vishvananda/netns"
)

// Backend selects the kernel interface.
type Backend string

const (
	// NFTables (default) programs nftables over netlink: one table
	// "hearth", one chain per VM, every change one atomic batch.
	NFTables Backend = "nftables"
	// IPTables drives iptables/ip6tables (legacy or nft flavour) for
	// hosts that need it: a chain per VM, replaced without a gap.
	IPTables Backend = "iptables"
)

// Config configures a Firewall.
type Config struct {
	Backend Backend
	// HostNS is the path of the namespace playing "the host"; empty
	// means the namespace of the thread calling New.
	HostNS string
	// VMNets are the prefixes VMs live in on the host side (see
	// network.Manager.VMNets); traffic into them is denied unless a
	// policy sets AllowVMs.
	VMNets []netip.Prefix
	// Guard lists interfaces (a trailing * matches a prefix) whose
	// traffic is dropped unless a VM chain accepted it, so a VM is never
	// unfiltered, before its policy is applied or after it is removed
	// (see network.Manager.GuardIfaces).
	Guard []string
	// IPTablesPath and IP6TablesPath pick the binaries of the iptables
	// backend (default: iptables and ip6tables on PATH, whichever
	// flavour they are).
	IPTablesPath, IP6TablesPath string
	Logger                      *slog.Logger
}

// Firewall installs per-VM egress policies. Implementations are safe for
// concurrent use.
type Firewall interface {
	// Apply installs vm's policy or atomically replaces the one it has:
	// at no moment is the VM's traffic unfiltered. Policy and VMRef are
	// validated before any kernel call.
	Apply(ctx context.Context, vm VMRef, p Policy) error
	// Remove deletes vm's rules (by slot); removing twice is not an
	// error.
	Remove(ctx context.Context, vm VMRef) error
	// Reconcile removes the chains of VMs for which owned returns false
	// and chains no VM references, returning what it removed.
	Reconcile(ctx context.Context, owned func(owner string) bool) ([]string, error)
	// Purge removes everything the backend installed (tables, base
	// chains, guards) and closes it.
	Purge(ctx context.Context) error
	// Close releases handles; the rules stay in the kernel.
	Close() error
}

// New opens a firewall backend in the configured host namespace.
func New(cfg Config) (Firewall, error) {
	if cfg.Backend == "" {
		cfg.Backend = NFTables
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HostNS != "" && !filepath.IsAbs(cfg.HostNS) {
		return nil, fieldErr("host_ns", cfg.HostNS, errors.New("must be an absolute path"))
	}
	for i, n := range cfg.VMNets {
		if !n.IsValid() {
			return nil, fieldErr(fmt.Sprintf("vm_nets[%d]", i), n.String(), errors.New("invalid prefix"))
		}
	}
	for i, g := range cfg.Guard {
		if err := network.ValidIfName(strings.TrimSuffix(g, "*")); err != nil {
			return nil, fieldErr(fmt.Sprintf("guard[%d]", i), g, err)
		}
	}
	var host netns.NsHandle
	var err error
	if cfg.HostNS == "" {
		host, err = netns.Get()
	} else {
		host, err = netns.GetFromPath(cfg.HostNS)
	}
	if err != nil {
		return nil, kernelErr("open host namespace", err)
	}
	switch cfg.Backend {
	case NFTables:
		fw, err := newNFT(cfg, host)
		if err != nil {
			host.Close()
			return nil, err
		}
		return fw, nil
	case IPTables:
		fw, err := newIPT(cfg, host)
		if err != nil {
			host.Close()
			return nil, err
		}
		return fw, nil
	}
	host.Close()
	return nil, fieldErr("backend", string(cfg.Backend), errors.New("want nftables or iptables"))
}

// tag marks a VM's rules with its slot and owner.
func tag(slot uint64, owner string) string {
	return "hearth:" + strconv.FormatUint(slot, 10) + ":" + owner
}

// parseTag is the inverse of tag.
func parseTag(s string) (slot uint64, owner string, ok bool) {
	rest, found := strings.CutPrefix(s, "hearth:")
	if !found {
		return 0, "", false
	}
	n, owner, found := strings.Cut(rest, ":")
	if !found {
		return 0, "", false
	}
	v, err := strconv.ParseUint(n, 10, 32)
	if err != nil {
		return 0, "", false
	}
	return v, owner, true
}

func checkArgs(ctx context.Context, vm VMRef, p *Policy) error {
	if err := vm.validate(); err != nil {
		return err
	}
	if p != nil {
		if err := p.Validate(); err != nil {
			return err
		}
	}
	return ctx.Err()
}
