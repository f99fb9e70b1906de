package api

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/agent"
)

// ExecRequest runs a command in a VM through its guest agent.
type ExecRequest struct {
	Args []string          `json:"args"`
	Env  map[string]string `json:"env,omitempty"`
	Dir  string            `json:"dir,omitempty"`
	// TimeoutMs, when positive, makes the agent kill the command.
	TimeoutMs int64 `json:"timeout_ms,omitempty"`
	// Stdin is the command's whole standard input, base64-encoded.
	Stdin string `json:"stdin,omitempty"`
}

// ExecContentType is the media type of an exec response: a sequence of
// frames, each a 1-byte stream (FrameStdout, FrameStderr, FrameExit), a
// 4-byte big-endian length and that many bytes. The last frame is
// FrameExit, whose payload is the agent's ExitStatus as JSON; a stream
// that ends without one means the command's fate is unknown (the
// connection to the guest was lost).
const ExecContentType = "application/vnd.hearth.exec"

// Exec frame streams.
const (
	FrameStdout byte = 1
	FrameStderr byte = 2
	FrameExit   byte = 3
)

// MaxFrame bounds one frame's payload.
const MaxFrame = 1 << 20

// MaxExecTimeoutMs is the largest timeout_ms an exec takes: about 106
// days, well inside what a time.Duration holds (a larger value used to
// overflow into a negative timeout).
const MaxExecTimeoutMs = 1 << 43

// frameWriter writes one stream's output as frames; writes from stdout
// and stderr are serialised.
type frameWriter struct {
	mu     *sync.Mutex
	w      io.Writer
	fl     http.Flusher
	stream byte
}

func (f frameWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), MaxFrame)]
		if err := writeFrame(f.w, f.stream, chunk); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	if f.fl != nil {
		f.fl.Flush()
	}
	return n, nil
}

func writeFrame(w io.Writer, stream byte, payload []byte) error {
	var hdr [5]byte
	hdr[0] = stream
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// ReadFrame reads one exec frame. A clean end of the stream between
// frames is io.EOF; an end inside a frame wraps io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader) (stream byte, payload []byte, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFrame {
		return 0, nil, fmt.Errorf("exec frame of %d bytes exceeds %d", n, MaxFrame)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		// A header without its payload is a truncated frame, not the
		// clean end io.EOF would announce (found by FuzzExecFraming).
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, fmt.Errorf("truncated exec frame: %w", err)
	}
	return hdr[0], payload, nil
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var req ExecRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err, 0)
		return
	}
	if len(req.Args) == 0 || req.TimeoutMs < 0 || req.TimeoutMs > MaxExecTimeoutMs {
		writeError(w, &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "exec", VM: id, Err: fmt.Errorf("args must not be empty and timeout_ms must be 0 to %d", int64(MaxExecTimeoutMs))}, 0)
		return
	}
	// Everything the agent would refuse is refused here, before the
	// response starts: after the 200 a refusal could only show as a
	// stream without an exit frame.
	if err := agent.ValidateExec(&agent.ExecRequest{Args: req.Args, Env: req.Env, Dir: req.Dir, TimeoutMS: req.TimeoutMs}); err != nil {
		writeError(w, &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "exec", VM: id, Err: err}, 0)
		return
	}
	cmd := &agent.Cmd{Args: req.Args, Env: req.Env, Dir: req.Dir, Timeout: time.Duration(req.TimeoutMs) * time.Millisecond}
	if req.Stdin != "" {
		in, err := base64.StdEncoding.DecodeString(req.Stdin)
		if err != nil {
			writeError(w, &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "exec", VM: id, Err: fmt.Errorf("stdin: %w", err)}, 0)
			return
		}
		cmd.Stdin = strings.NewReader(string(in))
	}
	// The agent is reached before the response starts, so that a VM
	// without an agent gets a proper error status.
	if _, err := s.rt.Agent(r.Context(), id); err != nil {
		writeError(w, err, 0)
		return
	}
	w.Header().Set("Content-Type", ExecContentType)
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	mu := &sync.Mutex{}
	cmd.Stdout = frameWriter{mu: mu, w: w, fl: fl, stream: FrameStdout}
	cmd.Stderr = frameWriter{mu: mu, w: w, fl: fl, stream: FrameStderr}
	st, err := s.rt.Exec(r.Context(), id, cmd)
	if err != nil {
		// The status line is gone; the missing exit frame says it.
		s.log.Warn("exec failed", "vm", id, "err", err)
		return
	}
	b, _ := json.Marshal(st)
	mu.Lock()
	writeFrame(w, FrameExit, b)
	mu.Unlock()
}

// EgressRequest replaces a VM's egress policy.
type EgressRequest struct {
	Allow []string `json:"allow"`
	DNS   []string `json:"dns,omitempty"`
}

func (s *Server) setEgress(w http.ResponseWriter, r *http.Request) {
	var req EgressRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err, 0)
		return
	}
	if err := s.rt.SetEgress(r.Context(), r.PathValue("id"), req.Allow, req.DNS); err != nil {
		writeError(w, err, 0)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
