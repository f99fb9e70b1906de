package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hearth-vm/hearth/vmm"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// SchemaVersion is the version of the records this code reads and writes.
const SchemaVersion = 1

// Errors returned by the store.
var (
	ErrNotFound = errors.New("record not found")
	ErrExists   = errors.New("record already exists")
	ErrLocked   = errors.New("state dir is locked by another runtime")
	ErrCorrupt  = errors.New("state store is corrupt")
	ErrSchema   = errors.New("state store schema is newer than this hearth")
	ErrFull     = errors.New("allocation pool exhausted")
)

var (
	bucketMeta      = []byte("meta")
	bucketVMs       = []byte("vms")
	bucketSnapshots = []byte("snapshots")
	bucketAlloc     = []byte("alloc")
	keySchema       = []byte("schema")
)

// VM is the persistent record of one VM.
type VM struct {
	ID string `json:"id"`
	// Key is an immutable name for the VM's directory and host resources,
	// so renaming a VM never moves files a live VMM has open.
	Key     string `json:"key"`
	Status  string `json:"status"`
	Backend string `json:"backend"`
	// Spec is the resolved spec (the root package's Spec as JSON).
	Spec   json.RawMessage `json:"spec"`
	Handle *vmm.Handle     `json:"handle,omitempty"`
	// Resources lists every host resource the VM holds, in acquisition
	// order, so that reconcile and destroy can release exactly those.
	Resources    []Resource `json:"resources,omitempty"`
	RestoredFrom string     `json:"restored_from,omitempty"`
	Exit         string     `json:"exit,omitempty"`
	// AgentToken authenticates the host to the VM's guest agent.
	AgentToken string `json:"agent_token,omitempty"`
	// AgentTokenPending is the token a restored, still paused clone's
	// agent still holds (its snapshot source's); the runtime replaces it
	// when the clone first runs.
	AgentTokenPending string `json:"agent_token_pending,omitempty"`
	// PausedFor names the snapshot whose write paused this (running) VM;
	// it is set before the pause and cleared after the resume, so a
	// runtime that died inside the pause window resumes the VM when it
	// reopens.
	PausedFor string `json:"paused_for,omitempty"`
	// Destroying is set before a destroy touches anything: a runtime that
	// died mid-destroy finishes it when it reopens.
	Destroying bool      `json:"destroying,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// Resource is one host resource held by a VM.
type Resource struct {
	Kind string `json:"kind"` // e.g. "dir", "alloc"
	Name string `json:"name"`
	// Data carries what releasing it needs (e.g. the pool of an alloc).
	Data map[string]string `json:"data,omitempty"`
}

// Snapshot is the persistent record of one snapshot.
type Snapshot struct {
	Name     string          `json:"name"`
	SourceVM string          `json:"source_vm"`
	Backend  string          `json:"backend"`
	Spec     json.RawMessage `json:"spec"`
	Dir      string          `json:"dir"`
	Complete bool            `json:"complete"`
	// AgentToken is the token the guest agent held when the snapshot was
	// taken; restores need it to hand each clone a token of its own.
	AgentToken string `json:"agent_token,omitempty"`
	// HadNIC says the VM had a network interface (eth0) when snapshotted.
	HadNIC    bool      `json:"had_nic,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// Store is an open state store. Its methods are safe for concurrent use;
// each is one bbolt transaction.
type Store struct {
	db   *bolt.DB
	lock *os.File
	dir  string

	// Group commit (see update): writes queued while a commit is in
	// flight, and whether one is.
	gmu        sync.Mutex
	queue      []*write
	committing bool
}

// write is one queued update.
type write struct {
	fn   func(tx *bolt.Tx) error
	done chan error
}

// Open opens (creating if needed) the store in dir and locks dir.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	lf, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	db, err := bolt.Open(filepath.Join(dir, "hearth.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		lf.Close()
		return nil, fmt.Errorf("open %s: %w", filepath.Join(dir, "hearth.db"), errors.Join(ErrCorrupt, err))
	}
	s := &Store{db: db, lock: lf, dir: dir}
	if err := s.init(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func lockDir(dir string) (*os.File, error) {
	p := filepath.Join(dir, "hearth.lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(p)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			owner := strings.TrimSpace(string(b))
			if owner == "" {
				owner = "unknown"
			}
			return nil, fmt.Errorf("%s (owner pid %s): %w", dir, owner, ErrLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	// The pid is informational (error messages); the flock is the lock.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

func (s *Store) init() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketVMs, bucketSnapshots, bucketAlloc} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		v := meta.Get(keySchema)
		if v == nil {
			return meta.Put(keySchema, u64(SchemaVersion))
		}
		if len(v) != 8 {
			return fmt.Errorf("schema version record: %w", ErrCorrupt)
		}
		if got := binary.BigEndian.Uint64(v); got > SchemaVersion {
			return fmt.Errorf("schema %d > %d: %w", got, SchemaVersion, ErrSchema)
		}
		return nil
	})
}

