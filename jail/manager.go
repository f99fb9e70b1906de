package jail

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// DefaultCgroupParent is the parent cgroup of every VM's cgroup.
const DefaultCgroupParent = "hearth"

// killTimeout bounds how long Teardown and Reconcile wait for a cgroup's
// processes to die after SIGKILL.
const killTimeout = 5 * time.Second

// Config configures a Manager.
type Config struct {
	// ChrootBase is the directory under which jails live
	// (<base>/<exec name>/<id>/root). It must belong to hearth alone:
	// Reconcile removes what no VM owns. Required, absolute.
	ChrootBase string
	// CgroupParent is the parent of every VM cgroup, relative to the
	// hierarchy root (default "hearth"). It must belong to hearth alone.
	// Give the Firecracker backend the same value (its ParentCgroup).
	CgroupParent string
	// Hierarchy overrides cgroup detection (tests use a fake tree); nil
	// reads /proc/self/mounts.
	Hierarchy *Hierarchy
	// IDs is the range uids/gids are allocated from (default
	// DefaultIDRange).
	IDs Range
	// Logger receives the manager's logs; nil uses slog.Default().
	Logger *slog.Logger
}

// Manager allocates credentials and creates, tears down and reconciles
// jails. It is safe for concurrent use on different ids.
type Manager struct {
	cfg   Config
	h     Hierarchy
	alloc Allocator
	log   *slog.Logger
}

