package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"

	"github.com/hearth-vm/hearth/store"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// poolOwner owns pre-built slots in the allocator until Attach hands
// one to a VM.
const poolOwner = "hearth:pool"

// Manager sets up and tears down host networking for VMs. Its methods
// are safe for concurrent use; per-VM setup runs outside its lock, so
// creates of different VMs proceed in parallel.
type Manager struct {
	cfg    Config
	alloc  Allocator
	host   netns.NsHandle
	nl     *netlink.Handle // netlink sockets inside the host namespace
	egress string

	mu   sync.Mutex // serialises allocation and the pool
	pool []uint64
	// building holds the slots Fill has allocated to the pool and is
	// still building: Reconcile must neither adopt them (Fill adds them
	// when built; adopting too would pool a slot twice, and two VMs would
	// be handed the same slot) nor tear them down under Fill's feet.
	building map[uint64]bool
	built    sync.Cond // on mu (set on first wait); broadcast when a build ends
	closed   bool
	purged   bool

	refill chan struct{}
	stop   chan struct{}
	wg     sync.WaitGroup
}

// Attachment is everything the runtime needs to run a VM on its slot.
// It is plain data: persist it (JSON) with the VM record and hand it to
// Adopt after a restart.
type Attachment struct {
	Mode  Mode   `json:"mode"`
	Owner string `json:"owner"`
	Slot  uint64 `json:"slot"`
	// NetNSPath is the namespace the VMM must run in (netns mode only).
	NetNSPath string `json:"netns_path,omitempty"`
	// TAP and MAC go into the VMM's network interface config.
	TAP string `json:"tap"`
	MAC string `json:"mac"`
	// GuestAddr (with prefix), Gateway and DNS are the guest's view.
	GuestAddr netip.Prefix `json:"guest_addr"`
	Gateway   netip.Addr   `json:"gateway"`
	DNS       netip.Addr   `json:"dns,omitzero"`
	// BootArg is hearth.ip=<addr>/<prefix>,<gw>,<dns> for the kernel
	// command line; the guest agent applies it at boot.
	BootArg string `json:"boot_arg"`
	// HostIface is where the VM's traffic enters the host namespace (the
	// veth in netns mode, the TAP in bridge mode) and HostAddr the
	// source address it carries there; the firewall matches both.
	HostIface string     `json:"host_iface"`
	HostAddr  netip.Addr `json:"host_addr"`
	// Bridge is the bridge HostIface is a port of (bridge mode only).
	Bridge string `json:"bridge,omitempty"`
}

// HardwareAddr parses MAC.
func (a *Attachment) HardwareAddr() net.HardwareAddr {
	m, _ := net.ParseMAC(a.MAC)
	return m
}

// New validates cfg, prepares the host namespace (forwarding, NAT, the
// bridge in bridge mode) and starts filling the slot pool. alloc is
// usually the runtime's *store.Store.
func New(cfg Config, alloc Allocator) (*Manager, error) {
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	if alloc == nil {
		return nil, invalid("new", "allocator", errors.New("nil allocator"))
	}
	var host netns.NsHandle
	var err error
	if c.HostNS == "" {
		// Unlocked threads are always in the process's namespace (InNS
		// restores or discards the threads it moves), so this is it.
		host, err = netns.Get()
	} else {
		host, err = netns.GetFromPath(c.HostNS)
	}
	if err != nil {
		return nil, configErr("new", "host_ns", err)
	}
	nl, err := netlink.NewHandleAt(host)
	if err != nil {
		host.Close()
		return nil, setupErr("new", fmt.Errorf("netlink in host namespace: %w", err))
	}
	m := &Manager{cfg: c, alloc: alloc, host: host, nl: nl, refill: make(chan struct{}, 1), stop: make(chan struct{})}
	if err := m.setupHost(); err != nil {
		nl.Close()
		host.Close()
		return nil, err
	}
	if c.PoolSize > 0 {
		m.wg.Add(1)
		go m.filler()
		m.kick()
	}
	return m, nil
}

// Config returns the effective configuration (defaults filled in).
func (m *Manager) Config() Config { return m.cfg }

