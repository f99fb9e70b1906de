package hearth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"time"

	"github.com/hearth-vm/hearth/jail"
	"github.com/hearth-vm/hearth/store"
	"github.com/hearth-vm/hearth/vmm"
)

// createPlan carries what the pipeline steps of one create or restore
// share.
type createPlan struct {
	op      string
	id      string
	spec    Spec
	files   Image // kernel, initrd, rootfs source
	backend vmm.Backend
	entry   *vmEntry
	restore *store.Snapshot
	rspec   RestoreSpec
	// stored says the record is in the store: the first durable write
	// of a create inserts it, later ones update it.
	stored bool
}

// Create creates a VM from spec and leaves it in status created: its VMM
// runs and is configured, the guest has not booted. A failure at any step
// undoes the steps before it and leaves nothing behind.
func (r *Runtime) Create(ctx context.Context, id string, spec Spec) (View, error) {
	const op = "create"
	if err := ValidateID(id); err != nil {
		return View{}, invalidArg(op, id, "%v", err)
	}
	spec = spec.withDefaults(r.cfg.Defaults)
	b, err := r.backendFor(spec.Backend)
	if err != nil {
		return View{}, invalidArg(op, id, "%v", err)
	}
	spec.Backend = b.Name()
	if err := spec.validate(); err != nil {
		return View{}, invalidArg(op, id, "%v", err)
	}
	files, err := r.resolveFiles(ctx, spec)
	if err != nil {
		return View{}, asHearth(KindInvalidArgument, op, id, err)
	}
	if err := r.checkOpen(op); err != nil {
		return View{}, err
	}
	p := &createPlan{op: op, id: id, spec: spec, files: files, backend: b}
	return r.runCreate(ctx, p, r.createSteps(p))
}

// resolveFiles turns the spec's image or paths into files that exist.
func (r *Runtime) resolveFiles(ctx context.Context, spec Spec) (Image, error) {
	var img Image
	if spec.Image != "" {
		if r.cfg.Images == nil {
			return img, fmt.Errorf("image %q requested but no image catalog is configured", spec.Image)
		}
		var err error
		if img, err = r.cfg.Images.Resolve(ctx, spec.Image); err != nil {
			return img, asHearth(KindRootfs, "create", "", err)
		}
	}
	if spec.Kernel != "" {
		img.Kernel = spec.Kernel
	}
	if spec.Initrd != "" {
		img.Initrd = spec.Initrd
	}
	if spec.Rootfs != "" {
		img.Rootfs = spec.Rootfs
	}
	check := []struct{ what, path string }{{"kernel", img.Kernel}, {"rootfs", img.Rootfs}, {"initrd", img.Initrd}}
	for _, d := range spec.Drives {
		check = append(check, struct{ what, path string }{"drive " + d.ID, d.Path})
	}
	for _, c := range check {
		if c.path == "" {
			continue
		}
		fi, err := os.Stat(c.path)
		if err != nil {
			return img, fmt.Errorf("%s %s: %w", c.what, c.path, err)
		}
		if !fi.Mode().IsRegular() && fi.Mode()&os.ModeDevice == 0 {
			return img, fmt.Errorf("%s %s is not a regular file or block device", c.what, c.path)
		}
	}
	return img, nil
}

func (r *Runtime) runCreate(ctx context.Context, p *createPlan, steps []step) (View, error) {
	var observe func(string, time.Duration)
	if o := r.cfg.ObserveStep; o != nil {
		observe = func(step string, d time.Duration) { o(p.backend.Name(), step, d) }
	}
	if err := runSteps(ctx, steps, r.inject, observe); err != nil {
		r.log.Warn("create failed and was rolled back", "vm", p.id, "err", err)
		return View{}, err
	}
	e := p.entry
	defer e.mu.Unlock()
	typ := "created"
	if p.restore != nil {
		typ = "restored"
	}
	r.emit(p.id, typ, Status(e.rec.Status), e.rec.RestoredFrom)
	return viewOf(e.rec), nil
}

// persistCreating writes the record of a VM still being created.
func (r *Runtime) persistCreating(p *createPlan) error {
	p.entry.rec.UpdatedAt = time.Now().UTC()
	return r.storePlan(p, p.entry.rec)
}

