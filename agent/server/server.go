package server

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/hearth-vm/hearth/agent"
)

// Defaults for Config.
const (
	DefaultEnvFile       = "/run/hearth/env"
	DefaultSecretsDir    = "/run/hearth/secrets"
	DefaultMaxFileSize   = 16 << 30
	DefaultMaxSecretSize = 1 << 20
	DefaultMaxLine       = 4 << 20
	helloTimeout         = 10 * time.Second
)

// Config configures a Server.
type Config struct {
	// Token authenticates every request. Empty is refused unless NoAuth.
	Token string
	// TokenFile, if set, receives rotated tokens (0600, atomically), so
	// an agent restarted as a service keeps the current one.
	TokenFile string
	// NoAuth serves without a token (tests, trusted transports only).
	NoAuth bool
	// EnvFile stores the environment (K=V lines); "" keeps it in memory.
	EnvFile string
	// SecretsDir holds one file per secret.
	SecretsDir string
	// FilesRoot confines file operations to this directory ("" = "/").
	FilesRoot string
	// MaxFileSize bounds PUT /v1/files (DefaultMaxFileSize if zero).
	MaxFileSize int64
	// MaxSecretSize bounds one secret (DefaultMaxSecretSize if zero).
	MaxSecretSize int64
	// MaxLine bounds one line of the line protocol (DefaultMaxLine).
	MaxLine int
	// LineAllowNoToken accepts set_env/set_secret without a token on the
	// line protocol, as the seed did. Off by default.
	LineAllowNoToken bool
	// BaseEnv is the environment exec'd processes start from (default:
	// this process's, without HEARTH_* variables, with PATH and HOME).
	BaseEnv []string
	// System performs power, clock and entropy actions (default Linux).
	System System
	// PID1 is reported by info (the agent runs as the guest's init).
	PID1 bool
	// Version is reported by ping and info.
	Version string
	// KeepAlive is the yamux keep-alive interval (0: 30 s).
	KeepAlive time.Duration
	Logger    *slog.Logger
}

// System is what the server cannot do without privileges; tests replace it.
type System interface {
	// Power performs agent.PowerOff or agent.Reboot. It is called after
	// the answer has been sent.
	Power(action string) error
	// SetClock sets the realtime clock.
	SetClock(t time.Time) error
	// SetHostname sets the kernel's hostname (UTS name).
	SetHostname(name string) error
	// AddEntropy mixes b into the kernel's pool and reports whether it
	// was credited as entropy.
	AddEntropy(b []byte) (credited bool, err error)
}

// Server serves the agent protocol.
type Server struct {
	cfg     Config
	log     *slog.Logger
	token   atomic.Pointer[string]
	env     *envStore
	secrets *secretStore
	files   fsys
	execs   *execRegistry
	http    *http.Server
	handler http.Handler
	started time.Time

	mu       sync.Mutex
	closed   bool
	closers  map[io.Closer]struct{}
	wg       sync.WaitGroup
	lineSema chan struct{}
}

// New prepares a server: it creates the secrets directory (0700), loads
// an existing env file and opens the files root.
func New(cfg Config) (*Server, error) {
	if cfg.Token == "" && !cfg.NoAuth {
		return nil, errors.New("agent server: no token (set one, or NoAuth for tests)")
	}
	if cfg.Token != "" {
		if err := agent.ValidateToken(cfg.Token); err != nil {
			return nil, fmt.Errorf("agent server: %w", err)
		}
	}
	if cfg.SecretsDir == "" {
		cfg.SecretsDir = DefaultSecretsDir
	}
	if cfg.MaxFileSize <= 0 {
		cfg.MaxFileSize = DefaultMaxFileSize
	}
	if cfg.MaxSecretSize <= 0 {
		cfg.MaxSecretSize = DefaultMaxSecretSize
	}
	if cfg.MaxLine <= 0 {
		cfg.MaxLine = DefaultMaxLine
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.System == nil {
		cfg.System = &LinuxSystem{}
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	if cfg.BaseEnv == nil {
		cfg.BaseEnv = DefaultBaseEnv(os.Environ())
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		started:  time.Now(),
		closers:  map[io.Closer]struct{}{},
		lineSema: make(chan struct{}, 64),
		execs:    newExecRegistry(),
	}
	tok := cfg.Token
	s.token.Store(&tok)
	var err error
	if s.env, err = newEnvStore(cfg.EnvFile); err != nil {
		return nil, err
	}
	if s.secrets, err = newSecretStore(cfg.SecretsDir, cfg.MaxSecretSize); err != nil {
		return nil, err
	}
	if cfg.FilesRoot != "" {
		r, err := os.OpenRoot(cfg.FilesRoot)
		if err != nil {
			return nil, fmt.Errorf("agent server: files root: %w", err)
		}
		s.files = rootFS{r}
	} else {
		s.files = hostFS{}
	}
	s.handler = s.routes()
	s.http = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	return s, nil
}

type connKey struct{}

// DefaultPath is the PATH of processes the agent starts when it has none,
// and the one it sets as the guest's init.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultBaseEnv filters an environment for exec'd processes: the
// agent's own HEARTH_* settings stay private, PATH and HOME get defaults.
func DefaultBaseEnv(environ []string) []string {
	var out []string
	hasPath, hasHome := false, false
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "HEARTH_"), k == "NOTIFY_SOCKET", k == "LISTEN_FDS", k == "LISTEN_PID":
			continue
		case k == "PATH":
			hasPath = true
		case k == "HOME":
			hasHome = true
		}
		out = append(out, kv)
	}
	if !hasPath {
		out = append(out, "PATH="+DefaultPath)
	}
	if !hasHome {
		out = append(out, "HOME=/root")
	}
	return out
}

