package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// DefaultModules are the drivers the default image's initramfs loads,
// named as the kernel names them. Their dependencies are added from each
// module's own modinfo, so the list names only what hearth needs: the
// virtio-mmio transport, block, net, console (the QEMU agent port), RNG,
// balloon, vsock (the Firecracker agent transport) and ext4.
var DefaultModules = []string{
	"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console",
	"virtio_rng", "virtio_balloon", "vmw_vsock_virtio_transport", "ext4",
}

// Module is a loadable kernel module.
type Module struct {
	Name string
	// Path is the module file on the host (possibly compressed).
	Path string
	// Depends are the modules that must be loaded first (modinfo
	// "depends", plus "softdep pre:" modules that exist).
	Depends []string
}

// ModuleTree indexes the modules of one kernel release in an unpacked
// kernel package (lib/modules/<release>). The package's modules.dep does
// not exist until depmod runs at install time, which hearth avoids, so
// dependencies come from each module's .modinfo section.
type ModuleTree struct {
	Release string
	dir     string
	files   map[string]string // module name → path
	builtin map[string]bool
}

// OpenModules indexes lib/modules/<release> under root (an unpacked
// kernel package). With release "" the only release present is used.
func OpenModules(root, release string) (*ModuleTree, error) {
	base := filepath.Join(root, "lib", "modules")
	if release == "" {
		ents, err := os.ReadDir(base)
		if err != nil {
			return nil, fmt.Errorf("kernel modules: %w", err)
		}
		var rels []string
		for _, e := range ents {
			if e.IsDir() {
				rels = append(rels, e.Name())
			}
		}
		if len(rels) != 1 {
			return nil, fmt.Errorf("kernel modules: want one release under %s, found %v", base, rels)
		}
		release = rels[0]
	}
	t := &ModuleTree{Release: release, dir: filepath.Join(base, release), files: map[string]string{}, builtin: map[string]bool{}}
	err := filepath.WalkDir(t.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name, ok := moduleName(d.Name()); ok && d.Type().IsRegular() {
			t.files[name] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	if b, err := os.ReadFile(filepath.Join(t.dir, "modules.builtin")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if name, ok := moduleName(filepath.Base(strings.TrimSpace(line))); ok {
				t.builtin[name] = true
			}
		}
	}
	return t, nil
}

// moduleName maps a module file name to the module's name: the kernel
// replaces "-" with "_" (virtio-rng.ko is virtio_rng).
func moduleName(file string) (string, bool) {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if base, ok := strings.CutSuffix(file, ext); ok {
			return strings.ReplaceAll(base, "-", "_"), true
		}
	}
	return "", false
}

// Builtin reports whether a module is compiled into the kernel.
func (t *ModuleTree) Builtin(name string) bool { return t.builtin[strings.ReplaceAll(name, "-", "_")] }

// Resolve returns the modules named and everything they depend on, each
// after its dependencies (the order insmod needs: virtio_ring before
// virtio before virtio_mmio …). Built-in modules are skipped; a module
// that is neither built in nor present is an error.
func (t *ModuleTree) Resolve(names []string) ([]Module, error) {
	var out []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, soft bool, path []string) error
	visit = func(name string, soft bool, path []string) error {
		name = strings.ReplaceAll(name, "-", "_")
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(path, name), " → "))
		}
		if t.builtin[name] {
			state[name] = 2
			return nil
		}
		p, ok := t.files[name]
		if !ok {
			if soft {
				return nil
			}
			return fmt.Errorf("module %s not found in %s (needed by %s)", name, t.dir, strings.Join(path, " → "))
		}
		state[name] = 1
		info, err := ReadModinfo(p)
		if err != nil {
			return err
		}
		m := Module{Name: name, Path: p}
		for _, d := range info.Depends {
			if err := visit(d, false, append(path, name)); err != nil {
				return err
			}
			if !t.builtin[d] {
				m.Depends = append(m.Depends, d)
			}
		}
		for _, d := range info.SoftPre {
			if err := visit(d, true, append(path, name)); err != nil {
				return err
			}
			if _, ok := t.files[d]; ok && !t.builtin[d] {
				m.Depends = append(m.Depends, d)
			}
		}
		state[name] = 2
		out = append(out, m)
		return nil
	}
	for _, n := range names {
		if err := visit(n, false, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Modinfo is what hearth reads from a module's .modinfo section.
type Modinfo struct {
	Name     string
	Depends  []string
	SoftPre  []string
	Vermagic string
}

// ReadModinfo parses the .modinfo section of a module file (.ko, or
// compressed .ko.xz/.ko.zst/.ko.gz).
func ReadModinfo(path string) (Modinfo, error) {
	b, err := ReadModule(path)
	if err != nil {
		return Modinfo{}, err
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return Modinfo{}, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return Modinfo{}, fmt.Errorf("module %s: no .modinfo section", path)
	}
	data, err := s.Data()
	if err != nil {
		return Modinfo{}, fmt.Errorf("module %s: %w", path, err)
	}
	var mi Modinfo
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			mi.Name = v
		case "vermagic":
			mi.Vermagic = v
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					mi.Depends = append(mi.Depends, strings.ReplaceAll(d, "-", "_"))
				}
			}
		case "softdep":
			// "pre: a b post: c"
			pre := false
			for _, w := range strings.Fields(v) {
				switch w {
				case "pre:":
					pre = true
				case "post:":
					pre = false
				default:
					if pre {
						mi.SoftPre = append(mi.SoftPre, strings.ReplaceAll(w, "-", "_"))
					}
				}
			}
		}
	}
	return mi, nil
}

// ReadModule returns a module file's ELF bytes, decompressing .ko.xz,
// .ko.zst and .ko.gz (insmod in the initramfs is given plain ELF).
func ReadModule(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = bufio.NewReader(f)
	switch {
	case strings.HasSuffix(path, ".xz"):
		if r, err = xz.NewReader(r); err != nil {
			return nil, fmt.Errorf("module %s: %w", path, err)
		}
	case strings.HasSuffix(path, ".zst"):
		zr, err := zstd.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", path, err)
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(path, ".gz"):
		if r, err = gzip.NewReader(r); err != nil {
			return nil, fmt.Errorf("module %s: %w", path, err)
		}
	}
	b, err := io.ReadAll(io.LimitReader(r, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	if !bytes.HasPrefix(b, elfMagic) {
		return nil, fmt.Errorf("module %s: not an ELF object", path)
	}
	return b, nil
}

// ModuleNames returns the names of ms, in order.
func ModuleNames(ms []Module) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}

// checkOrder verifies that every module comes after its dependencies.
func checkOrder(ms []Module) error {
	pos := map[string]int{}
	for i, m := range ms {
		pos[m.Name] = i
	}
	for i, m := range ms {
		for _, d := range m.Depends {
			if j, ok := pos[d]; !ok || j > i {
				return fmt.Errorf("module %s is loaded before its dependency %s", m.Name, d)
			}
		}
	}
	return nil
}
