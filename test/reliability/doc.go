// Package reliability holds hearth's reliability suite: black-box tests that
// break things on purpose — the VMM killed or hung, the guest agent
// unresponsive, the page-fault server killed, the disk full, address and
// uid pools exhausted, file descriptors run out, hundreds of VMs at once —
// and check that every failure ends in a clear state and a typed error,
// never a hang, and that nothing is leaked (processes, links, namespaces,
// rules, chroots, cgroups, sockets, clones, snapshot fragments).
//
// Crash consistency (kill -9 of the runtime's process at every pipeline
// step) lives in the root package, which owns the fault hooks.
package reliability
