package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hearth-vm/hearth/rootfs/digest"
	"github.com/hearth-vm/hearth/rootfs/sparse"
	"golang.org/x/sys/unix"
)

// Pending is a snapshot being written: a temporary directory in the store
// whose paths go to the VMM. It becomes a snapshot with Commit or
// disappears with Abort; exactly one of them must be called.
type Pending struct {
	// Name is the snapshot's name once committed.
	Name string
	// Dir is the temporary directory; StatePath and MemPath are inside it
	// and are what the VMM's snapshot request should name.
	Dir, StatePath, MemPath string

	s      *Store
	mu     sync.Mutex
	done   bool
	unlock func()
}

// Begin reserves a snapshot name and returns the paths to hand to the
// VMM. The name is checked now (ErrExists) and again, atomically, at
// Commit. Begin does no hashing and little I/O, so it belongs inside the
// pause window; Commit does not.
func (s *Store) Begin(name string) (*Pending, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(s.dir, name)); err == nil {
		return nil, fmt.Errorf("%w: %q", ErrExists, name)
	}
	unlock, err := s.lock(unix.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("begin snapshot %q: %w", name, err)
	}
	dir, err := os.MkdirTemp(s.dir, ".pending-"+name+"-")
	if err != nil {
		unlock()
		return nil, fmt.Errorf("begin snapshot %q: %w", name, err)
	}
	return &Pending{
		Name: name, Dir: dir,
		StatePath: filepath.Join(dir, StateFile),
		MemPath:   filepath.Join(dir, MemFile),
		s:         s, unlock: unlock,
	}, nil
}

// Path returns the path of an extra file of the pending snapshot (e.g. a
// copy of the VM's disk, or the working-set trace); Commit hashes every
// file in the directory. file must be a plain name.
func (p *Pending) Path(file string) string {
	return filepath.Join(p.Dir, filepath.Base(file))
}

// Meta is what Commit records beside the files.
type Meta struct {
	SourceVM string
	Backend  string
	// Restore is marshalled to JSON and stored opaque (json.RawMessage
	// passes through unchanged).
	Restore any
	// Parent makes this a diff snapshot of the named snapshot, whose
	// memory file this one's sparse memory file is laid over.
	Parent string
	Labels map[string]string
	// WorkingSet names a file in the pending directory holding the
	// working-set trace, if there is one already.
	WorkingSet string
	// Created defaults to now.
	Created time.Time
}

// Commit hashes and syncs every file the VMM (and the runtime) wrote,
// writes the manifest and renames the directory to its name. Any failure —
// missing files, a vanished parent, a full disk, a name taken meanwhile —
// removes the directory: nothing partial remains. Call it after the VM is
// resumed; it reads every byte written.
func (p *Pending) Commit(ctx context.Context, meta Meta) (Snapshot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return Snapshot{}, ErrDone
	}
	p.done = true
	defer p.unlock()
	snap, err := p.commit(ctx, meta)
	if err != nil {
		if rerr := os.RemoveAll(p.Dir); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return Snapshot{}, fmt.Errorf("commit snapshot %q: %w", p.Name, err)
	}
	p.s.log.Info("snapshot: committed", "name", p.Name, "kind", snap.Kind, "parent", snap.Parent, "bytes", snap.Bytes())
	return snap, nil
}