// New returns a manager that allocates uids through alloc.
func New(cfg Config, alloc Allocator) (*Manager, error) {
	if !filepath.IsAbs(cfg.ChrootBase) || filepath.Clean(cfg.ChrootBase) == "/" {
		return nil, fmt.Errorf("jail chroot base must be an absolute path other than /, got %q", cfg.ChrootBase)
	}
	cfg.ChrootBase = filepath.Clean(cfg.ChrootBase)
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = DefaultCgroupParent
	}
	if filepath.IsAbs(cfg.CgroupParent) || filepath.Clean(cfg.CgroupParent) == "." {
		return nil, fmt.Errorf("jail cgroup parent must be a relative path, got %q", cfg.CgroupParent)
	}
	if cfg.IDs == (Range{}) {
		cfg.IDs = DefaultIDRange
	}
	if err := cfg.IDs.Validate(); err != nil {
		return nil, err
	}
	if alloc == nil {
		return nil, errors.New("jail manager needs an allocator")
	}
	var h Hierarchy
	if cfg.Hierarchy != nil {
		h = *cfg.Hierarchy
	} else {
		var err error
		if h, err = DetectHierarchy(); err != nil {
			return nil, err
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Manager{cfg: cfg, h: h, alloc: alloc, log: log.With("component", "jail")}, nil
}

// Config returns the effective configuration.
func (m *Manager) Config() Config { return m.cfg }

// Hierarchy returns the cgroup hierarchy in use.
func (m *Manager) Hierarchy() Hierarchy { return m.h }

// Allocate reserves a uid/gid for the VM owner.
func (m *Manager) Allocate(owner string) (Credential, error) {
	return AllocateCredential(m.alloc, m.cfg.IDs, owner)
}

// Release frees a credential from Allocate.
func (m *Manager) Release(c Credential) error { return ReleaseCredential(m.alloc, c) }

// JailDir is <base>/<exec name>/<id>, the jailer's per-VM directory.
func (m *Manager) JailDir(execName, id string) string {
	return filepath.Join(m.cfg.ChrootBase, execName, id)
}

// ChrootDir is the jail's root: <JailDir>/root.
func (m *Manager) ChrootDir(execName, id string) string {
	return filepath.Join(m.JailDir(execName, id), "root")
}

// Cgroup returns the VM's cgroup (<parent>/<id>); nothing is created.
func (m *Manager) Cgroup(id string) *Cgroup {
	return m.h.Cgroup(filepath.Join(m.cfg.CgroupParent, id))
}

func checkNames(execName, id string) error {
	if !validName(execName) || !validName(id) {
		return fmt.Errorf("invalid jail name %q/%q (1-64 characters of [A-Za-z0-9_.-])", execName, id)
	}
	return nil
}

// Prepare creates the VM's chroot, owned by cred, and returns it for
// staging files. execName is the VMM binary's file name (the jailer names
// the directory after it). It does not create the cgroup: the jailer or
// `hearth _jail` does, with the settings of ExecSpec/JailerCommand.
func (m *Manager) Prepare(execName, id string, cred Credential) (Chroot, error) {
	if err := checkNames(execName, id); err != nil {
		return Chroot{}, err
	}
	if err := os.MkdirAll(filepath.Join(m.cfg.ChrootBase, execName), 0o755); err != nil {
		return Chroot{}, fmt.Errorf("create jail base: %w", err)
	}
	if err := os.Mkdir(m.JailDir(execName, id), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return Chroot{}, fmt.Errorf("create jail: %w", err)
	}
	c := Chroot{Root: m.ChrootDir(execName, id), Cred: cred}
	if err := c.Create(); err != nil {
		return Chroot{}, err
	}
	return c, nil
}

// ExecSpec returns the `hearth _jail` spec for a VMM of this manager's
// layout: chroot, credential, cgroup <parent>/<id> with limits (in the
// hierarchy's version), netns and rlimits. Add Devices as the VMM needs.
func (m *Manager) ExecSpec(execPath, id string, cred Credential, limits Limits, netns string, rlimits []Rlimit, vmmArgs []string) (ExecSpec, error) {
	if err := limits.Validate(); err != nil {
		return ExecSpec{}, err
	}
	s := ExecSpec{
		ID:            id,
		Chroot:        m.ChrootDir(filepath.Base(execPath), id),
		UID:           cred.UID,
		GID:           cred.GID,
		CgroupParent:  m.cfg.CgroupParent,
		CgroupVersion: m.h.Version,
		Cgroup:        limits.Files(m.h.Version),
		NetNS:         netns,
		Rlimits:       rlimits,
		Exec:          execPath,
		VMMArgs:       vmmArgs,
	}
	return s, s.Validate()
}

// Teardown removes a VM's jail: processes still in its cgroup are
// killed, the cgroup is removed, then the jail directory (chroot and
// everything staged in it; hard links leave their host files intact).
// It is idempotent and safe without a prior Prepare.
func (m *Manager) Teardown(execName, id string) error {
	if err := checkNames(execName, id); err != nil {
		return err
	}
	var errs []error
	if err := m.removeCgroup(id); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(m.JailDir(execName, id)); err != nil {
		errs = append(errs, fmt.Errorf("remove jail of %s: %w", id, err))
	}
	// The per-exec directory goes once its last jail has.
	os.Remove(filepath.Join(m.cfg.ChrootBase, execName))
	return errors.Join(errs...)
}

func (m *Manager) removeCgroup(id string) error {
	cg := m.Cgroup(id)
	if !cg.Exists() {
		return nil
	}
	if err := cg.Kill(killTimeout); err != nil {
		return err
	}
	return cg.Remove()
}

// ReconcileReport lists what Reconcile removed.
type ReconcileReport struct {
	Jails   []string // jail directories removed
	Cgroups []string // cgroups removed
}

// Reconcile removes jails and cgroups of hearth's layout that no VM owns:
// owned(id) reports whether a record holds id. Call it after the VMMs of
// live records are adopted and before new VMs are created (an id
// mid-creation would look unowned). Processes found in an orphaned
// cgroup are killed first: a VMM no record knows cannot be managed.
func (m *Manager) Reconcile(owned func(id string) bool) (ReconcileReport, error) {
	var rep ReconcileReport
	var errs []error
	execs, err := os.ReadDir(m.cfg.ChrootBase)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return rep, fmt.Errorf("list jails: %w", err)
	}
	for _, e := range execs {
		if !e.IsDir() {
			continue
		}
		ids, err := os.ReadDir(filepath.Join(m.cfg.ChrootBase, e.Name()))
		if err != nil {
			errs = append(errs, fmt.Errorf("list jails: %w", err))
			continue
		}
		for _, d := range ids {
			if !d.IsDir() || owned(d.Name()) || !validName(d.Name()) {
				continue
			}
			if err := m.Teardown(e.Name(), d.Name()); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Jails = append(rep.Jails, m.JailDir(e.Name(), d.Name()))
			m.log.Info("removed orphaned jail", "dir", m.JailDir(e.Name(), d.Name()))
		}
	}
	cgs, err := m.h.Children(m.cfg.CgroupParent)
	if err != nil {
		errs = append(errs, err)
	}
	for _, id := range cgs {
		if owned(id) {
			continue
		}
		if err := m.removeCgroup(id); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Cgroups = append(rep.Cgroups, filepath.Join(m.cfg.CgroupParent, id))
		m.log.Info("removed orphaned cgroup", "cgroup", filepath.Join(m.cfg.CgroupParent, id))
	}
	return rep, errors.Join(errs...)
}
