package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/hearth-vm/hearth/network/nftexpr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Table names. The firewall owns table "hearth" in the host namespace;
// NAT lives in its own table so firewall reconcile never touches it.
const (
	hostNATTable = "hearth-nat"
	slotTable    = "hearth"
)

func nftIn(ns netns.NsHandle) (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// installHostNAT masquerades the VMs' subnet to the egress interface, as
// one atomic batch that replaces whatever the table held.
func (m *Manager) installHostNAT() error {
	c, err := nftIn(m.host)
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: hostNATTable}
	c.AddTable(t)
	c.FlushTable(t)
	post := c.AddChain(&nftables.Chain{
		Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: nftexpr.Join(
		nftexpr.Addr(true, m.cfg.Subnet, false),
		nftexpr.Oif(m.egress),
		[]expr.Any{nftexpr.Counter(), &expr.Masq{}},
	)})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install NAT table %s: %w", hostNATTable, err)
	}
	return nil
}

func (m *Manager) removeHostNAT() error {
	c, err := nftIn(m.host)
	if err != nil {
		return err
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: hostNATTable})
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete NAT table %s: %w", hostNATTable, err)
	}
	return nil
}

// installSlotNFT programs a VM namespace: masquerade the guest to the
// namespace's veth address (so the host sees a unique source per slot),
// and anti-spoofing at the TAP — only the guest's MAC and IPv4 address
// may leave, no IPv6, and nothing may reach the namespace itself.
func installSlotNFT(ns netns.NsHandle, guest netip.Addr, mac net.HardwareAddr) error {
	c, err := nftIn(ns)
	if err != nil {
		return err
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: slotTable})
	post := c.AddChain(&nftables.Chain{
		Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	guest32 := netip.PrefixFrom(guest, 32)
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: nftexpr.Join(
		nftexpr.Oif(NSVeth), nftexpr.NFProto(unix.NFPROTO_IPV4), nftexpr.Addr(true, guest32, false),
		[]expr.Any{&expr.Masq{}},
	)})
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{
		Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	drop := []expr.Any{nftexpr.Counter(), nftexpr.Drop()}
	for _, body := range [][]expr.Any{
		nftexpr.Join(nftexpr.Iif(GuestTAP), nftexpr.EtherSrcNot(mac), drop),
		nftexpr.Join(nftexpr.Iif(GuestTAP), nftexpr.NFProto(unix.NFPROTO_IPV6), drop),
		nftexpr.Join(nftexpr.Iif(GuestTAP), nftexpr.NFProto(unix.NFPROTO_IPV4), nftexpr.Addr(true, guest32, true), drop),
	} {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: body})
	}
	in := c.AddChain(&nftables.Chain{
		Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: nftexpr.Join(nftexpr.Iif(GuestTAP), drop)})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("program VM namespace: %w", err)
	}
	return nil
}
