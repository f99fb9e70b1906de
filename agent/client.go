package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Dialer opens a byte stream to the agent. vsock.HybridDialer and
// vsock.UnixDialer implement it; they retry until the guest listens.
type Dialer interface {
	DialContext(ctx context.Context) (net.Conn, error)
}

// Option configures a Client.
type Option func(*options)

type options struct {
	log           *slog.Logger
	helloTimeout  time.Duration
	helloPatience time.Duration
	keepAlive     time.Duration
	window        uint32
	callTimeout   time.Duration
}

// WithLogger sets the client's logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithHelloTimeout bounds the hello exchange after the transport
// connected (default 5 s).
func WithHelloTimeout(d time.Duration) Option { return func(o *options) { o.helloTimeout = d } }

// WithHelloPatience lets the client retry a hello that timed out, on a
// new connection each time, for up to d after its first dial (default:
// three attempts). Over virtio-serial the host's connection is accepted
// before the guest is up, so a hello waits out the guest's boot; retries
// recover a hello the guest lost.
func WithHelloPatience(d time.Duration) Option { return func(o *options) { o.helloPatience = d } }

// WithKeepAlive sets the yamux keep-alive interval (default 15 s; 0
// disables). A session whose pings go unanswered is closed, and the next
// call reconnects.
func WithKeepAlive(d time.Duration) Option { return func(o *options) { o.keepAlive = d } }

// WithCallTimeout bounds every request-response call (ping, info, env,
// secrets, file metadata, signals, token, clock, power), including any
// (re)connect it needs, so that an agent that stops answering — a frozen
// or wedged guest — fails the call with context.DeadlineExceeded instead
// of blocking it until the session's keep-alive gives up. Streaming calls
// (exec, file transfers) last as long as their data and are bounded by
// their context only. 0 (the default) leaves calls to their context.
func WithCallTimeout(d time.Duration) Option { return func(o *options) { o.callTimeout = d } }

// WithWindow sets the per-stream receive window (default 4 MiB, at least
// 256 KiB); larger windows help bulk file transfers.
func WithWindow(n uint32) Option { return func(o *options) { o.window = n } }

// Client talks to one guest agent. It is safe for concurrent use; all
// calls share one connection (one yamux session) and it reconnects
// through its Dialer when that connection is gone.
type Client struct {
	dialer Dialer
	opts   options
	tr     *http.Transport
	hc     *http.Client

	mu      sync.Mutex
	token   string
	sess    *yamux.Session
	dialing *dialAttempt // the dial in flight, if any
	closed  bool
}

// dialAttempt is one dial that concurrent callers share: they wait for it
// and take its result instead of queueing dials of their own behind a
// guest that does not answer.
type dialAttempt struct {
	done chan struct{}
	err  error
	// abandoned: the dial ended because its caller's context did,
	// which says nothing about the guest.
	abandoned bool
}

// New returns a client that connects on its first call.
func New(d Dialer, token string, opts ...Option) *Client {
	o := options{helloTimeout: 5 * time.Second, keepAlive: 15 * time.Second, window: 4 << 20}
	for _, f := range opts {
		f(&o)
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	c := &Client{dialer: d, opts: o, token: token}
	c.tr = &http.Transport{
		DialContext:         c.dialStream,
		DisableCompression:  true,
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// Every "connection" is a yamux stream: cheap, no TLS, no proxy.
		Proxy:             nil,
		ForceAttemptHTTP2: false,
	}
	c.hc = &http.Client{Transport: c.tr}
	return c
}

// Dial returns a client connected to the agent: it dials, exchanges the
// hello and starts the session before returning, so an unreachable agent
// is reported here. The token is not checked until the first request
// (Ping checks it).
func Dial(ctx context.Context, d Dialer, token string, opts ...Option) (*Client, error) {
	c := New(d, token, opts...)
	if _, err := c.session(ctx); err != nil {
		var df *dialFailure
		if errors.As(err, &df) {
			err = df.err
		}
		return nil, fmt.Errorf("agent: %w", err)
	}
	return c, nil
}

// Close ends the session. Calls in flight fail; later calls return
// ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	s := c.sess
	c.sess = nil
	c.mu.Unlock()
	c.tr.CloseIdleConnections()
	if s != nil {
		return s.Close()
	}
	return nil
}

// SetToken changes the token the client sends (locally only; see
// RotateToken to change the agent's).
func (c *Client) SetToken(token string) {
	c.mu.Lock()
	c.token = token
	c.mu.Unlock()
}

func (c *Client) currentToken() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token
}

// Connected reports whether the client holds a live session now.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess != nil && !c.sess.IsClosed()
}

