package console

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// appendLines writes like a VMM does: through its own O_APPEND descriptor.
func appender(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestRotateAndTail(t *testing.T) {
	dir := t.TempDir()
	l := Log{Path: filepath.Join(dir, "console.log"), MaxBytes: 100, Keep: 2}
	f := appender(t, l.Path)
	for i := 0; i < 30; i++ {
		fmt.Fprintf(f, "line %02d\n", i) // 8 bytes each
		if _, err := l.Rotate(); err != nil {
			t.Fatal(err)
		}
	}
	// The writer's descriptor keeps appending at the new end after a
	// truncation: no holes, no lost lines at the start.
	b, _ := os.ReadFile(l.Path)
	if bytes.Contains(b, []byte{0}) {
		t.Fatal("holes after truncation")
	}
	for _, g := range []string{l.Path, l.Path + ".1", l.Path + ".2"} {
		fi, err := os.Stat(g)
		if err != nil {
			t.Fatalf("generation %s: %v", g, err)
		}
		if fi.Size() > 100+8 {
			t.Fatalf("%s is %d bytes, cap 100", g, fi.Size())
		}
	}
	if _, err := os.Stat(l.Path + ".3"); err == nil {
		t.Fatal("more generations kept than Keep")
	}
	lines, err := l.Tail(5)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"line 25", "line 26", "line 27", "line 28", "line 29"}
	if strings.Join(lines, ",") != strings.Join(want, ",") {
		t.Fatalf("tail: %v", lines)
	}
	// Tail crosses generations when the current file is short.
	lines, _ = l.Tail(20)
	if len(lines) != 20 || lines[19] != "line 29" || lines[0] != "line 10" {
		t.Fatalf("tail across generations: %v", lines)
	}
	if err := l.Remove(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left: %v", ents)
	}
}

func TestTailMissingAndSmall(t *testing.T) {
	l := Log{Path: filepath.Join(t.TempDir(), "none.log")}
	if lines, err := l.Tail(10); err != nil || len(lines) != 0 {
		t.Fatalf("%v %v", lines, err)
	}
	if rotated, err := l.Rotate(); rotated || err != nil {
		t.Fatalf("%v %v", rotated, err)
	}
}

// TestSurvivesRestart: a log written by a VMM is readable by a new Log
// value (a restarted daemon) with the same last lines.
func TestSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	f := appender(t, path)
	for i := 0; i < 3; i++ {
		fmt.Fprintf(f, "boot %d\n", i)
	}
	lines, _ := Log{Path: path}.Tail(2)
	if strings.Join(lines, "|") != "boot 1|boot 2" {
		t.Fatalf("%v", lines)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestFollowAcrossRotation(t *testing.T) {
	l := Log{Path: filepath.Join(t.TempDir(), "console.log"), MaxBytes: 10, Keep: 1}
	f := appender(t, l.Path)
	fmt.Fprintln(f, "before follow")
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuf
	done := make(chan error, 1)
	go func() { done <- l.Follow(ctx, &out, false, 10*time.Millisecond) }()
	time.Sleep(50 * time.Millisecond)
	fmt.Fprintln(f, "first")
	waitFor(t, &out, "first\n")
	if _, err := l.Rotate(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, "second")
	waitFor(t, &out, "first\nsecond\n")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "before follow") {
		t.Fatal("follow started at the beginning")
	}
}

func waitFor(t *testing.T, b *syncBuf, want string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for b.String() != want {
		if time.Now().After(deadline) {
			t.Fatalf("got %q, want %q", b.String(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
