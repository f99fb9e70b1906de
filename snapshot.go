package hearth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hearth-vm/hearth/rootfs/digest"
	"github.com/hearth-vm/hearth/snapshot"
	"github.com/hearth-vm/hearth/store"
	"github.com/hearth-vm/hearth/vmm"
	"golang.org/x/sys/unix"
)

// Files of a snapshot directory.
const (
	snapMem    = "mem"
	snapRootfs = "rootfs.ext4"
)

// Snapshot writes the VM's state, memory and (for a VM with its own disk)
// a copy of its disk to a new snapshot named name. A running VM is paused
// for the write and resumed afterwards, whether the write succeeded or
// not; a paused VM stays paused. A failed write leaves no partial snapshot.
// Snapshots outlive the VM: destroying it keeps them.
//
// The write is a pipeline of steps (see snapshotSteps), so that a failure
// at any step undoes the ones before it and a crash at any step is
// repaired by the next Open: the snapshot is then complete or absent, and
// a VM paused for it runs again.
func (r *Runtime) Snapshot(ctx context.Context, id, name string) (SnapshotView, error) {
	const op = "snapshot"
	if err := ValidateSnapshotName(name); err != nil {
		return SnapshotView{}, &Error{Kind: KindInvalidArgument, Op: op, VM: clip(id), Snapshot: clip(name), Err: err}
	}
	e, err := r.lockVM(op, id)
	if err != nil {
		return SnapshotView{}, err
	}
	defer e.mu.Unlock()
	if _, err := transition(e, OpSnapshot); err != nil {
		return SnapshotView{}, err
	}
	spec, err := specOf(e)
	if err != nil {
		return SnapshotView{}, &Error{Kind: KindStatePoisoned, Op: op, VM: id, Snapshot: name, Err: err}
	}
	p := &snapPlan{id: id, name: name, e: e, spec: spec, running: Status(e.rec.Status) == StatusRunning}
	p.rec = store.Snapshot{Name: name, SourceVM: id, Backend: e.rec.Backend, Spec: e.rec.Spec,
		Dir: filepath.Join(r.snapshotsDir(), name), CreatedAt: time.Now().UTC(), AgentToken: e.rec.AgentToken}
	_, p.rec.HadNIC = attachmentOf(e.rec.Resources)
	if err := runSteps(ctx, r.snapshotSteps(p), r.inject, nil); err != nil {
		var he *Error
		if errors.As(err, &he) {
			he.Snapshot = name
			return SnapshotView{}, err
		}
		return SnapshotView{}, &Error{Kind: KindUnsupported, Op: op, VM: id, Snapshot: name, Err: err}
	}
	r.emit(id, "snapshot", Status(e.rec.Status), name)
	return snapshotView(p.rec), nil
}

// snapPlan carries what the steps of one snapshot share.
type snapPlan struct {
	id, name string
	e        *vmEntry
	spec     Spec
	rec      store.Snapshot
	pend     *snapshot.Pending
	// running: the VM ran when the snapshot began, so the snapshot
	// pauses and resumes it; paused: it is paused by the snapshot now.
	running, paused bool
}

