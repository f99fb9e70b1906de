package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// progress reports a long operation on stderr: on a terminal as one bar
// redrawn in place, otherwise (a pipe, a file, CI logs) as plain lines,
// one per step, with no control characters.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	tty   bool
	width int
	drawn bool // a bar is on the current line
	start time.Time
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w, tty: isTerminal(w), width: 80, start: time.Now()}
	if p.tty {
		if ws, err := unix.IoctlGetWinsize(int(w.(*os.File).Fd()), unix.TIOCGWINSZ); err == nil && ws.Col >= 40 {
			p.width = int(ws.Col)
		}
	}
	return p
}

// bar renders "[#####.....] label" for done/total, fitted to width.
func bar(done, total int64, label string, width int) string {
	const cells = 24
	filled := 0
	if total > 0 {
		filled = int(min(done, total) * cells / total)
	}
	s := "[" + strings.Repeat("#", filled) + strings.Repeat(".", cells-filled) + "] " + label
	if len(s) > width-1 {
		s = s[:width-1]
	}
	return s
}

func (p *progress) draw(s string) {
	// \r and erase-line redraw the bar in place.
	fmt.Fprint(p.w, "\r\x1b[K"+s)
	p.drawn = true
}

// Step reports step n of total.
func (p *progress) Step(n, total int, msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.tty {
		fmt.Fprintf(p.w, "[%d/%d] %s\n", n, total, msg)
		return
	}
	p.draw(bar(int64(n), int64(total), fmt.Sprintf("%d/%d %s", n, total, msg), p.width))
}

// Line reports a step of unknown count.
func (p *progress) Line(msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.tty {
		fmt.Fprintln(p.w, msg)
		return
	}
	s := fmt.Sprintf("%5.1fs %s", time.Since(p.start).Seconds(), msg)
	if len(s) > p.width-1 {
		s = s[:p.width-1]
	}
	p.draw(s)
}

// Bytes reports done of total bytes written (total 0: unknown).
func (p *progress) Bytes(done, total int64, label string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	text := label + " " + humanBytes(done)
	if total > 0 {
		text += " / " + humanBytes(total)
	}
	if !p.tty {
		fmt.Fprintln(p.w, text)
		return
	}
	p.draw(bar(done, total, text, p.width))
}

// Done ends the bar's line so that what follows starts on its own.
func (p *progress) Done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

// watchSnapshot shows the bytes a snapshot write has put on disk so far,
// read from the pending snapshot directory under snapDir (the daemon's
// <state-dir>/snapshots; readable when the CLI runs on the daemon's host
// with its permissions, else nothing is shown). total is the expected
// size (guest memory), 0 when unknown. The returned function stops it.
func watchSnapshot(pr *progress, snapDir, name string, total int64) func(ok bool) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	every := time.Second
	if pr.tty {
		every = 100 * time.Millisecond
	}
	var last int64 = -1
	written := func() int64 {
		dirs, _ := filepath.Glob(filepath.Join(snapDir, ".pending-"+name+"-*"))
		var n int64
		for _, d := range dirs {
			ents, _ := os.ReadDir(d)
			for _, e := range ents {
				var st unix.Stat_t
				if unix.Stat(filepath.Join(d, e.Name()), &st) == nil {
					// Allocated blocks: memory files are sparse.
					n += min(st.Blocks*512, st.Size)
				}
			}
		}
		return n
	}
	go func() {
		defer close(stopped)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if n := written(); n != last && n > 0 {
					last = n
					pr.Bytes(n, total, "writing snapshot "+name)
				}
			}
		}
	}()
	return func(ok bool) {
		close(done)
		<-stopped
		if ok && pr.tty && last >= 0 {
			pr.Bytes(max(total, last), total, "wrote snapshot "+name)
		}
		pr.Done()
	}
}
