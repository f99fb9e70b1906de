// Package sparse copies files without inflating them: FICLONE reflinks
// where the filesystem shares blocks (XFS, btrfs), and otherwise an
// in-kernel copy (copy_file_range) of the data extents only, found with
// SEEK_DATA/SEEK_HOLE, so holes stay holes. It never shells out.
//
// It owns byte movement between open files and nothing else: no naming,
// no digests, no policy about where files live.
package sparse
