package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearth-vm/hearth/agent"
)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ping", s.handlePing)
	mux.HandleFunc("GET /v1/info", s.handleInfo)
	mux.HandleFunc("GET /v1/env", s.handleGetEnv)
	mux.HandleFunc("POST /v1/env", s.handleSetEnv)
	mux.HandleFunc("GET /v1/secrets", s.handleListSecrets)
	mux.HandleFunc("PUT /v1/secrets/{name}", s.handlePutSecret)
	mux.HandleFunc("DELETE /v1/secrets/{name}", s.handleDeleteSecret)
	mux.HandleFunc("POST /v1/exec", s.handleExec)
	mux.HandleFunc("POST /v1/exec/{id}/signal", s.handleSignal)
	mux.HandleFunc("POST /v1/exec/{id}/resize", s.handleResize)
	mux.HandleFunc("PUT /v1/files", s.handlePutFile)
	mux.HandleFunc("GET /v1/files", s.handleGetFile)
	mux.HandleFunc("DELETE /v1/files", s.handleRemove)
	mux.HandleFunc("GET /v1/files/stat", s.handleStat)
	mux.HandleFunc("GET /v1/files/list", s.handleList)
	mux.HandleFunc("POST /v1/files/mkdir", s.handleMkdir)
	mux.HandleFunc("POST /v1/power", s.handlePower)
	mux.HandleFunc("POST /v1/entropy", s.handleEntropy)
	mux.HandleFunc("POST /v1/clock", s.handleClock)
	mux.HandleFunc("POST /v1/hostname", s.handleHostname)
	mux.HandleFunc("POST /v1/token", s.handleToken)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, agent.CodeNotFound, fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Authenticate before routing: an unauthenticated peer learns
		// nothing, not even which endpoints exist.
		if !s.authorized(r) {
			s.log.Warn("agent: unauthorized request", "method", r.Method, "path", r.URL.Path)
			writeError(w, http.StatusUnauthorized, agent.CodeUnauthorized, "missing or wrong token")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, agent.CodeInternal, "encode response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	b, _ := json.Marshal(agent.ErrorResponse{Error: msg, Code: code})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func badRequest(w http.ResponseWriter, err error) {
	writeError(w, http.StatusBadRequest, agent.CodeInvalid, err.Error())
}

// writeOSError maps filesystem and exec errors to statuses and codes.
func writeOSError(w http.ResponseWriter, err error) {
	status, code := http.StatusInternalServerError, agent.CodeInternal
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe), errors.Is(err, errTooLarge):
		status, code = http.StatusRequestEntityTooLarge, agent.CodeTooLarge
	case errors.Is(err, syscall.ENOTEMPTY):
		// Checked first: syscall maps ENOTEMPTY to fs.ErrExist too.
		status, code = http.StatusConflict, agent.CodeNotEmpty
	case errors.Is(err, fs.ErrNotExist):
		status, code = http.StatusNotFound, agent.CodeNotFound
	case errors.Is(err, fs.ErrExist):
		status, code = http.StatusConflict, agent.CodeExists
	case errors.Is(err, fs.ErrPermission):
		status, code = http.StatusForbidden, agent.CodePermission
	case errors.Is(err, syscall.EISDIR):
		status, code = http.StatusBadRequest, agent.CodeIsDir
	case errors.Is(err, syscall.ENOTDIR):
		status, code = http.StatusBadRequest, agent.CodeNotDir
	case errors.Is(err, errInvalid), errors.Is(err, fs.ErrInvalid), isRootEscape(err):
		status, code = http.StatusBadRequest, agent.CodeInvalid
	}
	writeError(w, status, code, err.Error())
}

var (
	errTooLarge = errors.New("too large")
	errInvalid  = errors.New("invalid")
)

// isRootEscape recognises os.Root's refusal of a path that leaves it.
func isRootEscape(err error) bool {
	return err != nil && strings.Contains(err.Error(), "path escapes from parent")
}

// decodeBody reads a JSON body of at most limit bytes.
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, agent.CodeTooLarge, fmt.Sprintf("body exceeds %d bytes", limit))
		} else {
			badRequest(w, fmt.Errorf("invalid JSON body: %w", err))
		}
		return false
	}
	return true
}

func (s *Server) handlePing(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, agent.Pong{OK: true, Version: s.cfg.Version})
}

func (s *Server) handleInfo(w http.ResponseWriter, _ *http.Request) {
	in := agent.Info{
		Version:     s.cfg.Version,
		Protocol:    agent.ProtocolVersion,
		PID1:        s.cfg.PID1,
		AgentUptime: time.Since(s.started),
		Time:        time.Now().UTC(),
		Features:    []string{"exec", "tty", "files", "env", "secrets", "line-protocol", "power", "entropy", "clock", "token-rotation", "hostname"},
	}
	if s.cfg.FilesRoot != "" {
		in.Features = append(in.Features, "files-root")
	}
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			if sec, err := strconv.ParseFloat(f[0], 64); err == nil {
				in.Uptime = time.Duration(sec * float64(time.Second))
			}
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		in.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	in.Hostname, _ = os.Hostname()
	in.Ifaces = interfaces()
	writeJSON(w, http.StatusOK, in)
}

