package server

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/hearth-vm/hearth/agent"
)

// maxEnvFile bounds the whole env file, so merges cannot grow it without
// limit.
const maxEnvFile = 8 << 20

// envStore is the environment set over the channel. The map is the
// truth; the file mirrors it for software in the guest that reads it.
type envStore struct {
	mu   sync.Mutex
	path string
	env  map[string]string
}

func newEnvStore(path string) (*envStore, error) {
	s := &envStore{path: path, env: map[string]string{}}
	if path == "" {
		return s, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("agent server: env dir: %w", err)
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent server: read env file: %w", err)
	}
	// Keep what an earlier agent stored; skip lines that would not
	// validate now rather than refusing to start.
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if ok && agent.ValidateEnvKey(k) == nil && agent.ValidateEnvValue(k, v) == nil {
			s.env[k] = v
		}
	}
	return s, nil
}

func (s *envStore) snapshot() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.env)
}

// merge applies update (empty value deletes) and writes the file before
// the map changes, so a failed write changes nothing.
func (s *envStore) merge(update map[string]string) (map[string]string, error) {
	if err := agent.ValidateEnv(update); err != nil {
		return nil, fmt.Errorf("%w: %w", errInvalid, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	next := maps.Clone(s.env)
	for k, v := range update {
		if v == "" {
			delete(next, k)
		} else {
			next[k] = v
		}
	}
	var buf bytes.Buffer
	for _, k := range sortedKeys(next) {
		fmt.Fprintf(&buf, "%s=%s\n", k, next[k])
	}
	if buf.Len() > maxEnvFile {
		return nil, fmt.Errorf("%w: environment would exceed %d bytes", errTooLarge, maxEnvFile)
	}
	if s.path != "" {
		if err := writeFileAtomic(filepath.Dir(s.path), filepath.Base(s.path), &buf, 0o600, -1); err != nil {
			return nil, fmt.Errorf("write env file: %w", err)
		}
	}
	s.env = next
	return maps.Clone(next), nil
}

// environ returns the store as K=V strings.
func (s *envStore) environ() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.env))
	for _, k := range sortedKeys(s.env) {
		out = append(out, k+"="+s.env[k])
	}
	return out
}

// secretStore keeps one 0600 file per secret in a 0700 directory.
type secretStore struct {
	dir   string
	limit int64
}

func newSecretStore(dir string, limit int64) (*secretStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent server: secrets dir: %w", err)
	}
	// MkdirAll leaves an existing directory's mode alone.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent server: secrets dir: %w", err)
	}
	return &secretStore{dir: dir, limit: limit}, nil
}

func (s *secretStore) put(name string, r io.Reader) error {
	if err := agent.ValidateSecretName(name); err != nil {
		return fmt.Errorf("%w: %w", errInvalid, err)
	}
	return writeFileAtomic(s.dir, name, r, 0o600, s.limit)
}

func (s *secretStore) remove(name string) error {
	if err := agent.ValidateSecretName(name); err != nil {
		return fmt.Errorf("%w: %w", errInvalid, err)
	}
	if err := os.Remove(filepath.Join(s.dir, name)); err != nil {
		return err
	}
	return syncDir(s.dir)
}

func (s *secretStore) list() ([]string, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	names := []string{}
	for _, e := range ents {
		if e.Type().IsRegular() && agent.ValidateSecretName(e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// writeFileAtomic streams r into dir/name through a temporary file in
// dir: created 0600 (so a secret is never readable by others, even
// briefly), fsynced, given perm, renamed over name, and the directory
// fsynced so the rename survives a crash. limit < 0 means no limit.
func writeFileAtomic(dir, name string, r io.Reader, perm fs.FileMode, limit int64) error {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	src := r
	if limit >= 0 {
		src = io.LimitReader(r, limit+1)
	}
	bw := bufio.NewWriterSize(f, 256<<10)
	n, err := io.Copy(bw, src)
	if err != nil {
		return err
	}
	if limit >= 0 && n > limit {
		return fmt.Errorf("%w: more than %d bytes", errTooLarge, limit)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	ok = true
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