// EgressIface returns the interface guests' traffic is masqueraded to.
func (m *Manager) EgressIface() string { return m.egress }

// VMNets returns the prefixes VM traffic is sourced from and addressed
// to on the host side; the firewall denies VM→VM traffic into them.
func (m *Manager) VMNets() []netip.Prefix { return []netip.Prefix{m.cfg.Subnet} }

// GuardIfaces returns interface patterns whose traffic the firewall
// should drop unless a VM's chain accepted it, so a VM never talks
// before its policy is installed.
func (m *Manager) GuardIfaces() []string {
	if m.cfg.Mode == ModeBridge {
		return []string{m.cfg.Bridge}
	}
	return []string{vethPrefix + "*"}
}

func (m *Manager) setupHost() error {
	const op = "setup host"
	if m.cfg.EgressIface != "" {
		m.egress = m.cfg.EgressIface
	} else {
		routes, err := m.nl.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return setupErr(op, fmt.Errorf("list routes: %w", err))
		}
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask) {
				if l, err := m.nl.LinkByIndex(r.LinkIndex); err == nil {
					m.egress = l.Attrs().Name
					break
				}
			}
		}
		if m.egress == "" {
			return configErr(op, "egress_iface", errors.New("host namespace has no IPv4 default route; set EgressIface"))
		}
	}
	if _, err := m.nl.LinkByName(m.egress); err != nil {
		return configErr(op, "egress_iface", fmt.Errorf("%s: %w", m.egress, err))
	}
	if err := setSysctls(m.host, "net/ipv4/ip_forward", "1"); err != nil {
		return setupErr(op, err)
	}
	if m.cfg.Mode == ModeBridge {
		if err := m.ensureBridge(); err != nil {
			return setupErr(op, err)
		}
	}
	if err := m.installHostNAT(); err != nil {
		return setupErr(op, err)
	}
	return nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

func (m *Manager) ensureBridge() error {
	l, err := m.nl.LinkByName(m.cfg.Bridge)
	if err != nil {
		if !isNotFound(err) {
			return fmt.Errorf("look up bridge %s: %w", m.cfg.Bridge, err)
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: m.cfg.Bridge, MTU: m.cfg.MTU}}
		if err := m.nl.LinkAdd(br); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create bridge %s: %w", m.cfg.Bridge, err)
		}
		if l, err = m.nl.LinkByName(m.cfg.Bridge); err != nil {
			return fmt.Errorf("look up bridge %s: %w", m.cfg.Bridge, err)
		}
	}
	if _, ok := l.(*netlink.Bridge); !ok {
		return fmt.Errorf("%s exists and is a %s, not a bridge", m.cfg.Bridge, l.Type())
	}
	gw, _ := Nth(m.cfg.Subnet, 1)
	if err := m.nl.AddrReplace(l, nlAddr(gw, m.cfg.Subnet.Bits())); err != nil {
		return fmt.Errorf("address bridge %s: %w", m.cfg.Bridge, err)
	}
	if err := m.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up bridge %s: %w", m.cfg.Bridge, err)
	}
	return nil
}

func nlAddr(a netip.Addr, bits int) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}}
}

func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf)
}

// Attach gives owner a slot: a pre-built one from the pool when there is
// one, else a freshly built one. On error nothing is left behind.
func (m *Manager) Attach(ctx context.Context, owner string) (*Attachment, error) {
	const op = "attach"
	if owner == "" || owner == poolOwner {
		return nil, invalid(op, "owner", fmt.Errorf("invalid owner %q", owner))
	}
	if err := ctx.Err(); err != nil {
		return nil, setupErr(op, err)
	}
	s, prebuilt, err := m.take(owner)
	if err != nil {
		return nil, err
	}
	if !prebuilt {
		if err := m.build(s); err != nil {
			m.release(s)
			return nil, setupErr(op, fmt.Errorf("slot %d: %w", s, err))
		}
	}
	m.kick()
	a := m.attachment(s, owner)
	m.cfg.Logger.Debug("network attached", "owner", owner, "slot", s, "mode", m.cfg.Mode, "pooled", prebuilt)
	return a, nil
}

