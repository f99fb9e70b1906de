package firewall

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/hearth-vm/hearth/network"
)

// VMRef says where a VM's traffic shows up in the host namespace.
type VMRef struct {
	// Owner is recorded with the rules so Reconcile can ask whether the
	// VM still exists.
	Owner string
	// Slot keys the VM's chains (its network slot).
	Slot uint64
	// Iface is where the VM's packets enter the host namespace: the
	// host-side veth (netns mode) or the VM's TAP (bridge mode).
	Iface string
	// Bridge is the bridge Iface is a port of (bridge mode), else "".
	Bridge string
	// Addr is the IPv4 source the VM's packets carry at Iface; any
	// other source is dropped.
	Addr netip.Addr
	// Addr6 is the VM's IPv6 source, if it has one; without it all IPv6
	// from the VM is dropped.
	Addr6 netip.Addr
	// MAC, when set, is enforced as the Ethernet source (bridge mode; in
	// netns mode the VM namespace enforces it at the TAP).
	MAC net.HardwareAddr
}

// RefFor derives the VM reference from a network attachment.
func RefFor(a *network.Attachment) VMRef {
	r := VMRef{Owner: a.Owner, Slot: a.Slot, Iface: a.HostIface, Bridge: a.Bridge, Addr: a.HostAddr}
	if a.Bridge != "" {
		r.MAC = a.HardwareAddr()
	}
	return r
}

func (v VMRef) validate() error {
	if v.Owner == "" || len(v.Owner) > 200 {
		return fieldErr("vm.owner", v.Owner, errors.New("want 1..200 bytes"))
	}
	for _, c := range v.Owner {
		if c <= ' ' || c == '"' || c == '\\' || c > '~' {
			return fieldErr("vm.owner", v.Owner, fmt.Errorf("contains %q", c))
		}
	}
	if v.Slot > network.MaxSlot {
		return fieldErr("vm.slot", strconv.FormatUint(v.Slot, 10), fmt.Errorf("above %d", uint64(network.MaxSlot)))
	}
	if err := network.ValidIfName(v.Iface); err != nil {
		return fieldErr("vm.iface", v.Iface, err)
	}
	if v.Bridge != "" {
		if err := network.ValidIfName(v.Bridge); err != nil {
			return fieldErr("vm.bridge", v.Bridge, err)
		}
		if len(v.MAC) == 0 {
			return fieldErr("vm.mac", "", errors.New("required in bridge mode (anti-spoofing)"))
		}
	}
	if !v.Addr.Is4() || v.Addr.IsUnspecified() {
		return fieldErr("vm.addr", v.Addr.String(), errors.New("want the VM's IPv4 source address"))
	}
	if v.Addr6.IsValid() && (!v.Addr6.Is6() || v.Addr6.Is4In6() || v.Addr6.IsUnspecified()) {
		return fieldErr("vm.addr6", v.Addr6.String(), errors.New("want an IPv6 address"))
	}
	if len(v.MAC) != 0 && len(v.MAC) != 6 {
		return fieldErr("vm.mac", v.MAC.String(), errors.New("want a 6-byte Ethernet address"))
	}
	return nil
}

// Metadata addresses denied unless Policy.AllowMetadata.
var metadataNets = []netip.Prefix{
	netip.MustParsePrefix("169.254.169.254/32"),
	netip.MustParsePrefix("fd00:ec2::254/128"),
}

// Verdict of a statement.
type Verdict string

const (
	Accept Verdict = "accept"
	Drop   Verdict = "drop"
)

// Stmt is one backend-neutral rule of a VM chain; each backend compiles
// the same list, so both enforce the same policy in the same order.
type Stmt struct {
	// Family limits the statement to IPv4 (4) or IPv6 (6); 0 = both.
	Family   int
	CtState  string // "established,related" or "invalid"
	SrcMACNe net.HardwareAddr
	SrcNe    netip.Prefix // source is NOT this
	Dst      netip.Prefix
	DstLocal bool // destination is one of the host's own addresses
	Proto    Proto
	Ports    PortRange
	Verdict  Verdict
	Comment  string
}

// family returns the statement's address family (0 = both).
func (s Stmt) family() int {
	switch {
	case s.Family != 0:
		return s.Family
	case s.Dst.IsValid():
		return famOf(s.Dst.Addr())
	case s.SrcNe.IsValid():
		return famOf(s.SrcNe.Addr())
	}
	return 0
}