// storePlan writes rec, the record of the VM p creates: the first write
// inserts it, later ones replace it. Until the first write nothing of the
// VM is durable but its directory, which reconcile reclaims when no record
// owns it, and allocations naming it, which reconcile frees likewise.
func (r *Runtime) storePlan(p *createPlan, rec store.VM) error {
	var err error
	if p.stored {
		err = r.st.PutVM(rec)
	} else if err = r.st.CreateVM(rec); err == nil {
		p.stored = true
	}
	if errors.Is(err, store.ErrExists) {
		return newErr(KindVMAlreadyExists, p.op, p.id, nil)
	}
	if err != nil {
		return newErr(KindStatePoisoned, p.op, p.id, err)
	}
	return nil
}

// addResource records a resource on the VM (in memory; the record step
// persists it).
func (p *createPlan) addResource(res store.Resource) {
	p.entry.rec.Resources = append(p.entry.rec.Resources, res)
}

// commonSteps reserve the id, create the VM dir and allocate ids; they are
// shared by create and restore.
func (r *Runtime) commonSteps(p *createPlan) []step {
	return append([]step{
		{
			name: "reserve",
			do: func(ctx context.Context) error {
				now := time.Now().UTC()
				specJSON, err := json.Marshal(p.spec)
				if err != nil {
					return newErr(KindInvalidArgument, p.op, p.id, err)
				}
				key := newKey()
				// The VM dir is on the record from the start (before it
				// exists), so once the record is written a crash finds
				// it whichever step it interrupted.
				e := &vmEntry{rec: store.VM{ID: p.id, Key: key, Status: string(StatusCreating),
					Backend: p.backend.Name(), Spec: specJSON, CreatedAt: now, UpdatedAt: now,
					Resources: []store.Resource{{Kind: resDir, Name: r.vmDir(key)}}}}
				if p.restore != nil {
					e.rec.RestoredFrom = p.restore.Name
				}
				if p.spec.AgentEnabled() && p.restore == nil {
					e.rec.AgentToken = newToken()
				}
				// The id is reserved in memory, not in the store: the
				// runtime holds the state dir alone and every record is
				// in r.vms, so the map decides who wins a race for the
				// id, and the first durable write comes with the first
				// thing worth recording (a crash before it leaves only
				// what reconcile reclaims anyway). That saves a create
				// one synchronous store commit.
				e.mu.Lock() // held until the pipeline ends
				e.publish()
				r.mu.Lock()
				if r.vms[p.id] != nil {
					r.mu.Unlock()
					e.mu.Unlock()
					return newErr(KindVMAlreadyExists, p.op, p.id, nil)
				}
				r.vms[p.id] = e
				r.mu.Unlock()
				p.entry = e
				return nil
			},
			undo: func(ctx context.Context) error {
				e := p.entry
				e.gone = true
				r.mu.Lock()
				if r.vms[p.id] == e {
					delete(r.vms, p.id)
				}
				r.mu.Unlock()
				e.mu.Unlock()
				if !p.stored {
					return nil
				}
				return r.st.DeleteVM(p.id)
			},
		},
		{
			name: "dir",
			do: func(ctx context.Context) error {
				if err := os.Mkdir(r.vmDir(p.entry.rec.Key), 0o700); err != nil {
					return newErr(KindStatePoisoned, p.op, p.id, err)
				}
				return nil
			},
			undo: func(ctx context.Context) error { return os.RemoveAll(r.vmDir(p.entry.rec.Key)) },
		},
		{
			name: "allocate",
			do: func(ctx context.Context) error {
				// A restored clone keeps the CID baked into its snapshot
				// (hybrid vsock gives each VM its own socket, so clones
				// sharing a CID do not collide); its own CID serves when
				// it is cold-booted again after a stop.
				if !p.spec.AgentEnabled() {
					return nil
				}
				cid, err := r.st.Allocate(poolCID, cidFirst, cidLast, p.entry.rec.Key)
				if err != nil {
					return newErr(KindStatePoisoned, p.op, p.id, err)
				}
				p.addResource(store.Resource{Kind: resAlloc, Name: poolCID, Data: map[string]string{"value": strconv.FormatUint(cid, 10)}})
				// Should this write fail, the allocation still names its
				// owner, and reconcile frees allocations no record holds.
				return r.persistCreating(p)
			},
			undo: func(ctx context.Context) error {
				if cid, ok := findAlloc(p.entry.rec.Resources, poolCID); ok {
					return r.st.Release(poolCID, cid)
				}
				return nil
			},
		},
		{
			name: "jail",
			do: func(ctx context.Context) error {
				if p.spec.Jail == nil {
					return nil
				}
				if err := r.allocateJail(p.op, p.entry); err != nil {
					return err
				}
				return r.persistCreating(p)
			},
			undo: func(ctx context.Context) error {
				var errs []error
				if uid, ok := findAlloc(p.entry.rec.Resources, jail.IDPool); ok {
					errs = append(errs, r.st.Release(jail.IDPool, uid))
				}
				// The backend removes its jail when a launch fails; this
				// catches what a later step's failure leaves.
				errs = append(errs, r.teardownJail(p.entry.rec.Key))
				return errors.Join(errs...)
			},
		},
	}, r.networkSteps(p)...)
}

