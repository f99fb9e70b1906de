package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hearth-vm/hearth/vmm"
)

// ErrQMPClosed means the QMP connection is gone (QEMU exited or the
// client was closed).
var ErrQMPClosed = errors.New("qmp connection closed")

// Event is an asynchronous QMP event.
type Event struct {
	Name      string          `json:"event"`
	Data      json.RawMessage `json:"data,omitempty"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// qmpMessage is any line QEMU sends: a greeting, a reply or an event.
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP,omitempty"`
	Return json.RawMessage `json:"return,omitempty"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error,omitempty"`
	Event string          `json:"event,omitempty"`
	ID    json.RawMessage `json:"id,omitempty"`
}

type qmpReply struct {
	ret json.RawMessage
	err error
}

// qmpClient is a minimal QMP client: one command in flight at a time
// (QMP answers in order anyway), events delivered to a callback from the
// reader goroutine.
type qmpClient struct {
	conn    net.Conn
	onEvent func(Event)

	cmdMu   sync.Mutex // serialises commands
	mu      sync.Mutex
	pending chan qmpReply // the waiter of the command in flight
	closed  bool
	readErr error
	done    chan struct{} // closed when the reader ends
}

// dialQMP connects to the socket, reads the greeting and negotiates
// capabilities, so the returned client accepts commands.
func dialQMP(ctx context.Context, path string, onEvent func(Event)) (*qmpClient, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("dial qmp %s: %w", path, err)
	}
	c := &qmpClient{conn: conn, onEvent: onEvent, done: make(chan struct{})}
	r := bufio.NewReaderSize(conn, 64<<10)
	// The greeting is read synchronously, before the reader goroutine
	// starts, so it cannot be mistaken for a reply.
	if dl, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(dl)
	}
	line, err := r.ReadBytes('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read qmp greeting: %w", err)
	}
	var g qmpMessage
	if err := json.Unmarshal(line, &g); err != nil || g.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("bad qmp greeting %q: %v", line, err)
	}
	conn.SetReadDeadline(time.Time{})
	go c.readLoop(r)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *qmpClient) readLoop(r *bufio.Reader) {
	defer close(c.done)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			c.fail(fmt.Errorf("%w: %w", ErrQMPClosed, err))
			return
		}
		var m qmpMessage
		if err := json.Unmarshal(line, &m); err != nil {
			c.fail(fmt.Errorf("malformed qmp message %q: %w", line, err))
			c.conn.Close()
			return
		}
		switch {
		case m.Event != "":
			var ev Event
			if json.Unmarshal(line, &ev) == nil && c.onEvent != nil {
				c.onEvent(ev)
			}
		case m.Return != nil || m.Error != nil:
			rep := qmpReply{ret: m.Return}
			if m.Error != nil {
				rep.err = &QMPError{Class: m.Error.Class, Desc: m.Error.Desc}
			}
			c.mu.Lock()
			p := c.pending
			c.pending = nil
			c.mu.Unlock()
			if p != nil {
				p <- rep
			}
		}
	}
}

// fail ends the connection and wakes the command in flight.
func (c *qmpClient) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.readErr == nil {
		c.readErr = err
	}
	if c.pending != nil {
		c.pending <- qmpReply{err: c.readErr}
		c.pending = nil
	}
}

// QMPError is an error reply from QEMU.
type QMPError struct {
	Class string
	Desc  string
}

func (e *QMPError) Error() string { return e.Class + ": " + e.Desc }

// Execute runs one command; args may be nil, result (a pointer) may be
// nil to discard the return value. An error reply comes back as a
// *vmm.RequestError wrapping nothing (the machine refused it), a lost
// connection as an error wrapping ErrQMPClosed.
func (c *qmpClient) Execute(ctx context.Context, cmd string, args, result any) error {
	c.cmdMu.Lock()
	defer c.cmdMu.Unlock()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	ch := make(chan qmpReply, 1)
	c.mu.Lock()
	if c.closed || c.readErr != nil {
		err := c.readErr
		c.mu.Unlock()
		if err == nil {
			err = ErrQMPClosed
		}
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	c.pending = ch
	c.mu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetWriteDeadline(dl)
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		c.mu.Lock()
		c.pending = nil
		c.mu.Unlock()
		return fmt.Errorf("qmp %s: %w: %w", cmd, ErrQMPClosed, err)
	}
	select {
	case rep := <-ch:
		return c.finish(cmd, rep, result)
	case <-c.done:
		// The reader ended; a reply it delivered first still counts.
		select {
		case rep := <-ch:
			return c.finish(cmd, rep, result)
		default:
		}
		c.mu.Lock()
		err := c.readErr
		c.pending = nil
		c.mu.Unlock()
		if err == nil {
			err = ErrQMPClosed
		}
		return fmt.Errorf("qmp %s: %w", cmd, err)
	case <-ctx.Done():
		// The reply may still arrive; the connection is no longer in a
		// known state for the next command, so it is closed.
		c.Close()
		return fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

// finish turns a reply into Execute's result.
func (c *qmpClient) finish(cmd string, rep qmpReply, result any) error {
	if rep.err != nil {
		var qe *QMPError
		if errors.As(rep.err, &qe) {
			return &vmm.RequestError{Method: "QMP", Path: cmd, Status: 400, Body: qe.Error()}
		}
		return fmt.Errorf("qmp %s: %w", cmd, rep.err)
	}
	if result != nil {
		if err := json.Unmarshal(rep.ret, result); err != nil {
			return fmt.Errorf("qmp %s: decode return: %w", cmd, err)
		}
	}
	return nil
}

// Close closes the connection and waits for the reader to end.
func (c *qmpClient) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	err := c.conn.Close()
	<-c.done
	return err
}

// Status is the reply of query-status.
type Status struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

// migrationInfo is the part of query-migrate's reply hearth reads.
type migrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}
