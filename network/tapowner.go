package network

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// SetTAPOwner recreates a's TAP owned by uid/gid, so a VMM that dropped
// its privileges (the jailer's per-VM uid) may attach to it. The kernel
// fixes a TAP's owner at creation, hence the re-creation; addressing and
// bridge membership are restored exactly as Attach left them. Call it
// before the VMM starts.
func (m *Manager) SetTAPOwner(ctx context.Context, a *Attachment, uid, gid int) error {
	const op = "set tap owner"
	if a == nil || uid < 0 || gid < 0 {
		return invalid(op, "owner", errors.New("need an attachment and non-negative uid/gid"))
	}
	if err := ctx.Err(); err != nil {
		return setupErr(op, err)
	}
	tap := newTAP(a.TAP, m.cfg.MTU)
	tap.Owner, tap.Group = uint32(uid), uint32(gid)
	if m.cfg.Mode == ModeNetNS {
		ns, err := netns.GetFromPath(a.NetNSPath)
		if err != nil {
			return setupErr(op, fmt.Errorf("open %s: %w", a.NetNSPath, err))
		}
		defer ns.Close()
		err = InNS(ns, func() error {
			if l, err := netlink.LinkByName(a.TAP); err == nil {
				if err := netlink.LinkDel(l); err != nil {
					return fmt.Errorf("delete %s: %w", a.TAP, err)
				}
			}
			if err := netlink.LinkAdd(tap); err != nil {
				return fmt.Errorf("create %s: %w", a.TAP, err)
			}
			l, err := netlink.LinkByName(a.TAP)
			if err != nil {
				return err
			}
			if err := netlink.AddrAdd(l, nlAddr(a.Gateway, a.GuestAddr.Bits())); err != nil {
				return fmt.Errorf("address %s: %w", a.TAP, err)
			}
			return netlink.LinkSetUp(l)
		})
		return setupErr(op, err)
	}
	if l, err := m.nl.LinkByName(a.TAP); err == nil {
		if err := m.nl.LinkDel(l); err != nil {
			return setupErr(op, fmt.Errorf("delete %s: %w", a.TAP, err))
		}
	}
	if err := m.buildBridgeTAP(tap); err != nil {
		return setupErr(op, err)
	}
	return nil
}
