package hearth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/hearth-vm/hearth/vmm"
)

// RateLimits changes the rate limits of a VM's devices (PATCH
// /v1/vms/{id}). It has the shape of the Spec fields it changes.
//
// Each listed drive gets its whole new limit (null or {} lifts it); drives
// not listed keep theirs. Each direction given under Network replaces
// that direction's limit ({} lifts it); a direction left out is kept.
type RateLimits struct {
	Drives  []DriveRateLimit   `json:"drives,omitempty"`
	Network *NetworkRateLimits `json:"network,omitempty"`
}

// DriveRateLimit is one extra drive's new limit.
type DriveRateLimit struct {
	ID        string     `json:"id"`
	RateLimit *RateLimit `json:"rate_limit"`
}

// NetworkRateLimits are the network interface's new limits.
type NetworkRateLimits struct {
	RxRateLimit *RateLimit `json:"rx_rate_limit,omitempty"`
	TxRateLimit *RateLimit `json:"tx_rate_limit,omitempty"`
}

// validate checks the update on its own, before the VM is looked at.
func (u RateLimits) validate() error {
	var errs []string
	add := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	if len(u.Drives) == 0 && (u.Network == nil || u.Network.RxRateLimit == nil && u.Network.TxRateLimit == nil) {
		add("nothing to change: give drives and/or network rate limits")
	}
	seen := map[string]bool{}
	for i, d := range u.Drives {
		switch {
		case d.ID == "rootfs":
			add("drives[%d].id: the root drive has no rate limit; only extra drives do", i)
		case !driveIDRE.MatchString(d.ID):
			add("drives[%d].id %q must be 1-32 characters of [a-zA-Z0-9_]", i, d.ID)
		case seen[d.ID]:
			add("drives[%d].id %q is duplicated", i, d.ID)
		}
		seen[d.ID] = true
		if err := d.RateLimit.validate(); err != nil {
			add("drives[%d].rate_limit: %v", i, err)
		}
	}
	if n := u.Network; n != nil {
		if err := n.RxRateLimit.validate(); err != nil {
			add("network.rx_rate_limit: %v", err)
		}
		if err := n.TxRateLimit.validate(); err != nil {
			add("network.tx_rate_limit: %v", err)
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// orNil drops a limit without buckets: the record says "unlimited" one
// way only.
func (r *RateLimit) orNil() *RateLimit {
	if r == nil || r.Bandwidth == nil && r.Ops == nil {
		return nil
	}
	return r
}

// SetRateLimits changes the rate limits of a VM's extra drives and of its
// network interface, and records them so that they survive a daemon
// restart (adoption) and a stop → start.
//
// A running or paused VM gets them at once from its VMM (Firecracker:
// PATCH /drives and /network-interfaces; QEMU: block throttling, with
// network limits Unsupported); if the VMM refuses part of the change, the
// parts already applied are put back. A stopped or crashed VM gets them
// on its next start. A created VM (configured, not booted) refuses: its
// limits are those of its spec until it starts.
func (r *Runtime) SetRateLimits(ctx context.Context, id string, u RateLimits) (View, error) {
	const op = "set-rate-limits"
	if err := u.validate(); err != nil {
		return View{}, newErr(KindInvalidArgument, op, id, err)
	}
	e, err := r.lockVM(op, id)
	if err != nil {
		return View{}, err
	}
	defer e.mu.Unlock()
	status := Status(e.rec.Status)
	if status == StatusCreated {
		return View{}, &Error{Kind: KindInvalidTransition, Op: op, VM: id, From: string(status),
			Err: errors.New("a created VM's limits are its spec's until it starts; start it first")}
	}
	spec, err := specOf(e)
	if err != nil {
		return View{}, newErr(KindStatePoisoned, op, id, err)
	}
	next, err := json.Marshal(spec) // a deep copy to change
	if err != nil {
		return View{}, newErr(KindStatePoisoned, op, id, err)
	}
	var updated Spec
	if err := json.Unmarshal(next, &updated); err != nil {
		return View{}, newErr(KindStatePoisoned, op, id, err)
	}
	index := map[string]int{}
	for i, d := range spec.Drives {
		index[d.ID] = i
	}
	var apply, undo vmm.RateLimitUpdate
	for _, d := range u.Drives {
		i, ok := index[d.ID]
		if !ok {
			return View{}, newErr(KindInvalidArgument, op, id, fmt.Errorf("the VM has no drive %q", d.ID))
		}
		updated.Drives[i].RateLimit = d.RateLimit.orNil()
		apply.Drives = append(apply.Drives, vmm.DriveLimit{ID: d.ID, Limit: updated.Drives[i].RateLimit.toVMM()})
		undo.Drives = append(undo.Drives, vmm.DriveLimit{ID: d.ID, Limit: spec.Drives[i].RateLimit.toVMM()})
	}
	if n := u.Network; n != nil && (n.RxRateLimit != nil || n.TxRateLimit != nil) {
		a, ok := attachmentOf(e.rec.Resources)
		if !ok {
			return View{}, newErr(KindNetworkConfig, op, id, errors.New("the VM has no network interface"))
		}
		if updated.Network == nil {
			updated.Network = &NetworkSpec{}
		}
		if n.RxRateLimit != nil {
			updated.Network.RxRateLimit = n.RxRateLimit.orNil()
		}
		if n.TxRateLimit != nil {
			updated.Network.TxRateLimit = n.TxRateLimit.orNil()
		}
		nic := nicConfig(a, updated)
		apply.NICs = []vmm.NICLimit{{ID: nic.ID, RX: nic.RX, TX: nic.TX}}
		old := nicConfig(a, spec)
		undo.NICs = []vmm.NICLimit{{ID: old.ID, RX: old.RX, TX: old.TX}}
	}
	if status == StatusRunning || status == StatusPaused {
		setter, ok := e.machine.(vmm.RateLimitSetter)
		if !ok {
			return View{}, newErr(KindUnsupported, op, id, fmt.Errorf("backend %s cannot change rate limits of a live VM", e.rec.Backend))
		}
		if err := setter.SetRateLimits(ctx, apply); err != nil {
			// Put back what may have been applied; the VM keeps its old
			// limits, as its record says.
			if uerr := setter.SetRateLimits(context.WithoutCancel(ctx), undo); uerr != nil {
				r.log.Error("restoring rate limits after a failed change", "vm", id, "err", uerr)
			}
			kind := KindVMM
			if errors.Is(err, errors.ErrUnsupported) {
				kind = KindUnsupported
			}
			return View{}, vmmErr(op, id, kind, err)
		}
	}
	if e.rec.Spec, err = json.Marshal(updated); err != nil {
		return View{}, newErr(KindStatePoisoned, op, id, err)
	}
	if err := r.save(op, e); err != nil {
		return View{}, err
	}
	r.emit(id, "updated", status, "rate limits")
	return viewOf(e.rec), nil
}
