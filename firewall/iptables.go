package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/coreos/go-iptables/iptables"
	"github.com/hearth-vm/hearth/network"
	"github.com/vishvananda/netns"
)

// Dispatch chains in the filter table, jumped to from FORWARD and INPUT;
// they hold one jump per VM (newest first) and the guards at the end.
const (
	iptFwd = "HEARTH-FWD"
	iptIn  = "HEARTH-IN"
)

type iptFW struct {
	cfg  Config
	host netns.NsHandle
	mu   sync.Mutex
	fams []iptFamily
}

type iptFamily struct {
	fam int
	ipt *iptables.IPTables
}

func newIPT(cfg Config, host netns.NsHandle) (*iptFW, error) {
	f := &iptFW{cfg: cfg, host: host}
	for _, spec := range []struct {
		fam   int
		proto iptables.Protocol
		path  string
	}{{4, iptables.ProtocolIPv4, cfg.IPTablesPath}, {6, iptables.ProtocolIPv6, cfg.IP6TablesPath}} {
		var ipt *iptables.IPTables
		var err error
		if spec.path != "" {
			ipt, err = iptables.New(iptables.IPFamily(spec.proto), iptables.Timeout(5), iptables.Path(spec.path))
		} else {
			ipt, err = iptables.New(iptables.IPFamily(spec.proto), iptables.Timeout(5))
		}
		if err != nil {
			return nil, kernelErr("iptables", fmt.Errorf("ipv%d: %w", spec.fam, err))
		}
		f.fams = append(f.fams, iptFamily{spec.fam, ipt})
	}
	// Base chains and guards right away: guarded interfaces are closed
	// before any VM has a policy.
	err := f.in(func() error {
		for _, fa := range f.fams {
			if err := f.ensureBase(fa.ipt); err != nil {
				return fmt.Errorf("ipv%d: %w", fa.fam, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, kernelErr("init", err)
	}
	return f, nil
}

// in runs fn in the host namespace: iptables is a child process, and a
// child starts in the namespace of the thread that forks it.
func (f *iptFW) in(fn func() error) error { return network.InNS(f.host, fn) }

func iptChain(slot uint64, gen byte) string {
	return "hth-" + strconv.FormatUint(slot, 10) + "-" + string(gen)
}

var iptChainRE = regexp.MustCompile(`^hth-(\d+)-([ab])$`)

func guardIface(g string) string {
	if strings.HasSuffix(g, "*") {
		return strings.TrimSuffix(g, "*") + "+"
	}
	return g
}

func (f *iptFW) ensureBase(ipt *iptables.IPTables) error {
	for _, pair := range [][2]string{{"FORWARD", iptFwd}, {"INPUT", iptIn}} {
		ok, err := ipt.ChainExists("filter", pair[1])
		if err != nil {
			return err
		}
		if !ok {
			if err := ipt.NewChain("filter", pair[1]); err != nil {
				return err
			}
		}
		for _, g := range f.cfg.Guard {
			if err := ipt.AppendUnique("filter", pair[1], "-i", guardIface(g), "-m", "comment", "--comment", "hearth:guard", "-j", "DROP"); err != nil {
				return err
			}
		}
		if ok, err := ipt.Exists("filter", pair[0], "-j", pair[1]); err != nil {
			return err
		} else if !ok {
			if err := ipt.Insert("filter", pair[0], 1, "-j", pair[1]); err != nil {
				return err
			}
		}
	}
	return nil
}

// jumpArgs selects vm's packets: by veth, or by bridge port (physdev,
// through br_netfilter) in bridge mode.
func jumpArgs(vm VMRef, chain string) []string {
	var a []string
	if vm.Bridge == "" {
		a = []string{"-i", vm.Iface}
	} else {
		a = []string{"-m", "physdev", "--physdev-in", vm.Iface}
	}
	return append(a, "-m", "comment", "--comment", tag(vm.Slot, vm.Owner), "-j", chain)
}

// IPTablesRules renders vm's chain for one family as iptables argument
// lists (without the "-A chain" prefix); used by Apply and golden tests.
func IPTablesRules(vm VMRef, p Policy, vmNets []netip.Prefix, fam int) [][]string {
	var out [][]string
	for _, s := range Plan(vm, p, vmNets) {
		if args, ok := s.iptablesArgs(fam); ok {
			out = append(out, args)
		}
	}
	return out
}

var jumpRE = regexp.MustCompile(`--comment "?hearth:(\d+):([^" ]*)"? .*-j (hth-\d+-[ab])\s*$`)

type jumpLine struct {
	id    int // 1-based rule number
	slot  uint64
	owner string
	chain string
}

func listJumps(ipt *iptables.IPTables, chain string) ([]jumpLine, error) {
	lines, err := ipt.List("filter", chain)
	if err != nil {
		return nil, err
	}
	var out []jumpLine
	id := 0
	for _, l := range lines {
		if !strings.HasPrefix(l, "-A ") {
			continue
		}
		id++
		m := jumpRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		s, _ := strconv.ParseUint(m[1], 10, 32)
		out = append(out, jumpLine{id: id, slot: s, owner: m[2], chain: m[3]})
	}
	return out, nil
}

// Apply implements Firewall. The new policy goes into a fresh chain
// (generation a/b), its jump is inserted ahead of the old one, and only
// then is the old jump removed: every packet meets exactly one complete
// policy.
func (f *iptFW) Apply(ctx context.Context, vm VMRef, p Policy) error {
	if err := checkArgs(ctx, vm, &p); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.in(func() error {
		if vm.Bridge != "" {
			// physdev matching needs bridged packets handed to iptables;
			// in the host namespace only.
			for _, k := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"} {
				if err := os.WriteFile("/proc/sys/net/bridge/"+k, []byte("1"), 0o644); err != nil {
					return fmt.Errorf("sysctl net.bridge.%s: %w", k, err)
				}
			}
		}
		for _, fa := range f.fams {
			if err := f.applyFamily(fa, vm, p); err != nil {
				return fmt.Errorf("ipv%d: %w", fa.fam, err)
			}
		}
		return nil
	})
	if err != nil {
		return kernelErr("apply", fmt.Errorf("vm %s slot %d: %w", vm.Owner, vm.Slot, err))
	}
	f.cfg.Logger.Debug("firewall policy applied", "backend", "iptables", "owner", vm.Owner, "slot", vm.Slot, "rules", len(p.Allow))
	return nil
}

func (f *iptFW) applyFamily(fa iptFamily, vm VMRef, p Policy) error {
	ipt := fa.ipt
	lines, err := f.listFilter(fa)
	if err != nil {
		return err
	}
	var old []string // the current jump lines of this slot, as -S prints them
	oldChain := ""
	n := strconv.FormatUint(vm.Slot, 10)
	for _, l := range lines {
		if !strings.HasPrefix(l, "-A "+iptFwd+" ") && !strings.HasPrefix(l, "-A "+iptIn+" ") {
			continue
		}
		if m := jumpRE.FindStringSubmatch(l); m != nil && m[1] == n {
			old = append(old, l)
			oldChain = m[3]
		}
	}
	gen := byte('a')
	if oldChain == iptChain(vm.Slot, 'a') {
		gen = 'b'
	}
	next := iptChain(vm.Slot, gen)
	script := restoreScript(vm, IPTablesRules(vm, p, f.cfg.VMNets, fa.fam), next, old, oldChain)
	if err := f.restore(fa, script); err != nil {
		// Someone may have flushed our dispatch chains; restore them and
		// try once more.
		if berr := f.ensureBase(ipt); berr != nil {
			return errors.Join(err, berr)
		}
		return f.restore(fa, script)
	}
	return nil
}

// restoreScript builds one iptables-restore transaction that creates and
// fills the new chain, puts its jumps first, deletes the old jumps and
// the old chain. The kernel sees one commit, so no packet meets a half
// policy (nor, on iptables-legacy, a table without one).
func restoreScript(vm VMRef, rules [][]string, next string, oldJumps []string, oldChain string) string {
	var b strings.Builder
	b.WriteString("*filter\n")
	b.WriteString(":" + next + " - [0:0]\n")
	for _, r := range rules {
		b.WriteString("-A " + next + " " + strings.Join(r, " ") + "\n")
	}
	for _, base := range []string{iptFwd, iptIn} {
		b.WriteString("-I " + base + " 1 " + strings.Join(jumpArgs(vm, next), " ") + "\n")
	}
	for _, l := range oldJumps {
		b.WriteString("-D" + strings.TrimPrefix(l, "-A") + "\n")
	}
	if oldChain != "" && oldChain != next {
		b.WriteString("-F " + oldChain + "\n-X " + oldChain + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// listFilter returns the whole filter table as -S prints it: one process
// instead of one per chain.
func (f *iptFW) listFilter(fa iptFamily) ([]string, error) {
	path, err := f.binPath(fa)
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(path, "-w", "5", "-t", "filter", "-S").Output()
	if err != nil {
		return nil, fmt.Errorf("%s -S: %w", filepath.Base(path), err)
	}
	return strings.Split(string(out), "\n"), nil
}

// binPath returns the family's iptables binary.
func (f *iptFW) binPath(fa iptFamily) (string, error) {
	path, def := f.cfg.IPTablesPath, "iptables"
	if fa.fam == 6 {
		path, def = f.cfg.IP6TablesPath, "ip6tables"
	}
	if path != "" {
		return path, nil
	}
	return exec.LookPath(def)
}

// restore feeds a script to the family's iptables-restore (same flavour
// as its iptables: <path>-restore), keeping other chains (--noflush).
func (f *iptFW) restore(fa iptFamily, script string) error {
	path, err := f.binPath(fa)
	if err != nil {
		return err
	}
	cmd := exec.Command(path+"-restore", "--noflush", "-w", "5")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s-restore: %w: %s", filepath.Base(path), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Remove implements Firewall.
func (f *iptFW) Remove(ctx context.Context, vm VMRef) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return kernelErr("remove", f.in(func() error { return f.remove(vm.Slot) }))
}

func (f *iptFW) remove(slot uint64) error {
	var errs []error
	for _, fa := range f.fams {
		if err := f.removeFamily(fa, slot); err != nil {
			errs = append(errs, fmt.Errorf("ipv%d: %w", fa.fam, err))
		}
	}
	return errors.Join(errs...)
}

// removeFamily deletes slot's jumps and chains in one restore commit,
// after one listing of the filter table.
func (f *iptFW) removeFamily(fa iptFamily, slot uint64) error {
	lines, err := f.listFilter(fa)
	if err != nil {
		return err
	}
	var b strings.Builder
	n := strconv.FormatUint(slot, 10)
	var chains []string
	for _, l := range lines {
		if m := jumpRE.FindStringSubmatch(l); m != nil && m[1] == n && (strings.HasPrefix(l, "-A "+iptFwd+" ") || strings.HasPrefix(l, "-A "+iptIn+" ")) {
			b.WriteString("-D" + strings.TrimPrefix(l, "-A") + "\n")
		}
		if c, ok := strings.CutPrefix(l, "-N "); ok {
			if m := iptChainRE.FindStringSubmatch(c); m != nil && m[1] == n {
				chains = append(chains, c)
			}
		}
	}
	for _, c := range chains {
		b.WriteString("-F " + c + "\n-X " + c + "\n")
	}
	if b.Len() == 0 {
		return nil
	}
	return f.restore(fa, "*filter\n"+b.String()+"COMMIT\n")
}

// Reconcile implements Firewall.
func (f *iptFW) Reconcile(ctx context.Context, owned func(owner string) bool) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var removed []string
	err := f.in(func() error {
		type info struct {
			owner  string
			jumped bool
		}
		slots := map[uint64]*info{}
		for _, fa := range f.fams {
			chains, err := fa.ipt.ListChains("filter")
			if err != nil {
				return err
			}
			for _, c := range chains {
				if m := iptChainRE.FindStringSubmatch(c); m != nil {
					s, _ := strconv.ParseUint(m[1], 10, 32)
					if slots[s] == nil {
						slots[s] = &info{}
					}
				}
			}
			for _, base := range []string{iptFwd, iptIn} {
				if ok, _ := fa.ipt.ChainExists("filter", base); !ok {
					continue
				}
				js, err := listJumps(fa.ipt, base)
				if err != nil {
					return err
				}
				for _, j := range js {
					if slots[j.slot] == nil {
						slots[j.slot] = &info{}
					}
					slots[j.slot].owner, slots[j.slot].jumped = j.owner, true
				}
			}
		}
		var errs []error
		for s, in := range slots {
			if in.jumped && owned != nil && owned(in.owner) {
				continue
			}
			if err := f.remove(s); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, fmt.Sprintf("iptables chain hth-%d (owner %q)", s, in.owner))
		}
		return errors.Join(errs...)
	})
	sort.Strings(removed)
	return removed, kernelErr("reconcile", err)
}

// Purge implements Firewall.
func (f *iptFW) Purge(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.in(func() error {
		var errs []error
		for _, fa := range f.fams {
			chains, err := fa.ipt.ListChains("filter")
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, pair := range [][2]string{{"FORWARD", iptFwd}, {"INPUT", iptIn}} {
				if err := fa.ipt.DeleteIfExists("filter", pair[0], "-j", pair[1]); err != nil {
					errs = append(errs, err)
				}
			}
			for _, c := range chains {
				if c == iptFwd || c == iptIn {
					if err := fa.ipt.ClearChain("filter", c); err != nil {
						errs = append(errs, err)
					}
				}
			}
			for _, c := range chains {
				if c == iptFwd || c == iptIn || iptChainRE.MatchString(c) {
					if err := fa.ipt.ClearAndDeleteChain("filter", c); err != nil {
						errs = append(errs, err)
					}
				}
			}
		}
		return errors.Join(errs...)
	})
	f.host.Close()
	return kernelErr("purge", err)
}

// Close implements Firewall.
func (f *iptFW) Close() error { return f.host.Close() }