// update runs fn in a durable write transaction, with group commit: a
// write that finds no commit in flight commits at once; writes that
// arrive during a commit queue, and the next commit takes all of them in
// one transaction and one pair of disk syncs. So many VMs created at once
// do not queue behind each other's syncs one by one, a lone write waits
// for nothing (no batch timer), and the batches grow exactly as large as
// the disk is slow. fn may run more than once and must only touch the
// transaction; a failing fn fails alone (see commitGroup).
func (s *Store) update(fn func(tx *bolt.Tx) error) error {
	w := &write{fn: fn, done: make(chan error, 1)}
	s.gmu.Lock()
	s.queue = append(s.queue, w)
	lead := !s.committing
	s.committing = true
	s.gmu.Unlock()
	if lead {
		s.commitQueued()
	}
	return <-w.done
}

// commitQueued commits what is queued, as one group; what queued up
// meanwhile is committed by a goroutine that carries on, so the caller
// returns as soon as its own write is durable.
func (s *Store) commitQueued() {
	s.gmu.Lock()
	q := s.queue
	s.queue = nil
	s.gmu.Unlock()
	s.commitGroup(q)
	s.gmu.Lock()
	more := len(s.queue) > 0
	s.committing = more
	s.gmu.Unlock()
	if more {
		go s.commitQueued()
	}
}

// commitGroup commits q's writes in one transaction, in order (each sees
// the ones before it, as if they had committed one by one). A write whose
// fn fails aborts the transaction: it is then run alone, so its error is
// its own and nothing it half-did is kept, and the others are retried
// together. A failed commit fails every write of the group.
func (s *Store) commitGroup(q []*write) {
	for len(q) > 0 {
		if len(q) == 1 {
			q[0].done <- s.db.Update(q[0].fn)
			return
		}
		failed := -1
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i, w := range q {
				if err := w.fn(tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if err == nil || failed < 0 {
			for _, w := range q {
				w.done <- err
			}
			return
		}
		q[failed].done <- s.db.Update(q[failed].fn)
		q = append(q[:failed:failed], q[failed+1:]...)
	}
}

// Dir returns the state dir.
func (s *Store) Dir() string { return s.dir }

// Close closes the database and releases the lock.
func (s *Store) Close() error {
	err := s.db.Close()
	s.lock.Close()
	return err
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func put(b *bolt.Bucket, key string, v any) error {
	buf, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	return b.Put([]byte(key), buf)
}

func get(b *bolt.Bucket, key string, v any) error {
	buf := b.Get([]byte(key))
	if buf == nil {
		return ErrNotFound
	}
	if err := json.Unmarshal(buf, v); err != nil {
		return fmt.Errorf("decode %s: %w", key, errors.Join(ErrCorrupt, err))
	}
	return nil
}

// CreateVM inserts rec; it fails with ErrExists if the id is taken. The
// check and the insert are one transaction, so of two concurrent creates
// of the same id exactly one succeeds.
func (s *Store) CreateVM(rec VM) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVMs)
		if b.Get([]byte(rec.ID)) != nil {
			return fmt.Errorf("vm %q: %w", rec.ID, ErrExists)
		}
		return put(b, rec.ID, rec)
	})
}

// PutVM writes rec, which must exist.
func (s *Store) PutVM(rec VM) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVMs)
		if b.Get([]byte(rec.ID)) == nil {
			return fmt.Errorf("vm %q: %w", rec.ID, ErrNotFound)
		}
		return put(b, rec.ID, rec)
	})
}

// GetVM reads one record.
func (s *Store) GetVM(id string) (VM, error) {
	var rec VM
	err := s.db.View(func(tx *bolt.Tx) error {
		return get(tx.Bucket(bucketVMs), id, &rec)
	})
	if errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("vm %q: %w", id, ErrNotFound)
	}
	return rec, err
}

// DeleteVM removes a record; deleting a missing one is not an error.
func (s *Store) DeleteVM(id string) error {
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVMs).Delete([]byte(id))
	})
}

// RenameVM moves the record of old to new atomically.
func (s *Store) RenameVM(old, new string, at time.Time) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVMs)
		if b.Get([]byte(new)) != nil {
			return fmt.Errorf("vm %q: %w", new, ErrExists)
		}
		var rec VM
		if err := get(b, old, &rec); err != nil {
			return fmt.Errorf("vm %q: %w", old, err)
		}
		rec.ID = new
		rec.UpdatedAt = at
		if err := b.Delete([]byte(old)); err != nil {
			return err
		}
		return put(b, new, rec)
	})
}

