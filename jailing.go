package hearth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/hearth-vm/hearth/jail"
	"github.com/hearth-vm/hearth/store"
	"github.com/hearth-vm/hearth/vmm"
)

// resJail names a VM's jail (chroot and cgroup) by its key; releasing it
// tears down whatever jail exists for that key, whichever VMM made it.
const resJail = "jail"

// openJails sets up the jail manager. A host without a usable cgroup
// hierarchy can still run unjailed VMs; jailed ones are then refused.
func (r *Runtime) openJails() {
	base := r.cfg.JailDir
	if base == "" {
		base = filepath.Join(r.cfg.StateDir, "jail")
	}
	jm, err := jail.New(jail.Config{ChrootBase: base, CgroupParent: r.cfg.JailCgroupParent, IDs: r.cfg.JailIDs, Logger: r.log}, r.st)
	if err != nil {
		r.jailErr = err
		r.log.Warn("jails unavailable", "err", err)
		return
	}
	r.jails = jm
}

// allocateJail reserves a credential for e and records it with the jail.
func (r *Runtime) allocateJail(op string, e *vmEntry) error {
	if r.jails == nil {
		return newErr(KindJailer, op, e.rec.ID, fmt.Errorf("jails are unavailable on this host: %w", r.jailErr))
	}
	cred, err := r.jails.Allocate(e.rec.Key)
	if err != nil {
		if errors.Is(err, store.ErrFull) {
			ids := r.jails.Config().IDs
			err = fmt.Errorf("no free jail uid: all %d of the range %d-%d are held by jailed VMs: %w",
				uint64(ids.Hi)-uint64(ids.Lo)+1, ids.Lo, ids.Hi, err)
		}
		return newErr(KindJailer, op, e.rec.ID, err)
	}
	e.rec.Resources = append(e.rec.Resources,
		store.Resource{Kind: resAlloc, Name: jail.IDPool, Data: map[string]string{"value": strconv.Itoa(cred.UID)}},
		store.Resource{Kind: resJail, Name: e.rec.Key})
	return nil
}

// launchJail describes e's jail for the backend, or nil when e is not
// jailed.
func (r *Runtime) launchJail(e *vmEntry, spec Spec) *vmm.Jail {
	uid, ok := findAlloc(e.rec.Resources, jail.IDPool)
	if !ok || spec.Jail == nil || r.jails == nil {
		return nil
	}
	return &vmm.Jail{
		UID: int(uid), GID: int(uid),
		ChrootBaseDir: r.jails.Config().ChrootBase,
		CgroupVersion: r.jails.Hierarchy().Version,
		CPUQuota:      spec.Jail.CPUQuota,
		MemoryMax:     spec.Jail.MemoryMax,
		PidsMax:       spec.Jail.PidsMax,
	}
}

// teardownJail removes every jail made for key (the directory under the
// jail base is named after the VMM binary, which the runtime does not
// need to know) and its cgroup.
func (r *Runtime) teardownJail(key string) error {
	if r.jails == nil {
		return nil
	}
	execs, err := os.ReadDir(r.jails.Config().ChrootBase)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var errs []error
	for _, x := range execs {
		if x.IsDir() {
			errs = append(errs, r.jails.Teardown(x.Name(), key))
		}
	}
	if len(execs) == 0 {
		// No chroot left, but a cgroup may be.
		errs = append(errs, r.jails.Teardown("vmm", key))
	}
	return errors.Join(errs...)
}