// snapshotSteps are the steps of a snapshot. The record (incomplete)
// comes first and is marked complete last: reconcile deletes an
// incomplete one with its files, and the snapshot store removes pending
// directories when it opens. The VM's record says it is paused for the
// snapshot (PausedFor) for exactly as long as it may be, so reconcile
// resumes a VM whose runtime died inside the pause window.
func (r *Runtime) snapshotSteps(p *snapPlan) []step {
	const op = "snapshot"
	return []step{
		{
			name: "begin",
			do: func(ctx context.Context) error {
				if err := r.st.CreateSnapshot(p.rec); err != nil {
					if errors.Is(err, store.ErrExists) {
						return &Error{Kind: KindSnapshotAlreadyExists, Op: op, VM: p.id, Snapshot: p.name}
					}
					return newErr(KindStatePoisoned, op, p.id, err)
				}
				// The snapshot store writes into a temporary directory
				// that only Commit renames into place.
				pend, err := r.snaps.Begin(p.name)
				if err != nil {
					if derr := r.st.DeleteSnapshot(p.name); derr != nil {
						err = errors.Join(err, derr)
					}
					if errors.Is(err, snapshot.ErrExists) {
						return &Error{Kind: KindSnapshotAlreadyExists, Op: op, VM: p.id, Snapshot: p.name, Err: err}
					}
					return newErr(KindUnsupported, op, p.id, err)
				}
				p.pend = pend
				return nil
			},
			undo: func(ctx context.Context) error {
				return errors.Join(p.pend.Abort(), r.st.DeleteSnapshot(p.name))
			},
		},
		{
			name: "pause",
			do: func(ctx context.Context) error {
				if !p.running {
					return nil
				}
				p.e.rec.PausedFor = p.name
				if err := r.save(op, p.e); err != nil {
					p.e.rec.PausedFor = ""
					return err
				}
				if err := p.e.machine.Pause(ctx); err != nil {
					// Not confirmed paused: the VM keeps its status. A
					// VMM that answered nothing may still pause later;
					// the marker stays in that case, so the next Open
					// resumes it.
					if !isTimeout(err) {
						p.e.rec.PausedFor = ""
						err = errors.Join(err, r.save(op, p.e))
					}
					return vmmErr(op, p.id, KindUnsupported, err)
				}
				p.paused = true
				return nil
			},
			undo: func(ctx context.Context) error { return r.resumeAfterSnapshot(ctx, p) },
		},
		{
			name: "write",
			do: func(ctx context.Context) error {
				req := vmm.SnapshotRequest{StatePath: p.pend.StatePath, MemPath: p.pend.MemPath}
				if err := p.e.machine.Snapshot(ctx, req); err != nil {
					return vmmErr(op, p.id, KindUnsupported, withDiskFull(p.pend.Dir, err))
				}
				return nil
			},
		},
		{
			name: "disk",
			do: func(ctx context.Context) error {
				// The disk must match the memory image, so it is copied
				// while the VM is paused. A read-only rootfs is shared and
				// never changes.
				if p.spec.RootfsReadOnly {
					return nil
				}
				src := filepath.Join(r.vmDir(p.e.rec.Key), "rootfs.ext4")
				if err := cloneDisk(ctx, src, p.pend.Path(snapRootfs), "", false); err != nil {
					return newErr(KindRootfs, op, p.id, fmt.Errorf("copy the VM's disk: %w", err))
				}
				return nil
			},
		},
		{
			name: "resume",
			do:   func(ctx context.Context) error { return r.resumeAfterSnapshot(ctx, p) },
		},
		{
			name: "commit",
			do: func(ctx context.Context) error {
				// Hashing and syncing read every byte written, so they
				// happen after the resume, outside the pause window.
				snap, err := p.pend.Commit(ctx, snapshot.Meta{SourceVM: p.id, Backend: p.rec.Backend, Restore: p.spec, Labels: p.spec.Labels})
				if err != nil {
					return newErr(KindUnsupported, op, p.id, fmt.Errorf("commit snapshot: %w", err))
				}
				p.rec.Dir = snap.Dir
				return nil
			},
			undo: func(ctx context.Context) error {
				if err := r.snaps.Delete(p.name); err != nil && !errors.Is(err, snapshot.ErrNotFound) {
					return err
				}
				return nil
			},
		},
		{
			name: "record",
			do: func(ctx context.Context) error {
				p.rec.Complete = true
				if err := r.st.PutSnapshot(p.rec); err != nil {
					return newErr(KindStatePoisoned, op, p.id, err)
				}
				return nil
			},
		},
	}
}

// resumeAfterSnapshot resumes a VM the snapshot paused (also when the
// write failed: a snapshot must never leave a running VM paused) and
// clears its marker. It is a no-op when the snapshot paused nothing.
func (r *Runtime) resumeAfterSnapshot(ctx context.Context, p *snapPlan) error {
	const op = "snapshot"
	if !p.paused {
		return nil
	}
	if err := p.e.machine.Resume(context.WithoutCancel(ctx)); err != nil {
		return vmmErr(op, p.id, KindUnsupported, err)
	}
	p.paused = false
	p.e.rec.PausedFor = ""
	return r.save(op, p.e)
}

// diskFullBelow is the free space under which a failed write is put down
// to a full disk.
const diskFullBelow = 1 << 20

// withDiskFull adds ENOSPC to err's chain when dir's filesystem is out of
// space. A VMM that fails to write a snapshot says why only in its message
// ("No space left on device (os error 28)"); with this, callers learn it
// with errors.Is(err, syscall.ENOSPC) and need not parse the message.
func withDiskFull(dir string, err error) error {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return err
	}
	if free := int64(st.Bavail) * st.Bsize; free < diskFullBelow {
		return fmt.Errorf("%w (the snapshot's filesystem is full, %d bytes free: %w)", err, free, syscall.ENOSPC)
	}
	return err
}

func snapshotView(rec store.Snapshot) SnapshotView {
	v := SnapshotView{Name: rec.Name, SourceVM: rec.SourceVM, Backend: rec.Backend, CreatedAt: rec.CreatedAt, Dir: rec.Dir}
	_ = json.Unmarshal(rec.Spec, &v.Spec)
	return v
}