// take allocates a slot for owner, preferring the pool.
func (m *Manager) take(owner string) (slot uint64, prebuilt bool, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	pool := m.cfg.poolName()
	for {
		if m.closed {
			return 0, false, setupErr("attach", errors.New("manager closed"))
		}
		for len(m.pool) > 0 {
			s := m.pool[0]
			m.pool = m.pool[1:]
			// Re-own the pooled slot: release and take back exactly that
			// value. Allocation is serialised by m.mu, so no one can take
			// it in between.
			if err := m.alloc.Release(pool, s); err != nil {
				return 0, false, setupErr("attach", fmt.Errorf("release pooled slot %d: %w", s, err))
			}
			if _, err := m.alloc.Allocate(pool, s, s, owner); err != nil {
				go m.teardown(s)
				continue
			}
			return s, true, nil
		}
		lo, hi := m.cfg.slotRange()
		s, err := m.alloc.Allocate(pool, lo, hi, owner)
		if err == nil {
			return s, false, nil
		}
		if !errors.Is(err, ErrPoolFull) && !errors.Is(err, store.ErrFull) {
			return 0, false, setupErr("attach", fmt.Errorf("allocate slot: %w", err))
		}
		if len(m.building) > 0 {
			// The last free slots are the pool's, still being built:
			// wait for them rather than call a network with room full.
			m.built.L = &m.mu
			m.built.Wait()
			continue
		}
		return 0, false, configErr("attach", "subnet", fmt.Errorf("%v: %w (%d slots): %w", m.cfg.Subnet, ErrExhausted, hi-lo+1, err))
	}
}

func (m *Manager) release(s uint64) {
	if err := m.alloc.Release(m.cfg.poolName(), s); err != nil {
		m.cfg.Logger.Warn("release network slot", "slot", s, "err", err)
	}
}

// Detach removes owner's slot and releases it. It is idempotent:
// detaching an owner with no slot, or twice, is not an error.
func (m *Manager) Detach(ctx context.Context, owner string) error {
	const op = "detach"
	if owner == "" || owner == poolOwner {
		return invalid(op, "owner", fmt.Errorf("invalid owner %q", owner))
	}
	allocs, err := m.alloc.Allocations(m.cfg.poolName())
	if err != nil {
		return setupErr(op, fmt.Errorf("list slots: %w", err))
	}
	var errs []error
	for s, o := range allocs {
		if o != owner {
			continue
		}
		if err := m.teardown(s); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := m.alloc.Release(m.cfg.poolName(), s); err != nil {
			errs = append(errs, fmt.Errorf("release slot %d: %w", s, err))
		}
	}
	return setupErr(op, errors.Join(errs...))
}

// Lookup returns owner's attachment, rebuilt from its allocation.
func (m *Manager) Lookup(owner string) (*Attachment, bool, error) {
	allocs, err := m.alloc.Allocations(m.cfg.poolName())
	if err != nil {
		return nil, false, setupErr("lookup", err)
	}
	for s, o := range allocs {
		if o == owner {
			return m.attachment(s, owner), true, nil
		}
	}
	return nil, false, nil
}

