package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hearth-vm/hearth/rootfs/digest"
	"golang.org/x/sys/unix"
)

// File names inside a snapshot directory.
const (
	StateFile      = "vmstate"
	MemFile        = "mem"
	ManifestFile   = "manifest.json"
	WorkingSetFile = "working-set"
)

// ManifestSchema is the manifest version this code writes and reads.
const ManifestSchema = 1

// Errors a caller can test with errors.Is.
var (
	ErrInvalidName = errors.New("invalid snapshot name")
	ErrNotFound    = errors.New("snapshot not found")
	ErrExists      = errors.New("snapshot already exists")
	// ErrHasChildren: the snapshot is the parent of diff snapshots, which
	// could not be restored without it.
	ErrHasChildren = errors.New("snapshot has diff snapshots based on it")
	// ErrIncomplete: Commit found no state or memory file (the VMM did not
	// write them).
	ErrIncomplete = errors.New("snapshot files missing")
	// ErrDone: the pending snapshot was already committed or aborted.
	ErrDone = errors.New("pending snapshot already committed or aborted")
)

// IntegrityError is digest.IntegrityError (file, manifest digest, actual).
type IntegrityError = digest.IntegrityError

// Kind says whether a snapshot's memory file is complete.
type Kind string

const (
	// Full: the memory file holds all of guest memory.
	Full Kind = "full"
	// Diff: the memory file holds only pages dirtied since the parent
	// (sparse); restoring merges it onto the parent chain.
	Diff Kind = "diff"
)

