package network

import (
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
)

// Mode selects the host topology.
type Mode string

const (
	// ModeNetNS (default): a namespace per VM holding its TAP, joined to
	// the host by a veth pair; every guest has the same inside address.
	ModeNetNS Mode = "netns"
	// ModeBridge: one bridge, a TAP per VM, a unique address per guest.
	ModeBridge Mode = "bridge"
)

// Config configures a Manager. Zero fields take the defaults below.
type Config struct {
	Mode Mode
	// HostNS is the path of the namespace playing "the host" (e.g. a
	// test's namespace); empty means the namespace of the thread that
	// calls New.
	HostNS string
	// NetNSDir is where per-VM namespaces are pinned (default
	// /run/netns, so `ip netns` sees them).
	NetNSDir string
	// Subnet: in netns mode the host-side addresses, one /30 per slot
	// (default 10.200.0.0/16); in bridge mode the guests' subnet, the
	// bridge taking the first host address (default 172.30.0.0/24).
	Subnet netip.Prefix
	// GuestNet is the inside addressing of netns mode, the same for every
	// VM: the TAP takes the first host address, the guest the second
	// (default 172.16.0.0/30).
	GuestNet netip.Prefix
	// EgressIface is the host interface guests' traffic leaves by and is
	// masqueraded to; empty means the interface of the host namespace's
	// IPv4 default route.
	EgressIface string
	// Bridge names the bridge of bridge mode (default hearth0).
	Bridge string
	// DNS is the resolver handed to guests on the kernel command line;
	// zero hands out none.
	DNS netip.Addr
	// MTU of TAPs, veths and the bridge (default 1500).
	MTU int
	// PoolSize is the number of netns slots kept pre-built so Attach does
	// not pay for namespace setup (default 4; negative disables).
	PoolSize int
	Logger   *slog.Logger
}

// Defaults.
var (
	DefaultNetNSSubnet  = netip.MustParsePrefix("10.200.0.0/16")
	DefaultBridgeSubnet = netip.MustParsePrefix("172.30.0.0/24")
	DefaultGuestNet     = netip.MustParsePrefix("172.16.0.0/30")
)

const (
	DefaultNetNSDir = "/run/netns"
	DefaultBridge   = "hearth0"
	DefaultMTU      = 1500
	DefaultPoolSize = 4
)

// hostBits is the prefix length of one netns slot's host-side link.
const hostBits = 30

func (c *Config) withDefaults() Config {
	d := *c
	if d.Mode == "" {
		d.Mode = ModeNetNS
	}
	if d.NetNSDir == "" {
		d.NetNSDir = DefaultNetNSDir
	}
	if !d.Subnet.IsValid() {
		if d.Mode == ModeBridge {
			d.Subnet = DefaultBridgeSubnet
		} else {
			d.Subnet = DefaultNetNSSubnet
		}
	}
	if !d.GuestNet.IsValid() {
		d.GuestNet = DefaultGuestNet
	}
	if d.Bridge == "" {
		d.Bridge = DefaultBridge
	}
	if d.MTU == 0 {
		d.MTU = DefaultMTU
	}
	if d.PoolSize == 0 {
		d.PoolSize = DefaultPoolSize
	}
	if d.PoolSize < 0 || d.Mode != ModeNetNS {
		d.PoolSize = 0
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	return d
}

// validate checks every field before any kernel call.
func (c *Config) validate() error {
	const op = "config"
	switch c.Mode {
	case ModeNetNS, ModeBridge:
	default:
		return invalid(op, "mode", fmt.Errorf("unknown mode %q (want netns or bridge)", c.Mode))
	}
	if !filepath.IsAbs(c.NetNSDir) {
		return invalid(op, "netns_dir", fmt.Errorf("must be absolute, got %q", c.NetNSDir))
	}
	if c.HostNS != "" && !filepath.IsAbs(c.HostNS) {
		return invalid(op, "host_ns", fmt.Errorf("must be absolute, got %q", c.HostNS))
	}
	// Guests are addressed over IPv4; IPv6 is disabled inside VM
	// namespaces and dropped by the firewall, never left unfiltered.
	if !c.Subnet.Addr().Is4() {
		return invalid(op, "subnet", fmt.Errorf("%v: guest addressing is IPv4 only", c.Subnet))
	}
	if c.Subnet != c.Subnet.Masked() {
		return invalid(op, "subnet", fmt.Errorf("%v has host bits set (did you mean %v?)", c.Subnet, c.Subnet.Masked()))
	}
	if c.Mode == ModeNetNS && c.Subnet.Bits() > hostBits {
		return configErr(op, "subnet", fmt.Errorf("%v too small: need /%d or larger", c.Subnet, hostBits))
	}
	if c.Mode == ModeBridge && c.Subnet.Bits() > 30 {
		return configErr(op, "subnet", fmt.Errorf("%v too small: need /30 or larger", c.Subnet))
	}
	if c.Mode == ModeNetNS {
		if !c.GuestNet.Addr().Is4() || c.GuestNet.Bits() > 30 || c.GuestNet != c.GuestNet.Masked() {
			return invalid(op, "guest_net", fmt.Errorf("%v: want an IPv4 network of /30 or larger", c.GuestNet))
		}
		if c.GuestNet.Overlaps(c.Subnet) {
			return invalid(op, "guest_net", fmt.Errorf("%v overlaps subnet %v", c.GuestNet, c.Subnet))
		}
	}
	if c.EgressIface != "" {
		if err := ValidIfName(c.EgressIface); err != nil {
			return invalid(op, "egress_iface", err)
		}
	}
	if err := ValidIfName(c.Bridge); err != nil {
		return invalid(op, "bridge", err)
	}
	if c.DNS.IsValid() && !c.DNS.Is4() {
		return invalid(op, "dns", fmt.Errorf("%v: guests resolve over IPv4", c.DNS))
	}
	if c.MTU < 68 || c.MTU > 65535 {
		return invalid(op, "mtu", fmt.Errorf("%d outside 68..65535", c.MTU))
	}
	return nil
}

// slotRange returns the inclusive slot range of the configuration.
func (c *Config) slotRange() (lo, hi uint64) {
	var n uint64
	if c.Mode == ModeNetNS {
		n = Subnets(c.Subnet, hostBits)
	} else {
		// Network address, gateway and broadcast are not guests.
		n = Size(c.Subnet) - 3
	}
	if n > MaxSlot+1 {
		n = MaxSlot + 1
	}
	return 0, n - 1
}

// PoolPrefix starts the names of the allocation pools of network slots
// (one per mode). The manager owns them: a slot is held by its owner's
// key, or by the slot pool, never by a generic allocation record, so only
// Reconcile may decide which are free.
const PoolPrefix = "net."

func (c *Config) poolName() string { return PoolPrefix + string(c.Mode) }
