package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hearth-vm/hearth/rootfs/digest"
	"github.com/hearth-vm/hearth/rootfs/sparse"
	"golang.org/x/sys/unix"
)

// PrepareOptions tune Prepare.
type PrepareOptions struct {
	// Verify says when files are re-hashed before restoring (default
	// digest.OnChange: only files whose identity changed since they were
	// last verified).
	Verify digest.Mode
	// Dir receives the merged memory file of a diff snapshot (as Dir/mem);
	// it belongs to the caller, typically the new VM's directory, and the
	// caller deletes it with the VM. Required for diff snapshots.
	Dir string
}

// Restore is what a VMM needs to restore a snapshot.
type Restore struct {
	Snapshot Snapshot
	// StatePath is the snapshot's state file, MemPath its memory file, or
	// for a diff the merged full memory file under PrepareOptions.Dir.
	StatePath, MemPath string
	// Merged is true when MemPath is a new file made by merging a diff
	// chain (the caller owns it).
	Merged bool
	// Chain lists the snapshots merged, base first (just the snapshot
	// itself for a full one).
	Chain []string
}

// Prepare verifies a snapshot (and for a diff, its ancestors' memory
// files) per opts.Verify and returns the files to restore from. For a diff
// snapshot the memory files are merged, base first, into a new full
// memory file: the base is reflinked or sparse-copied, then each diff's
// data extents are copied over it, so the merge costs the size of the
// diffs, not of guest memory.
func (s *Store) Prepare(ctx context.Context, name string, opts PrepareOptions) (Restore, error) {
	chain, err := s.chain(name)
	if err != nil {
		return Restore{}, err
	}
	if err := s.verifyChain(ctx, chain, opts.Verify); err != nil {
		return Restore{}, err
	}
	snap := chain[len(chain)-1]
	r := Restore{Snapshot: snap, StatePath: snap.Path(StateFile), MemPath: snap.Path(MemFile)}
	for _, c := range chain {
		r.Chain = append(r.Chain, c.Name)
	}
	if len(chain) == 1 {
		return r, nil
	}
	if opts.Dir == "" {
		return Restore{}, fmt.Errorf("snapshot %q is a diff: a directory for the merged memory file is required", name)
	}
	dst := filepath.Join(opts.Dir, MemFile)
	mems := make([]string, len(chain))
	for i, c := range chain {
		mems[i] = c.Path(MemFile)
	}
	if err := MergeMemory(ctx, dst, mems); err != nil {
		return Restore{}, fmt.Errorf("snapshot %q: %w", name, err)
	}
	r.MemPath, r.Merged = dst, true
	return r, nil
}

// MergeMemory writes to dst (which must not exist) the memory image of
// layers[0] (a full memory file) with each later layer (a sparse diff
// memory file) laid over it in order: the data extents of a diff replace
// the same ranges below, its holes leave them. Diffs from a filesystem
// that does not report holes are refused (sparse.ErrNoHoles) rather than
// merged as all-data, which would zero the base. A failure leaves no dst.
func MergeMemory(ctx context.Context, dst string, layers []string) error {
	if len(layers) == 0 {
		return errors.New("merge: no memory files")
	}
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("merge: %s: %w", dst, os.ErrExist)
	}
	base, err := os.Open(layers[0])
	if err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	defer base.Close()
	bfi, err := base.Stat()
	if err != nil {
		return err
	}
	out, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".merge-*")
	if err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	tmp := out.Name()
	ok := false
	defer func() {
		out.Close()
		if !ok {
			os.Remove(tmp)
		}
	}()
	if err := sparse.Reflink(out, base); err != nil {
		if _, err := sparse.Copy(ctx, out, base, bfi.Size()); err != nil {
			return fmt.Errorf("merge: copy base %s: %w", layers[0], err)
		}
	}
	size := bfi.Size()
	for _, l := range layers[1:] {
		if err := overlay(ctx, out, l, &size); err != nil {
			return fmt.Errorf("merge: %s: %w", l, err)
		}
	}
	if err := out.Chmod(0o600); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("merge: %w", &os.LinkError{Op: "rename", Old: tmp, New: dst, Err: err})
	}
	ok = true
	return nil
}

func overlay(ctx context.Context, out *os.File, layer string, size *int64) error {
	f, err := os.Open(layer)
	if err != nil {
		return err
	}
	defer f.Close()
	exts, err := sparse.Extents(f)
	if err != nil {
		return err
	}
	for _, e := range exts {
		if err := sparse.CopyRange(ctx, out, f, e.Off, e.Len); err != nil {
			return err
		}
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() > *size {
		*size = fi.Size()
		return out.Truncate(*size)
	}
	return nil
}

// AttachWorkingSet moves the working-set trace at src (recorded during
// the first restore) into the snapshot as WorkingSetFile and records it,
// with its digest, in the manifest. An existing trace is replaced.
func (s *Store) AttachWorkingSet(ctx context.Context, name, src string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap, err := s.Get(name)
	if err != nil {
		return err
	}
	dst := snap.Path(WorkingSetFile)
	tmp := dst + ".tmp"
	os.Remove(tmp)
	sum, size, err := digest.CopyFile(ctx, src, tmp, 0o600)
	if err != nil {
		return fmt.Errorf("attach working set to %q: %w", name, err)
	}
	fi, err := os.Stat(tmp)
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	m := snap.Manifest
	m.Files[WorkingSetFile] = FileInfo{SHA256: sum, Size: size, Allocated: sparse.Allocated(fi)}
	m.WorkingSet = WorkingSetFile
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := digest.WriteFileAtomic(snap.Path(ManifestFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("attach working set to %q: %w", name, err)
	}
	os.Remove(src)
	return nil
}
