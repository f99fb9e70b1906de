package main

import (
	"fmt"
	"io"
	"os"
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
