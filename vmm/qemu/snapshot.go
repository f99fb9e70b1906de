package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hearth-vm/hearth/vmm"
)

// StateDoc is the JSON document a snapshot writes at StatePath. QEMU's
// migration stream holds device state and memory but not the machine
// configuration, which a restore must repeat on the command line; the
// document records it.
type StateDoc struct {
	Version int        `json:"version"`
	Backend string     `json:"backend"`
	Accel   string     `json:"accel"`
	Machine string     `json:"machine,omitempty"`
	Config  vmm.Config `json:"config"`
	// Args is the source's command line, for people reading the file;
	// restores rebuild theirs from Config.
	Args    []string  `json:"args"`
	Created time.Time `json:"created"`
}

// StateDocVersion is the version of StateDoc this package writes.
const StateDocVersion = 1

// maxBandwidth lifts QEMU's default migration bandwidth cap (tuned for
// live migration over a network) so a snapshot to a local file runs at
// disk speed.
const maxBandwidth = int64(1) << 40

// Snapshot implements vmm.Machine: with the VM paused, it migrates to
// MemPath and writes the StateDoc at StatePath. The VM stays paused
// (QEMU's "postmigrate" state); Resume continues it.
func (m *Machine) Snapshot(ctx context.Context, req vmm.SnapshotRequest) error {
	if req.Diff {
		return unsupported("diff snapshots", "QEMU migration always writes all memory")
	}
	if req.StatePath == "" || req.MemPath == "" {
		return invalid("snapshot", "state and memory paths are required")
	}
	st, err := m.QueryStatus(ctx)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", m.vmid, err)
	}
	if st.Running {
		return &vmm.RequestError{Method: "QMP", Path: "migrate", Status: 400, Body: "the VM must be paused for a snapshot (status " + st.Status + ")"}
	}
	m.mu.Lock()
	extra := cloneMap(m.handle.Extra)
	m.mu.Unlock()
	doc := StateDoc{Version: StateDocVersion, Backend: backendName, Accel: extra[ExtraAccel], Machine: extra[ExtraMachine], Created: time.Now().UTC()}
	if err := json.Unmarshal([]byte(extra[ExtraConfig]), &doc.Config); err != nil {
		return fmt.Errorf("snapshot %s: machine config unknown: %w", m.vmid, err)
	}
	if err := json.Unmarshal([]byte(extra[ExtraArgs]), &doc.Args); err != nil {
		return fmt.Errorf("snapshot %s: command line unknown: %w", m.vmid, err)
	}
	if err := m.command(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": maxBandwidth}, nil); err != nil {
		return fmt.Errorf("snapshot %s: %w", m.vmid, err)
	}
	// QEMU 7.2 has no file: URI; exec: runs the command through /bin/sh.
	if err := m.command(ctx, "migrate", map[string]any{"uri": "exec:cat > " + shellQuote(req.MemPath)}, nil); err != nil {
		return fmt.Errorf("snapshot %s: %w", m.vmid, err)
	}
	if err := m.waitMigration(ctx); err != nil {
		return fmt.Errorf("snapshot %s: %w", m.vmid, err)
	}
	if err := writeFileAtomic(req.StatePath, doc); err != nil {
		return fmt.Errorf("snapshot %s: %w", m.vmid, err)
	}
	m.log.Info("snapshot written", "mem", req.MemPath, "state", req.StatePath)
	return nil
}

// waitMigration polls query-migrate until the outgoing migration ends.
func (m *Machine) waitMigration(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.b.opts.MigrateTimeout)
	defer cancel()
	for {
		var mi migrationInfo
		if err := m.command(ctx, "query-migrate", nil, &mi); err != nil {
			return err
		}
		switch mi.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			// Leave QEMU in a usable state: a later Resume must not race a
			// migration still writing the file.
			cctx, ccancel := context.WithTimeout(context.Background(), m.b.opts.CommandTimeout)
			m.command(cctx, "migrate_cancel", nil, nil)
			ccancel()
			return fmt.Errorf("migration (status %s): %w", mi.Status, ctx.Err())
		case <-m.done:
			return fmt.Errorf("migration: %w", ErrQMPClosed)
		case <-time.After(migratePollInterval):
		}
	}
}

func writeFileAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".state-*")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// ReadStateDoc reads a snapshot's state document.
func ReadStateDoc(path string) (StateDoc, error) {
	var d StateDoc
	b, err := os.ReadFile(path)
	if err != nil {
		return d, fmt.Errorf("read snapshot state: %w", err)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return d, fmt.Errorf("decode snapshot state %s: %w", path, err)
	}
	if d.Backend != backendName || d.Version != StateDocVersion {
		return d, fmt.Errorf("snapshot state %s: backend %q version %d, want %q version %d", path, d.Backend, d.Version, backendName, StateDocVersion)
	}
	return d, nil
}

