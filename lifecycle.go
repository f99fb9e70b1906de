package hearth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hearth-vm/hearth/store"
	"github.com/hearth-vm/hearth/vmm"
)

// specOf decodes the spec recorded for e.
func specOf(e *vmEntry) (Spec, error) {
	var s Spec
	if err := json.Unmarshal(e.rec.Spec, &s); err != nil {
		return s, fmt.Errorf("decode recorded spec: %w", err)
	}
	return s, nil
}

// transition checks op against the state machine for a locked VM. A VM
// whose destroy is under way accepts nothing but Destroy.
func transition(e *vmEntry, op Op) (Status, error) {
	if e.rec.Destroying && op != OpDestroy {
		return "", &Error{Kind: KindInvalidTransition, Op: string(op), VM: e.rec.ID, From: "destroying", To: opTarget(op)}
	}
	to, err := Next(Status(e.rec.Status), op)
	if err != nil {
		var he *Error
		errors.As(err, &he)
		he.VM = e.rec.ID
		return "", he
	}
	return to, nil
}

// Start boots a created VM's guest, or launches a fresh VMM for a stopped
// or crashed VM (same disk, new memory).
func (r *Runtime) Start(ctx context.Context, id string) (View, error) {
	const op = "start"
	e, err := r.lockVM(op, id)
	if err != nil {
		return View{}, err
	}
	defer e.mu.Unlock()
	to, err := transition(e, OpStart)
	if err != nil {
		return View{}, err
	}
	if Status(e.rec.Status) != StatusCreated {
		if err := r.relaunch(ctx, op, e); err != nil {
			return View{}, err
		}
	}
	if err := e.machine.Start(ctx); err != nil {
		return View{}, vmmErr(op, id, KindUnsupported, err)
	}
	e.booted.Store(time.Now().UnixNano())
	e.rec.Status, e.rec.Exit = string(to), ""
	if err := r.save(op, e); err != nil {
		return View{}, err
	}
	r.emit(id, "started", to, "")
	return viewOf(e.rec), nil
}

// relaunch starts and configures a new VMM for a VM whose VMM has exited.
// On error it leaves the VM as it was, with no process.
func (r *Runtime) relaunch(ctx context.Context, op string, e *vmEntry) error {
	id := e.rec.ID
	spec, err := specOf(e)
	if err != nil {
		return newErr(KindStatePoisoned, op, id, err)
	}
	files, err := r.resolveFiles(ctx, spec)
	if err != nil {
		return asHearth(KindRootfs, op, id, err)
	}
	b, err := r.backendFor(e.rec.Backend)
	if err != nil {
		return newErr(KindUnsupported, op, id, err)
	}
	m, err := r.launch(ctx, b, e, spec)
	if err != nil {
		return vmmErr(op, id, KindUnsupported, err)
	}
	if err := m.Configure(ctx, r.machineConfig(e, spec, files)); err != nil {
		m.Kill()
		return vmmErr(op, id, KindUnsupported, err)
	}
	// Handle is read after Configure, which may add to it.
	h := m.Handle()
	e.machine, e.rec.Handle = m, &h
	r.watchMachine(e, m)
	return nil
}

// Pause freezes a running VM's vCPUs; memory stays allocated.
func (r *Runtime) Pause(ctx context.Context, id string) (View, error) {
	return r.simpleOp(ctx, id, OpPause, "paused", func(m vmm.Machine) error { return m.Pause(ctx) })
}

// Resume continues a paused VM. A clone restored paused gets its own
// agent token on its first resume.
func (r *Runtime) Resume(ctx context.Context, id string) (View, error) {
	return r.simpleOp(ctx, id, OpResume, "resumed", func(m vmm.Machine) error { return m.Resume(ctx) })
}

func (r *Runtime) simpleOp(ctx context.Context, id string, op Op, event string, call func(vmm.Machine) error) (View, error) {
	e, err := r.lockVM(string(op), id)
	if err != nil {
		return View{}, err
	}
	defer e.mu.Unlock()
	to, err := transition(e, op)
	if err != nil {
		return View{}, err
	}
	if err := call(e.machine); err != nil {
		return View{}, vmmErr(string(op), id, KindUnsupported, err)
	}
	e.rec.Status = string(to)
	if op == OpResume && e.rec.AgentTokenPending != "" && !guestless(e.machine) {
		if err := r.rotateAgent(ctx, string(op), e, e.rec.AgentTokenPending); err != nil {
			// The VM runs, but with its source's token: say so loudly
			// and keep trying on later resumes.
			r.log.Error("restored VM still holds its snapshot's agent token", "vm", id, "err", err)
			if serr := r.save(string(op), e); serr != nil {
				return View{}, serr
			}
			return viewOf(e.rec), err
		}
	}
	if err := r.save(string(op), e); err != nil {
		return View{}, err
	}
	r.emit(id, event, to, "")
	return viewOf(e.rec), nil
}

