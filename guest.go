package hearth

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vsock"
)

// AgentReadyTimeout bounds how long a restore waits for the clone's
// agent to take its new token.
const AgentReadyTimeout = 20 * time.Second

// DefaultAgentTimeout is Config.AgentTimeout's default. It exceeds the
// agent client's connect budget (a hello retried on fresh connections),
// so a slow but live guest still gets through.
const DefaultAgentTimeout = 15 * time.Second

func newToken() string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// agentBootArgs are the kernel arguments that hand the guest agent its
// token at boot.
func agentBootArgs(token string) string { return "hearth.token=" + token }

// agentDialer reaches the agent of the VM with directory key: through
// Firecracker's hybrid-vsock socket, or QEMU's virtio-serial chardev
// socket (both live at the same path in the VM's directory).
func (r *Runtime) agentDialer(key, backend string) agent.Dialer {
	path := filepath.Join(r.vmDir(key), cidFileNm)
	if backend == "qemu" {
		return &vsock.UnixDialer{Path: path, Logger: r.log}
	}
	return &vsock.HybridDialer{Path: path, Port: agent.DefaultPort, Logger: r.log}
}

// Agent returns a client for the VM's guest agent. The client is shared
// by all callers, reconnects by itself (a snapshot or a restart resets the
// channel) and must not be closed by them.
func (r *Runtime) Agent(ctx context.Context, id string) (*agent.Client, error) {
	const op = "agent"
	r.mu.Lock()
	e := r.vms[id]
	r.mu.Unlock()
	if e == nil {
		return nil, newErr(KindVMNotFound, op, id, nil)
	}
	rec := e.view.Load()
	if rec == nil || rec.ID != id {
		return nil, newErr(KindVMNotFound, op, id, nil)
	}
	if rec.AgentToken == "" {
		return nil, newErr(KindGuestMetadata, op, id, errors.New("the VM has no agent (create it with agent enabled)"))
	}
	if Status(rec.Status) != StatusRunning {
		return nil, &Error{Kind: KindInvalidTransition, Op: op, VM: id, From: rec.Status, To: "agent"}
	}
	e.agentMu.Lock()
	defer e.agentMu.Unlock()
	if e.agent == nil || e.agentToken != rec.AgentToken {
		if e.agent != nil {
			e.agent.Close()
		}
		e.agent = agent.New(r.agentDialer(rec.Key, rec.Backend), rec.AgentToken, agent.WithLogger(r.log), agent.WithCallTimeout(r.cfg.AgentTimeout))
		e.agentToken = rec.AgentToken
	}
	return e.agent, nil
}

// Exec runs a command in the VM through its agent and returns its exit
// status; output streams to cmd's writers. An agent that does not start
// the command within Config.AgentTimeout (a frozen guest) fails it with a
// KindTimeout error; once started, the command runs until it ends or ctx
// does.
func (r *Runtime) Exec(ctx context.Context, id string, cmd *agent.Cmd) (*agent.ExitStatus, error) {
	const op = "exec"
	c, err := r.Agent(ctx, id)
	if err != nil {
		return nil, err
	}
	// The deadline covers only the start: the command's lifetime is
	// tied to sctx, which therefore lives until Exec returns.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var late atomic.Bool
	watchdog := time.AfterFunc(r.cfg.AgentTimeout, func() {
		late.Store(true)
		cancel()
	})
	p, err := c.Start(sctx, cmd)
	watchdog.Stop()
	if err != nil {
		if late.Load() && ctx.Err() == nil {
			return nil, newErr(KindTimeout, op, id, fmt.Errorf("the guest agent did not start the command within %v: %w", r.cfg.AgentTimeout, err))
		}
		return nil, agentErr(op, id, err)
	}
	st, err := p.Wait()
	if err != nil {
		return nil, agentErr(op, id, err)
	}
	return st, nil
}

// agentErr classifies an error of the guest agent: a call that ran out of
// time is KindTimeout, anything else KindGuestMetadata.
func agentErr(op, id string, err error) error {
	if isTimeout(err) {
		return newErr(KindTimeout, op, id, err)
	}
	return newErr(KindGuestMetadata, op, id, err)
}

// rotateAgent gives a restored clone its own token (the snapshot carries
// the source's), sets its clock and reseeds its entropy, so clones of one
// snapshot share neither credentials nor random state.
func (r *Runtime) rotateAgent(ctx context.Context, op string, e *vmEntry, oldToken string) error {
	ctx, cancel := context.WithTimeout(ctx, AgentReadyTimeout)
	defer cancel()
	fresh := newToken()
	// The restored guest still runs the session it had with its source's
	// host; over a single-stream channel (virtio-serial) that session may
	// swallow the first hello before the agent notices and starts afresh,
	// so a failed attempt is retried on a new connection until the
	// deadline.
	var err error
	for {
		c := agent.New(r.agentDialer(e.rec.Key, e.rec.Backend), oldToken, agent.WithLogger(r.log), agent.WithHelloTimeout(2*time.Second))
		err = c.AfterRestore(ctx, fresh)
		c.Close()
		if err == nil || ctx.Err() != nil || errors.Is(err, agent.ErrUnauthorized) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err != nil {
		return newErr(KindGuestMetadata, op, e.rec.ID, fmt.Errorf("give the restored agent its own token: %w", err))
	}
	e.rec.AgentToken = fresh
	e.rec.AgentTokenPending = ""
	return nil
}

// guestless reports whether m runs no guest (the in-memory backend).
func guestless(m vmm.Machine) bool {
	g, ok := m.(vmm.Guestless)
	return ok && g.Guestless()
}

// closeAgent drops the cached agent client of e.
func (e *vmEntry) closeAgent() {
	e.agentMu.Lock()
	defer e.agentMu.Unlock()
	if e.agent != nil {
		e.agent.Close()
		e.agent = nil
	}
}
