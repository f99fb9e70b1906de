package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/hearth-vm/hearth/network/nftexpr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table the firewall owns (inet for the
// policy chains, netdev for bridge-mode anti-spoofing).
const TableName = "hearth"

const (
	fwdChain = "forward"
	inChain  = "input"
)

func vmChain(slot uint64) string { return "vm-" + strconv.FormatUint(slot, 10) }

func parseVMChain(name string) (uint64, bool) {
	rest, ok := strings.CutPrefix(name, "vm-")
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseUint(rest, 10, 32)
	return v, err == nil && strconv.FormatUint(v, 10) == rest
}

type nftFW struct {
	cfg  Config
	host netns.NsHandle
	mu   sync.Mutex // one batch at a time: base-chain creation is check-then-act
}

// newNFT installs the table, base chains and guards right away, so
// guarded interfaces are closed before any VM has a policy.
func newNFT(cfg Config, host netns.NsHandle) (*nftFW, error) {
	f := &nftFW{cfg: cfg, host: host}
	c, err := f.conn()
	if err != nil {
		return nil, kernelErr("init", err)
	}
	have, err := chainSet(c, nftables.TableFamilyINet)
	if err != nil {
		return nil, kernelErr("init", fmt.Errorf("list chains: %w", err))
	}
	f.ensureBase(c, have)
	if err := c.Flush(); err != nil {
		return nil, kernelErr("init", fmt.Errorf("install base chains: %w", err))
	}
	return f, nil
}

func (f *nftFW) conn() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(f.host)))
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

var (
	inetTable   = &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	netdevTable = &nftables.Table{Family: nftables.TableFamilyNetdev, Name: TableName}
)

// state reads which of the firewall's chains exist.
func chainSet(c *nftables.Conn, fam nftables.TableFamily) (map[string]*nftables.Chain, error) {
	chains, err := c.ListChainsOfTableFamily(fam)
	if err != nil {
		return nil, err
	}
	out := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == TableName {
			out[ch.Name] = ch
		}
	}
	return out, nil
}

// ensureBase queues the table, base chains and guard rules when missing.
func (f *nftFW) ensureBase(c *nftables.Conn, have map[string]*nftables.Chain) {
	if have[fwdChain] != nil && have[inChain] != nil {
		return
	}
	c.AddTable(inetTable)
	accept := nftables.ChainPolicyAccept
	for _, spec := range []struct {
		name string
		hook *nftables.ChainHook
	}{{fwdChain, nftables.ChainHookForward}, {inChain, nftables.ChainHookInput}} {
		if have[spec.name] != nil {
			continue
		}
		ch := c.AddChain(&nftables.Chain{
			Name: spec.name, Table: inetTable, Type: nftables.ChainTypeFilter,
			Hooknum: spec.hook, Priority: nftables.ChainPriorityFilter, Policy: &accept,
		})
		for _, g := range f.cfg.Guard {
			c.AddRule(&nftables.Rule{Table: inetTable, Chain: ch, Exprs: nftexpr.Join(
				nftexpr.Iif(g), []expr.Any{nftexpr.Counter(), nftexpr.Drop()}),
				UserData: comment("guard")})
		}
	}
}

func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

func ruleComment(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// compile turns a statement into nftables expressions.
func compile(s Stmt) []expr.Any {
	var e []expr.Any
	switch s.family() {
	case 4:
		e = append(e, nftexpr.NFProto(unix.NFPROTO_IPV4)...)
	case 6:
		e = append(e, nftexpr.NFProto(unix.NFPROTO_IPV6)...)
	}
	if s.CtState != "" {
		var bits uint32
		for _, st := range strings.Split(s.CtState, ",") {
			switch st {
			case "established":
				bits |= expr.CtStateBitESTABLISHED
			case "related":
				bits |= expr.CtStateBitRELATED
			case "invalid":
				bits |= expr.CtStateBitINVALID
			}
		}
		e = append(e, nftexpr.CtState(bits)...)
	}
	if len(s.SrcMACNe) > 0 {
		e = append(e, nftexpr.EtherSrcNot(s.SrcMACNe)...)
	}
	if s.SrcNe.IsValid() {
		e = append(e, nftexpr.Addr(true, s.SrcNe, true)...)
	}
	if s.Dst.IsValid() {
		e = append(e, nftexpr.Addr(false, s.Dst, false)...)
	}
	if s.DstLocal {
		e = append(e, nftexpr.DstLocal()...)
	}
	if s.Proto != "" {
		e = append(e, nftexpr.L4Proto(s.l4num())...)
	}
	if !s.Ports.Any() {
		e = append(e, nftexpr.DPort(s.Ports.From, s.Ports.To)...)
	}
	e = append(e, nftexpr.Counter())
	if s.Verdict == Accept {
		return append(e, nftexpr.Accept())
	}
	return append(e, nftexpr.Drop())
}

// jumpMatches selects the packets of vm in the base chains: everything
// entering by its veth, or (bridge mode) what enters by the bridge with
// its source address — trustworthy because the netdev chain on its TAP
// already dropped forged ones.
func jumpMatches(vm VMRef) [][]expr.Any {
	if vm.Bridge == "" {
		return [][]expr.Any{nftexpr.Iif(vm.Iface)}
	}
	out := [][]expr.Any{nftexpr.Join(nftexpr.Iif(vm.Bridge), nftexpr.NFProto(unix.NFPROTO_IPV4), nftexpr.Addr(true, netip.PrefixFrom(vm.Addr, 32), false))}
	if vm.Addr6.IsValid() {
		out = append(out, nftexpr.Join(nftexpr.Iif(vm.Bridge), nftexpr.NFProto(unix.NFPROTO_IPV6), nftexpr.Addr(true, netip.PrefixFrom(vm.Addr6, 128), false)))
	}
	return out
}

func etherType(t uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(t >> 8), byte(t)}},
	}
}

