package hearth

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/store"
	"github.com/hearth-vm/hearth/vmm"
)

// reconcile brings the records in line with reality after Open: it adopts
// VMMs that still run, marks the others crashed, rolls back creates that
// were interrupted, and reclaims resources no record owns.
func (r *Runtime) reconcile(ctx context.Context) error {
	const op = "open"
	recs, err := r.st.ListVMs()
	if err != nil {
		return newErr(KindStatePoisoned, op, "", err)
	}
	owned := map[string]bool{}
	for _, rec := range recs {
		e := &vmEntry{rec: rec}
		switch st := Status(rec.Status); {
		case st == StatusCreating:
			// The previous runtime died mid-pipeline: undo what it did.
			if err := r.abandon(ctx, e); err != nil {
				return err
			}
			r.report.Abandoned = append(r.report.Abandoned, rec.ID)
			continue
		case rec.Destroying:
			// The previous runtime died mid-destroy: finish it.
			if r.finishDestroy(ctx, e) {
				r.report.Destroyed = append(r.report.Destroyed, rec.ID)
				continue
			}
		case st.HasProcess():
			r.adopt(ctx, e)
			if e.machine != nil && e.rec.PausedFor != "" {
				r.resumeInterruptedSnapshot(ctx, e)
			}
		case !st.Valid():
			return newErr(KindStatePoisoned, op, rec.ID, fmt.Errorf("unknown status %q", rec.Status))
		}
		owned[rec.Key] = true
		e.publish()
		r.vms[rec.ID] = e
		if e.machine != nil {
			r.watchMachine(e, e.machine)
			r.watchUffd(e)
		}
	}
	return r.reclaim(owned)
}

// adopt re-attaches to e's VMM, or marks e crashed when it is gone.
func (r *Runtime) adopt(ctx context.Context, e *vmEntry) {
	var err error
	if e.rec.Handle == nil {
		err = errors.New("no vmm handle recorded")
	} else if b, berr := r.backendFor(e.rec.Backend); berr != nil {
		err = berr
	} else {
		var m vmm.Machine
		if m, err = b.Adopt(ctx, *e.rec.Handle); err == nil {
			e.machine = m
			r.report.Adopted = append(r.report.Adopted, e.rec.ID)
			return
		}
	}
	r.log.Warn("vmm not adoptable, marking vm crashed", "vm", e.rec.ID, "err", err)
	e.rec.Status = string(StatusCrashed)
	e.rec.Exit = "vmm gone while hearth was not running"
	if !errors.Is(err, vmm.ErrGone) {
		e.rec.Exit = "vmm could not be adopted: " + err.Error()
	}
	e.rec.Handle = nil
	e.rec.PausedFor = ""
	if err := r.st.PutVM(e.rec); err != nil {
		r.log.Error("record crash", "vm", e.rec.ID, "err", err)
	}
	r.report.Crashed = append(r.report.Crashed, e.rec.ID)
	r.emit(e.rec.ID, "crashed", StatusCrashed, e.rec.Exit)
}

// finishDestroy completes a destroy the previous runtime began: kill its
// VMM if it still runs, release every resource and drop the record. When
// a resource cannot be released the VM stays, stopped, still marked, with
// what is left (Destroy retries); Open goes on either way.
func (r *Runtime) finishDestroy(ctx context.Context, e *vmEntry) bool {
	if h := e.rec.Handle; h != nil {
		if b, err := r.backendFor(e.rec.Backend); err == nil {
			if m, err := b.Adopt(ctx, *h); err == nil {
				if err := m.Kill(); err != nil {
					r.log.Warn("finish interrupted destroy: kill vmm", "vm", e.rec.ID, "err", err)
				}
			}
		}
	}
	e.rec.Handle = nil
	left, err := r.releaseAll(e.rec.Resources)
	if err == nil {
		if err = r.st.DeleteVM(e.rec.ID); err == nil {
			return true
		}
	}
	r.log.Warn("could not finish an interrupted destroy; the VM stays, stopped, for Destroy to retry", "vm", e.rec.ID, "err", err)
	e.rec.Resources = left
	e.rec.Status = string(StatusStopped)
	if err := r.st.PutVM(e.rec); err != nil {
		r.log.Error("record interrupted destroy", "vm", e.rec.ID, "err", err)
	}
	return false
}

// resumeInterruptedSnapshot resumes a running VM that a snapshot had
// paused when the previous runtime died: a snapshot never leaves a
// running VM paused, and the snapshot itself is rolled back (reclaim
// removes incomplete ones). A VMM that does not resume leaves the VM
// recorded as paused, which is then the truth as far as hearth can tell.
func (r *Runtime) resumeInterruptedSnapshot(ctx context.Context, e *vmEntry) {
	rctx, cancel := context.WithTimeout(ctx, reconcileCallTimeout)
	defer cancel()
	if err := e.machine.Resume(rctx); err != nil {
		r.log.Warn("vm paused by an interrupted snapshot did not resume; recording it paused", "vm", e.rec.ID, "snapshot", e.rec.PausedFor, "err", err)
		e.rec.Status = string(StatusPaused)
	} else {
		r.report.Resumed = append(r.report.Resumed, e.rec.ID)
	}
	e.rec.PausedFor = ""
	if err := r.st.PutVM(e.rec); err != nil {
		r.log.Error("record resume after interrupted snapshot", "vm", e.rec.ID, "err", err)
	}
}

// reconcileCallTimeout bounds each VMM call reconcile makes, so that one
// hung VMM cannot hold up Open.
const reconcileCallTimeout = 10 * time.Second

