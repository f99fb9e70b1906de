package fcsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// sink is a log or metrics destination: a regular file or a named pipe.
// It writes with raw syscalls on a non-blocking fd so that a full FIFO
// loses the line (and the caller counts it) instead of stalling the VMM,
// which is what Firecracker does. os.File would park the goroutine in the
// poller until the pipe drains.
type sink struct {
	mu   sync.Mutex
	fd   int
	path string
}

// openSink opens path for writing. A FIFO without a reader makes a
// non-blocking O_WRONLY open fail with ENXIO; that is retried until timeout
// so that a manager that starts its reader slightly later still works, but
// never hangs. A missing path is created as a regular file.
func openSink(path string, timeout time.Duration) (*sink, error) {
	deadline := time.Now().Add(timeout)
	for {
		fd, err := unix.Open(path, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o600)
		if err == nil {
			return &sink{fd: fd, path: path}, nil
		}
		if !errors.Is(err, unix.ENXIO) || time.Now().After(deadline) {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// writeLine writes one line; it reports false when the line was lost.
func (s *sink) writeLine(line []byte) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return false, errors.New("sink closed")
	}
	for len(line) > 0 {
		n, err := unix.Write(s.fd, line)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return false, err
		}
		line = line[n:]
	}
	return true, nil
}

func (s *sink) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd >= 0 {
		unix.Close(s.fd)
		s.fd = -1
	}
}

// requestLog appends one JSON line per API request (and per jailer step)
// so that tests can assert exact call sequences.
type requestLog struct {
	mu sync.Mutex
	f  *os.File
}

type requestLogLine struct {
	TS     string          `json:"ts"`
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body"`
	Status int             `json:"status"`
	Fault  string          `json:"fault,omitempty"`
	Event  string          `json:"event,omitempty"`
	ID     string          `json:"id,omitempty"`
	Pid    int             `json:"pid"`
}

// openRequestLog opens the request log from an inherited fd (the jailer
// passes one into the chroot) or from a path.
func openRequestLog(path string) (*requestLog, error) {
	if v := os.Getenv(EnvRequestLogFD); v != "" {
		fd, err := strconv.Atoi(v)
		if err != nil {
			return nil, fmt.Errorf("%s=%q: %w", EnvRequestLogFD, v, err)
		}
		unix.CloseOnExec(fd)
		return &requestLog{f: os.NewFile(uintptr(fd), "request-log")}, nil
	}
	if path == "" {
		return nil, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open request log: %w", err)
	}
	return &requestLog{f: f}, nil
}

// rawOrString keeps a valid JSON body verbatim and quotes anything else.
func rawOrString(body []byte) json.RawMessage {
	trimmed := strings.TrimSpace(string(body))
	if trimmed == "" {
		return json.RawMessage("null")
	}
	if json.Valid([]byte(trimmed)) {
		var buf bytes.Buffer
		// Compact so that a body stays on one line.
		if err := json.Compact(&buf, []byte(trimmed)); err == nil {
			return json.RawMessage(buf.Bytes())
		}
	}
	q, _ := json.Marshal(string(body))
	return q
}

func (l *requestLog) write(line requestLogLine) {
	if l == nil {
		return
	}
	line.TS = time.Now().UTC().Format(time.RFC3339Nano)
	if line.Body == nil {
		line.Body = json.RawMessage("null")
	}
	line.Pid = os.Getpid()
	b, err := json.Marshal(line)
	if err != nil {
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.f.Write(b)
}

func (l *requestLog) close() {
	if l != nil {
		l.f.Close()
	}
}

// fcLogger is Firecracker's own log (--log-path or PUT /logger), written
// in Firecracker's line format:
// <timestamp> [<id>:<thread>(:<LEVEL>)(:<file>:<line>)] <message>
type fcLogger struct {
	sink       *sink
	level      int
	showLevel  bool
	showOrigin bool
	id         string
}

var logLevels = map[string]int{"off": 0, "error": 1, "warning": 2, "warn": 2, "info": 3, "debug": 4, "trace": 5}

func parseLevel(s string) (int, bool) {
	l, ok := logLevels[strings.ToLower(s)]
	return l, ok
}

var levelNames = []string{"OFF", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"}

// log writes a line at level; it reports false when the line was lost.
func (l *fcLogger) log(level int, thread, msg string) bool {
	if l == nil || l.sink == nil || level > l.level || level == 0 {
		return true
	}
	var b strings.Builder
	b.WriteString(time.Now().UTC().Format("2006-01-02T15:04:05.000000000"))
	b.WriteString(" [")
	b.WriteString(l.id)
	b.WriteString(":")
	b.WriteString(thread)
	if l.showLevel {
		b.WriteString(":")
		b.WriteString(levelNames[level])
	}
	if l.showOrigin {
		if _, file, line, ok := runtime.Caller(2); ok {
			fmt.Fprintf(&b, ":%s:%d", file, line)
		}
	}
	b.WriteString("] ")
	b.WriteString(msg)
	b.WriteString("\n")
	ok, err := l.sink.writeLine([]byte(b.String()))
	return ok && err == nil
}
