package server

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/hearth-vm/hearth/agent"
)

// outputGrace is how long output may keep flowing after the process
// exits: a background child that inherited stdout keeps the pipe open,
// and the exit status must not wait for it forever.
const outputGrace = 2 * time.Second

type execRegistry struct {
	mu    sync.Mutex
	procs map[string]*execProc
}

type execProc struct {
	id     string
	pid    int
	master *os.File // the pty, nil without TTY
}

func newExecRegistry() *execRegistry { return &execRegistry{procs: map[string]*execProc{}} }

func (r *execRegistry) add(p *execProc) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.procs[p.id] = p
}

func (r *execRegistry) remove(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.procs, id)
}

func (r *execRegistry) get(id string) *execProc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.procs[id]
}

func (r *execRegistry) killAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.procs {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	}
}

// execSession is one running exec and its stream.
type execSession struct {
	s      *Server
	req    *agent.ExecRequest
	proc   *execProc
	cmd    *exec.Cmd
	conn   net.Conn
	br     *bufio.Reader
	stdin  *os.File   // write end of the process's stdin (or the pty)
	outs   []*os.File // read ends: stdout, stderr; or the pty
	wmu    sync.Mutex
	exited chan struct{}
	gone   atomic.Bool // the client went away
	timed  atomic.Bool
	start  time.Time
}

func (s *Server) handleExec(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), agent.ExecUpgrade) {
		badRequest(w, fmt.Errorf("exec needs the headers Connection: Upgrade and Upgrade: %s", agent.ExecUpgrade))
		return
	}
	var req agent.ExecRequest
	if !decodeBody(w, r, 4<<20, &req) {
		return
	}
	if err := agent.ValidateExec(&req); err != nil {
		badRequest(w, err)
		return
	}
	es, err := s.startExec(&req)
	if err != nil {
		s.log.Info("agent: exec failed to start", "args", req.Args, "err", err)
		writeOSError(w, err)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		es.abort("hijack failed")
		es.wait()
		writeOSError(w, fmt.Errorf("exec: %w", err))
		return
	}
	es.conn, es.br = conn, brw.Reader
	s.log.Debug("agent: exec started", "id", es.proc.id, "process", es.proc.pid, "args", req.Args)
	es.run(r.Context().Value(connKey{}))
}

// environ merges base, the store and the request (later wins).
func (s *Server) environ(extra map[string]string, tty bool) []string {
	m := map[string]string{}
	var order []string
	set := func(kv string) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return
		}
		if _, seen := m[k]; !seen {
			order = append(order, k)
		}
		m[k] = v
	}
	for _, kv := range s.cfg.BaseEnv {
		set(kv)
	}
	if tty {
		// The agent's own TERM describes its console (the kernel gives
		// init TERM=linux), not the client's terminal.
		set("TERM=xterm-256color")
	}
	for _, kv := range s.env.environ() {
		set(kv)
	}
	for _, k := range sortedKeys(extra) {
		set(k + "=" + extra[k])
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+m[k])
	}
	return out
}

// lookPath finds file in the PATH of the process's environment (not the
// agent's).
func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH: %w", file, fs.ErrNotExist)
}