// Adopt takes back an attachment recorded before a restart: the slot
// must still be owned by a.Owner (or be free, in which case it is taken
// again) and its links and namespace must exist.
func (m *Manager) Adopt(ctx context.Context, a *Attachment) error {
	const op = "adopt"
	if a == nil || a.Owner == "" || a.Owner == poolOwner {
		return invalid(op, "attachment", errors.New("missing owner"))
	}
	if a.Mode != m.cfg.Mode {
		return configErr(op, "mode", fmt.Errorf("attachment is %s, manager is %s", a.Mode, m.cfg.Mode))
	}
	want := m.attachment(a.Slot, a.Owner)
	if want.HostIface != a.HostIface || want.GuestAddr != a.GuestAddr || want.HostAddr != a.HostAddr {
		return configErr(op, "attachment", fmt.Errorf("slot %d no longer maps to the recorded addressing (subnet changed?)", a.Slot))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	pool := m.cfg.poolName()
	allocs, err := m.alloc.Allocations(pool)
	if err != nil {
		return setupErr(op, err)
	}
	switch o, ok := allocs[a.Slot]; {
	case !ok:
		if _, err := m.alloc.Allocate(pool, a.Slot, a.Slot, a.Owner); err != nil {
			return setupErr(op, fmt.Errorf("re-take slot %d: %w", a.Slot, err))
		}
	case o != a.Owner:
		return configErr(op, "slot", fmt.Errorf("slot %d belongs to %q", a.Slot, o))
	}
	if !m.intact(a.Slot) {
		return setupErr(op, fmt.Errorf("slot %d: links or namespace missing", a.Slot))
	}
	return nil
}

// intact reports whether slot's host-side resources exist.
func (m *Manager) intact(s uint64) bool {
	if m.cfg.Mode == ModeNetNS {
		if _, err := os.Stat(m.nsPath(s)); err != nil {
			return false
		}
		_, err := m.nl.LinkByName(HostVethName(s))
		return err == nil
	}
	_, err := m.nl.LinkByName(BridgeTAPName(s))
	return err == nil
}

func (m *Manager) nsPath(s uint64) string { return filepath.Join(m.cfg.NetNSDir, NetNSName(s)) }

// attachment computes a slot's addressing; pure.
func (m *Manager) attachment(s uint64, owner string) *Attachment {
	a := &Attachment{Mode: m.cfg.Mode, Owner: owner, Slot: s, DNS: m.cfg.DNS}
	var guest netip.Addr
	if m.cfg.Mode == ModeNetNS {
		guest, _ = Nth(m.cfg.GuestNet, 2)
		a.Gateway, _ = Nth(m.cfg.GuestNet, 1)
		a.GuestAddr = netip.PrefixFrom(guest, m.cfg.GuestNet.Bits())
		a.NetNSPath = m.nsPath(s)
		a.TAP = GuestTAP
		a.HostIface = HostVethName(s)
		hp, _ := Subnet(m.cfg.Subnet, hostBits, s)
		a.HostAddr, _ = Nth(hp, 2)
	} else {
		guest, _ = Nth(m.cfg.Subnet, s+2)
		a.Gateway, _ = Nth(m.cfg.Subnet, 1)
		a.GuestAddr = netip.PrefixFrom(guest, m.cfg.Subnet.Bits())
		a.TAP = BridgeTAPName(s)
		a.HostIface = a.TAP
		a.HostAddr = guest
		a.Bridge = m.cfg.Bridge
	}
	mac, _ := MACFor(guest)
	a.MAC = mac.String()
	a.BootArg = BootArg(a.GuestAddr, a.Gateway, a.DNS)
	return a
}

// BootArg renders the kernel command-line argument the guest agent
// reads: hearth.ip=<addr>/<prefix>,<gw>,<dns> (dns may be empty).
func BootArg(addr netip.Prefix, gw, dns netip.Addr) string {
	d := ""
	if dns.IsValid() {
		d = dns.String()
	}
	return fmt.Sprintf("hearth.ip=%s,%s,%s", addr, gw, d)
}

// Reconcile removes what no VM owns: slots whose owner is not owned(),
// pooled slots whose resources are broken, namespaces and links with
// hearth's names and no slot behind them. It returns what it removed.
func (m *Manager) Reconcile(ctx context.Context, owned func(owner string) bool) ([]string, error) {
	const op = "reconcile"
	var removed []string
	var errs []error
	m.mu.Lock()
	defer m.mu.Unlock()
	pool := m.cfg.poolName()
	allocs, err := m.alloc.Allocations(pool)
	if err != nil {
		return nil, setupErr(op, err)
	}
	inPool := map[uint64]bool{}
	for _, s := range m.pool {
		inPool[s] = true
	}
	for _, s := range sortedKeys(allocs) {
		o := allocs[s]
		keep := false
		switch {
		case o == poolOwner && m.building[s]:
			keep = true // Fill pools it once built
		case o == poolOwner:
			keep = m.intact(s)
			if keep && !inPool[s] && len(m.pool) < m.cfg.PoolSize {
				m.pool = append(m.pool, s) // adopt a slot pooled before a restart
				inPool[s] = true
			}
			keep = keep && inPool[s]
		case owned != nil && owned(o):
			keep = true
		}
		if keep {
			continue
		}
		if err := m.teardown(s); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := m.alloc.Release(pool, s); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(allocs, s)
		removed = append(removed, fmt.Sprintf("slot %d (owner %q)", s, o))
	}
	// Slots of the other mode count as held too, so switching modes does
	// not tear down a running VM's links.
	other := map[uint64]string{}
	if m.cfg.Mode == ModeNetNS {
		other, _ = m.alloc.Allocations(PoolPrefix + string(ModeBridge))
	} else {
		other, _ = m.alloc.Allocations(PoolPrefix + string(ModeNetNS))
	}
	held := func(kind string, s uint64) bool {
		mine := (kind == "veth" || kind == "netns") == (m.cfg.Mode == ModeNetNS)
		if mine {
			_, ok := allocs[s]
			return ok
		}
		_, ok := other[s]
		return ok
	}
	if ents, err := os.ReadDir(m.cfg.NetNSDir); err == nil {
		for _, e := range ents {
			s, ok := ParseNetNSName(e.Name())
			if !ok || held("netns", s) {
				continue
			}
			if err := DeleteNS(filepath.Join(m.cfg.NetNSDir, e.Name())); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, "netns "+e.Name())
		}
	}
	links, err := m.nl.LinkList()
	if err != nil {
		errs = append(errs, fmt.Errorf("list links: %w", err))
	}
	for _, l := range links {
		name := l.Attrs().Name
		kind, s, ok := ParseLinkName(name)
		if !ok || held(kind, s) {
			continue
		}
		if err := m.nl.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete link %s: %w", name, err))
			continue
		}
		removed = append(removed, "link "+name)
	}
	if len(removed) > 0 {
		m.cfg.Logger.Info("network reconcile removed orphans", "removed", removed)
	}
	return removed, setupErr(op, errors.Join(errs...))
}

