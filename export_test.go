package hearth

import "path/filepath"

// Test hooks for the external test package.

// AgentTokenOf returns the VM's current agent token.
func (r *Runtime) AgentTokenOf(id string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.vms[id]; e != nil {
		if rec := e.view.Load(); rec != nil {
			return rec.AgentToken
		}
	}
	return ""
}

// VsockPathOf returns the host socket of the VM's vsock device.
func (r *Runtime) VsockPathOf(id string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.vms[id]; e != nil {
		if rec := e.view.Load(); rec != nil {
			return filepath.Join(r.vmDir(rec.Key), cidFileNm)
		}
	}
	return ""
}
