package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/vmm"
)

// fakeQMP serves QMP on a unix socket: a greeting, then one scripted
// answer per command. handle returns the lines to send for a command.
type fakeQMP struct {
	path   string
	ln     net.Listener
	mu     sync.Mutex
	got    []map[string]any
	handle func(cmd string, args map[string]any) []string
}

func newFakeQMP(t *testing.T, handle func(cmd string, args map[string]any) []string) *fakeQMP {
	t.Helper()
	f := &fakeQMP{path: filepath.Join(t.TempDir(), "qmp.sock"), handle: handle}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	t.Cleanup(func() { ln.Close() })
	go f.serve()
	return f
}

func (f *fakeQMP) serve() {
	for {
		conn, err := f.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			conn.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}` + "\n"))
			sc := bufio.NewScanner(conn)
			for sc.Scan() {
				var req map[string]any
				if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
					return
				}
				f.mu.Lock()
				f.got = append(f.got, req)
				f.mu.Unlock()
				cmd, _ := req["execute"].(string)
				args, _ := req["arguments"].(map[string]any)
				lines := f.handle(cmd, args)
				if lines == nil {
					return // hang up
				}
				for _, l := range lines {
					conn.Write([]byte(l + "\n"))
				}
			}
		}()
	}
}

func (f *fakeQMP) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.got {
		out = append(out, r["execute"].(string))
	}
	return out
}

func TestQMPClient(t *testing.T) {
	f := newFakeQMP(t, func(cmd string, args map[string]any) []string {
		switch cmd {
		case "qmp_capabilities", "stop":
			return []string{`{"return": {}}`}
		case "query-status":
			// An event interleaved before the reply must not be taken for it.
			return []string{
				`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}`,
				`{"return": {"status": "paused", "singlestep": false, "running": false}}`,
			}
		case "migrate":
			if args["uri"] != "exec:cat > '/x'" {
				return []string{`{"error": {"class": "GenericError", "desc": "bad uri"}}`}
			}
			return []string{`{"return": {}}`}
		case "bogus":
			return []string{`{"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}}`}
		case "hangup":
			return nil
		}
		return []string{`{"return": {}}`}
	})
	var evMu sync.Mutex
	var events []string
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, f.path, func(ev Event) {
		evMu.Lock()
		events = append(events, ev.Name)
		evMu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	var st Status
	if err := c.Execute(ctx, "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "paused" || st.Running {
		t.Errorf("status %+v", st)
	}
	evMu.Lock()
	if len(events) != 1 || events[0] != "STOP" {
		t.Errorf("events %v", events)
	}
	evMu.Unlock()

	if err := c.Execute(ctx, "migrate", map[string]any{"uri": "exec:cat > " + shellQuote("/x")}, nil); err != nil {
		t.Errorf("migrate: %v", err)
	}
	err = c.Execute(ctx, "bogus", nil, nil)
	var re *vmm.RequestError
	if !errors.As(err, &re) || re.Path != "bogus" || re.Body != "CommandNotFound: The command bogus has not been found" {
		t.Errorf("bogus: %v", err)
	}
	// Concurrent commands are serialised and each gets its own reply.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var st Status
			if err := c.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "paused" {
				t.Errorf("concurrent query-status: %+v %v", st, err)
			}
		}()
	}
	wg.Wait()

	if err := c.Execute(ctx, "hangup", nil, nil); !errors.Is(err, ErrQMPClosed) {
		t.Errorf("hangup: %v, want ErrQMPClosed", err)
	}
	if err := c.Execute(ctx, "stop", nil, nil); !errors.Is(err, ErrQMPClosed) {
		t.Errorf("after hangup: %v, want ErrQMPClosed", err)
	}
	if got := f.commands(); got[0] != "qmp_capabilities" {
		t.Errorf("first command %q, want qmp_capabilities", got[0])
	}
}

func TestQMPClientTimeout(t *testing.T) {
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	f := newFakeQMP(t, func(cmd string, _ map[string]any) []string {
		if cmd == "slow" {
			<-block
		}
		return []string{`{"return": {}}`}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, f.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sctx, scancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer scancel()
	if err := c.Execute(sctx, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow: %v, want deadline exceeded", err)
	}
	// The connection's state is unknown after a timeout, so it is closed.
	if err := c.Execute(ctx, "stop", nil, nil); err == nil {
		t.Error("command after a timed-out one succeeded")
	}
}

func TestQMPBadGreeting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			conn.Write([]byte("{\"return\": {}}\n"))
			conn.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := dialQMP(ctx, path, nil); err == nil {
		t.Error("non-QMP greeting accepted")
	}
}