func sortedKeys(m map[uint64]string) []uint64 {
	out := make([]uint64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Fill builds pool slots until the pool holds PoolSize of them.
func (m *Manager) Fill(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		m.mu.Lock()
		if m.closed || len(m.pool) >= m.cfg.PoolSize {
			m.mu.Unlock()
			return nil
		}
		lo, hi := m.cfg.slotRange()
		s, err := m.alloc.Allocate(m.cfg.poolName(), lo, hi, poolOwner)
		if err == nil {
			if m.building == nil {
				m.building = map[uint64]bool{}
			}
			m.building[s] = true
		}
		m.mu.Unlock()
		if err != nil {
			return setupErr("fill pool", err)
		}
		if err := m.build(s); err != nil {
			m.release(s)
			m.mu.Lock()
			delete(m.building, s)
			m.built.Broadcast()
			m.mu.Unlock()
			return setupErr("fill pool", fmt.Errorf("slot %d: %w", s, err))
		}
		m.mu.Lock()
		delete(m.building, s)
		m.built.Broadcast()
		if m.closed {
			m.mu.Unlock()
			// Close raced the build: the slot stays allocated to the pool
			// and the next Reconcile adopts or removes it.
			return nil
		}
		m.pool = append(m.pool, s)
		m.mu.Unlock()
	}
}

// PoolLen returns the number of pre-built slots ready.
func (m *Manager) PoolLen() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.pool)
}

func (m *Manager) kick() {
	if m.cfg.PoolSize == 0 {
		return
	}
	select {
	case m.refill <- struct{}{}:
	default:
	}
}

func (m *Manager) filler() {
	defer m.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-m.stop; cancel() }()
	for {
		select {
		case <-m.stop:
			return
		case <-m.refill:
			if err := m.Fill(ctx); err != nil && ctx.Err() == nil {
				m.cfg.Logger.Warn("network slot pool refill failed", "err", err)
			}
		}
	}
}

