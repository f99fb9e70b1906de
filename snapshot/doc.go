// Package snapshot owns the snapshot store: <state-dir>/snapshots/<name>/
// holding the VMM's state file (vmstate), guest memory (mem), any extra
// files the runtime adds (e.g. a copy of the VM's disk), and manifest.json
// (source VM, backend, the restore spec as opaque JSON, full or diff and
// the parent of a diff, sizes and SHA-256 of every file, creation time,
// working-set trace).
//
// Snapshots outlive the VM they came from: nothing here is keyed on a live
// VM, and they are deleted only explicitly or by a GC policy (keep N per
// source VM, cap on total bytes) that never deletes the parent of a
// snapshot it keeps.
//
// Writing is two-phase so that hashing stays out of the VM's pause window:
// Begin reserves a temporary directory and gives the paths to hand to the
// VMM; after the VMM has written them (and the VM is resumed), Commit
// hashes, syncs, writes the manifest and renames the directory into place;
// Abort, or any failure of Commit (disk full included), removes it. A
// snapshot therefore appears whole or not at all.
//
// Restore (Prepare) verifies files against the manifest — always, when
// their identity changed since the last verification, or never — and for
// a diff snapshot merges the chain of memory files onto its full base
// (sparse: only the diff's data extents are copied) into a new full memory
// file for the VMM.
//
// The package knows nothing about VMMs, VMs or the runtime's store; the
// runtime maps ErrNotFound, ErrExists, ErrInvalidName and
// *digest.IntegrityError to its error kinds.
package snapshot