// antiSpoof is the netdev ingress chain on a bridge-mode TAP: only the
// VM's MAC, its IPv4 (and IPv6, if it has one) source and truthful ARP
// get onto the bridge.
func antiSpoof(vm VMRef) [][]expr.Any {
	drop := []expr.Any{nftexpr.Counter(), nftexpr.Drop()}
	accept := []expr.Any{nftexpr.Accept()}
	out := [][]expr.Any{
		nftexpr.Join(nftexpr.EtherSrcNot(vm.MAC), drop),
		nftexpr.Join(etherType(unix.ETH_P_IP), nftexpr.Addr(true, netip.PrefixFrom(vm.Addr, 32), true), drop),
		nftexpr.Join(etherType(unix.ETH_P_IP), accept),
		// ARP: sender hardware address at offset 8, sender IP at 14.
		nftexpr.Join(etherType(unix.ETH_P_ARP), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 6},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte(vm.MAC)},
		}, drop),
		nftexpr.Join(etherType(unix.ETH_P_ARP), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: vm.Addr.AsSlice()},
		}, drop),
		nftexpr.Join(etherType(unix.ETH_P_ARP), accept),
	}
	if vm.Addr6.IsValid() {
		out = append(out,
			nftexpr.Join(etherType(unix.ETH_P_IPV6), nftexpr.Addr(true, netip.PrefixFrom(vm.Addr6, 128), true), drop),
			nftexpr.Join(etherType(unix.ETH_P_IPV6), accept))
	}
	return append(out, drop) // anything else (other ethertypes, IPv6 without an address)
}

// Apply implements Firewall: one batch adds or flushes-and-refills the
// VM's chain and swaps its jump rules, so the kernel switches policies
// in one transaction.
func (f *nftFW) Apply(ctx context.Context, vm VMRef, p Policy) error {
	if err := checkArgs(ctx, vm, &p); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		return kernelErr("apply", err)
	}
	have, err := chainSet(c, nftables.TableFamilyINet)
	if err != nil {
		return kernelErr("apply", fmt.Errorf("list chains: %w", err))
	}
	f.ensureBase(c, have)
	name := vmChain(vm.Slot)
	var ch *nftables.Chain
	if have[name] != nil {
		ch = &nftables.Chain{Name: name, Table: inetTable}
		c.FlushChain(ch)
	} else {
		ch = c.AddChain(&nftables.Chain{Name: name, Table: inetTable})
	}
	for _, s := range Plan(vm, p, f.cfg.VMNets) {
		ud := []byte(nil)
		if s.Comment != "" {
			ud = comment(s.Comment)
		}
		c.AddRule(&nftables.Rule{Table: inetTable, Chain: ch, Exprs: compile(s), UserData: ud})
	}
	t := tag(vm.Slot, vm.Owner)
	for _, base := range []string{fwdChain, inChain} {
		bc := &nftables.Chain{Name: base, Table: inetTable}
		if have[base] != nil {
			if err := f.delJumps(c, bc, vm.Slot); err != nil {
				return kernelErr("apply", err)
			}
		}
		for _, m := range jumpMatches(vm) {
			// Inserted at the head: before the guards at the tail.
			c.InsertRule(&nftables.Rule{Table: inetTable, Chain: bc, Exprs: nftexpr.Join(m, []expr.Any{nftexpr.Jump(name)}), UserData: comment(t)})
		}
	}
	if vm.Bridge != "" {
		if err := f.queueAntiSpoof(c, vm); err != nil {
			return kernelErr("apply", err)
		}
	}
	if err := c.Flush(); err != nil {
		return kernelErr("apply", fmt.Errorf("vm %s slot %d: %w", vm.Owner, vm.Slot, err))
	}
	f.cfg.Logger.Debug("firewall policy applied", "backend", "nftables", "owner", vm.Owner, "slot", vm.Slot, "rules", len(p.Allow))
	return nil
}

