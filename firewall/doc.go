// Package firewall owns hearth's per-VM egress firewall: the policy model
// and its validation, the rule string syntax, and two kernel backends
// that enforce the same plan.
//
// # Policy
//
// Default deny. A Policy allows destinations by rule (CIDR v4 or v6,
// tcp/udp/icmp, port or range); optional DNS resolvers are allowed on
// UDP and TCP port 53; replies (conntrack established/related) always
// pass. The metadata addresses (169.254.169.254, fd00:ec2::254), the host
// itself and other VMs (Config.VMNets) are denied before the allow rules,
// so a broad rule does not open them — unless AllowMetadata, AllowHost or
// AllowVMs lifts that deny. Anti-spoofing: a VM's packets must carry its
// source address (VMRef.Addr) and, in bridge mode, its MAC; IPv6 is
// dropped unless the VM has an IPv6 address (VMRef.Addr6).
//
// Rules as strings: "tcp:10.0.0.0/8:443", "udp:[2001:db8::]/32:53-54",
// "icmp:0.0.0.0/0", "tcp:1.2.3.4" (one host, every port). ParseRule and
// Policy.Validate check every field before any kernel call and return
// *Error{Kind: KindInvalidArgument, Field: "allow[2].ports", …}.
//
// # Backends
//
// nftables (default, google/nftables over netlink): table inet "hearth"
// with base chains forward and input, a chain vm-<slot> per VM, jump
// rules tagged "hearth:<slot>:<owner>", and guard rules that drop traffic
// from VM interfaces no chain accepted (Config.Guard), so a VM is never
// unfiltered before Apply or after Remove. Bridge mode adds a netdev
// ingress chain on the VM's TAP (table netdev "hearth") that enforces MAC,
// source address and truthful ARP before the packet reaches the bridge.
// Every Apply/Remove is one netlink batch, which the kernel commits
// atomically: replacing a running VM's policy has no open window.
//
// iptables (coreos/go-iptables; iptables-nft or -legacy, and ip6tables):
// dispatch chains HEARTH-FWD and HEARTH-IN jumped from FORWARD and INPUT,
// a chain hth-<slot>-<a|b> per VM. Apply writes the new generation, puts
// its jumps first, deletes the old jumps and chain — all in one
// iptables-restore --noflush commit per family, so here too no packet
// meets a half policy. Bridge mode matches the port with physdev (it
// turns on bridge-nf-call-ip(6)tables in the host namespace).
//
// # How the runtime uses it
//
//	fw, err := firewall.New(firewall.Config{Backend: firewall.NFTables,
//		VMNets: m.VMNets(), Guard: m.GuardIfaces()})        // m: *network.Manager
//	// create (after network attach, before the VMM starts):
//	err = fw.Apply(ctx, firewall.RefFor(att), policy)      // undo: fw.Remove
//	// change policy of a running VM: fw.Apply again (atomic)
//	// destroy: fw.Remove(ctx, firewall.RefFor(att)) (idempotent)
//	// open: fw.Reconcile(ctx, func(owner string) bool { return vmExists(owner) })
//
// Errors: KindInvalidArgument maps to the runtime's InvalidArgument,
// KindFirewall to Firewall (errors.Is with ErrInvalidArgument,
// ErrFirewall). Every entry point acts in Config.HostNS, so tests run it
// inside namespaces they create.
//
// This package must not touch tables, chains or rules it did not create
// (anything not named hearth/HEARTH-*/hth-*/vm-<n> in its table), nor
// links, addresses or namespaces (package network owns those).
package firewall
