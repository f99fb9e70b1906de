// Package hearth is a runtime for microVMs: it creates, starts, pauses,
// snapshots, restores, renames, stops and destroys virtual machines run by
// a VMM backend (Firecracker, QEMU microvm, or the in-memory backend for
// tests), and keeps their state in a store that survives restarts.
//
// A Runtime owns one state directory. Open locks it and reconciles the
// recorded VMs with reality (adopting VMMs that still run, marking the
// others crashed); every operation validates its input before any side
// effect, follows the state machine in Next, and returns *Error values
// whose Kind callers can test with errors.Is against the Err* sentinels.
//
// The root package composes the others; it owns the lifecycle rules, the
// create pipeline with its rollback, and the VM records. It must not talk
// to a VMM directly (that is vmm's job) nor touch host networking, jails or
// images except through the packages that own them.
package hearth
