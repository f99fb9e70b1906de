package agent_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/agent/server"
)

// TestFileRoundTrip100MiB streams 100 MiB into the guest and back and
// compares SHA-256 digests at every step.
func TestFileRoundTrip100MiB(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t, 2*time.Minute)
	dir := shortDir(t)
	const size = 100 << 20
	src := io.LimitReader(rand.NewChaCha8([32]byte{1, 2, 3}), size)
	h := sha256.New()
	target := filepath.Join(dir, "sub", "big.bin")
	fi, err := e.client.WriteFile(ctx, target, io.TeeReader(src, h), &agent.WriteOptions{Perm: 0o640, Parents: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	want := hex.EncodeToString(h.Sum(nil))
	if fi.Size != size || fi.SHA256 != want || fi.Perm != 0o640 || fi.Type != agent.TypeFile {
		t.Fatalf("written %+v", fi)
	}
	// The file on disk matches.
	f, err := os.Open(target)
	if err != nil {
		t.Fatal(err)
	}
	dh := sha256.New()
	io.Copy(dh, f)
	f.Close()
	if hex.EncodeToString(dh.Sum(nil)) != want {
		t.Fatal("file on disk differs")
	}
	// And back.
	bh := sha256.New()
	got, err := e.client.ReadFile(ctx, target, bh)
	if err != nil {
		t.Fatal(err)
	}
	if got.Size != size || got.SHA256 != want || hex.EncodeToString(bh.Sum(nil)) != want || got.Perm != 0o640 {
		t.Fatalf("read back %+v", got)
	}
}

func TestFiles(t *testing.T) {
	e := newEnv(t, func(c *server.Config) { c.MaxFileSize = 1 << 20 })
	ctx := ctxT(t, 30*time.Second)
	dir := shortDir(t)
	p := filepath.Join(dir, "a.txt")

	if _, err := e.client.WriteFile(ctx, p, strings.NewReader("hello"), nil); err != nil {
		t.Fatal(err)
	}
	st, err := e.client.Stat(ctx, p)
	if err != nil || st.Size != 5 || st.Perm != 0o644 || st.Type != agent.TypeFile || st.Name != "a.txt" || st.UID != uint32(os.Getuid()) {
		t.Fatalf("stat %+v %v", st, err)
	}
	// Overwrite is atomic and keeps nothing of the old content.
	if _, err := e.client.WriteFile(ctx, p, strings.NewReader("hi"), &agent.WriteOptions{Perm: 0o600}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := e.client.ReadFile(ctx, p, &buf); err != nil || buf.String() != "hi" {
		t.Fatalf("read %q %v", buf.String(), err)
	}
	// Empty file.
	if fi, err := e.client.WriteFile(ctx, filepath.Join(dir, "empty"), strings.NewReader(""), nil); err != nil || fi.Size != 0 {
		t.Fatalf("empty %+v %v", fi, err)
	}
	// Setuid bits survive.
	if fi, err := e.client.WriteFile(ctx, filepath.Join(dir, "suid"), strings.NewReader("#!/bin/sh\n"), &agent.WriteOptions{Perm: 0o755 | fs.ModeSetuid}); err != nil || fi.Perm != 0o4755 {
		t.Fatalf("setuid %+v %v", fi, err)
	}

	// Directories.
	if _, err := e.client.Mkdir(ctx, filepath.Join(dir, "d1"), 0o700, false); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Mkdir(ctx, filepath.Join(dir, "d1"), 0o700, false); !errors.Is(err, fs.ErrExist) {
		t.Errorf("mkdir twice: %v", err)
	}
	if fi, err := e.client.Mkdir(ctx, filepath.Join(dir, "d2", "x", "y"), 0o750, true); err != nil || fi.Type != agent.TypeDir {
		t.Fatalf("mkdir -p %+v %v", fi, err)
	}
	if _, err := e.client.Mkdir(ctx, filepath.Join(dir, "d2", "x", "y"), 0o750, true); err != nil {
		t.Errorf("mkdir -p twice: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "d1")); fi.Mode().Perm() != 0o700 {
		t.Errorf("d1 mode %v", fi.Mode())
	}
	if err := os.Symlink("a.txt", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	ents, err := e.client.ReadDir(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range ents {
		names = append(names, en.Name+":"+en.Type)
		if en.Name == "link" && en.Link != "a.txt" {
			t.Errorf("link entry %+v", en)
		}
	}
	if strings.Join(names, " ") != "a.txt:file d1:dir d2:dir empty:file link:symlink suid:file" {
		t.Errorf("listing %v", names)
	}
	if fi, err := e.client.StatFollow(ctx, filepath.Join(dir, "link")); err != nil || fi.Type != agent.TypeFile {
		t.Errorf("stat through link %+v %v", fi, err)
	}

	// Errors.
	errCases := []struct {
		name string
		err  error
		do   func() error
	}{
		{"read missing", fs.ErrNotExist, func() error { _, err := e.client.ReadFile(ctx, filepath.Join(dir, "none"), io.Discard); return err }},
		{"stat missing", fs.ErrNotExist, func() error { _, err := e.client.Stat(ctx, filepath.Join(dir, "none")); return err }},
		{"read a directory", agent.ErrInvalid, func() error {
			_, err := e.client.ReadFile(ctx, dir, io.Discard)
			return nilIfCode(err, agent.CodeIsDir)
		}},
		{"read a device", agent.ErrInvalid, func() error { _, err := e.client.ReadFile(ctx, "/dev/zero", io.Discard); return err }},
		{"write over a directory", agent.ErrInvalid, func() error {
			_, err := e.client.WriteFile(ctx, filepath.Join(dir, "d1"), strings.NewReader("x"), nil)
			return nilIfCode(err, agent.CodeIsDir)
		}},
		{"write without parent", fs.ErrNotExist, func() error {
			_, err := e.client.WriteFile(ctx, filepath.Join(dir, "no", "dir", "f"), strings.NewReader("x"), nil)
			return err
		}},
		{"too large, size known", agent.ErrTooLarge, func() error {
			_, err := e.client.WriteFile(ctx, filepath.Join(dir, "big"), bytes.NewReader(make([]byte, 2<<20)), &agent.WriteOptions{Size: 2 << 20})
			return err
		}},
		{"too large, streamed", agent.ErrTooLarge, func() error {
			_, err := e.client.WriteFile(ctx, filepath.Join(dir, "big"), io.LimitReader(zeros{}, 2<<20), nil)
			return err
		}},
		{"relative path", agent.ErrInvalid, func() error { _, err := e.client.Stat(ctx, "etc/passwd"); return err }},
		{"dot-dot", agent.ErrInvalid, func() error { _, err := e.client.Stat(ctx, dir+"/../etc"); return err }},
		{"remove non-empty dir", nil, func() error {
			return nilIfCode(e.client.Remove(ctx, filepath.Join(dir, "d2"), false), agent.CodeNotEmpty)
		}},
		{"remove root", agent.ErrInvalid, func() error { return e.client.Remove(ctx, "/", true) }},
		{"remove missing", fs.ErrNotExist, func() error { return e.client.Remove(ctx, filepath.Join(dir, "none"), true) }},
	}
	for _, c := range errCases {
		err := c.do()
		if c.err == nil {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if !errors.Is(err, c.err) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "big")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("oversized upload left a file: %v", err)
	}
	assertNoTemp(t, dir)

	if err := e.client.Remove(ctx, filepath.Join(dir, "d2"), true); err != nil {
		t.Fatal(err)
	}
	if err := e.client.Remove(ctx, p, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Error("file not removed")
	}
}

// nilIfCode turns an *agent.Error with the given code into ErrInvalid
// (for codes that have no sentinel) and anything else into itself.
func nilIfCode(err error, code string) error {
	var ae *agent.Error
	if errors.As(err, &ae) && ae.Code == code {
		if code == agent.CodeNotEmpty {
			return nil
		}
		return agent.ErrInvalid
	}
	if err == nil {
		return errors.New("no error")
	}
	return err
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), ".hearth-") {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
}

// TestFilesRoot confines file operations to a root: traversal and
// symlinks out of it are refused.
func TestFilesRoot(t *testing.T) {
	root := shortDir(t)
	outside := shortDir(t)
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("outside"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../../../../../../"+outside, filepath.Join(root, "rel-escape")); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *server.Config) { c.FilesRoot = root })
	ctx := ctxT(t, 10*time.Second)

	if _, err := e.client.WriteFile(ctx, "/in/side.txt", strings.NewReader("ok"), &agent.WriteOptions{Parents: true}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "in", "side.txt")); err != nil || string(b) != "ok" {
		t.Fatalf("file under root: %q %v", b, err)
	}
	var buf bytes.Buffer
	if _, err := e.client.ReadFile(ctx, "/in/side.txt", &buf); err != nil || buf.String() != "ok" {
		t.Fatalf("read under root: %q %v", buf.String(), err)
	}
	if fi, err := e.client.Stat(ctx, "/"); err != nil || fi.Type != agent.TypeDir || fi.Name != "/" {
		t.Fatalf("stat root %+v %v", fi, err)
	}
	for _, p := range []string{"/escape/secret", "/rel-escape/secret", "/../secret"} {
		if _, err := e.client.ReadFile(ctx, p, io.Discard); !errors.Is(err, agent.ErrInvalid) {
			t.Errorf("read %s: %v", p, err)
		}
		if _, err := e.client.WriteFile(ctx, p, strings.NewReader("x"), nil); !errors.Is(err, agent.ErrInvalid) {
			t.Errorf("write %s: %v", p, err)
		}
	}
	if _, err := e.client.Mkdir(ctx, "/escape/newdir", 0o755, true); !errors.Is(err, agent.ErrInvalid) {
		t.Errorf("mkdir through an escaping link: %v", err)
	}
	if err := e.client.Remove(ctx, "/escape/secret", false); !errors.Is(err, agent.ErrInvalid) {
		t.Errorf("remove through an escaping link: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "secret")); string(b) != "outside" {
		t.Error("file outside the root changed")
	}
	if _, err := os.Stat(filepath.Join(outside, "newdir")); err == nil {
		t.Error("directory created outside the root")
	}
}

func TestWriteFileOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	e := newEnv(t)
	dir := shortDir(t)
	uid, gid := uint32(65534), uint32(65533)
	p := filepath.Join(dir, "owned")
	fi, err := e.client.WriteFile(ctxT(t, 10*time.Second), p, strings.NewReader("x"), &agent.WriteOptions{UID: &uid, GID: &gid, Perm: 0o755 | fs.ModeSetgid})
	if err != nil {
		t.Fatal(err)
	}
	// chown clears setgid; the agent puts the asked-for mode back.
	if fi.UID != uid || fi.GID != gid || fi.Perm != 0o2755 {
		t.Fatalf("owner %d:%d perm %o", fi.UID, fi.GID, fi.Perm)
	}
}