// Reconnect drops the current session, even if it looks alive, and dials
// a new one. Use it after a snapshot restore: the old connection may sit
// half-open until keep-alives notice.
func (c *Client) Reconnect(ctx context.Context) error {
	c.mu.Lock()
	s := c.sess
	c.sess = nil
	c.mu.Unlock()
	if s != nil {
		s.Close()
	}
	c.tr.CloseIdleConnections()
	if _, err := c.session(ctx); err != nil {
		var df *dialFailure
		if errors.As(err, &df) {
			err = df.err
		}
		return fmt.Errorf("agent: reconnect: %w", err)
	}
	return nil
}

// dialFailure marks an error from dialing the transport, which the
// Dialer already retried: the request is not retried on top of that.
type dialFailure struct{ err error }

func (e *dialFailure) Error() string { return e.err.Error() }
func (e *dialFailure) Unwrap() error { return e.err }

// session returns the live session, dialing one if there is none. One
// caller dials; concurrent callers wait for it (or for their ctx).
func (c *Client) session(ctx context.Context) (*yamux.Session, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if c.sess != nil && !c.sess.IsClosed() {
			s := c.sess
			c.mu.Unlock()
			return s, nil
		}
		if a := c.dialing; a != nil {
			c.mu.Unlock()
			select {
			case <-a.done:
				if a.err != nil && !a.abandoned {
					return nil, &dialFailure{err: a.err}
				}
				continue // connected, or dial again for ourselves
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		a := &dialAttempt{done: make(chan struct{})}
		c.dialing = a
		c.mu.Unlock()

		s, err := c.connect(ctx)

		c.mu.Lock()
		c.dialing = nil
		if err == nil && c.closed {
			s.Close()
			err = ErrClosed
		}
		if err == nil {
			c.sess = s
		}
		a.err, a.abandoned = err, err != nil && ctx.Err() != nil
		close(a.done)
		c.mu.Unlock()
		if err != nil {
			return nil, &dialFailure{err: err}
		}
		return s, nil
	}
}

func (c *Client) connect(ctx context.Context) (*yamux.Session, error) {
	start := time.Now()
	var conn net.Conn
	var bc net.Conn
	// Over a single-stream channel (QEMU's virtio-serial) a hello can be
	// lost: a host that died in the middle of a frame leaves a frame
	// whose body swallows the next hello if the guest did not see it
	// leave (see agent/server). So a hello that timed out is tried again
	// on a new connection: three attempts, or for the client's hello
	// patience, while ctx allows.
	for attempt := 1; ; attempt++ {
		var err error
		conn, err = c.dialer.DialContext(ctx)
		if err != nil {
			return nil, fmt.Errorf("connect: %w", err)
		}
		hctx, cancel := context.WithTimeout(ctx, c.opts.helloTimeout)
		bc, err = ClientHandshake(hctx, conn)
		// The connection's deadline is hctx's and may fire a moment
		// before hctx reports it; ClientHandshake attributes that.
		timedOut := ctx.Err() == nil && (hctx.Err() != nil || errors.Is(err, context.DeadlineExceeded))
		cancel()
		if err == nil {
			break
		}
		conn.Close()
		if !timedOut || (attempt >= 3 && time.Since(start) >= c.opts.helloPatience) {
			return nil, fmt.Errorf("connect: %w", err)
		}
		c.opts.log.Debug("agent: hello timed out; retrying on a new connection", "attempt", attempt)
	}
	cfg := yamuxConfig(c.opts.keepAlive, c.opts.window, c.opts.log)
	s, err := yamux.Client(bc, cfg)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start session: %w", err)
	}
	c.opts.log.Debug("agent: connected", "elapsed", time.Since(start))
	go func() {
		<-s.CloseChan()
		c.opts.log.Debug("agent: session closed")
		// Idle HTTP connections on the dead session must not be reused.
		c.tr.CloseIdleConnections()
	}()
	return s, nil
}

// yamuxConfig is shared by both ends.
func yamuxConfig(keepAlive time.Duration, window uint32, log *slog.Logger) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = keepAlive > 0
	if keepAlive > 0 {
		cfg.KeepAliveInterval = keepAlive
	}
	cfg.MaxStreamWindowSize = max(window, 256<<10)
	cfg.LogOutput = nil
	cfg.Logger = slogAdapter{log}
	// A guest paused for a snapshot must not make the host drop the
	// session mid-write for good; writes block until it resumes.
	cfg.ConnectionWriteTimeout = 30 * time.Second
	cfg.StreamCloseTimeout = time.Minute
	return cfg
}

// YamuxConfig returns the session configuration the agent side uses.
func YamuxConfig(keepAlive time.Duration, log *slog.Logger) *yamux.Config {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return yamuxConfig(keepAlive, 4<<20, log)
}