func (p *Pending) commit(ctx context.Context, meta Meta) (Snapshot, error) {
	for _, f := range []string{p.StatePath, p.MemPath} {
		fi, err := os.Stat(f)
		if err != nil || !fi.Mode().IsRegular() {
			return Snapshot{}, fmt.Errorf("%w: %s", ErrIncomplete, filepath.Base(f))
		}
	}
	m := Manifest{
		Schema: ManifestSchema, Name: p.Name, SourceVM: meta.SourceVM, Backend: meta.Backend,
		Kind: Full, Labels: meta.Labels, Created: meta.Created, Files: map[string]FileInfo{},
		WorkingSet: meta.WorkingSet,
	}
	if m.Created.IsZero() {
		m.Created = time.Now().UTC()
	}
	if meta.Restore != nil {
		b, err := json.Marshal(meta.Restore)
		if err != nil {
			return Snapshot{}, fmt.Errorf("restore spec: %w", err)
		}
		m.Restore = b
	}
	if meta.Parent != "" {
		if err := ValidateName(meta.Parent); err != nil {
			return Snapshot{}, fmt.Errorf("parent: %w", err)
		}
		if meta.Parent == p.Name {
			return Snapshot{}, errors.New("a snapshot cannot be its own parent")
		}
		m.Kind, m.Parent = Diff, meta.Parent
	}
	ents, err := os.ReadDir(p.Dir)
	if err != nil {
		return Snapshot{}, err
	}
	cache := digest.LoadCache(filepath.Join(p.Dir, digest.CacheFile))
	for _, e := range ents {
		name := e.Name()
		if name == ManifestFile || name == digest.CacheFile {
			continue
		}
		if !e.Type().IsRegular() {
			return Snapshot{}, fmt.Errorf("%s is not a regular file", name)
		}
		fi, err := hashAndSync(ctx, filepath.Join(p.Dir, name))
		if err != nil {
			return Snapshot{}, err
		}
		m.Files[name] = fi.info
		cache.Put(name, fi.id, fi.info.SHA256)
	}
	if m.WorkingSet != "" {
		if _, ok := m.Files[m.WorkingSet]; !ok {
			return Snapshot{}, fmt.Errorf("working set %q is not a file of the snapshot", m.WorkingSet)
		}
	}
	if err := cache.Save(); err != nil {
		return Snapshot{}, err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Snapshot{}, err
	}
	if err := digest.WriteFileAtomic(filepath.Join(p.Dir, ManifestFile), append(b, '\n'), 0o600); err != nil {
		return Snapshot{}, err
	}
	if err := syncDir(p.Dir); err != nil {
		return Snapshot{}, err
	}
	final := filepath.Join(p.s.dir, p.Name)
	// The parent check and the rename are one step with respect to
	// Delete, so a parent cannot vanish between them.
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	if m.Parent != "" {
		if _, err := p.s.Get(m.Parent); err != nil {
			return Snapshot{}, fmt.Errorf("parent: %w", err)
		}
	}
	err = unix.Renameat2(unix.AT_FDCWD, p.Dir, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
		return Snapshot{}, fmt.Errorf("%w: %q", ErrExists, p.Name)
	}
	if err != nil {
		return Snapshot{}, &os.LinkError{Op: "rename", Old: p.Dir, New: final, Err: err}
	}
	if err := syncDir(p.s.dir); err != nil {
		p.s.log.Warn("snapshot: sync store dir", "err", err)
	}
	return Snapshot{Manifest: m, Dir: final}, nil
}

type hashed struct {
	info FileInfo
	id   digest.Identity
}

// hashAndSync hashes a file, fsyncs it (the VMM wrote through the page
// cache) and returns its digest, sizes and post-sync identity.
func hashAndSync(ctx context.Context, path string) (hashed, error) {
	f, err := os.Open(path)
	if err != nil {
		return hashed{}, err
	}
	defer f.Close()
	sum, size, err := digest.Reader(ctx, f)
	if err != nil {
		return hashed{}, fmt.Errorf("hash %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return hashed{}, fmt.Errorf("sync %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return hashed{}, err
	}
	id, err := digest.IdentityOf(fi)
	if err != nil {
		return hashed{}, err
	}
	return hashed{info: FileInfo{SHA256: sum, Size: size, Allocated: sparse.Allocated(fi)}, id: id}, nil
}

// Abort removes the pending snapshot. It is idempotent and a no-op after
// Commit.
func (p *Pending) Abort() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return nil
	}
	p.done = true
	defer p.unlock()
	if err := os.RemoveAll(p.Dir); err != nil {
		return fmt.Errorf("abort snapshot %q: %w", p.Name, err)
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
