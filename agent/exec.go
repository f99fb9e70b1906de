package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Cmd describes a process to run in the guest.
type Cmd struct {
	// Args is the argv; Args[0] is looked up in the PATH of the
	// process's environment when it has no slash.
	Args []string
	// Env adds to (and overrides) the agent's base environment and its
	// env store.
	Env map[string]string
	// Dir is the working directory ("/" if empty).
	Dir string
	// UID and GID, when set, run the process as that user.
	UID, GID *uint32
	// Timeout, when positive, makes the agent kill the process group.
	Timeout time.Duration
	// TTY runs the process on a pseudo-terminal of Rows×Cols (24×80 if
	// zero); its stdout and stderr both arrive on Stdout.
	TTY        bool
	Rows, Cols uint16
	// Stdin, if not nil, is copied to the process's stdin until EOF;
	// otherwise the process reads /dev/null. As with os/exec, a Stdin
	// that never returns from Read keeps one goroutine alive after the
	// process ends.
	Stdin io.Reader
	// Stdout and Stderr receive the output; nil discards it. Writes come
	// from one goroutine, in order.
	Stdout, Stderr io.Writer
}

// Process is a running guest process.
type Process struct {
	// ID names the process in Signal and Resize requests.
	ID string
	// PID is its pid in the guest.
	PID int

	c      *Client
	rwc    io.ReadWriteCloser
	cmd    *Cmd
	done   chan struct{}
	status *ExitStatus
	err    error
	stop   func() bool
}

// Exec runs cmd to completion and returns its exit status. A non-zero
// exit is not an error: check ExitStatus.Success. Cancelling ctx kills
// the process.
func (c *Client) Exec(ctx context.Context, cmd *Cmd) (*ExitStatus, error) {
	p, err := c.Start(ctx, cmd)
	if err != nil {
		return nil, err
	}
	return p.Wait()
}

// Output runs args and returns its stdout, stderr and status.
func (c *Client) Output(ctx context.Context, args ...string) (stdout, stderr []byte, st *ExitStatus, err error) {
	var o, e lockedBuffer
	st, err = c.Exec(ctx, &Cmd{Args: args, Stdout: &o, Stderr: &e})
	return o.Bytes(), e.Bytes(), st, err
}

// Start starts cmd and returns once the guest process runs. The process
// lives until it exits or ctx is cancelled (then it is killed).
func (c *Client) Start(ctx context.Context, cmd *Cmd) (*Process, error) {
	if len(cmd.Args) == 0 {
		return nil, fmt.Errorf("%w: exec without arguments", ErrInvalid)
	}
	req := ExecRequest{
		Args: cmd.Args, Env: cmd.Env, Dir: cmd.Dir, UID: cmd.UID, GID: cmd.GID,
		TimeoutMS: cmd.Timeout.Milliseconds(), Stdin: cmd.Stdin != nil,
		TTY: cmd.TTY, Rows: cmd.Rows, Cols: cmd.Cols,
	}
	if cmd.Timeout > 0 && req.TimeoutMS == 0 {
		req.TimeoutMS = 1
	}
	if err := ValidateExec(&req); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("agent: exec: %w", err)
	}
	h := http.Header{}
	h.Set("Connection", "Upgrade")
	h.Set("Upgrade", ExecUpgrade)
	cl := &call{method: "POST", path: "/v1/exec", body: body, ctype: "application/json", header: h}
	resp, err := c.roundTrip(ctx, cl)
	if err != nil {
		return nil, err
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if resp.StatusCode != http.StatusSwitchingProtocols || !ok {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: exec answered %s without switching protocols", ErrProtocol, resp.Status)
	}
	p := &Process{c: c, rwc: rwc, cmd: cmd, done: make(chan struct{})}
	fr := NewFrameReader(rwc)
	t, payload, err := fr.Next()
	if err != nil || t != FrameStarted {
		rwc.Close()
		if err == nil {
			err = fmt.Errorf("%w: first exec frame is %s", ErrProtocol, t)
		}
		return nil, fmt.Errorf("agent: exec: %w: %w", ErrConnLost, err)
	}
	var st Started
	if err := json.Unmarshal(payload, &st); err != nil {
		rwc.Close()
		return nil, fmt.Errorf("%w: started frame: %w", ErrProtocol, err)
	}
	p.ID, p.PID = st.ID, st.PID
	// Cancelling ctx kills the process: an out-of-band SIGKILL (which
	// works even when stdin is backed up), then the stream closes, which
	// the agent also takes as a kill.
	p.stop = context.AfterFunc(ctx, func() {
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = p.Signal(kctx, syscall.SIGKILL)
		p.rwc.Close()
	})
	go p.readOutput(ctx, fr)
	if cmd.Stdin != nil {
		go p.copyStdin()
	}
	return p, nil
}