// launchStep starts the VMM; its undo kills it.
func (r *Runtime) launchStep(p *createPlan) step {
	return step{
		name: "launch",
		do: func(ctx context.Context) error {
			// With the handle recorded, a runtime that dies lets the next
			// Open find and kill this VMM. A backend that reports the
			// process as soon as it exists lets that write overlap the
			// VMM's start-up instead of following it.
			var pending chan error
			var early *vmm.Handle
			spawned := func(h vmm.Handle) {
				rec := p.entry.rec
				rec.Handle, rec.UpdatedAt = &h, time.Now().UTC()
				early = &h
				pending = make(chan error, 1)
				go func() { pending <- r.storePlan(p, rec) }()
			}
			m, err := r.launchWith(ctx, p.backend, p.entry, p.spec, spawned)
			var earlyErr error
			if pending != nil {
				earlyErr = <-pending
			}
			if err != nil {
				return vmmErr(p.op, p.id, KindUnsupported, err)
			}
			p.entry.machine = m
			h := m.Handle()
			p.entry.rec.Handle = &h
			if earlyErr == nil && early != nil && reflect.DeepEqual(*early, h) {
				return nil
			}
			if err := r.persistCreating(p); err != nil {
				m.Kill()
				p.entry.machine, p.entry.rec.Handle = nil, nil
				return err
			}
			return nil
		},
		undo: func(ctx context.Context) error {
			m := p.entry.machine
			p.entry.machine = nil
			p.entry.rec.Handle = nil
			if m == nil {
				return nil
			}
			return m.Kill()
		},
	}
}

// recordStep persists the finished VM and starts watching its VMM. It is
// last, so it has no undo.
func (r *Runtime) recordStep(p *createPlan, final func() Status) step {
	return step{
		name: "record",
		do: func(ctx context.Context) error {
			e := p.entry
			// Configure and load can add to the handle (e.g. links a
			// jailed VMM's sockets need), so record its final form.
			h := e.machine.Handle()
			e.rec.Handle = &h
			e.rec.Status = string(final())
			if err := r.persistCreating(p); err != nil {
				return err
			}
			e.publish()
			r.watchMachine(e, e.machine)
			r.watchUffd(e)
			return nil
		},
	}
}

func (r *Runtime) createSteps(p *createPlan) []step {
	steps := r.commonSteps(p)
	steps = append(steps,
		step{
			name: "rootfs",
			do: func(ctx context.Context) error {
				if p.spec.RootfsReadOnly {
					return nil
				}
				dst := filepath.Join(r.vmDir(p.entry.rec.Key), "rootfs.ext4")
				if err := cloneDisk(ctx, p.files.Rootfs, dst, p.files.RootfsSHA256, true); err != nil {
					return rootfsErr(p.op, p.id, "clone rootfs", err)
				}
				return nil
			},
			undo: func(ctx context.Context) error {
				// The dir step's undo removes the clone with the dir.
				return nil
			},
		},
		r.launchStep(p),
		step{
			name: "configure",
			do: func(ctx context.Context) error {
				cfg := r.machineConfig(p.entry, p.spec, p.files)
				return vmmErr(p.op, p.id, KindUnsupported, p.entry.machine.Configure(ctx, cfg))
			},
		},
		r.recordStep(p, func() Status { return StatusCreated }),
	)
	return steps
}

