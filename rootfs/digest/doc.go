// Package digest owns hearth's file integrity primitives: streaming SHA-256
// of (possibly sparse) files, the identity of a file on disk (device, inode,
// size, mtime, ctime), a persisted cache of "this identity was verified to
// have that digest", and IntegrityError, the one error a digest mismatch
// produces anywhere in hearth (images, clones, snapshots).
//
// The identity includes ctime because user space cannot set it: a file
// rewritten in place with its mtime restored still gets a new ctime, so the
// cache never vouches for changed content (the seed keyed its cache on
// mtime alone and kept stale digests).
//
// The package knows nothing about images or snapshots; of hearth's
// packages it imports only rootfs/sparse (to skip the holes of sparse
// files while hashing).
package digest
