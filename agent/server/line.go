package server

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/hearth-vm/hearth/agent"
)

// LineRequest is one request of the seed's line protocol. Token is
// hearth's addition: the seed had no authentication.
type LineRequest struct {
	Op       string            `json:"op"`
	ID       string            `json:"id"`
	Env      map[string]string `json:"env,omitempty"`
	Name     string            `json:"name,omitempty"`
	ValueB64 string            `json:"value_b64,omitempty"`
	Token    string            `json:"token,omitempty"`
}

// LineResponse answers one LineRequest.
type LineResponse struct {
	ID    string `json:"id"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// Line protocol operations.
const (
	OpPing      = "ping"
	OpSetEnv    = "set_env"
	OpSetSecret = "set_secret"
)

// maxLineID bounds the echoed request id.
const maxLineID = 256

// DecodeLineRequest parses and validates one request line (without its
// newline). On error it still returns the request's id when it could be
// read, so the answer can carry it.
func DecodeLineRequest(line []byte) (*LineRequest, error) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return nil, errors.New("empty request")
	}
	var req LineRequest
	if err := json.Unmarshal(line, &req); err != nil {
		// Echo the id if only some other field is malformed.
		var idOnly struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(line, &idOnly) == nil && len(idOnly.ID) <= maxLineID {
			return &LineRequest{ID: idOnly.ID}, fmt.Errorf("invalid request json: %w", err)
		}
		return nil, fmt.Errorf("invalid request json: %w", err)
	}
	if len(req.ID) > maxLineID {
		return nil, fmt.Errorf("request id longer than %d bytes", maxLineID)
	}
	switch req.Op {
	case OpPing:
	case OpSetEnv:
		if req.Env == nil {
			return &req, errors.New("set_env needs an env object")
		}
		if err := agent.ValidateEnv(req.Env); err != nil {
			return &req, err
		}
	case OpSetSecret:
		if err := agent.ValidateSecretName(req.Name); err != nil {
			return &req, err
		}
		if _, err := base64.StdEncoding.Strict().DecodeString(req.ValueB64); err != nil {
			return &req, fmt.Errorf("value_b64 is not standard padded base64: %w", err)
		}
	case "":
		return &req, errors.New("request has no op")
	default:
		return &req, fmt.Errorf("unknown op %q", req.Op)
	}
	return &req, nil
}

// ServeLine serves the line protocol on ln until it is closed or Close
// is called. At most 64 connections are served at once; more are closed
// at once rather than queued behind a slow client.
func (s *Server) ServeLine(ln net.Listener) error {
	if !s.track(ln) {
		return net.ErrClosed
	}
	defer s.untrack(ln)
	s.log.Info("agent: serving the line protocol", "addr", ln.Addr().String())
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("agent server: line accept: %w", err)
		}
		select {
		case s.lineSema <- struct{}{}:
		default:
			s.log.Warn("agent: too many line-protocol connections, closing one")
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.lineSema }()
			s.ServeLineConn(c)
		}()
	}
}

// ServeLineConn answers requests on one connection, sequentially, until
// it closes.
func (s *Server) ServeLineConn(c io.ReadWriteCloser) {
	if !s.track(c) {
		c.Close()
		return
	}
	defer s.untrack(c)
	defer c.Close()
	br := bufio.NewReaderSize(c, 64<<10)
	bw := bufio.NewWriter(c)
	nc, _ := c.(net.Conn)
	for {
		if nc != nil {
			_ = nc.SetReadDeadline(time.Now().Add(lineIdle))
		}
		line, tooLong, err := readLine(br, s.cfg.MaxLine)
		if len(line) == 0 && !tooLong && err != nil {
			return
		}
		var resp LineResponse
		if tooLong {
			resp.Error = fmt.Sprintf("request line exceeds %d bytes", s.cfg.MaxLine)
		} else if len(bytes.TrimSpace(line)) == 0 {
			if err != nil {
				return
			}
			continue // blank lines are keep-alives, not requests
		} else {
			resp = s.lineRequest(line)
		}
		b, _ := json.Marshal(resp)
		bw.Write(b)
		bw.WriteByte('\n')
		if ferr := bw.Flush(); ferr != nil {
			return
		}
		if err != nil {
			return
		}
	}
}

func (s *Server) lineRequest(line []byte) LineResponse {
	req, err := DecodeLineRequest(line)
	resp := LineResponse{}
	if req != nil {
		resp.ID = req.ID
	}
	if err != nil {
		resp.Error = err.Error()
		return resp
	}
	if req.Op != OpPing && !s.tokenMatches(req.Token) {
		s.log.Warn("agent: line request without a valid token", "op", req.Op)
		resp.Error = "unauthorized: missing or wrong token"
		return resp
	}
	switch req.Op {
	case OpPing:
	case OpSetEnv:
		if _, err := s.env.merge(req.Env); err != nil {
			resp.Error = err.Error()
			return resp
		}
		s.log.Info("agent: env updated (line protocol)", "keys", len(req.Env))
	case OpSetSecret:
		v, _ := base64.StdEncoding.Strict().DecodeString(req.ValueB64)
		if int64(len(v)) > s.cfg.MaxSecretSize {
			resp.Error = fmt.Sprintf("secret exceeds %d bytes", s.cfg.MaxSecretSize)
			return resp
		}
		if err := s.secrets.put(req.Name, bytes.NewReader(v)); err != nil {
			resp.Error = err.Error()
			return resp
		}
		s.log.Info("agent: secret written (line protocol)", "name", req.Name)
	}
	resp.OK = true
	return resp
}

// readLine reads up to '\n' (excluded). A line longer than limit is
// consumed to its end and reported as tooLong, so the connection stays
// in step with the client. err is the read error that ended the input, if
// any; a final unterminated line is still returned.
func readLine(br *bufio.Reader, limit int) (line []byte, tooLong bool, err error) {
	for {
		chunk, rerr := br.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > limit+1 {
				tooLong, line = true, nil
			} else {
				line = append(line, chunk...)
			}
		}
		switch {
		case rerr == nil:
			return bytes.TrimSuffix(line, []byte{'\n'}), tooLong, nil
		case errors.Is(rerr, bufio.ErrBufferFull):
			continue
		default:
			return line, tooLong, rerr
		}
	}
}

// lineIdle is how long a line connection may stay silent; the seed kept
// connections forever, which let idle clients pin goroutines.
var lineIdle = 10 * time.Minute