// abandon rolls back a create that never finished: kill its VMM if one
// was launched, release its resources and drop the record.
func (r *Runtime) abandon(ctx context.Context, e *vmEntry) error {
	if h := e.rec.Handle; h != nil {
		if b, err := r.backendFor(e.rec.Backend); err == nil {
			if m, err := b.Adopt(ctx, *h); err == nil {
				m.Kill()
			}
		}
	}
	res := e.rec.Resources
	// The dir step may have run without being recorded yet.
	res = append([]store.Resource{{Kind: resDir, Name: r.vmDir(e.rec.Key)}}, res...)
	if _, err := r.releaseAll(res); err != nil {
		return newErr(KindStatePoisoned, "open", e.rec.ID, fmt.Errorf("roll back interrupted create: %w", err))
	}
	if err := r.st.DeleteVM(e.rec.ID); err != nil {
		return newErr(KindStatePoisoned, "open", e.rec.ID, err)
	}
	return nil
}

// reclaim removes VM directories and allocations no record owns, and
// snapshots whose write never completed.
func (r *Runtime) reclaim(owned map[string]bool) error {
	const op = "open"
	ents, err := os.ReadDir(r.vmsDir())
	if err != nil {
		return newErr(KindStatePoisoned, op, "", err)
	}
	for _, d := range ents {
		if owned[d.Name()] {
			continue
		}
		p := filepath.Join(r.vmsDir(), d.Name())
		if err := os.RemoveAll(p); err != nil {
			return newErr(KindStatePoisoned, op, "", err)
		}
		r.report.Reclaimed = append(r.report.Reclaimed, "dir "+p)
	}
	// An allocation is owned when a record lists it among its resources,
	// or names an owned VM's key as its owner (keys survive renames, and
	// a resource a newer runtime holds some other way stays held).
	held := map[string]bool{}
	for _, e := range r.vms {
		for _, res := range e.rec.Resources {
			if pool, v, ok := allocValue(res); ok && res.Kind == resAlloc {
				held[pool+"/"+strconv.FormatUint(v, 10)] = true
			}
		}
	}
	pools, err := r.st.Pools()
	if err != nil {
		return newErr(KindStatePoisoned, op, "", err)
	}
	for _, pool := range pools {
		if strings.HasPrefix(pool, network.PoolPrefix) {
			// Network slots are held by the VM's network resource (or by
			// the slot pool), not by an alloc resource: releasing them
			// here would free the slots of running VMs, and the network
			// reconcile below would then tear down their namespaces. That
			// reconcile decides which slots are free.
			continue
		}
		allocs, err := r.st.Allocations(pool)
		if err != nil {
			return newErr(KindStatePoisoned, op, "", err)
		}
		for v, owner := range allocs {
			if held[pool+"/"+strconv.FormatUint(v, 10)] || owned[owner] {
				continue
			}
			if err := r.st.Release(pool, v); err != nil {
				return newErr(KindStatePoisoned, op, "", err)
			}
			r.report.Reclaimed = append(r.report.Reclaimed, pool+" "+strconv.FormatUint(v, 10))
		}
	}
	if r.net != nil {
		ctx := context.Background()
		isOwned := func(key string) bool { return owned[key] }
		if removed, err := r.fw.Reconcile(ctx, isOwned); err != nil {
			r.log.Warn("reconcile firewall", "err", err)
		} else {
			for _, x := range removed {
				r.report.Reclaimed = append(r.report.Reclaimed, "firewall "+x)
			}
		}
		if removed, err := r.net.Reconcile(ctx, isOwned); err != nil {
			r.log.Warn("reconcile network", "err", err)
		} else {
			for _, x := range removed {
				r.report.Reclaimed = append(r.report.Reclaimed, "network "+x)
			}
		}
	}
	if r.jails != nil {
		jrep, err := r.jails.Reconcile(func(key string) bool { return owned[key] })
		for _, j := range jrep.Jails {
			r.report.Reclaimed = append(r.report.Reclaimed, "jail "+j)
		}
		for _, c := range jrep.Cgroups {
			r.report.Reclaimed = append(r.report.Reclaimed, "cgroup "+c)
		}
		if err != nil {
			r.log.Warn("reconcile jails", "err", err)
		}
	}
	snaps, err := r.st.ListSnapshots()
	if err != nil {
		return newErr(KindStatePoisoned, op, "", err)
	}
	known := map[string]bool{}
	for _, s := range snaps {
		if s.Complete {
			known[s.Name] = true
			continue
		}
		os.RemoveAll(s.Dir)
		if err := r.st.DeleteSnapshot(s.Name); err != nil {
			return newErr(KindStatePoisoned, op, "", err)
		}
		r.report.Reclaimed = append(r.report.Reclaimed, "partial snapshot "+s.Name)
	}
	sdirs, err := os.ReadDir(r.snapshotsDir())
	if err != nil {
		return newErr(KindStatePoisoned, op, "", err)
	}
	for _, d := range sdirs {
		// Dot entries are the snapshot store's own (its lock file and
		// pending writes, which it cleans itself).
		if known[d.Name()] || strings.HasPrefix(d.Name(), ".") {
			continue
		}
		p := filepath.Join(r.snapshotsDir(), d.Name())
		if err := os.RemoveAll(p); err != nil {
			return newErr(KindStatePoisoned, op, "", err)
		}
		r.report.Reclaimed = append(r.report.Reclaimed, "dir "+p)
	}
	return nil
}
