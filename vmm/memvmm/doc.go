// Package memvmm is an in-memory vmm.Backend: machines that follow the
// same rules as a real VMM (configure or load once, start once, snapshot
// only while paused, …) without starting processes or touching the host.
// It is hearth's equivalent of the seed crate's InMemoryVmProvider and is
// meant for tests of code built on hearth.
//
// Snapshots keep the machine state in the Backend; the state file written
// at the requested path only names it (the memory file is empty), so a
// snapshot taken through one Backend can be restored through it, wherever
// the runtime moved the files. Writing those two small files is the
// backend's only side effect. A
// Backend outlives runtimes that use it: a runtime reopened with the same
// Backend adopts its machines, one reopened with a fresh Backend finds them
// gone (as after a host reboot).
package memvmm