type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Print(v ...any)                 { a.l.Debug(fmt.Sprint(v...)) }
func (a slogAdapter) Printf(format string, v ...any) { a.l.Debug(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Println(v ...any)               { a.l.Debug(fmt.Sprint(v...)) }

// dialStream is the HTTP transport's dialer: a new yamux stream.
func (c *Client) dialStream(ctx context.Context, _, _ string) (net.Conn, error) {
	for range 2 {
		s, err := c.session(ctx)
		if err != nil {
			return nil, err
		}
		st, err := s.OpenStream()
		if err == nil {
			return st, nil
		}
		if !errors.Is(err, yamux.ErrSessionShutdown) {
			return nil, fmt.Errorf("open stream: %w", err)
		}
		// The session died between the check and the open: dial again.
	}
	return nil, fmt.Errorf("open stream: %w", yamux.ErrSessionShutdown)
}

// call describes one request.
type call struct {
	method, path string
	query        url.Values
	body         []byte    // replayable body
	stream       io.Reader // streamed body (not retried)
	length       int64     // ContentLength for stream (-1 unknown)
	ctype        string
	header       http.Header
	idempotent   bool
}

func (cl *call) op() string { return cl.method + " " + cl.path }

// roundTrip sends cl and returns a response with a success status; an
// error status becomes *Error. An idempotent request whose connection
// died under it is retried once on a new connection.
func (c *Client) roundTrip(ctx context.Context, cl *call) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		u := url.URL{Scheme: "http", Host: "agent", Path: cl.path}
		if cl.query != nil {
			u.RawQuery = cl.query.Encode()
		}
		var body io.Reader
		if cl.body != nil {
			body = bytes.NewReader(cl.body)
		} else if cl.stream != nil {
			body = cl.stream
		}
		req, err := http.NewRequestWithContext(ctx, cl.method, u.String(), body)
		if err != nil {
			return nil, fmt.Errorf("agent: %s: %w", cl.op(), err)
		}
		if cl.stream != nil {
			req.ContentLength = cl.length
			if cl.length == 0 {
				req.Body = http.NoBody
			}
		}
		for k, v := range cl.header {
			req.Header[k] = v
		}
		if cl.ctype != "" {
			req.Header.Set("Content-Type", cl.ctype)
		}
		req.Header.Set("Authorization", "Bearer "+c.currentToken())
		resp, err := c.hc.Do(req)
		if err == nil {
			if resp.StatusCode >= 400 {
				defer resp.Body.Close()
				return nil, decodeError(cl.op(), resp)
			}
			return resp, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("agent: %s: %w", cl.op(), ctx.Err())
		}
		var df *dialFailure
		if errors.As(err, &df) {
			return nil, fmt.Errorf("agent: %s: %w", cl.op(), df.err)
		}
		if attempt == 0 && cl.idempotent && cl.stream == nil {
			c.opts.log.Debug("agent: request failed on the connection, retrying", "op", cl.op(), "err", err)
			c.dropIfDead()
			continue
		}
		return nil, fmt.Errorf("agent: %s: %w: %w", cl.op(), ErrConnLost, err)
	}
}

// dropIfDead forgets a session yamux has marked closed, and idle HTTP
// connections, before a retry.
func (c *Client) dropIfDead() {
	c.mu.Lock()
	if c.sess != nil && c.sess.IsClosed() {
		c.sess = nil
	}
	c.mu.Unlock()
	c.tr.CloseIdleConnections()
}

func decodeError(op string, resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var er ErrorResponse
	if err := json.Unmarshal(b, &er); err != nil || er.Error == "" {
		er.Error = fmt.Sprintf("%s: %q", resp.Status, bytes.TrimSpace(b))
	}
	if er.Code == "" {
		er.Code = codeForStatus(resp.StatusCode)
	}
	return &Error{Op: op, Status: resp.StatusCode, Code: er.Code, Message: er.Error}
}

func codeForStatus(st int) string {
	switch st {
	case http.StatusUnauthorized:
		return CodeUnauthorized
	case http.StatusNotFound:
		return CodeNotFound
	case http.StatusForbidden:
		return CodePermission
	case http.StatusRequestEntityTooLarge:
		return CodeTooLarge
	case http.StatusConflict:
		return CodeExists
	case http.StatusBadRequest:
		return CodeInvalid
	}
	return CodeInternal
}

// jsonCall sends in (if not nil) as JSON and decodes the answer into out
// (if not nil).
func (c *Client) jsonCall(ctx context.Context, method, path string, query url.Values, in, out any, idempotent bool) error {
	if d := c.opts.callTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	cl := &call{method: method, path: path, query: query, idempotent: idempotent}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("agent: %s: encode: %w", cl.op(), err)
		}
		cl.body, cl.ctype = b, "application/json"
	}
	resp, err := c.roundTrip(ctx, cl)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("agent: %s: decode: %w", cl.op(), err)
	}
	return nil
}
