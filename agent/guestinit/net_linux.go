package guestinit

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"

	"github.com/vishvananda/netlink"
)

// DefaultIface is used for hearth.ip when hearth.iface is not given and
// such a link exists.
const DefaultIface = "eth0"

// ApplyNetwork brings lo and the interface up, gives the interface
// cfg's address (replacing an equal one, so a second run is harmless)
// and adds the default route through the gateway. h is a netlink handle
// for the namespace to configure: the guest's own in init, a test's
// namespace in tests. It returns the interface it configured.
func ApplyNetwork(h *netlink.Handle, iface string, cfg *IPConfig) (string, error) {
	if lo, err := h.LinkByName("lo"); err == nil {
		if err := h.LinkSetUp(lo); err != nil {
			return "", fmt.Errorf("lo up: %w", err)
		}
	}
	link, err := pickLink(h, iface)
	if err != nil {
		return "", err
	}
	name := link.Attrs().Name
	if err := h.LinkSetUp(link); err != nil {
		return name, fmt.Errorf("%s up: %w", name, err)
	}
	ipnet := &net.IPNet{IP: cfg.Addr.Addr().AsSlice(), Mask: net.CIDRMask(cfg.Addr.Bits(), cfg.Addr.Addr().BitLen())}
	if err := h.AddrReplace(link, &netlink.Addr{IPNet: ipnet}); err != nil {
		return name, fmt.Errorf("address %s on %s: %w", cfg.Addr, name, err)
	}
	if cfg.Gateway.IsValid() {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: cfg.Gateway.AsSlice()}
		if !cfg.Addr.Masked().Contains(cfg.Gateway) {
			// A gateway outside the subnet (a /32 address, say) is
			// reachable on the link all the same.
			route.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := h.RouteReplace(route); err != nil {
			return name, fmt.Errorf("default route via %s: %w", cfg.Gateway, err)
		}
	}
	return name, nil
}

// pickLink is iface if named, else eth0, else the first non-loopback
// link by index.
func pickLink(h *netlink.Handle, iface string) (netlink.Link, error) {
	if iface != "" {
		l, err := h.LinkByName(iface)
		if err != nil {
			return nil, fmt.Errorf("interface %s: %w", iface, err)
		}
		return l, nil
	}
	if l, err := h.LinkByName(DefaultIface); err == nil {
		return l, nil
	}
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	sort.Slice(links, func(i, j int) bool { return links[i].Attrs().Index < links[j].Attrs().Index })
	for _, l := range links {
		if l.Attrs().Flags&net.FlagLoopback == 0 {
			return l, nil
		}
	}
	return nil, errors.New("no network interface besides loopback")
}

// WriteResolvConf writes nameserver lines atomically; with no servers it
// leaves the file alone (the image may have its own).
func WriteResolvConf(path string, cfg *IPConfig) error {
	if cfg == nil || len(cfg.DNS) == 0 {
		return nil
	}
	var b bytes.Buffer
	b.WriteString("# written by hearth-agent from hearth.ip\n")
	for _, d := range cfg.DNS {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	// /etc/resolv.conf is often a symlink into /run: write through it.
	if target, err := filepath.EvalSymlinks(path); err == nil {
		path = target
	}
	tmp := path + ".hearth-tmp"
	if err := os.WriteFile(tmp, b.Bytes(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