// Stop shuts the guest down gracefully (Ctrl-Alt-Del / ACPI power-off,
// then signals after Config.StopTimeout) and releases its memory. The disk
// and the VM's resources stay; Start boots it again.
func (r *Runtime) Stop(ctx context.Context, id string) (View, error) {
	const op = "stop"
	e, err := r.lockVM(op, id)
	if err != nil {
		return View{}, err
	}
	defer e.mu.Unlock()
	to, err := transition(e, OpStop)
	if err != nil {
		return View{}, err
	}
	sctx, cancel := context.WithTimeout(ctx, r.cfg.StopTimeout)
	defer cancel()
	var stopErr error
	detail := "killed (never booted)"
	if Status(e.rec.Status) == StatusCreated {
		// A guest that never booted cannot be asked to shut down.
		stopErr = e.machine.Kill()
	} else {
		var rep vmm.ShutdownReport
		rep, stopErr = e.machine.Shutdown(sctx)
		detail = rep.Outcome
		if rep.Detail != "" {
			detail = rep.Detail
		}
	}
	if stopErr != nil {
		return View{}, newErr(KindShutdown, op, id, stopErr)
	}
	e.machine, e.rec.Handle = nil, nil
	e.rec.Status = string(to)
	if err := r.save(op, e); err != nil {
		return View{}, err
	}
	r.emit(id, "stopped", to, detail)
	return viewOf(e.rec), nil
}

// Destroy kills the VM's VMM, releases every host resource it holds and
// removes its record; the id can then be reused. Snapshots taken from the
// VM are kept. When a resource cannot be released the record stays (status
// stopped) listing what is left, and Destroy can be retried.
//
// The record is marked Destroying before anything is touched, so a
// runtime that dies mid-destroy finishes it when it reopens: a VM is never
// left half destroyed. A VM marked so accepts only Destroy.
func (r *Runtime) Destroy(ctx context.Context, id string) error {
	const op = "destroy"
	e, err := r.lockVM(op, id)
	if err != nil {
		return err
	}
	defer e.mu.Unlock()
	if _, err := transition(e, OpDestroy); err != nil {
		return err
	}
	p := &destroyPlan{id: id, e: e, done: make([]bool, len(e.rec.Resources))}
	if err := runSteps(ctx, r.destroySteps(p), r.inject, nil); err != nil {
		return err
	}
	r.emit(id, "destroyed", StatusDestroyed, "")
	return nil
}

// destroyPlan carries what the steps of one destroy share.
type destroyPlan struct {
	id   string
	e    *vmEntry
	done []bool // by index into e.rec.Resources: released
	errs []error
}

// releaseKinds releases, in reverse order of acquisition, the resources
// of the given kinds that are not released yet. Failures are collected,
// not returned: every other resource is still released, and the record
// step keeps what is left.
func (r *Runtime) releaseKinds(p *destroyPlan, kinds ...string) {
	res := p.e.rec.Resources
	for i := len(res) - 1; i >= 0; i-- {
		if p.done[i] || (len(kinds) > 0 && !slices.Contains(kinds, res[i].Kind)) {
			continue
		}
		p.done[i] = true
		if err := r.release(res[i]); err != nil {
			p.done[i] = false
			p.errs = append(p.errs, err)
		}
	}
}