// launch starts a VMM for e in its directory (and its jail, if it has
// one).
func (r *Runtime) launch(ctx context.Context, b vmm.Backend, e *vmEntry, spec Spec) (vmm.Machine, error) {
	return r.launchWith(ctx, b, e, spec, nil)
}

// launchWith is launch with the backend's early report of the process
// (vmm.LaunchSpec.Spawned).
func (r *Runtime) launchWith(ctx context.Context, b vmm.Backend, e *vmEntry, spec Spec, spawned func(vmm.Handle)) (vmm.Machine, error) {
	dir := r.vmDir(e.rec.Key)
	netns := ""
	if a, ok := attachmentOf(e.rec.Resources); ok {
		netns = a.NetNSPath
	}
	// The VMM is named by the VM's immutable key: it satisfies every VMM's
	// id rules (Firecracker allows only [A-Za-z0-9-]) and survives renames.
	return b.Launch(ctx, vmm.LaunchSpec{
		VMID:        e.rec.Key,
		Dir:         dir,
		ConsolePath: filepath.Join(dir, "console.log"),
		Jail:        r.launchJail(e, spec),
		NetNS:       netns,
		Spawned:     spawned,
	})
}

// machineConfig translates a VM's spec into the backend-neutral config.
func (r *Runtime) machineConfig(e *vmEntry, spec Spec, files Image) vmm.Config {
	dir := r.vmDir(e.rec.Key)
	rootfs := files.Rootfs
	if !spec.RootfsReadOnly {
		rootfs = filepath.Join(dir, "rootfs.ext4")
	}
	cfg := vmm.Config{
		VCPUs:           spec.VCPUs,
		MemoryMiB:       spec.MemoryMiB,
		HugePages:       spec.HugePages,
		TrackDirtyPages: spec.TrackDirtyPages,
		Kernel:          files.Kernel,
		Initrd:          files.Initrd,
		BootArgs:        bootArgs(spec, e.rec.AgentToken) + " hearth.hostname=" + e.rec.ID,
		Drives:          []vmm.Drive{{ID: "rootfs", Path: rootfs, Root: true, ReadOnly: spec.RootfsReadOnly}},
	}
	for _, d := range spec.Drives {
		cfg.Drives = append(cfg.Drives, vmm.Drive{ID: d.ID, Path: d.Path, ReadOnly: d.ReadOnly, RateLimit: d.RateLimit.toVMM()})
	}
	if cid, ok := findAlloc(e.rec.Resources, poolCID); ok {
		cfg.Vsock = &vmm.Vsock{CID: uint32(cid), UDSPath: filepath.Join(dir, cidFileNm)}
	}
	if a, ok := attachmentOf(e.rec.Resources); ok {
		cfg.NICs = []vmm.NIC{nicConfig(a, spec)}
		cfg.BootArgs += " " + a.BootArg
	}
	return cfg
}

// bootArgs is the kernel command line: the spec's, plus what hearth hands
// the guest (the agent's token).
func bootArgs(spec Spec, token string) string {
	args := spec.BootArgs
	if token != "" {
		args += " " + agentBootArgs(token)
	}
	return args
}

func (r *RateLimit) toVMM() *vmm.RateLimiter {
	if r == nil {
		return nil
	}
	conv := func(b *TokenBucket) *vmm.TokenBucket {
		if b == nil {
			return nil
		}
		return &vmm.TokenBucket{Size: b.Size, OneTimeBurst: b.OneTimeBurst, RefillTime: time.Duration(b.RefillTimeMs) * time.Millisecond}
	}
	return &vmm.RateLimiter{Bandwidth: conv(r.Bandwidth), Ops: conv(r.Ops)}
}
