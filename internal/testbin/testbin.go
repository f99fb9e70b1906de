package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// Module is the import path the commands live under.
const Module = "github.com/hearth-vm/hearth"

var (
	mu     sync.Mutex
	dir    string
	builds = map[string]*build{}
)

type build struct {
	once sync.Once
	path string
	err  error
}

// Build returns the path of command pkg (relative to the module, e.g.
// "cmd/hearth-fcsim") built into a file called name, building it on the
// first call for that name in this process. A failed build fails tb (and
// every later caller, with the same output).
func Build(tb testing.TB, pkg, name string) string {
	tb.Helper()
	p, err := build1(pkg, name)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return p
}

// Path is Build for TestMain, which has no testing.TB.
func Path(pkg, name string) (string, error) { return build1(pkg, name) }

func build1(pkg, name string) (string, error) {
	d, err := Dir()
	if err != nil {
		return "", err
	}
	mu.Lock()
	b := builds[name]
	if b == nil {
		b = &build{}
		builds[name] = b
	}
	mu.Unlock()
	b.once.Do(func() {
		out := filepath.Join(d, name)
		cmd := exec.Command("go", "build", "-o", out, Module+"/"+pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("build %s: %v\n%s", pkg, err, msg)
			return
		}
		b.path = out
	})
	return b.path, b.err
}

// Dir is the directory the binaries are built in (created on first use):
// a place for files that must sit next to them.
func Dir() (string, error) {
	mu.Lock()
	defer mu.Unlock()
	if dir == "" {
		d, err := os.MkdirTemp("", "hearth-testbin")
		if err != nil {
			return "", fmt.Errorf("testbin: %w", err)
		}
		dir = d
	}
	return dir, nil
}

// Cleanup removes every binary built so far.
func Cleanup() {
	mu.Lock()
	defer mu.Unlock()
	if dir != "" {
		os.RemoveAll(dir)
		dir = ""
		builds = map[string]*build{}
	}
}

// Main runs the tests, removes the binaries and exits with the tests'
// code: a package's TestMain is `func TestMain(m *testing.M) { testbin.Main(m) }`.
func Main(m *testing.M) {
	code := m.Run()
	Cleanup()
	os.Exit(code)
}