func (p *Process) readOutput(ctx context.Context, fr *FrameReader) {
	defer close(p.done)
	defer p.rwc.Close()
	defer p.stop()
	var werr error
	write := func(w io.Writer, b []byte) {
		if w == nil || werr != nil {
			return
		}
		if _, err := w.Write(b); err != nil {
			werr = err
		}
	}
	for {
		t, payload, err := fr.Next()
		if err != nil {
			if ctx.Err() != nil {
				p.err = fmt.Errorf("agent: exec %s: %w", p.ID, ctx.Err())
			} else {
				p.err = fmt.Errorf("agent: exec %s: %w: %w", p.ID, ErrConnLost, err)
			}
			return
		}
		switch t {
		case FrameStdout:
			write(p.cmd.Stdout, payload)
		case FrameStderr:
			write(p.cmd.Stderr, payload)
		case FrameExit:
			var st ExitStatus
			if err := json.Unmarshal(payload, &st); err != nil {
				p.err = fmt.Errorf("%w: exit frame: %w", ErrProtocol, err)
				return
			}
			p.status = &st
			if ctx.Err() != nil {
				// Killed because the caller gave up: say so, as
				// os/exec does.
				p.err = fmt.Errorf("agent: exec %s: %w", p.ID, ctx.Err())
				return
			}
			if werr != nil {
				p.err = fmt.Errorf("agent: exec %s: write output: %w", p.ID, werr)
			}
			return
		default:
			// Unknown frames from a newer agent are skipped.
		}
	}
}

func (p *Process) copyStdin() {
	buf := make([]byte, FrameHeaderSize+32<<10)
	for {
		n, err := p.cmd.Stdin.Read(buf[FrameHeaderSize:])
		if n > 0 {
			PutFrameHeader(buf, FrameStdin, n)
			if _, werr := p.rwc.Write(buf[:FrameHeaderSize+n]); werr != nil {
				return
			}
		}
		if err != nil {
			// EOF or a read error both end the process's stdin.
			_ = WriteFrame(p.rwc, FrameStdinEOF, nil)
			return
		}
	}
}

// Wait waits for the process to exit and its output to be delivered.
// The status is non-nil whenever the process's end was reported, even if
// the error is too (a Stdout write failed).
func (p *Process) Wait() (*ExitStatus, error) {
	<-p.done
	return p.status, p.err
}

// Done is closed when Wait would return.
func (p *Process) Done() <-chan struct{} { return p.done }

// Signal sends sig to the process group.
func (p *Process) Signal(ctx context.Context, sig syscall.Signal) error {
	name := unix.SignalName(sig)
	if name == "" {
		name = fmt.Sprint(int(sig))
	}
	err := p.c.jsonCall(ctx, "POST", "/v1/exec/"+p.ID+"/signal", nil, SignalRequest{Signal: name}, nil, false)
	var ae *Error
	if errors.As(err, &ae) && ae.Code == CodeNotFound {
		select {
		case <-p.done:
			return nil // it already exited
		default:
		}
	}
	return err
}

// Kill sends SIGKILL.
func (p *Process) Kill(ctx context.Context) error { return p.Signal(ctx, syscall.SIGKILL) }

// Resize changes the size of the process's terminal.
func (p *Process) Resize(ctx context.Context, rows, cols uint16) error {
	return p.c.jsonCall(ctx, "POST", "/v1/exec/"+p.ID+"/resize", nil, ResizeRequest{Rows: rows, Cols: cols}, nil, false)
}

// lockedBuffer is a bytes buffer safe for the output goroutine and a
// reader after Wait.
type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b
}

func decodeJSON(resp *http.Response, out any) error {
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(out); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}