// Handler returns the HTTP handler (authentication included), for tests
// that serve it without the yamux layer.
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) track(c io.Closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.closers[c] = struct{}{}
	return true
}

func (s *Server) untrack(c io.Closer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.closers, c)
}

// Serve accepts connections on ln and serves a session on each until ln
// is closed or Close is called.
func (s *Server) Serve(ln net.Listener) error {
	if !s.track(ln) {
		return net.ErrClosed
	}
	defer s.untrack(ln)
	s.log.Info("agent: serving", "addr", ln.Addr().String())
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
			return fmt.Errorf("agent server: accept: %w", err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.ServeConn(c); err != nil {
				s.log.Debug("agent: session ended", "remote", c.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// deadliner is what a hello deadline needs.
type deadliner interface{ SetReadDeadline(time.Time) error }

// ServeConn serves one session on a byte stream: the hello, then yamux
// with HTTP on each stream. It returns when the session ends, closing rwc.
func (s *Server) ServeConn(rwc io.ReadWriteCloser) error {
	if !s.track(rwc) {
		rwc.Close()
		return net.ErrClosed
	}
	defer s.untrack(rwc)
	defer rwc.Close()
	// A connection that never says hello must not hold a goroutine
	// forever; a serial port is the exception (see ServeSerial).
	d, hasDeadline := rwc.(deadliner)
	if hasDeadline {
		_ = d.SetReadDeadline(time.Now().Add(helloTimeout))
	}
	br, err := agent.ServerHandshake(rwc)
	if err != nil {
		return err
	}
	if hasDeadline {
		_ = d.SetReadDeadline(time.Time{})
	}
	sess, err := yamux.Server(&readerConn{ReadWriteCloser: rwc, r: br}, agent.YamuxConfig(s.cfg.KeepAlive, s.log))
	if err != nil {
		return fmt.Errorf("agent server: session: %w", err)
	}
	if !s.track(sess) {
		sess.Close()
		return net.ErrClosed
	}
	defer s.untrack(sess)
	s.log.Debug("agent: session started")
	err = s.http.Serve(sess)
	sess.Close()
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// readerConn reads through the reader that consumed the hello.
type readerConn struct {
	io.ReadWriteCloser
	r io.Reader
}

func (c *readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Close stops every listener and session and kills running exec
// processes.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	cs := make([]io.Closer, 0, len(s.closers))
	for c := range s.closers {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	s.http.Close()
	s.execs.killAll()
	s.wg.Wait()
	if rf, ok := s.files.(rootFS); ok {
		rf.r.Close()
	}
	return nil
}

// authorized compares the bearer token in constant time.
func (s *Server) authorized(r *http.Request) bool {
	if s.cfg.NoAuth {
		return true
	}
	want := *s.token.Load()
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// tokenMatches is the line protocol's check.
func (s *Server) tokenMatches(tok string) bool {
	if s.cfg.NoAuth || s.cfg.LineAllowNoToken {
		return true
	}
	want := *s.token.Load()
	return want != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(want)) == 1
}