func (s *Server) startExec(req *agent.ExecRequest) (*execSession, error) {
	env := s.environ(req.Env, req.TTY)
	path, err := lookPath(req.Args[0], env)
	if err != nil {
		return nil, err
	}
	dir := req.Dir
	if dir == "" {
		dir = "/"
	}
	cmd := &exec.Cmd{Path: path, Args: req.Args, Env: env, Dir: dir, SysProcAttr: &syscall.SysProcAttr{}}
	if req.UID != nil || req.GID != nil {
		uid, gid := uint32(os.Geteuid()), uint32(os.Getegid())
		if req.UID != nil {
			uid = *req.UID
		}
		if req.GID != nil {
			gid = *req.GID
		}
		root := os.Geteuid() == 0
		if !root && (uid != uint32(os.Geteuid()) || gid != uint32(os.Getegid())) {
			return nil, fmt.Errorf("exec as uid %d gid %d needs the agent to run as root: %w", uid, gid, fs.ErrPermission)
		}
		// As root, drop supplementary groups too: the process gets
		// exactly the identity asked for.
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}, NoSetGroups: !root}
	}
	es := &execSession{s: s, req: req, cmd: cmd, exited: make(chan struct{})}
	var childEnds []*os.File
	closeAll := func() {
		for _, f := range childEnds {
			f.Close()
		}
		es.closeOurs()
	}
	if req.TTY {
		master, slave, err := openPTY()
		if err != nil {
			return nil, fmt.Errorf("exec: open pty: %w", err)
		}
		rows, cols := req.Rows, req.Cols
		if rows == 0 || cols == 0 {
			rows, cols = 24, 80
		}
		_ = setWinsize(master, rows, cols)
		childEnds = append(childEnds, slave)
		es.stdin, es.outs = master, []*os.File{master}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
	} else {
		// Its own process group, so timeout and kill reach children.
		cmd.SysProcAttr.Setpgid = true
		if req.Stdin {
			r, w, err := os.Pipe()
			if err != nil {
				return nil, fmt.Errorf("exec: %w", err)
			}
			childEnds = append(childEnds, r)
			es.stdin = w
			cmd.Stdin = r
		}
		for range 2 {
			r, w, err := os.Pipe()
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("exec: %w", err)
			}
			childEnds = append(childEnds, w)
			es.outs = append(es.outs, r)
		}
		cmd.Stdout, cmd.Stderr = childEnds[len(childEnds)-2], childEnds[len(childEnds)-1]
	}
	es.start = time.Now()
	if err := cmd.Start(); err != nil {
		closeAll()
		return nil, err
	}
	for _, f := range childEnds {
		f.Close()
	}
	es.proc = &execProc{id: newID(), pid: cmd.Process.Pid}
	if req.TTY {
		es.proc.master = es.stdin
	}
	s.execs.add(es.proc)
	if req.TimeoutMS > 0 {
		t := time.AfterFunc(time.Duration(req.TimeoutMS)*time.Millisecond, func() {
			es.timed.Store(true)
			es.kill(syscall.SIGKILL)
		})
		go func() { <-es.exited; t.Stop() }()
	}
	return es, nil
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (es *execSession) kill(sig syscall.Signal) {
	// The group: the process and everything it started that stayed in it.
	if err := syscall.Kill(-es.proc.pid, sig); errors.Is(err, syscall.ESRCH) {
		_ = syscall.Kill(es.proc.pid, sig)
	}
}

// abort kills the process because its client is gone.
func (es *execSession) abort(why string) {
	if es.gone.Swap(true) {
		return
	}
	select {
	case <-es.exited:
		return
	default:
	}
	es.s.log.Info("agent: exec client gone, killing the process", "id", es.proc.id, "process", es.proc.pid, "why", why)
	es.kill(syscall.SIGKILL)
	if es.conn != nil {
		// Unblock frame writes to a peer that no longer reads.
		_ = es.conn.SetWriteDeadline(time.Now())
	}
}

func (es *execSession) closeOurs() {
	if es.stdin != nil {
		es.stdin.Close()
	}
	for _, f := range es.outs {
		f.Close()
	}
}

func (es *execSession) writeFrame(t agent.FrameType, p []byte) error {
	es.wmu.Lock()
	defer es.wmu.Unlock()
	return agent.WriteFrame(es.conn, t, p)
}

// wait reaps the process when run never started (hijack failed).
func (es *execSession) wait() {
	_ = es.cmd.Wait()
	close(es.exited)
	es.closeOurs()
	es.s.execs.remove(es.proc.id)
}

func (es *execSession) run(connVal any) {
	defer es.s.execs.remove(es.proc.id)
	defer es.conn.Close()

	if _, err := io.WriteString(es.conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+agent.ExecUpgrade+"\r\n\r\n"); err != nil {
		es.abort("write 101: " + err.Error())
	}
	started, _ := json.Marshal(agent.Started{ID: es.proc.id, PID: es.proc.pid})
	if err := es.writeFrame(agent.FrameStarted, started); err != nil {
		es.abort("write started: " + err.Error())
	}

	// Output: one goroutine per stream, frames written whole under wmu.
	var outWG sync.WaitGroup
	types := []agent.FrameType{agent.FrameStdout, agent.FrameStderr}
	for i, f := range es.outs {
		outWG.Add(1)
		go func() {
			defer outWG.Done()
			es.pump(f, types[i])
		}()
	}
	go es.readInput()
	if st, ok := connVal.(*yamux.Stream); ok {
		go func() {
			select {
			case <-st.Session().CloseChan():
				es.abort("session closed")
			case <-es.exited:
			}
		}()
	}

	waitErr := es.cmd.Wait()
	close(es.exited)
	outDone := make(chan struct{})
	go func() { outWG.Wait(); close(outDone) }()
	select {
	case <-outDone:
	case <-time.After(outputGrace):
		// Something the process left behind holds the output open.
		for _, f := range es.outs {
			f.Close()
		}
		<-outDone
	}
	status := exitStatus(es.cmd.ProcessState, waitErr)
	status.Duration = time.Since(es.start)
	status.TimedOut = es.timed.Load()
	if es.gone.Load() {
		status.Error = "client went away; process killed"
	}
	es.closeOurs()
	b, _ := json.Marshal(status)
	_ = es.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := es.writeFrame(agent.FrameExit, b); err != nil {
		es.s.log.Debug("agent: exec exit frame not delivered", "id", es.proc.id, "err", err)
	}
	es.s.log.Debug("agent: exec finished", "id", es.proc.id, "exit_code", status.ExitCode, "signal", status.Signal, "duration", status.Duration)
}