func interfaces() []agent.Interface {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	out := make([]agent.Interface, 0, len(ifs))
	for _, ifc := range ifs {
		ai := agent.Interface{Name: ifc.Name, MAC: ifc.HardwareAddr.String(), Up: ifc.Flags&net.FlagUp != 0, Addrs: []string{}}
		if addrs, err := ifc.Addrs(); err == nil {
			for _, a := range addrs {
				ai.Addrs = append(ai.Addrs, a.String())
			}
		}
		out = append(out, ai)
	}
	return out
}

func (s *Server) handleGetEnv(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, agent.EnvResponse{Env: s.env.snapshot()})
}

func (s *Server) handleSetEnv(w http.ResponseWriter, r *http.Request) {
	var req agent.EnvRequest
	if !decodeBody(w, r, 8<<20, &req) {
		return
	}
	if req.Env == nil {
		badRequest(w, errors.New(`body needs an "env" object`))
		return
	}
	env, err := s.env.merge(req.Env)
	if err != nil {
		writeOSError(w, err)
		return
	}
	s.log.Info("agent: env updated", "keys", len(req.Env))
	writeJSON(w, http.StatusOK, agent.EnvResponse{Env: env})
}

func (s *Server) handleListSecrets(w http.ResponseWriter, _ *http.Request) {
	names, err := s.secrets.list()
	if err != nil {
		writeOSError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, agent.SecretList{Names: names})
}

func (s *Server) handlePutSecret(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := agent.ValidateSecretName(name); err != nil {
		badRequest(w, err)
		return
	}
	if r.ContentLength > s.cfg.MaxSecretSize {
		writeError(w, http.StatusRequestEntityTooLarge, agent.CodeTooLarge, fmt.Sprintf("secret exceeds %d bytes", s.cfg.MaxSecretSize))
		return
	}
	if err := s.secrets.put(name, r.Body); err != nil {
		writeOSError(w, err)
		return
	}
	s.log.Info("agent: secret written", "name", name)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleDeleteSecret(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := agent.ValidateSecretName(name); err != nil {
		badRequest(w, err)
		return
	}
	if err := s.secrets.remove(name); err != nil {
		writeOSError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handlePower(w http.ResponseWriter, r *http.Request) {
	var req agent.PowerRequest
	if !decodeBody(w, r, 4<<10, &req) {
		return
	}
	if req.Action != agent.PowerOff && req.Action != agent.Reboot {
		badRequest(w, fmt.Errorf("unknown power action %q (want %q or %q)", req.Action, agent.PowerOff, agent.Reboot))
		return
	}
	s.log.Info("agent: power action requested", "action", req.Action)
	w.WriteHeader(http.StatusAccepted)
	_ = http.NewResponseController(w).Flush()
	// Act after the answer left: the connection dies with the guest.
	go func() {
		time.Sleep(50 * time.Millisecond)
		if err := s.cfg.System.Power(req.Action); err != nil {
			s.log.Error("agent: power action failed", "action", req.Action, "err", err)
		}
	}()
}

func (s *Server) handleEntropy(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, agent.MaxEntropy))
	if err != nil {
		writeOSError(w, err)
		return
	}
	if len(b) == 0 {
		badRequest(w, errors.New("no entropy bytes in the body"))
		return
	}
	credited, err := s.cfg.System.AddEntropy(b)
	if err != nil {
		writeOSError(w, fmt.Errorf("add entropy: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, agent.EntropyResponse{Bytes: len(b), Credited: credited})
}

func (s *Server) handleClock(w http.ResponseWriter, r *http.Request) {
	var req agent.ClockRequest
	if !decodeBody(w, r, 4<<10, &req) {
		return
	}
	if req.UnixNano <= 0 {
		badRequest(w, errors.New("unix_nano must be positive"))
		return
	}
	t := time.Unix(0, req.UnixNano)
	prev := time.Now()
	if err := s.cfg.System.SetClock(t); err != nil {
		writeOSError(w, fmt.Errorf("set clock: %w", err))
		return
	}
	s.log.Info("agent: clock set", "adjusted", t.Sub(prev))
	writeJSON(w, http.StatusOK, agent.ClockResponse{Previous: prev.UTC(), Adjusted: t.Sub(prev)})
}

func (s *Server) handleHostname(w http.ResponseWriter, r *http.Request) {
	var req agent.HostnameRequest
	if !decodeBody(w, r, 4<<10, &req) {
		return
	}
	if err := agent.ValidateHostname(req.Hostname); err != nil {
		badRequest(w, err)
		return
	}
	if err := s.cfg.System.SetHostname(req.Hostname); err != nil {
		writeOSError(w, fmt.Errorf("set hostname: %w", err))
		return
	}
	s.log.Info("agent: hostname set", "hostname", req.Hostname)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	var req agent.TokenRequest
	if !decodeBody(w, r, 4<<10, &req) {
		return
	}
	if err := agent.ValidateToken(req.Token); err != nil {
		badRequest(w, err)
		return
	}
	if s.cfg.TokenFile != "" {
		if err := writeFileAtomic(filepath.Dir(s.cfg.TokenFile), filepath.Base(s.cfg.TokenFile), bytes.NewReader([]byte(req.Token+"\n")), 0o600, -1); err != nil {
			writeOSError(w, fmt.Errorf("persist token: %w", err))
			return
		}
	}
	tok := req.Token
	s.token.Store(&tok)
	s.log.Info("agent: token rotated")
	w.WriteHeader(http.StatusNoContent)
}

// sortedKeys is used for stable output.
func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
