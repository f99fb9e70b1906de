package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBar(t *testing.T) {
	cases := []struct {
		done, total int64
		width       int
		want        string
	}{
		{0, 10, 80, "[........................] x"},
		{5, 10, 80, "[############............] x"},
		{10, 10, 80, "[########################] x"},
		{20, 10, 80, "[########################] x"}, // overshoot is clamped
		{3, 0, 80, "[........................] x"},   // unknown total
		{5, 10, 20, "[############......"},           // fitted to the width
	}
	for _, c := range cases {
		if got := bar(c.done, c.total, "x", c.width); got != c.want {
			t.Errorf("bar(%d, %d, %d) = %q, want %q", c.done, c.total, c.width, got, c.want)
		}
	}
}

// Off a terminal, progress is plain lines without control characters.
func TestProgressPlainLines(t *testing.T) {
	var b bytes.Buffer
	p := newProgress(&b)
	if p.tty {
		t.Fatal("a buffer taken for a terminal")
	}
	p.Step(2, 7, "fetching")
	p.Line("copying")
	p.Bytes(1<<20, 4<<20, "writing")
	p.Done()
	want := "[2/7] fetching\ncopying\nwriting 1.0M / 4.0M\n"
	if b.String() != want {
		t.Fatalf("got %q, want %q", b.String(), want)
	}
	// A pipe is not a terminal either.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if isTerminal(w) {
		t.Fatal("a pipe taken for a terminal")
	}
}

// watchSnapshot reports the bytes in the pending snapshot directory.
func TestWatchSnapshot(t *testing.T) {
	dir := t.TempDir()
	pending := filepath.Join(dir, ".pending-s1-123")
	os.Mkdir(pending, 0o755)
	os.WriteFile(filepath.Join(pending, "mem"), bytes.Repeat([]byte{1}, 64<<10), 0o644)
	var b bytes.Buffer
	p := newProgress(&b)
	stop := watchSnapshot(p, dir, "s1", 128<<10)
	for i := 0; i < 300 && !strings.Contains(safeString(p, &b), "writing snapshot s1 64.0K / 128.0K"); i++ {
		sleepTick()
	}
	stop(true)
	if !strings.Contains(b.String(), "writing snapshot s1 64.0K / 128.0K") {
		t.Fatalf("progress %q", b.String())
	}
}

func safeString(p *progress, b *bytes.Buffer) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return b.String()
}

func sleepTick() { time.Sleep(20 * time.Millisecond) }

// On a terminal the bar is redrawn in place and Done ends its line.
func TestProgressBarOnTerminal(t *testing.T) {
	var b bytes.Buffer
	p := &progress{w: &b, tty: true, width: 60}
	p.Step(1, 4, "resolving")
	p.Step(4, 4, "done")
	p.Done()
	p.Done() // no second newline
	want := "\r\x1b[K[######..................] 1/4 resolving" +
		"\r\x1b[K[########################] 4/4 done\n"
	if b.String() != want {
		t.Fatalf("got %q, want %q", b.String(), want)
	}
}
