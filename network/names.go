package network

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// IFNAMSIZ is the kernel's limit on interface names, including the NUL.
const IFNAMSIZ = 16

// Prefix starts the name of every host resource hearth creates, so
// reconcile can tell its own links and namespaces from everyone else's.
const Prefix = "hth"

// Names inside a VM's namespace are the same for every VM: a snapshot
// records the TAP's name, so a clone restored in another slot finds a
// TAP of that name without a network override.
const (
	// GuestTAP is the TAP device inside a VM namespace (netns mode).
	GuestTAP = "hthtap0"
	// NSVeth is the namespace end of the veth pair (netns mode).
	NSVeth = "hthns0"
)

const (
	nsPrefix   = Prefix + "-" // namespaces: hth-<slot>
	vethPrefix = Prefix + "v" // host veth ends: hthv<slot>
	tapPrefix  = Prefix + "t" // bridge-mode TAPs: htht<slot>
)

// MaxSlot is the largest slot whose names fit IFNAMSIZ with every prefix.
const MaxSlot = 1<<32 - 1

// NetNSName returns the name of slot's network namespace.
func NetNSName(slot uint64) string { return nsPrefix + strconv.FormatUint(slot, 10) }

// HostVethName returns the host-side veth name of slot (netns mode).
func HostVethName(slot uint64) string { return vethPrefix + strconv.FormatUint(slot, 10) }

// BridgeTAPName returns the TAP name of slot (bridge mode).
func BridgeTAPName(slot uint64) string { return tapPrefix + strconv.FormatUint(slot, 10) }

// ParseLinkName reports which slot a hearth link name belongs to; kind
// is "veth" or "tap". Names hearth does not generate return ok=false.
func ParseLinkName(name string) (kind string, slot uint64, ok bool) {
	for _, c := range []struct{ prefix, kind string }{{vethPrefix, "veth"}, {tapPrefix, "tap"}} {
		if rest, found := strings.CutPrefix(name, c.prefix); found {
			if s, err := parseSlot(rest); err == nil {
				return c.kind, s, true
			}
		}
	}
	return "", 0, false
}

// ParseNetNSName is the inverse of NetNSName.
func ParseNetNSName(name string) (uint64, bool) {
	rest, found := strings.CutPrefix(name, nsPrefix)
	if !found {
		return 0, false
	}
	s, err := parseSlot(rest)
	return s, err == nil
}

func parseSlot(s string) (uint64, error) {
	// Reject leading zeros and signs so a name maps to exactly one slot.
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("bad slot %q", s)
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, err
	}
	return v, nil
}

// ValidIfName reports whether s can name a network interface.
func ValidIfName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty interface name")
	case len(s) >= IFNAMSIZ:
		return fmt.Errorf("interface name %q longer than %d bytes", s, IFNAMSIZ-1)
	case s == "." || s == "..":
		return fmt.Errorf("interface name %q is reserved", s)
	}
	for _, c := range s {
		if c <= ' ' || c == '/' || c == ':' || c > '~' {
			return fmt.Errorf("interface name %q contains %q", s, c)
		}
	}
	return nil
}

// MACFor derives the guest MAC from the guest's IPv4 address:
// 02:68:<a.b.c.d> — locally administered (bit 1 of the first octet),
// unicast (bit 0 clear), with 0x68 ('h') marking hearth. In netns mode
// every guest has the same inside address and so the same MAC, which is
// what restored clones need (a snapshot carries the MAC); in bridge mode
// the address is unique per slot, and so is the MAC.
func MACFor(guest netip.Addr) (net.HardwareAddr, error) {
	if !guest.Is4() {
		return nil, fmt.Errorf("guest address %v is not IPv4", guest)
	}
	a := guest.As4()
	return net.HardwareAddr{0x02, 0x68, a[0], a[1], a[2], a[3]}, nil
}
