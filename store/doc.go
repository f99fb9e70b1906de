// Package store is hearth's source of truth: a bbolt database
// (<state-dir>/hearth.db) holding VM records (spec, status, VMM handle with
// pid and process start time, host resources held, timestamps), snapshot
// records and allocations from numbered pools (vsock CIDs, network slots,
// jail uids).
//
// A state dir belongs to one runtime at a time: Open takes an exclusive
// lock (<state-dir>/hearth.lock, holding the owner's pid) and a second Open
// fails with ErrLocked naming that pid. The schema is versioned; a database
// written by a newer hearth is refused rather than misread.
//
// Records are opaque to the store beyond their keys: it does not know the
// state machine or what a resource means.
package store
