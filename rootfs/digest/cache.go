package digest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Identity is what the cache compares to decide whether a file may have
// changed since it was last hashed. ctime is part of it because it cannot
// be set from user space: any write or chmod moves it, even when the
// writer restores the mtime.
type Identity struct {
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	Size    int64  `json:"size"`
	MtimeNS int64  `json:"mtime_ns"`
	CtimeNS int64  `json:"ctime_ns"`
}

// IdentityOf extracts the identity from a FileInfo returned by os.Stat or
// os.Lstat on Linux.
func IdentityOf(fi os.FileInfo) (Identity, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return Identity{}, fmt.Errorf("no stat data for %s", fi.Name())
	}
	return Identity{
		Dev:     st.Dev,
		Ino:     st.Ino,
		Size:    st.Size,
		MtimeNS: st.Mtim.Nano(),
		CtimeNS: st.Ctim.Nano(),
	}, nil
}

// Stat returns the identity of the file at path.
func Stat(path string) (Identity, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Identity{}, err
	}
	return IdentityOf(fi)
}

// Mode says when a file is re-hashed before use.
type Mode int

const (
	// OnChange re-hashes a file only when its identity differs from the
	// one recorded at its last successful verification (the default).
	OnChange Mode = iota
	// Always re-hashes on every use.
	Always
	// Never trusts the files without hashing.
	Never
)

func (m Mode) String() string {
	switch m {
	case Always:
		return "always"
	case Never:
		return "never"
	default:
		return "changed"
	}
}

// ParseMode parses "always", "changed" (or "", "on-change") and "never".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "changed", "on-change", "onchange":
		return OnChange, nil
	case "always":
		return Always, nil
	case "never":
		return Never, nil
	}
	return OnChange, fmt.Errorf("verify mode %q: want always, changed or never", s)
}

// CacheFile is the conventional name of a directory's verification cache.
const CacheFile = "verified.json"

type cacheEntry struct {
	Identity Identity  `json:"identity"`
	SHA256   string    `json:"sha256"`
	Verified time.Time `json:"verified"`
}

type cacheFile struct {
	Schema  int                   `json:"schema"`
	Entries map[string]cacheEntry `json:"entries"`
}

// Cache records, per file name, the identity a file had when it was last
// verified against a digest. It lives beside the files it covers and is
// advisory: a lost or corrupt cache only costs a re-hash, never a false
// pass, because an entry vouches only for the exact identity and digest it
// was recorded with. Safe for concurrent use.
type Cache struct {
	path    string
	mu      sync.Mutex
	entries map[string]cacheEntry
	dirty   bool
}

// LoadCache reads the cache at path. A missing or unreadable cache is
// empty.
func LoadCache(path string) *Cache {
	c := &Cache{path: path, entries: map[string]cacheEntry{}}
	b, err := os.ReadFile(path)
	if err != nil {
		return c
	}
	var cf cacheFile
	if json.Unmarshal(b, &cf) == nil && cf.Schema == 1 && cf.Entries != nil {
		c.entries = cf.Entries
	}
	return c
}

// Known reports whether name was verified to have digest sum while it had
// identity id.
func (c *Cache) Known(name string, id Identity, sum string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[name]
	return ok && e.Identity == id && e.SHA256 == sum
}

// Put records that name, with identity id, has digest sum.
func (c *Cache) Put(name string, id Identity, sum string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries[name] = cacheEntry{Identity: id, SHA256: sum, Verified: time.Now().UTC()}
	c.dirty = true
}

// Forget drops what is known about name.
func (c *Cache) Forget(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[name]; ok {
		delete(c.entries, name)
		c.dirty = true
	}
}

// Save writes the cache atomically if it changed since it was loaded.
func (c *Cache) Save() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.dirty {
		return nil
	}
	b, err := json.MarshalIndent(cacheFile{Schema: 1, Entries: c.entries}, "", "  ")
	if err != nil {
		return err
	}
	if err := WriteFileAtomic(c.path, append(b, '\n'), 0o644); err != nil {
		return err
	}
	c.dirty = false
	return nil
}

// Verify checks that the file at path has digest want. With mode OnChange
// and a cache, a file whose identity is the one recorded at its last
// successful verification is not re-read. A mismatch is an
// *IntegrityError; the cache entry is dropped so the next use re-hashes
// too. The cache is updated in memory; the caller saves it.
func Verify(ctx context.Context, path, want string, cache *Cache, mode Mode) error {
	if mode == Never {
		return nil
	}
	name := filepath.Base(path)
	// The identity is taken before hashing: if the file changes while it
	// is hashed, its ctime moves past the recorded one and the next use
	// re-verifies.
	id, err := Stat(path)
	if err != nil {
		return fmt.Errorf("verify %s: %w", path, err)
	}
	if mode == OnChange && cache != nil && cache.Known(name, id, want) {
		return nil
	}
	got, _, err := hashFile(ctx, path)
	if err != nil {
		return err
	}
	if got != want {
		if cache != nil {
			cache.Forget(name)
		}
		return &IntegrityError{Path: path, Want: want, Got: got}
	}
	if cache != nil {
		cache.Put(name, id, got)
	}
	return nil
}

// hashFile is File; tests replace it to count re-hashes.
var hashFile = File

// WriteFileAtomic writes data to path through a temporary file in the same
// directory, fsynced and renamed into place, so readers see the old or the
// new content and never a torn file.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, perm)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
