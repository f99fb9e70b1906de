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

// agentHelloPatience is how long a QEMU VM's agent client retries its
// hello: QEMU accepts the connection at once, so the first hello waits
// out the guest's boot, which under TCG on a loaded host takes tens of
// seconds. The caller's context still bounds every call.
const agentHelloPatience = 2 * time.Minute

// agentBootGrace is how long after a QEMU guest's boot its agent may
// take to answer before Config.AgentTimeout applies: under TCG on a
// loaded host the Debian kernel needs tens of seconds to reach the agent,
// and a booting guest is not a frozen one.
const agentBootGrace = 2 * time.Minute

// agentWait is how long an exec in e waits for the agent to start the
// command: Config.AgentTimeout, or what is left of a booting QEMU
// guest's grace if that is longer.
func (r *Runtime) agentWait(e *vmEntry) time.Duration {
	d := r.cfg.AgentTimeout
	if rec := e.view.Load(); rec != nil && rec.Backend == "qemu" {
		if b := e.booted.Load(); b != 0 {
			if left := agentBootGrace - time.Since(time.Unix(0, b)); left > d {
				d = left
			}
		}
	}
	return d
}

// agentOptions are the agent client's options for a VM of backend.
func (r *Runtime) agentOptions(backend string) []agent.Option {
	opts := []agent.Option{agent.WithLogger(r.log), agent.WithCallTimeout(r.cfg.AgentTimeout)}
	if backend == "qemu" {
		opts = append(opts, agent.WithHelloPatience(agentHelloPatience))
	}
	return opts
}

// Agent returns a client for the VM's guest agent. The client is shared
// by all callers, reconnects by itself (a snapshot or a restart resets the
// channel) and must not be closed by them.
func (r *Runtime) Agent(ctx context.Context, id string) (*agent.Client, error) {
	c, _, err := r.agentOf(id)
	return c, err
}

// agentOf is Agent, with the VM's entry.
func (r *Runtime) agentOf(id string) (*agent.Client, *vmEntry, error) {
	const op = "agent"
	r.mu.Lock()
	e := r.vms[id]
	r.mu.Unlock()
	if e == nil {
		return nil, nil, newErr(KindVMNotFound, op, id, nil)
	}
	rec := e.view.Load()
	if rec == nil || rec.ID != id {
		return nil, nil, newErr(KindVMNotFound, op, id, nil)
	}
	if rec.AgentToken == "" {
		return nil, nil, newErr(KindGuestMetadata, op, id, errors.New("the VM has no agent (create it with agent enabled)"))
	}
	if Status(rec.Status) != StatusRunning {
		return nil, nil, &Error{Kind: KindInvalidTransition, Op: op, VM: id, From: rec.Status, To: "agent"}
	}
	e.agentMu.Lock()
	defer e.agentMu.Unlock()
	if e.agent == nil || e.agentToken != rec.AgentToken {
		if e.agent != nil {
			e.agent.Close()
		}
		e.agent = agent.New(r.agentDialer(rec.Key, rec.Backend), rec.AgentToken, r.agentOptions(rec.Backend)...)
		e.agentToken = rec.AgentToken
	}
	return e.agent, e, nil
}

// Exec runs a command in the VM through its agent and returns its exit
// status; output streams to cmd's writers. An agent that does not start
// the command within Config.AgentTimeout (a frozen guest) fails it with a
// KindTimeout error; once started, the command runs until it ends or ctx
// does.
func (r *Runtime) Exec(ctx context.Context, id string, cmd *agent.Cmd) (*agent.ExitStatus, error) {
	const op = "exec"
	c, e, err := r.agentOf(id)
	if err != nil {
		return nil, err
	}
	// The deadline covers only the start: the command's lifetime is
	// tied to sctx, which therefore lives until Exec returns.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var late atomic.Bool
	wait := r.agentWait(e)
	watchdog := time.AfterFunc(wait, func() {
		late.Store(true)
		cancel()
	})
	p, err := c.Start(sctx, cmd)
	watchdog.Stop()
	if err != nil {
		if late.Load() && ctx.Err() == nil {
			return nil, newErr(KindTimeout, op, id, fmt.Errorf("the guest agent did not start the command within %v: %w", wait.Round(time.Millisecond), err))
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
	// The restored guest resumes inside the session it had with its
	// source's host; the agent ends that session when it sees our hello
	// (or the port's host change), see agent/server. A failed attempt
	// (a hello lost all the same, a slow guest) is retried on a new
	// connection until the deadline.
	var err error
	for {
		c := agent.New(r.agentDialer(e.rec.Key, e.rec.Backend), oldToken, agent.WithLogger(r.log), agent.WithHelloTimeout(2*time.Second))
		err = c.AfterRestore(ctx, fresh)
		if err == nil {
			// The snapshot carries its source's hostname; the clone
			// takes its own id, as a booted VM does (hearth.hostname=).
			// Not fatal: ids may hold characters hostnames cannot, and
			// an older agent has no such call.
			if herr := agent.ValidateHostname(e.rec.ID); herr == nil {
				if herr = c.SetHostname(ctx, e.rec.ID); herr != nil {
					r.log.Warn("restored VM keeps its source's hostname", "vm", e.rec.ID, "err", herr)
				}
			}
		}
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