func famOf(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

// String renders the statement in nft syntax (for golden tests, logs
// and humans reading `nft list ruleset`).
func (s Stmt) String() string {
	var p []string
	switch s.family() {
	case 4:
		p = append(p, "meta nfproto ipv4")
	case 6:
		p = append(p, "meta nfproto ipv6")
	}
	if s.CtState != "" {
		p = append(p, "ct state "+s.CtState)
	}
	if len(s.SrcMACNe) > 0 {
		p = append(p, "ether saddr != "+s.SrcMACNe.String())
	}
	ip := func(a netip.Prefix) string {
		if a.Addr().Is4() {
			return "ip"
		}
		return "ip6"
	}
	if s.SrcNe.IsValid() {
		p = append(p, ip(s.SrcNe)+" saddr != "+s.SrcNe.String())
	}
	if s.Dst.IsValid() {
		p = append(p, ip(s.Dst)+" daddr "+s.Dst.String())
	}
	if s.DstLocal {
		p = append(p, "fib daddr type local")
	}
	if s.Proto != "" {
		p = append(p, "meta l4proto "+s.l4name())
	}
	if !s.Ports.Any() {
		p = append(p, "th dport "+s.Ports.String())
	}
	p = append(p, "counter", string(s.Verdict))
	if s.Comment != "" {
		p = append(p, "comment \""+s.Comment+"\"")
	}
	return strings.Join(p, " ")
}

func (s Stmt) l4name() string {
	if s.Proto == ICMP && s.family() == 6 {
		return "ipv6-icmp"
	}
	return string(s.Proto)
}

func (s Stmt) l4num() byte {
	switch s.Proto {
	case TCP:
		return 6
	case UDP:
		return 17
	case ICMP:
		if s.family() == 6 {
			return 58
		}
		return 1
	}
	return 0
}

// Plan returns the statements of vm's chain under policy p; vmNets are
// the prefixes other VMs live in (denied unless p.AllowVMs). Pure: the
// golden tests pin it, and both backends compile it.
func Plan(vm VMRef, p Policy, vmNets []netip.Prefix) []Stmt {
	var out []Stmt
	add := func(s Stmt) { out = append(out, s) }
	add(Stmt{CtState: "established,related", Verdict: Accept, Comment: "replies"})
	add(Stmt{CtState: "invalid", Verdict: Drop})
	if len(vm.MAC) > 0 {
		add(Stmt{SrcMACNe: vm.MAC, Verdict: Drop, Comment: "spoofed mac"})
	}
	add(Stmt{SrcNe: netip.PrefixFrom(vm.Addr, 32), Verdict: Drop, Comment: "spoofed source"})
	if vm.Addr6.IsValid() {
		add(Stmt{SrcNe: netip.PrefixFrom(vm.Addr6, 128), Verdict: Drop, Comment: "spoofed source"})
	} else {
		add(Stmt{Family: 6, Verdict: Drop, Comment: "no ipv6"})
	}
	for _, d := range p.DNS {
		for _, proto := range []Proto{UDP, TCP} {
			add(Stmt{Dst: netip.PrefixFrom(d, d.BitLen()), Proto: proto, Ports: PortRange{53, 53}, Verdict: Accept, Comment: "dns"})
		}
	}
	if !p.AllowMetadata {
		for _, m := range metadataNets {
			add(Stmt{Dst: m, Verdict: Drop, Comment: "metadata"})
		}
	}
	if !p.AllowHost {
		add(Stmt{DstLocal: true, Verdict: Drop, Comment: "host"})
	}
	if !p.AllowVMs {
		for _, n := range vmNets {
			add(Stmt{Dst: n.Masked(), Verdict: Drop, Comment: "other vms"})
		}
	}
	for _, r := range p.Allow {
		add(Stmt{Dst: r.Net, Proto: r.Proto, Ports: r.Ports, Verdict: Accept})
	}
	add(Stmt{Verdict: Drop, Comment: "default deny"})
	return out
}

// iptablesArgs compiles a statement for iptables (fam 4) or ip6tables
// (fam 6); ok=false when the statement does not apply to that family.
func (s Stmt) iptablesArgs(fam int) (args []string, ok bool) {
	if f := s.family(); f != 0 && f != fam {
		return nil, false
	}
	if s.CtState != "" {
		args = append(args, "-m", "conntrack", "--ctstate", strings.ToUpper(s.CtState))
	}
	if len(s.SrcMACNe) > 0 {
		args = append(args, "-m", "mac", "!", "--mac-source", s.SrcMACNe.String())
	}
	if s.SrcNe.IsValid() {
		args = append(args, "!", "-s", s.SrcNe.String())
	}
	if s.Dst.IsValid() {
		args = append(args, "-d", s.Dst.String())
	}
	if s.DstLocal {
		args = append(args, "-m", "addrtype", "--dst-type", "LOCAL")
	}
	if s.Proto != "" {
		args = append(args, "-p", s.l4name())
	}
	if !s.Ports.Any() {
		if s.Ports.From == s.Ports.To {
			args = append(args, "--dport", strconv.Itoa(int(s.Ports.From)))
		} else {
			args = append(args, "--dport", fmt.Sprintf("%d:%d", s.Ports.From, s.Ports.To))
		}
	}
	if s.Verdict == Accept {
		args = append(args, "-j", "ACCEPT")
	} else {
		args = append(args, "-j", "DROP")
	}
	return args, true
}