// Snapshots lists the complete snapshots, sorted by name.
func (r *Runtime) Snapshots(ctx context.Context) ([]SnapshotView, error) {
	recs, err := r.st.ListSnapshots()
	if err != nil {
		return nil, newErr(KindStatePoisoned, "snapshots", "", err)
	}
	out := make([]SnapshotView, 0, len(recs))
	for _, rec := range recs {
		if rec.Complete {
			out = append(out, snapshotView(rec))
		}
	}
	return out, nil
}

// GetSnapshot returns one complete snapshot.
func (r *Runtime) GetSnapshot(ctx context.Context, name string) (SnapshotView, error) {
	rec, err := r.snapshotRecord("get-snapshot", name)
	if err != nil {
		return SnapshotView{}, err
	}
	return snapshotView(rec), nil
}

func (r *Runtime) snapshotRecord(op, name string) (store.Snapshot, error) {
	if err := ValidateSnapshotName(name); err != nil {
		return store.Snapshot{}, &Error{Kind: KindInvalidArgument, Op: op, Snapshot: clip(name), Err: err}
	}
	rec, err := r.st.GetSnapshot(name)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !rec.Complete) {
		return rec, &Error{Kind: KindSnapshotNotFound, Op: op, Snapshot: name}
	}
	if err != nil {
		return rec, &Error{Kind: KindStatePoisoned, Op: op, Snapshot: name, Err: err}
	}
	return rec, nil
}

// DeleteSnapshot removes a snapshot's files and record. VMs restored from
// it are unaffected (they have their own disk and memory).
func (r *Runtime) DeleteSnapshot(ctx context.Context, name string) error {
	const op = "delete-snapshot"
	if _, err := r.snapshotRecord(op, name); err != nil {
		return err
	}
	if err := r.snaps.Delete(name); err != nil && !errors.Is(err, snapshot.ErrNotFound) {
		return &Error{Kind: KindUnsupported, Op: op, Snapshot: name, Err: err}
	}
	if err := r.st.DeleteSnapshot(name); err != nil {
		return &Error{Kind: KindStatePoisoned, Op: op, Snapshot: name, Err: err}
	}
	return nil
}

// Restore creates a new VM from a snapshot. Each restore is an
// independent clone with its own copy of the disk and its own vsock
// socket; the VM is running unless rs.Paused.
func (r *Runtime) Restore(ctx context.Context, rs RestoreSpec) (View, error) {
	const op = "restore"
	if err := rs.validate(); err != nil {
		return View{}, &Error{Kind: KindInvalidArgument, Op: op, VM: clip(rs.VM), Snapshot: clip(rs.Snapshot), Err: err}
	}
	snap, err := r.snapshotRecord(op, rs.Snapshot)
	if err != nil {
		var he *Error
		errors.As(err, &he)
		he.VM = rs.VM
		return View{}, err
	}
	var spec Spec
	if err := json.Unmarshal(snap.Spec, &spec); err != nil {
		return View{}, &Error{Kind: KindStatePoisoned, Op: op, Snapshot: rs.Snapshot, Err: err}
	}
	for k, v := range rs.Labels {
		if spec.Labels == nil {
			spec.Labels = map[string]string{}
		}
		spec.Labels[k] = v
	}
	if err := spec.validate(); err != nil {
		return View{}, &Error{Kind: KindInvalidArgument, Op: op, VM: rs.VM, Snapshot: rs.Snapshot, Err: err}
	}
	b, err := r.backendFor(snap.Backend)
	if err != nil {
		return View{}, &Error{Kind: KindUnsupported, Op: op, VM: rs.VM, Snapshot: rs.Snapshot, Err: err}
	}
	if err := r.checkOpen(op); err != nil {
		return View{}, err
	}
	p := &createPlan{op: op, id: rs.VM, spec: spec, backend: b, restore: &snap, rspec: rs}
	return r.runCreate(ctx, p, r.restoreSteps(p))
}