// Manifest is a snapshot's manifest.json.
type Manifest struct {
	Schema   int    `json:"schema"`
	Name     string `json:"name"`
	SourceVM string `json:"source_vm"`
	Backend  string `json:"backend"`
	Kind     Kind   `json:"kind"`
	Parent   string `json:"parent,omitempty"`
	// Restore is what the runtime needs to restore the snapshot (its VM
	// spec), kept opaque here.
	Restore json.RawMessage   `json:"restore,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Created time.Time         `json:"created"`
	// Files lists every file of the snapshot with its digest and sizes.
	Files map[string]FileInfo `json:"files"`
	// WorkingSet names the file (in the snapshot directory) holding the
	// page-fault order recorded at the first restore, if any.
	WorkingSet string `json:"working_set,omitempty"`
}

// FileInfo is one file's digest (lower-case hex SHA-256), logical size
// and the bytes it occupies on disk (less than Size for sparse files).
type FileInfo struct {
	SHA256    string `json:"sha256"`
	Size      int64  `json:"size"`
	Allocated int64  `json:"allocated"`
}

// Snapshot is a stored snapshot: its manifest and its directory.
type Snapshot struct {
	Manifest
	Dir string `json:"dir"`
}

// Path returns the host path of a file of the snapshot.
func (s Snapshot) Path(file string) string { return filepath.Join(s.Dir, file) }

// Bytes is the disk space the snapshot's files occupy.
func (s Snapshot) Bytes() int64 {
	var n int64
	for _, f := range s.Files {
		n += f.Allocated
	}
	return n
}

// nameRE matches the runtime's snapshot names.
var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// ValidateName checks a snapshot name: 1–63 characters of [a-zA-Z0-9_.-]
// starting with a letter or digit, without "..".
func ValidateName(name string) error {
	if !nameRE.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("%w %q: want 1-63 characters of [a-zA-Z0-9_.-] starting with a letter or digit, without \"..\"", ErrInvalidName, name)
	}
	return nil
}

// Options tune a Store.
type Options struct {
	// Logger receives what the store does; nil discards.
	Logger *slog.Logger
}

// Store is the snapshot store under one directory. It is safe for
// concurrent use; snapshots appear and disappear with single renames, so
// other processes reading the directory see whole snapshots only.
type Store struct {
	dir string
	log *slog.Logger
	// mu orders parent checks in Commit against Delete in this process,
	// so a diff is never committed onto a parent being deleted.
	mu sync.Mutex
}

const lockFile = ".lock"

// Open opens (creating if needed) the store at dir and removes the
// temporary directories of writes that died with their process.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}
	s := &Store{dir: dir, log: opts.Logger}
	s.cleanStale()
	return s, nil
}

// Dir returns the store directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) cleanStale() {
	unlock, err := s.lock(unix.LOCK_EX | unix.LOCK_NB)
	if err != nil {
		return // a write is in progress somewhere; clean another time
	}
	defer unlock()
	ents, _ := os.ReadDir(s.dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".pending-") || strings.HasPrefix(e.Name(), ".rm-") {
			p := filepath.Join(s.dir, e.Name())
			if err := os.RemoveAll(p); err != nil {
				s.log.Warn("snapshot: removing stale temporary", "path", p, "err", err)
			} else {
				s.log.Info("snapshot: removed stale temporary", "path", p)
			}
		}
	}
}

// lock flocks the store's lock file: shared by writers while their
// temporary directory exists, exclusive by the stale cleaner.
func (s *Store) lock(how int) (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.dir, lockFile), os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// Get returns a snapshot's manifest.
func (s *Store) Get(name string) (Snapshot, error) {
	if err := ValidateName(name); err != nil {
		return Snapshot{}, err
	}
	dir := filepath.Join(s.dir, name)
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if errors.Is(err, os.ErrNotExist) {
		return Snapshot{}, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %q: %w", name, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %q: manifest: %w", name, err)
	}
	if m.Schema > ManifestSchema {
		return Snapshot{}, fmt.Errorf("snapshot %q: manifest schema %d is newer than this hearth (%d)", name, m.Schema, ManifestSchema)
	}
	for f, fi := range m.Files {
		if !digest.Valid(fi.SHA256) || f != filepath.Base(f) || strings.HasPrefix(f, ".") {
			return Snapshot{}, fmt.Errorf("snapshot %q: manifest entry %q is malformed", name, f)
		}
	}
	return Snapshot{Manifest: m, Dir: dir}, nil
}

// List returns every snapshot, oldest first.
func (s *Store) List() ([]Snapshot, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	var out []Snapshot
	for _, e := range ents {
		if !e.IsDir() || ValidateName(e.Name()) != nil {
			continue
		}
		snap, err := s.Get(e.Name())
		if err != nil {
			s.log.Warn("snapshot: skipping unreadable snapshot", "name", e.Name(), "err", err)
			continue
		}
		out = append(out, snap)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

// Children returns the names of the diff snapshots whose parent is name.
func (s *Store) Children(name string) ([]string, error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, sn := range all {
		if sn.Parent == name {
			out = append(out, sn.Name)
		}
	}
	return out, nil
}

// Delete removes a snapshot. A snapshot that diff snapshots are based on
// is refused with ErrHasChildren (see DeleteWithDescendants). The
// snapshot disappears with one rename before its files are deleted.
func (s *Store) Delete(name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	kids, err := s.Children(name)
	if err != nil {
		return err
	}
	if len(kids) > 0 {
		return fmt.Errorf("delete snapshot %q: %w: %s", name, ErrHasChildren, strings.Join(kids, ", "))
	}
	return s.remove(name)
}

// DeleteWithDescendants removes a snapshot and every diff snapshot based
// on it, children before parents, and returns the names removed.
func (s *Store) DeleteWithDescendants(name string) ([]string, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	if !hasName(all, name) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	order := descendantsFirst(all, map[string]bool{name: true})
	var done []string
	for _, n := range order {
		if err := s.remove(n); err != nil {
			return done, err
		}
		done = append(done, n)
	}
	return done, nil
}

func hasName(all []Snapshot, name string) bool {
	for _, s := range all {
		if s.Name == name {
			return true
		}
	}
	return false
}

// descendantsFirst returns roots and all their descendants, each
// snapshot after all of its descendants.
func descendantsFirst(all []Snapshot, roots map[string]bool) []string {
	kids := map[string][]string{}
	for _, s := range all {
		if s.Parent != "" {
			kids[s.Parent] = append(kids[s.Parent], s.Name)
		}
	}
	var out []string
	seen := map[string]bool{}
	var visit func(n string)
	visit = func(n string) {
		if seen[n] {
			return
		}
		seen[n] = true
		for _, k := range kids[n] {
			visit(k)
		}
		out = append(out, n)
	}
	var rs []string
	for r := range roots {
		rs = append(rs, r)
	}
	sort.Strings(rs)
	for _, r := range rs {
		visit(r)
	}
	return out
}

// remove renames the snapshot out of sight, then deletes it.
func (s *Store) remove(name string) error {
	dir := filepath.Join(s.dir, name)
	if _, err := os.Stat(filepath.Join(dir, ManifestFile)); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	unlock, err := s.lock(unix.LOCK_SH)
	if err != nil {
		return err
	}
	defer unlock()
	gone, err := os.MkdirTemp(s.dir, ".rm-"+name+"-")
	if err != nil {
		return fmt.Errorf("delete snapshot %q: %w", name, err)
	}
	if err := os.Rename(dir, filepath.Join(gone, name)); err != nil {
		os.Remove(gone)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: %q", ErrNotFound, name)
		}
		return fmt.Errorf("delete snapshot %q: %w", name, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return fmt.Errorf("delete snapshot %q: %w", name, err)
	}
	s.log.Info("snapshot: deleted", "name", name)
	return nil
}

// Verify checks the files of a snapshot and, for a diff, the memory files
// of its ancestors, against their manifests. A mismatch is an
// *IntegrityError.
func (s *Store) Verify(ctx context.Context, name string, mode digest.Mode) error {
	chain, err := s.chain(name)
	if err != nil {
		return err
	}
	return s.verifyChain(ctx, chain, mode)
}

// chain returns the snapshot and its ancestors, base first.
func (s *Store) chain(name string) ([]Snapshot, error) {
	var out []Snapshot
	seen := map[string]bool{}
	for n := name; ; {
		if seen[n] {
			return nil, fmt.Errorf("snapshot %q: parent cycle at %q", name, n)
		}
		seen[n] = true
		sn, err := s.Get(n)
		if err != nil {
			if n != name {
				return nil, fmt.Errorf("snapshot %q: parent: %w", name, err)
			}
			return nil, err
		}
		out = append([]Snapshot{sn}, out...)
		if sn.Kind != Diff {
			return out, nil
		}
		if sn.Parent == "" {
			return nil, fmt.Errorf("snapshot %q: diff without a parent", n)
		}
		n = sn.Parent
	}
}

func (s *Store) verifyChain(ctx context.Context, chain []Snapshot, mode digest.Mode) error {
	for i, sn := range chain {
		files := []string{MemFile}
		if i == len(chain)-1 {
			files = files[:0]
			for f := range sn.Files {
				files = append(files, f)
			}
			sort.Strings(files)
		}
		cache := digest.LoadCache(sn.Path(digest.CacheFile))
		var errs error
		for _, f := range files {
			fi, ok := sn.Files[f]
			if !ok {
				return fmt.Errorf("snapshot %q: manifest lists no %s", sn.Name, f)
			}
			if err := digest.Verify(ctx, sn.Path(f), fi.SHA256, cache, mode); err != nil {
				var ie *IntegrityError
				if !errors.As(err, &ie) {
					return fmt.Errorf("snapshot %q: %w", sn.Name, err)
				}
				s.log.Error("snapshot: file failed verification", "snapshot", sn.Name, "file", f, "want", ie.Want, "got", ie.Got)
				errs = errors.Join(errs, err)
			}
		}
		if err := cache.Save(); err != nil {
			s.log.Warn("snapshot: cannot save verification cache", "snapshot", sn.Name, "err", err)
		}
		if errs != nil {
			return errs
		}
	}
	return nil
}
