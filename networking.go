package hearth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/hearth-vm/hearth/firewall"
	"github.com/hearth-vm/hearth/jail"
	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/store"
	"github.com/hearth-vm/hearth/vmm"
)

// NetworkConfig turns on host networking for VMs.
type NetworkConfig struct {
	// Network configures the mode (netns, the default, or bridge), the
	// host namespace, subnets, egress interface and slot pool.
	Network network.Config
	// Firewall is the egress firewall backend (nftables by default, or
	// iptables).
	Firewall firewall.Backend
}

// Resources of a VM's network.
const (
	resNetwork  = "network"
	resFirewall = "firewall"
)

// openNetwork sets up the network manager and firewall when configured.
func (r *Runtime) openNetwork() error {
	nc := r.cfg.Network
	if nc == nil {
		return nil
	}
	cfg := nc.Network
	if cfg.Logger == nil {
		cfg.Logger = r.log
	}
	m, err := network.New(cfg, r.st)
	if err != nil {
		return netErr("open", "", err)
	}
	fw, err := firewall.New(firewall.Config{Backend: nc.Firewall, HostNS: cfg.HostNS, VMNets: m.VMNets(), Guard: m.GuardIfaces(), Logger: r.log})
	if err != nil {
		m.Close()
		return netErr("open", "", err)
	}
	r.net, r.fw = m, fw
	return nil
}

// netErr maps the network and firewall packages' errors to kinds.
func netErr(op, vm string, err error) error {
	switch {
	case errors.Is(err, network.ErrInvalidArgument), errors.Is(err, firewall.ErrInvalidArgument):
		return newErr(KindInvalidArgument, op, vm, err)
	case errors.Is(err, network.ErrNetworkConfig):
		return newErr(KindNetworkConfig, op, vm, err)
	case errors.Is(err, firewall.ErrFirewall):
		return newErr(KindFirewall, op, vm, err)
	}
	return newErr(KindNetworkSetup, op, vm, err)
}

// wantsNetwork reports whether a VM with spec gets a network interface.
func (r *Runtime) wantsNetwork(spec Spec) bool {
	return r.net != nil && (spec.Network == nil || !spec.Network.Disabled)
}

// egressPolicy parses the spec's egress rules; validated before any side
// effect.
func egressPolicy(spec Spec) (firewall.Policy, error) {
	if spec.Network == nil {
		return firewall.Policy{}, nil
	}
	p, err := firewall.ParsePolicy(spec.Network.Allow, spec.Network.DNS...)
	if err != nil {
		return p, err
	}
	p.AllowHost, p.AllowMetadata = spec.Network.AllowHost, spec.Network.AllowMetadata
	return p, nil
}

// attachment returns the VM's recorded network attachment, if any.
func attachmentOf(res []store.Resource) (*network.Attachment, bool) {
	for _, x := range res {
		if x.Kind == resNetwork {
			var a network.Attachment
			if json.Unmarshal([]byte(x.Data["attachment"]), &a) == nil {
				return &a, true
			}
		}
	}
	return nil, false
}

// networkSteps attach the VM to the host network and install its egress
// policy before its VMM starts: a VM is never unfiltered.
func (r *Runtime) networkSteps(p *createPlan) []step {
	return []step{
		{
			name: "network",
			do: func(ctx context.Context) error {
				if !r.wantsNetwork(p.spec) {
					return nil
				}
				a, err := r.net.Attach(ctx, p.entry.rec.Key)
				if err != nil {
					return netErr(p.op, p.id, err)
				}
				b, _ := json.Marshal(a)
				p.entry.rec.Resources = append(p.entry.rec.Resources, store.Resource{Kind: resNetwork, Name: p.entry.rec.Key,
					Data: map[string]string{"attachment": string(b)}})
				if uid, ok := findAlloc(p.entry.rec.Resources, jail.IDPool); ok {
					// A jailed VMM opens its TAP as the VM's uid.
					if err := r.net.SetTAPOwner(ctx, a, int(uid), int(uid)); err != nil {
						r.net.Detach(context.WithoutCancel(ctx), p.entry.rec.Key)
						return netErr(p.op, p.id, err)
					}
				}
				return r.persistCreating(p)
			},
			undo: func(ctx context.Context) error {
				if _, ok := attachmentOf(p.entry.rec.Resources); !ok {
					return nil
				}
				return r.net.Detach(ctx, p.entry.rec.Key)
			},
		},
		{
			name: "firewall",
			do: func(ctx context.Context) error {
				a, ok := attachmentOf(p.entry.rec.Resources)
				if !ok {
					return nil
				}
				pol, err := egressPolicy(p.spec)
				if err != nil {
					return netErr(p.op, p.id, err)
				}
				if err := r.fw.Apply(ctx, firewall.RefFor(a), pol); err != nil {
					return netErr(p.op, p.id, err)
				}
				b, _ := json.Marshal(a)
				p.entry.rec.Resources = append(p.entry.rec.Resources, store.Resource{Kind: resFirewall, Name: p.entry.rec.Key,
					Data: map[string]string{"attachment": string(b)}})
				return r.persistCreating(p)
			},
			undo: func(ctx context.Context) error {
				if a, ok := attachmentOf(p.entry.rec.Resources); ok {
					return r.fw.Remove(ctx, firewall.RefFor(a))
				}
				return nil
			},
		},
	}
}

// releaseNetwork frees a network or firewall resource (both carry the
// attachment, so each can be released on its own).
func (r *Runtime) releaseNetwork(res store.Resource) error {
	if r.net == nil {
		return fmt.Errorf("%s %s: networking is not configured on this runtime", res.Kind, res.Name)
	}
	ctx := context.Background()
	if res.Kind == resFirewall {
		if a, ok := attachmentOf([]store.Resource{{Kind: resNetwork, Data: res.Data}}); ok {
			return r.fw.Remove(ctx, firewall.RefFor(a))
		}
		return nil
	}
	return r.net.Detach(ctx, res.Name)
}

// nicConfig is the VM's network interface for the VMM.
func nicConfig(a *network.Attachment, spec Spec) vmm.NIC {
	n := vmm.NIC{ID: "eth0", HostDev: a.TAP, MAC: a.MAC}
	if spec.Network != nil {
		n.RX, n.TX = spec.Network.RxRateLimit.toVMM(), spec.Network.TxRateLimit.toVMM()
	}
	return n
}

// SetEgress atomically replaces a VM's egress policy (no moment without
// a policy).
func (r *Runtime) SetEgress(ctx context.Context, id string, allow []string, dns []string) error {
	const op = "set-egress"
	pol, err := firewall.ParsePolicy(allow, dns...)
	if err != nil {
		return netErr(op, id, err)
	}
	e, err := r.lockVM(op, id)
	if err != nil {
		return err
	}
	defer e.mu.Unlock()
	a, ok := attachmentOf(e.rec.Resources)
	if !ok {
		return newErr(KindNetworkConfig, op, id, errors.New("the VM has no network interface"))
	}
	spec, err := specOf(e)
	if err != nil {
		return newErr(KindStatePoisoned, op, id, err)
	}
	if spec.Network == nil {
		spec.Network = &NetworkSpec{}
	}
	pol.AllowHost, pol.AllowMetadata = spec.Network.AllowHost, spec.Network.AllowMetadata
	if err := r.fw.Apply(ctx, firewall.RefFor(a), pol); err != nil {
		return netErr(op, id, err)
	}
	spec.Network.Allow, spec.Network.DNS = allow, dns
	if e.rec.Spec, err = json.Marshal(spec); err != nil {
		return newErr(KindStatePoisoned, op, id, err)
	}
	return r.save(op, e)
}
