package digest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writeSparse writes a file of size bytes with data only at the given
// offsets, so the rest is holes.
func writeSparse(t *testing.T, p string, size int64, data map[int64][]byte) []byte {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	full := make([]byte, size)
	for off, b := range data {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		copy(full[off:], b)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return full
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestFileMatchesPlainSHA256(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		size int64
		data map[int64][]byte
	}{
		{"empty", 0, nil},
		{"small", 5, map[int64][]byte{0: []byte("hello")}},
		{"all hole", 3 << 20, nil},
		{"data then hole", 5 << 20, map[int64][]byte{0: bytes.Repeat([]byte{7}, 70000)}},
		{"hole then data", 5 << 20, map[int64][]byte{4 << 20: bytes.Repeat([]byte{9}, 4096)}},
		{"scattered", 9 << 20, map[int64][]byte{0: []byte("a"), 2 << 20: []byte("b"), (9 << 20) - 1: []byte("z")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, c.name)
			full := writeSparse(t, p, c.size, c.data)
			got, n, err := File(context.Background(), p)
			if err != nil {
				t.Fatal(err)
			}
			if n != c.size || got != sum(full) {
				t.Fatalf("File = %s,%d; want %s,%d", got, n, sum(full), c.size)
			}
			// Copy hashes in the same pass and keeps holes.
			dst := p + ".copy"
			csum, cn, err := CopyFile(context.Background(), p, dst, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			back, _ := os.ReadFile(dst)
			if csum != got || cn != n || !bytes.Equal(back, full) {
				t.Fatalf("CopyFile = %s,%d (content equal %v); want %s,%d", csum, cn, bytes.Equal(back, full), got, n)
			}
		})
	}
}

func TestWriter(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.Write([]byte("hello "))
	w.Write([]byte("world"))
	if w.Sum() != sum([]byte("hello world")) || w.Size() != 11 || buf.String() != "hello world" {
		t.Fatalf("Writer: %s %d %q", w.Sum(), w.Size(), buf.String())
	}
	if Bytes([]byte("hello world")) != w.Sum() {
		t.Fatal("Bytes disagrees with Writer")
	}
}

// countHashes replaces hashFile for the test and returns the call counter.
func countHashes(t *testing.T) *int {
	n := new(int)
	orig := hashFile
	hashFile = func(ctx context.Context, p string) (string, int64, error) {
		*n++
		return orig(ctx, p)
	}
	t.Cleanup(func() { hashFile = orig })
	return n
}

func TestVerifyModes(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p := filepath.Join(dir, "rootfs.ext4")
	content := bytes.Repeat([]byte("hearth"), 1000)
	if err := os.WriteFile(p, content, 0o644); err != nil {
		t.Fatal(err)
	}
	want := sum(content)
	cachePath := filepath.Join(dir, CacheFile)

	hashes := countHashes(t)
	// First verification hashes and records the identity.
	c := LoadCache(cachePath)
	if err := Verify(ctx, p, want, c, OnChange); err != nil {
		t.Fatal(err)
	}
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}
	// Unchanged identity: no re-hash, also through a reloaded cache.
	for range 3 {
		if err := Verify(ctx, p, want, LoadCache(cachePath), OnChange); err != nil {
			t.Fatal(err)
		}
	}
	if *hashes != 1 {
		t.Fatalf("hashed %d times, want 1 (cache should vouch for an unchanged file)", *hashes)
	}
	// Always re-hashes; Never does not even stat.
	if err := Verify(ctx, p, want, c, Always); err != nil || *hashes != 2 {
		t.Fatalf("Always: err %v, hashes %d", err, *hashes)
	}
	if err := Verify(ctx, filepath.Join(dir, "missing"), want, c, Never); err != nil || *hashes != 2 {
		t.Fatalf("Never: err %v, hashes %d", err, *hashes)
	}
	// A cached digest that is not the wanted one does not vouch.
	if err := Verify(ctx, p, sum([]byte("other")), c, OnChange); err == nil {
		t.Fatal("a different wanted digest passed")
	}
}

func TestVerifyCatchesRewriteWithRestoredMtime(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p := filepath.Join(dir, "vmlinux")
	orig := bytes.Repeat([]byte{1}, 8192)
	os.WriteFile(p, orig, 0o644)
	want := sum(orig)
	c := LoadCache(filepath.Join(dir, CacheFile))
	if err := Verify(ctx, p, want, c, OnChange); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	mtime := fi.ModTime()
	// Same size, same mtime, different content: only ctime (and the
	// content) give it away.
	time.Sleep(10 * time.Millisecond)
	bad := bytes.Repeat([]byte{2}, 8192)
	if err := os.WriteFile(p, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	fi2, _ := os.Stat(p)
	if !fi2.ModTime().Equal(mtime) || fi2.Size() != fi.Size() {
		t.Fatal("test setup: mtime or size changed")
	}
	err := Verify(ctx, p, want, c, OnChange)
	var ie *IntegrityError
	if !errors.As(err, &ie) || !errors.Is(err, ErrMismatch) {
		t.Fatalf("Verify after rewrite = %v, want *IntegrityError", err)
	}
	if ie.Path != p || ie.Want != want || ie.Got != sum(bad) {
		t.Fatalf("IntegrityError = %+v", ie)
	}
	// Still failing on the next use (the entry was dropped, not kept).
	if err := Verify(ctx, p, want, c, OnChange); !errors.As(err, &ie) {
		t.Fatalf("second Verify = %v", err)
	}
}

func TestCacheCorruptIsEmpty(t *testing.T) {
	p := filepath.Join(t.TempDir(), CacheFile)
	os.WriteFile(p, []byte("{not json"), 0o644)
	c := LoadCache(p)
	if c.Known("x", Identity{}, "") {
		t.Fatal("corrupt cache vouched for a file")
	}
}

func TestParseMode(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Mode
		ok   bool
	}{{"", OnChange, true}, {"changed", OnChange, true}, {"always", Always, true}, {"never", Never, true}, {"sometimes", OnChange, false}} {
		m, err := ParseMode(c.in)
		if (err == nil) != c.ok || (c.ok && m != c.want) {
			t.Errorf("ParseMode(%q) = %v, %v", c.in, m, err)
		}
		if c.ok && c.in != "" {
			if back, _ := ParseMode(m.String()); back != m {
				t.Errorf("round trip of %v", m)
			}
		}
	}
}