func (r *Runtime) restoreSteps(p *createPlan) []step {
	steps := r.commonSteps(p)
	return append(steps,
		step{
			name: "rootfs",
			do: func(ctx context.Context) error {
				src := filepath.Join(p.restore.Dir, snapRootfs)
				if _, err := os.Stat(src); errors.Is(err, os.ErrNotExist) {
					return nil // the VM's rootfs is read-only and shared
				}
				dst := filepath.Join(r.vmDir(p.entry.rec.Key), "rootfs.ext4")
				if err := cloneDisk(ctx, src, dst, "", true); err != nil {
					return newErr(KindRootfs, p.op, p.id, err)
				}
				return nil
			},
		},
		r.uffdStep(p),
		r.launchStep(p),
		step{
			name: "load",
			do: func(ctx context.Context) error {
				dir := r.vmDir(p.entry.rec.Key)
				prep, err := r.snaps.Prepare(ctx, p.restore.Name, snapshot.PrepareOptions{Dir: dir})
				if err != nil {
					return snapErr(p.op, p.id, p.restore.Name, err)
				}
				req := vmm.LoadRequest{
					StatePath:       prep.StatePath,
					MemPath:         prep.MemPath,
					MemBackend:      vmm.MemFile,
					Resume:          !p.rspec.Paused && p.rspec.PrefetchWaitMs == 0,
					TrackDirtyPages: p.spec.TrackDirtyPages,
				}
				if !p.spec.RootfsReadOnly {
					req.DriveOverrides = []vmm.DriveOverride{{ID: "rootfs", Path: filepath.Join(dir, "rootfs.ext4")}}
				}
				if p.spec.AgentEnabled() {
					req.VsockUDSPath = filepath.Join(dir, cidFileNm)
				}
				if a, ok := attachmentOf(p.entry.rec.Resources); ok && hadNIC(p.restore) {
					// netns mode: every slot's TAP has the same name, so
					// this is a no-op; bridge mode: the clone's own TAP.
					req.NetworkOverrides = []vmm.NetworkOverride{{IfaceID: "eth0", HostDev: a.TAP}}
				}
				if p.rspec.MemoryBackend == "uffd" {
					req.MemBackend, req.MemPath = vmm.MemUffd, filepath.Join(dir, uffdSocket)
				}
				if err := p.entry.machine.LoadSnapshot(ctx, req); err != nil {
					return vmmErr(p.op, p.id, KindUnsupported, err)
				}
				return nil
			},
		},
		r.prefetchWaitStep(p),
		step{
			name: "agent",
			do: func(ctx context.Context) error {
				if !p.spec.AgentEnabled() || p.restore.AgentToken == "" || guestless(p.entry.machine) {
					return nil
				}
				if p.rspec.Paused {
					// The agent cannot answer while paused: the token is
					// replaced on the clone's first resume.
					p.entry.rec.AgentToken = p.restore.AgentToken
					p.entry.rec.AgentTokenPending = p.restore.AgentToken
					return nil
				}
				return r.rotateAgent(ctx, p.op, p.entry, p.restore.AgentToken)
			},
		},
		r.recordStep(p, func() Status {
			if p.rspec.Paused {
				return StatusPaused
			}
			return StatusRunning
		}),
	)
}

// snapErr maps the snapshot store's errors to kinds.
func snapErr(op, vm, name string, err error) error {
	kind := KindUnsupported
	var ie *snapshot.IntegrityError
	switch {
	case errors.As(err, &ie):
		kind = KindIntegrity
	case errors.Is(err, snapshot.ErrNotFound):
		kind = KindSnapshotNotFound
	}
	return &Error{Kind: kind, Op: op, VM: vm, Snapshot: name, Err: err}
}

// hadNIC reports whether the snapshot's VM had a network interface (the
// clone can only re-point an interface the snapshot has).
func hadNIC(s *store.Snapshot) bool { return s.HadNIC }

// VerifySnapshot re-hashes every file of a snapshot (and of its parents)
// against its manifest.
func (r *Runtime) VerifySnapshot(ctx context.Context, name string) error {
	const op = "verify-snapshot"
	if _, err := r.snapshotRecord(op, name); err != nil {
		return err
	}
	if err := r.snaps.Verify(ctx, name, digest.Always); err != nil {
		return snapErr(op, "", name, err)
	}
	return nil
}

// GCPolicy says which snapshots garbage collection keeps.
type GCPolicy struct {
	// KeepPerVM keeps the newest N snapshots of each source VM (0: no limit).
	KeepPerVM int `json:"keep_per_vm,omitempty"`
	// MaxBytes caps the disk space of all snapshots; the oldest go first
	// (0: no limit).
	MaxBytes int64 `json:"max_bytes,omitempty"`
}

// GCSnapshots deletes the snapshots the policy does not keep (never the
// parent of a diff it keeps) and returns their names.
func (r *Runtime) GCSnapshots(ctx context.Context, p GCPolicy) ([]string, error) {
	const op = "gc"
	if p.KeepPerVM < 0 || p.MaxBytes < 0 {
		return nil, invalidArg(op, "", "keep_per_vm and max_bytes must not be negative")
	}
	removed, err := r.snaps.GC(ctx, snapshot.Policy{KeepPerVM: p.KeepPerVM, MaxBytes: p.MaxBytes})
	for _, name := range removed {
		if derr := r.st.DeleteSnapshot(name); derr != nil {
			err = errors.Join(err, derr)
		}
	}
	if err != nil {
		return removed, newErr(KindUnsupported, op, "", err)
	}
	return removed, nil
}
