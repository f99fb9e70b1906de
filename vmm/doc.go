// Package vmm defines the contract between hearth's runtime and a virtual
// machine monitor: a Backend launches or adopts a Machine, and a Machine is
// driven through configure → start → pause/resume → snapshot → shutdown.
//
// The package owns the backend-neutral description of a machine (Config,
// Drive, NIC, Vsock, rate limiters, snapshot requests) and the persistent
// Handle a runtime records so that it can re-attach to a VMM after a
// restart. It must not know about hearth's store, networking or state
// machine: the runtime translates its Spec into a Config and keeps the
// lifecycle rules; backends only execute what they are asked.
//
// Backends live in sub-packages: vmm/firecracker (the primary VMM),
// vmm/qemu and vmm/memvmm (an in-memory backend with no side effects, for
// tests of code built on hearth).
package vmm