func (es *execSession) pump(f *os.File, t agent.FrameType) {
	buf := make([]byte, agent.FrameHeaderSize+32<<10)
	for {
		n, err := f.Read(buf[agent.FrameHeaderSize:])
		if n > 0 {
			agent.PutFrameHeader(buf, t, n)
			es.wmu.Lock()
			_, werr := es.conn.Write(buf[:agent.FrameHeaderSize+n])
			es.wmu.Unlock()
			if werr != nil {
				es.abort("write output: " + werr.Error())
				// Keep draining so the process is not blocked on a
				// full pipe while it dies.
				_, _ = io.Copy(io.Discard, f)
				return
			}
		}
		if err != nil {
			// EOF, or EIO from a pty whose last slave closed.
			return
		}
	}
}

func (es *execSession) readInput() {
	fr := agent.NewFrameReader(es.br)
	for {
		t, p, err := fr.Next()
		if err != nil {
			select {
			case <-es.exited:
			default:
				es.abort("stream ended before the process exited: " + err.Error())
			}
			return
		}
		switch t {
		case agent.FrameStdin:
			if es.stdin != nil {
				if _, err := es.stdin.Write(p); err != nil {
					// The process closed its stdin; further input is moot.
					es.closeStdin()
				}
			}
		case agent.FrameStdinEOF:
			es.closeStdin()
		}
	}
}

func (es *execSession) closeStdin() {
	if es.req.TTY {
		// A terminal has no half-close: send the EOF character.
		if es.stdin != nil {
			_, _ = es.stdin.Write([]byte{4})
		}
		return
	}
	if es.stdin != nil {
		es.stdin.Close()
	}
}

func exitStatus(ps *os.ProcessState, waitErr error) *agent.ExitStatus {
	st := &agent.ExitStatus{}
	if ps == nil {
		st.ExitCode = -1
		if waitErr != nil {
			st.Error = waitErr.Error()
		}
		return st
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		sig := ws.Signal()
		st.ExitCode = 128 + int(sig)
		st.Signal = unix.SignalName(sig)
		if st.Signal == "" {
			st.Signal = "SIG" + strconv.Itoa(int(sig))
		}
		return st
	}
	st.ExitCode = ps.ExitCode()
	return st
}

// parseSignal accepts "TERM", "SIGTERM", "sigterm" or "15".
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("signal %d out of range", n)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}

func (s *Server) handleSignal(w http.ResponseWriter, r *http.Request) {
	p := s.execs.get(r.PathValue("id"))
	if p == nil {
		writeError(w, http.StatusNotFound, agent.CodeNotFound, "no running exec "+r.PathValue("id"))
		return
	}
	var req agent.SignalRequest
	if !decodeBody(w, r, 4<<10, &req) {
		return
	}
	sig, err := parseSignal(req.Signal)
	if err != nil {
		badRequest(w, err)
		return
	}
	if err := syscall.Kill(-p.pid, sig); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			writeError(w, http.StatusNotFound, agent.CodeNotFound, "process has exited")
			return
		}
		writeOSError(w, fmt.Errorf("signal: %w", err))
		return
	}
	s.log.Debug("agent: exec signalled", "id", p.id, "signal", sig)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleResize(w http.ResponseWriter, r *http.Request) {
	p := s.execs.get(r.PathValue("id"))
	if p == nil {
		writeError(w, http.StatusNotFound, agent.CodeNotFound, "no running exec "+r.PathValue("id"))
		return
	}
	var req agent.ResizeRequest
	if !decodeBody(w, r, 4<<10, &req) {
		return
	}
	if p.master == nil {
		badRequest(w, errors.New("exec has no TTY"))
		return
	}
	if req.Rows == 0 || req.Cols == 0 {
		badRequest(w, errors.New("rows and cols must be positive"))
		return
	}
	if err := setWinsize(p.master, req.Rows, req.Cols); err != nil {
		writeOSError(w, fmt.Errorf("resize: %w", err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