// destroySteps are the steps of a destroy, in reverse order of the
// create pipeline's acquisitions. Only the first can fail the destroy
// early; release failures are collected and reported by the last.
func (r *Runtime) destroySteps(p *destroyPlan) []step {
	const op = "destroy"
	release := func(name string, kinds ...string) step {
		return step{name: name, do: func(context.Context) error {
			r.releaseKinds(p, kinds...)
			return nil
		}}
	}
	return []step{
		{
			name: "mark",
			do: func(ctx context.Context) error {
				if p.e.rec.Destroying {
					return nil // a retry
				}
				p.e.rec.Destroying = true
				if err := r.save(op, p.e); err != nil {
					p.e.rec.Destroying = false
					return err
				}
				return nil
			},
		},
		{
			name: "stop",
			do: func(ctx context.Context) error {
				p.e.closeAgent()
				if p.e.machine != nil {
					if err := p.e.machine.Kill(); err != nil {
						return newErr(KindShutdown, op, p.id, err)
					}
					p.e.machine = nil
				}
				p.e.rec.Handle = nil
				// Helper processes (page-fault servers) go with the VMM.
				r.releaseKinds(p, resProcess)
				return nil
			},
		},
		release("firewall", resFirewall),
		release("network", resNetwork),
		release("jail", resJail),
		release("allocations", resAlloc),
		release("dir", resDir),
		{
			name: "record",
			do: func(ctx context.Context) error {
				r.releaseKinds(p) // any kind a newer runtime added
				e := p.e
				if len(p.errs) > 0 {
					var left []store.Resource
					for i, x := range e.rec.Resources {
						if !p.done[i] {
							left = append(left, x)
						}
					}
					relErr := errors.Join(p.errs...)
					e.rec.Resources = left
					e.rec.Status = string(StatusStopped)
					if err := r.save(op, e); err != nil {
						return errors.Join(newErr(KindUnsupported, op, p.id, relErr), err)
					}
					return newErr(KindUnsupported, op, p.id, fmt.Errorf("some resources could not be released: %w", relErr))
				}
				if err := r.st.DeleteVM(p.id); err != nil {
					return newErr(KindStatePoisoned, op, p.id, err)
				}
				e.gone = true
				r.mu.Lock()
				if r.vms[p.id] == e {
					delete(r.vms, p.id)
				}
				r.mu.Unlock()
				return nil
			},
		},
	}
}

// Rename gives a VM a new id, e.g. to hand a pre-restored pool VM to the
// tenant that claims it. Host resources are keyed by an immutable internal
// key, so nothing on disk moves and the VMM is not disturbed.
func (r *Runtime) Rename(ctx context.Context, id, newID string) (View, error) {
	const op = "rename"
	if err := ValidateID(newID); err != nil {
		return View{}, invalidArg(op, id, "%v", err)
	}
	e, err := r.lockVM(op, id)
	if err != nil {
		return View{}, err
	}
	defer e.mu.Unlock()
	if _, err := transition(e, OpRename); err != nil {
		return View{}, err
	}
	if newID == id {
		return viewOf(e.rec), nil
	}
	// A VM still being created may not be in the store yet: the map
	// knows it (a create racing past this check fails at its next write).
	r.mu.Lock()
	taken := r.vms[newID] != nil
	r.mu.Unlock()
	if taken {
		return View{}, newErr(KindVMAlreadyExists, op, newID, nil)
	}
	now := time.Now().UTC()
	if err := r.st.RenameVM(id, newID, now); err != nil {
		if errors.Is(err, store.ErrExists) {
			return View{}, newErr(KindVMAlreadyExists, op, newID, nil)
		}
		return View{}, newErr(KindStatePoisoned, op, id, err)
	}
	r.mu.Lock()
	delete(r.vms, id)
	r.vms[newID] = e
	r.mu.Unlock()
	e.rec.ID, e.rec.UpdatedAt = newID, now
	e.publish()
	r.emit(newID, "renamed", Status(e.rec.Status), "from "+id)
	return viewOf(e.rec), nil
}

// watchMachine marks the VM crashed when m exits without being asked to.
func (r *Runtime) watchMachine(e *vmEntry, m vmm.Machine) {
	r.watch.Add(1)
	go func() {
		defer r.watch.Done()
		select {
		case <-m.Done():
		case <-r.closing:
			return
		}
		st := m.ExitStatus()
		if st.Expected {
			return
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		// The VM may have been stopped, relaunched or destroyed while
		// we waited for the lock; only the current machine counts.
		if e.gone || e.machine != m {
			return
		}
		e.machine, e.rec.Handle = nil, nil
		e.rec.Status = string(StatusCrashed)
		e.rec.Exit = exitText(st)
		if why := r.uffdFailure(e); why != "" {
			e.rec.Exit = why + "; " + e.rec.Exit
		}
		if err := r.save("watch", e); err != nil {
			r.log.Error("record crash", "vm", e.rec.ID, "err", err)
		}
		r.emit(e.rec.ID, "crashed", StatusCrashed, e.rec.Exit)
	}()
}

func exitText(st vmm.ExitStatus) string {
	switch {
	case st.Signal != "":
		return "vmm killed by " + st.Signal
	case st.Code >= 0:
		return fmt.Sprintf("vmm exited with code %d", st.Code)
	default:
		return "vmm exited"
	}
}