// Close stops the pool filler and closes the manager's handles. Slots,
// pooled or attached, stay in place for the next runtime to adopt.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	close(m.stop)
	m.wg.Wait()
	m.nl.Close()
	return m.host.Close()
}

// Purge removes the pool's slots and the host-wide setup (NAT table,
// the bridge when no port is left) and closes the manager. Attached
// slots are left alone: detach them first.
func (m *Manager) Purge(ctx context.Context) error {
	m.mu.Lock()
	if m.purged {
		m.mu.Unlock()
		return nil
	}
	if m.closed {
		m.mu.Unlock()
		return setupErr("purge", errors.New("manager closed"))
	}
	m.closed, m.purged = true, true
	pool := m.pool
	m.pool = nil
	m.mu.Unlock()
	close(m.stop)
	m.wg.Wait()
	var errs []error
	allocs, err := m.alloc.Allocations(m.cfg.poolName())
	if err != nil {
		errs = append(errs, err)
	}
	for s, o := range allocs {
		if o == poolOwner {
			pool = append(pool, s)
		}
	}
	seen := map[uint64]bool{}
	for _, s := range pool {
		if seen[s] {
			continue
		}
		seen[s] = true
		if err := m.teardown(s); err != nil {
			errs = append(errs, err)
			continue
		}
		m.release(s)
	}
	if err := m.removeHostNAT(); err != nil {
		errs = append(errs, err)
	}
	if m.cfg.Mode == ModeBridge {
		if l, err := m.nl.LinkByName(m.cfg.Bridge); err == nil {
			ports := 0
			links, _ := m.nl.LinkList()
			for _, o := range links {
				if o.Attrs().MasterIndex == l.Attrs().Index {
					ports++
				}
			}
			if ports == 0 {
				if err := m.nl.LinkDel(l); err != nil && !isNotFound(err) {
					errs = append(errs, fmt.Errorf("delete bridge: %w", err))
				}
			}
		}
	}
	m.nl.Close()
	m.host.Close()
	return setupErr("purge", errors.Join(errs...))
}

// build creates slot s's resources; on failure it removes what it made.
func (m *Manager) build(s uint64) (err error) {
	defer func() {
		if err != nil {
			if terr := m.teardown(s); terr != nil {
				m.cfg.Logger.Warn("cleanup after failed slot build", "slot", s, "err", terr)
			}
		}
	}()
	if m.cfg.Mode == ModeNetNS {
		return m.buildNetNS(s)
	}
	return m.buildBridge(s)
}