func (f *nftFW) queueAntiSpoof(c *nftables.Conn, vm VMRef) error {
	have, err := chainSet(c, nftables.TableFamilyNetdev)
	if err != nil {
		return fmt.Errorf("list netdev chains: %w", err)
	}
	name := vmChain(vm.Slot)
	var ch *nftables.Chain
	if old := have[name]; old != nil && old.Device == vm.Iface {
		ch = &nftables.Chain{Name: name, Table: netdevTable}
		c.FlushChain(ch)
	} else {
		if old != nil {
			c.FlushChain(old)
			c.DelChain(old)
		}
		c.AddTable(netdevTable)
		accept := nftables.ChainPolicyAccept
		ch = c.AddChain(&nftables.Chain{
			Name: name, Table: netdevTable, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookIngress, Priority: nftables.ChainPriorityRef(-500),
			Device: vm.Iface, Policy: &accept,
		})
	}
	for _, e := range antiSpoof(vm) {
		c.AddRule(&nftables.Rule{Table: netdevTable, Chain: ch, Exprs: e, UserData: comment(tag(vm.Slot, vm.Owner))})
	}
	return nil
}

// delJumps queues deletion of slot's jump rules in a base chain.
func (f *nftFW) delJumps(c *nftables.Conn, base *nftables.Chain, slot uint64) error {
	rules, err := c.GetRules(inetTable, base)
	if err != nil {
		return fmt.Errorf("list %s rules: %w", base.Name, err)
	}
	for _, r := range rules {
		if s, _, ok := parseTag(ruleComment(r)); ok && s == slot {
			if err := c.DelRule(r); err != nil {
				return err
			}
		}
	}
	return nil
}

// Remove implements Firewall.
func (f *nftFW) Remove(ctx context.Context, vm VMRef) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return kernelErr("remove", f.remove(vm.Slot))
}

func (f *nftFW) remove(slot uint64) error {
	c, err := f.conn()
	if err != nil {
		return err
	}
	have, err := chainSet(c, nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list chains: %w", err)
	}
	for _, base := range []string{fwdChain, inChain} {
		if have[base] != nil {
			if err := f.delJumps(c, have[base], slot); err != nil {
				return err
			}
		}
	}
	if ch := have[vmChain(slot)]; ch != nil {
		c.FlushChain(ch)
		c.DelChain(ch)
	}
	nd, err := chainSet(c, nftables.TableFamilyNetdev)
	if err != nil {
		return fmt.Errorf("list netdev chains: %w", err)
	}
	if ch := nd[vmChain(slot)]; ch != nil {
		c.FlushChain(ch)
		c.DelChain(ch)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("slot %d: %w", slot, err)
	}
	return nil
}

// Reconcile implements Firewall.
func (f *nftFW) Reconcile(ctx context.Context, owned func(owner string) bool) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		return nil, kernelErr("reconcile", err)
	}
	have, err := chainSet(c, nftables.TableFamilyINet)
	if err != nil {
		return nil, kernelErr("reconcile", err)
	}
	owners := map[uint64]string{}
	for _, base := range []string{fwdChain, inChain} {
		if have[base] == nil {
			continue
		}
		rules, err := c.GetRules(inetTable, have[base])
		if err != nil {
			return nil, kernelErr("reconcile", err)
		}
		for _, r := range rules {
			if s, o, ok := parseTag(ruleComment(r)); ok {
				owners[s] = o
			}
		}
	}
	nd, err := chainSet(c, nftables.TableFamilyNetdev)
	if err != nil {
		return nil, kernelErr("reconcile", err)
	}
	slots := map[uint64]bool{}
	for name := range have {
		if s, ok := parseVMChain(name); ok {
			slots[s] = true
		}
	}
	for name := range nd {
		if s, ok := parseVMChain(name); ok {
			slots[s] = true
		}
	}
	for s := range owners {
		slots[s] = true
	}
	var removed []string
	var errs []error
	for s := range slots {
		o, known := owners[s]
		if known && have[vmChain(s)] != nil && owned != nil && owned(o) {
			continue
		}
		if err := f.remove(s); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, fmt.Sprintf("nftables chain %s (owner %q)", vmChain(s), o))
	}
	return removed, kernelErr("reconcile", errors.Join(errs...))
}

// Purge implements Firewall.
func (f *nftFW) Purge(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		return kernelErr("purge", err)
	}
	var errs []error
	for _, t := range []*nftables.Table{inetTable, netdevTable} {
		c.DelTable(t)
		if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete table %s: %w", TableName, err))
		}
	}
	f.host.Close()
	return kernelErr("purge", errors.Join(errs...))
}

// Close implements Firewall.
func (f *nftFW) Close() error { return f.host.Close() }