// ListVMs returns every VM record, sorted by id.
func (s *Store) ListVMs() ([]VM, error) {
	var out []VM
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVMs).ForEach(func(k, v []byte) error {
			var rec VM
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode vm %q: %w", k, errors.Join(ErrCorrupt, err))
			}
			out = append(out, rec)
			return nil
		})
	})
	return out, err
}

// CreateSnapshot inserts rec; ErrExists if the name is taken.
func (s *Store) CreateSnapshot(rec Snapshot) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSnapshots)
		if b.Get([]byte(rec.Name)) != nil {
			return fmt.Errorf("snapshot %q: %w", rec.Name, ErrExists)
		}
		return put(b, rec.Name, rec)
	})
}

// PutSnapshot overwrites an existing snapshot record.
func (s *Store) PutSnapshot(rec Snapshot) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSnapshots)
		if b.Get([]byte(rec.Name)) == nil {
			return fmt.Errorf("snapshot %q: %w", rec.Name, ErrNotFound)
		}
		return put(b, rec.Name, rec)
	})
}

// GetSnapshot reads one snapshot record.
func (s *Store) GetSnapshot(name string) (Snapshot, error) {
	var rec Snapshot
	err := s.db.View(func(tx *bolt.Tx) error {
		return get(tx.Bucket(bucketSnapshots), name, &rec)
	})
	if errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("snapshot %q: %w", name, ErrNotFound)
	}
	return rec, err
}

// DeleteSnapshot removes a snapshot record.
func (s *Store) DeleteSnapshot(name string) error {
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSnapshots).Delete([]byte(name))
	})
}

// ListSnapshots returns every snapshot record, sorted by name.
func (s *Store) ListSnapshots() ([]Snapshot, error) {
	var out []Snapshot
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSnapshots).ForEach(func(k, v []byte) error {
			var rec Snapshot
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode snapshot %q: %w", k, errors.Join(ErrCorrupt, err))
			}
			out = append(out, rec)
			return nil
		})
	})
	return out, err
}

// Allocate reserves the lowest free value in [lo, hi] of pool for owner.
// Allocations are persistent: a value stays taken until Release, so two
// VMs never share a CID, slot or uid, whatever their ids.
func (s *Store) Allocate(pool string, lo, hi uint64, owner string) (uint64, error) {
	if lo > hi {
		return 0, fmt.Errorf("pool %s: empty range %d-%d", pool, lo, hi)
	}
	var got uint64
	err := s.update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bucketAlloc).CreateBucketIfNotExists([]byte(pool))
		if err != nil {
			return err
		}
		// Keys are big-endian, so the cursor walks values in order and
		// the first gap is the lowest free value.
		next := lo
		c := b.Cursor()
		for k, _ := c.Seek(u64(lo)); k != nil; k, _ = c.Next() {
			v := binary.BigEndian.Uint64(k)
			if v > hi || v != next {
				break
			}
			next++
			if next == 0 { // wrapped around
				return fmt.Errorf("pool %s: %w", pool, ErrFull)
			}
		}
		if next > hi {
			return fmt.Errorf("pool %s (%d-%d): %w", pool, lo, hi, ErrFull)
		}
		got = next
		return b.Put(u64(next), []byte(owner))
	})
	return got, err
}

// Release frees a value; releasing a free value is not an error.
func (s *Store) Release(pool string, v uint64) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAlloc).Bucket([]byte(pool))
		if b == nil {
			return nil
		}
		return b.Delete(u64(v))
	})
}

// Allocations returns the taken values of pool and their owners.
func (s *Store) Allocations(pool string) (map[uint64]string, error) {
	out := map[uint64]string{}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAlloc).Bucket([]byte(pool))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			out[binary.BigEndian.Uint64(k)] = string(v)
			return nil
		})
	})
	return out, err
}

// Pools lists the allocation pools that exist.
func (s *Store) Pools() ([]string, error) {
	var out []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAlloc).ForEachBucket(func(k []byte) error {
			out = append(out, string(k))
			return nil
		})
	})
	sort.Strings(out)
	return out, err
}

// OpenReadOnly opens an existing store for reading while no runtime holds
// it (a runtime's exclusive lock makes it fail with ErrLocked, naming the
// owner's pid).
func OpenReadOnly(dir string) (*Store, error) {
	p := filepath.Join(dir, "hearth.db")
	if _, err := os.Stat(p); err != nil {
		return nil, fmt.Errorf("no hearth state in %s: %w", dir, err)
	}
	lf, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	db, err := bolt.Open(p, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		lf.Close()
		return nil, fmt.Errorf("open %s: %w", p, err)
	}
	return &Store{db: db, lock: lf, dir: dir}, nil
}