func (m *Manager) buildNetNS(s uint64) error {
	path := m.nsPath(s)
	if err := CreateNS(path); err != nil {
		return err
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer ns.Close()
	hp, err := Subnet(m.cfg.Subnet, hostBits, s)
	if err != nil {
		return err
	}
	hostAddr, _ := Nth(hp, 1)
	nsAddr, _ := Nth(hp, 2)
	gw, _ := Nth(m.cfg.GuestNet, 1)
	guest, _ := Nth(m.cfg.GuestNet, 2)
	mac, _ := MACFor(guest)

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: HostVethName(s), MTU: m.cfg.MTU},
		PeerName:      NSVeth,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := m.nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", veth.Name, err)
	}
	hl, err := m.nl.LinkByName(veth.Name)
	if err != nil {
		return fmt.Errorf("look up %s: %w", veth.Name, err)
	}
	if err := m.nl.AddrAdd(hl, nlAddr(hostAddr, hostBits)); err != nil {
		return fmt.Errorf("address %s: %w", veth.Name, err)
	}
	if err := m.nl.LinkSetUp(hl); err != nil {
		return fmt.Errorf("bring up %s: %w", veth.Name, err)
	}

	nsnl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer nsnl.Close()
	if lo, err := nsnl.LinkByName("lo"); err == nil {
		_ = nsnl.LinkSetUp(lo)
	}
	vl, err := nsnl.LinkByName(NSVeth)
	if err != nil {
		return fmt.Errorf("look up %s in %s: %w", NSVeth, path, err)
	}
	if err := nsnl.AddrAdd(vl, nlAddr(nsAddr, hostBits)); err != nil {
		return fmt.Errorf("address %s: %w", NSVeth, err)
	}
	if err := nsnl.LinkSetUp(vl); err != nil {
		return fmt.Errorf("bring up %s: %w", NSVeth, err)
	}
	if err := nsnl.RouteAdd(&netlink.Route{LinkIndex: vl.Attrs().Index, Gw: hostAddr.AsSlice()}); err != nil {
		return fmt.Errorf("default route in %s: %w", path, err)
	}
	// A TAP is created through /dev/net/tun, which acts in the calling
	// thread's namespace, so this one step runs inside the VM namespace.
	if err := InNS(ns, func() error { return netlink.LinkAdd(newTAP(GuestTAP, m.cfg.MTU)) }); err != nil {
		return fmt.Errorf("create tap %s: %w", GuestTAP, err)
	}
	tl, err := nsnl.LinkByName(GuestTAP)
	if err != nil {
		return fmt.Errorf("look up %s: %w", GuestTAP, err)
	}
	if err := nsnl.AddrAdd(tl, nlAddr(gw, m.cfg.GuestNet.Bits())); err != nil {
		return fmt.Errorf("address %s: %w", GuestTAP, err)
	}
	if err := nsnl.LinkSetUp(tl); err != nil {
		return fmt.Errorf("bring up %s: %w", GuestTAP, err)
	}
	// Forwarding inside the VM namespace only; IPv6 off there, so a
	// guest's IPv6 goes nowhere rather than anywhere unfiltered.
	if err := setSysctls(ns,
		"net/ipv4/ip_forward", "1",
		"net/ipv6/conf/all/disable_ipv6", "1",
		"net/ipv6/conf/default/disable_ipv6", "1",
	); err != nil {
		return err
	}
	return installSlotNFT(ns, guest, mac)
}

func newTAP(name string, mtu int) *netlink.Tuntap {
	return &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu},
		Mode:      netlink.TUNTAP_MODE_TAP,
		// What Firecracker and QEMU ask for when they attach; persistent
		// so the device outlives this call.
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
	}
}

func (m *Manager) buildBridge(s uint64) error {
	return m.buildBridgeTAP(newTAP(BridgeTAPName(s), m.cfg.MTU))
}

func (m *Manager) buildBridgeTAP(tap *netlink.Tuntap) error {
	name := tap.Name
	br, err := m.nl.LinkByName(m.cfg.Bridge)
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", m.cfg.Bridge, err)
	}
	if err := InNS(m.host, func() error { return netlink.LinkAdd(tap) }); err != nil {
		return fmt.Errorf("create tap %s: %w", name, err)
	}
	l, err := m.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := m.nl.LinkSetMaster(l, br); err != nil {
		return fmt.Errorf("attach %s to %s: %w", name, m.cfg.Bridge, err)
	}
	// Isolated ports cannot reach each other at layer 2, so VM→VM
	// traffic cannot bypass the firewall by staying inside the bridge.
	if err := m.nl.LinkSetIsolated(l, true); err != nil {
		return fmt.Errorf("isolate %s: %w", name, err)
	}
	if err := m.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up %s: %w", name, err)
	}
	return nil
}

// teardown removes slot s's resources; missing ones are fine.
func (m *Manager) teardown(s uint64) error {
	var errs []error
	name := BridgeTAPName(s)
	if m.cfg.Mode == ModeNetNS {
		// Deleting the host end removes the pair now; the namespace (and
		// its TAP) goes once unpinned and unused.
		name = HostVethName(s)
	}
	if l, err := m.nl.LinkByName(name); err == nil {
		if err := m.nl.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", name, err))
		}
	} else if !isNotFound(err) {
		errs = append(errs, fmt.Errorf("look up %s: %w", name, err))
	}
	if m.cfg.Mode == ModeNetNS {
		if err := DeleteNS(m.nsPath(s)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("slot %s: %w", strconv.FormatUint(s, 10), err)
	}
	return nil
}