// RestoreConfig applies a LoadRequest's overrides to a recorded config:
// drives re-pointed by id, NICs re-pointed by id, the agent socket moved.
// An override naming an unknown device is an error, since silently
// sharing the source's disk or TAP would be far worse.
func RestoreConfig(cfg vmm.Config, req vmm.LoadRequest) (vmm.Config, error) {
	cfg.Drives = append([]vmm.Drive(nil), cfg.Drives...)
	cfg.NICs = append([]vmm.NIC(nil), cfg.NICs...)
	for _, o := range req.DriveOverrides {
		found := false
		for i := range cfg.Drives {
			if cfg.Drives[i].ID == o.ID {
				cfg.Drives[i].Path, found = o.Path, true
			}
		}
		if !found {
			return cfg, invalid("drive_overrides", "no drive %q in the snapshot", o.ID)
		}
	}
	for _, o := range req.NetworkOverrides {
		found := false
		for i := range cfg.NICs {
			if cfg.NICs[i].ID == o.IfaceID {
				cfg.NICs[i].HostDev, found = o.HostDev, true
			}
		}
		if !found {
			return cfg, invalid("network_overrides", "no interface %q in the snapshot", o.IfaceID)
		}
	}
	if req.VsockUDSPath != "" {
		if cfg.Vsock == nil {
			return cfg, invalid("vsock_override", "the snapshot has no agent channel")
		}
		v := *cfg.Vsock
		v.UDSPath = req.VsockUDSPath
		cfg.Vsock = &v
	}
	return cfg, nil
}

// LoadSnapshot implements vmm.Machine: it starts QEMU with the recorded
// configuration (overrides applied) and -incoming defer, feeds it the
// memory file, and resumes when asked. On error nothing is left running.
func (m *Machine) LoadSnapshot(ctx context.Context, req vmm.LoadRequest) (err error) {
	if req.MemBackend != "" && req.MemBackend != vmm.MemFile {
		return unsupported("mem_backend "+string(req.MemBackend), "QEMU restores only from a migration file")
	}
	doc, err := ReadStateDoc(req.StatePath)
	if err != nil {
		return err
	}
	if _, err := os.Stat(req.MemPath); err != nil {
		return fmt.Errorf("load snapshot: memory file: %w", err)
	}
	if doc.Accel != "" && doc.Accel != m.b.accel {
		return fmt.Errorf("load snapshot: taken under %s, this backend runs %s", doc.Accel, m.b.accel)
	}
	cfg, err := RestoreConfig(doc.Config, req)
	if err != nil {
		return err
	}
	if err := m.claim("load snapshot"); err != nil {
		return err
	}
	if err := m.boot(ctx, cfg, true); err != nil {
		return fmt.Errorf("load snapshot %s: %w", m.vmid, err)
	}
	defer func() {
		if err != nil {
			m.Kill()
		}
	}()
	if err := m.command(ctx, "migrate-incoming", map[string]any{"uri": "exec:cat " + shellQuote(req.MemPath)}, nil); err != nil {
		return fmt.Errorf("load snapshot %s: %w", m.vmid, err)
	}
	if err := m.waitIncoming(ctx); err != nil {
		return fmt.Errorf("load snapshot %s: %w", m.vmid, err)
	}
	if req.Resume {
		if err := m.Resume(ctx); err != nil {
			return fmt.Errorf("load snapshot %s: resume: %w", m.vmid, err)
		}
	}
	m.log.Info("snapshot loaded", "mem", req.MemPath, "resumed", req.Resume)
	return nil
}

// waitIncoming waits until the incoming migration is done. QEMU was
// started with -S, so it then sits in "paused"; a failed incoming
// migration makes QEMU exit.
func (m *Machine) waitIncoming(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.b.opts.MigrateTimeout)
	defer cancel()
	for {
		st, err := m.QueryStatus(ctx)
		if err != nil {
			return fmt.Errorf("incoming migration: %w%s", err, consoleTail(m.spec.ConsolePath))
		}
		switch st.Status {
		case "inmigrate":
		case "paused", "running":
			return nil
		default:
			return fmt.Errorf("incoming migration ended in state %q%s", st.Status, consoleTail(m.spec.ConsolePath))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("incoming migration: %w", ctx.Err())
		case <-m.done:
			return fmt.Errorf("incoming migration: qemu exited%s", consoleTail(m.spec.ConsolePath))
		case <-time.After(migratePollInterval):
		}
	}
}
