// Package network owns hearth's host networking: prefix math for IPv4
// and IPv6 (net/netip), persistent collision-free slot allocation
// (IPAM) over the store's allocation pools, names of host links and
// namespaces (all starting with "hth", within IFNAMSIZ), guest MACs
// derived from the allocation, and the per-VM plumbing, all through
// netlink and nftables — never the ip or iptables commands.
//
// # Modes
//
// netns (default; the design of Firecracker's clone guide and E2B): slot
// N gets namespace hth-N (pinned under Config.NetNSDir, /run/netns by
// default) holding TAP "hthtap0" with 172.16.0.1/30, and a veth pair
// hthvN (host) / hthns0 (namespace) on the N-th /30 of Config.Subnet.
// Every guest sees the same inside view — 172.16.0.2/30 via 172.16.0.1,
// MAC 02:68:ac:10:00:02, TAP hthtap0 — so clones restored from one
// snapshot need no re-addressing and no network override. Inside the
// namespace: forwarding on, IPv6 off, masquerade to the veth address,
// and anti-spoofing at the TAP (only the guest's MAC and address leave,
// nothing reaches the namespace itself). The host masquerades
// Config.Subnet to the egress interface. A pool of pre-built slots
// (Config.PoolSize) is refilled in the background so Attach is cheap.
//
// bridge (the seed's topology, done right): bridge hearth0 holds the
// gateway, each VM gets TAP hthtN as an isolated bridge port (no VM→VM
// at layer 2) and the N-th guest address of Config.Subnet; forwarding
// on and masquerade to the egress interface.
//
// The guest learns its addressing from the kernel command line,
// Attachment.BootArg = "hearth.ip=<addr>/<prefix>,<gw>,<dns>"; the VMM
// gets Attachment.TAP and Attachment.MAC. IPv6 is not configured in
// guests: it is disabled in VM namespaces and dropped by the firewall,
// never left unfiltered.
//
// # Host namespace
//
// Every entry point acts in Config.HostNS (a path; empty = the caller's
// namespace), so tests run the whole stack inside namespaces they made
// (see package nstest). Sysctls are written only in the host namespace
// given and in the VM namespaces this package creates.
//
// # How the runtime uses it
//
//	m, err := network.New(network.Config{Mode: network.ModeNetNS, EgressIface: "eth0"}, st) // st: *store.Store
//	// create:  a, err := m.Attach(ctx, vmKey)  → run the VMM in a.NetNSPath (netns mode),
//	//          configure NIC a.TAP / a.MAC, append a.BootArg to the boot args,
//	//          persist a (JSON) with the VM record; undo = m.Detach(ctx, vmKey).
//	// firewall: fw.Apply(ctx, firewall.RefFor(a), policy)
//	// restore after a restart: m.Adopt(ctx, &recorded)
//	// destroy: m.Detach(ctx, vmKey) (idempotent)
//	// open:    m.Reconcile(ctx, func(owner string) bool { return vmExists(owner) })
//	// close:   m.Close() (slots stay for the next runtime); m.Purge(ctx) removes pool and host setup.
//
// Errors are *Error with a Kind: KindInvalidArgument (bad input, before
// any side effect), KindConfig (maps to NetworkConfig: subnet too small,
// pool exhausted — errors.Is(err, ErrExhausted)), KindSetup (maps to
// NetworkSetup: the kernel refused). Use errors.Is with ErrInvalidArgument,
// ErrNetworkConfig, ErrNetworkSetup.
//
// This package must not touch the firewall table "hearth" of the host
// namespace (package firewall owns it), the store's records, or any link
// or namespace without hearth's prefix.
package network
