package image

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/hearth-vm/hearth/rootfs/digest"
)

// Package is a Debian binary package as the archive describes it.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch,omitempty"`
	// SHA256 of the .deb file (from the archive index, or of a local file).
	SHA256  string   `json:"sha256"`
	Depends []string `json:"-"`
	// Path is set for a local .deb given by the caller.
	Path string `json:"-"`
}

// Packages finds and fetches Debian packages. Apt is the real one; tests
// substitute local files.
type Packages interface {
	// Resolve returns the candidate version of a package.
	Resolve(ctx context.Context, name string) (Package, error)
	// Fetch returns the path of the package's .deb in dir, downloading it
	// if needed; the file's SHA-256 matches pkg.SHA256.
	Fetch(ctx context.Context, pkg Package, dir string) (string, error)
}

// Apt resolves packages with apt-cache and downloads them with
// `apt-get download` from the configured mirror — the only network hearth
// uses. Nothing is installed.
type Apt struct {
	// AptCache and AptGet name the binaries (defaults apt-cache, apt-get).
	AptCache, AptGet string
}

func (a Apt) bin(b, def string) string {
	if b == "" {
		return def
	}
	return b
}

// Resolve runs apt-cache show for the candidate version.
func (a Apt) Resolve(ctx context.Context, name string) (Package, error) {
	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, a.bin(a.AptCache, "apt-cache"), "show", "--no-all-versions", name)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return Package{}, fmt.Errorf("apt-cache show %s: %w: %s (is the package index current? run apt-get update)", name, err, strings.TrimSpace(stderr.String()))
	}
	p, err := parseControl(out.Bytes())
	if err != nil {
		return Package{}, fmt.Errorf("apt-cache show %s: %w", name, err)
	}
	if p.Name != name {
		return Package{}, fmt.Errorf("apt-cache show %s: got package %q", name, p.Name)
	}
	if !digest.Valid(p.SHA256) {
		return Package{}, fmt.Errorf("apt-cache show %s: no SHA256 in the index", name)
	}
	return p, nil
}

// parseControl reads the first stanza of Debian control data.
func parseControl(b []byte) (Package, error) {
	var p Package
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			break
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.HasPrefix(line, " ") {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Package":
			p.Name = v
		case "Version":
			p.Version = v
		case "Architecture":
			p.Arch = v
		case "SHA256":
			p.SHA256 = v
		case "Depends", "Pre-Depends":
			for _, d := range strings.Split(v, ",") {
				p.Depends = append(p.Depends, strings.TrimSpace(d))
			}
		}
	}
	if p.Name == "" || p.Version == "" {
		return p, errors.New("no Package/Version in control data")
	}
	return p, sc.Err()
}

// Fetch downloads the package into dir (a cache: a file already there
// with the right digest is reused) and verifies its SHA-256.
func (a Apt) Fetch(ctx context.Context, pkg Package, dir string) (string, error) {
	final := filepath.Join(dir, debFileName(pkg))
	if sum, _, err := digest.File(ctx, final); err == nil && sum == pkg.SHA256 {
		return final, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(dir, ".download-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	var stderr bytes.Buffer
	// As root, apt drops to the _apt user for downloads, which cannot
	// write into a root-owned cache; the mirror and the digest check are
	// what make the download trustworthy here.
	cmd := exec.CommandContext(ctx, a.bin(a.AptGet, "apt-get"), "download", "-q", "-o", "APT::Sandbox::User=root", pkg.Name+"="+pkg.Version)
	cmd.Dir, cmd.Stderr, cmd.Stdout = tmp, &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("apt-get download %s=%s: %w: %s", pkg.Name, pkg.Version, err, strings.TrimSpace(stderr.String()))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s: expected one .deb, got %v", pkg.Name, debs)
	}
	sum, _, err := digest.File(ctx, debs[0])
	if err != nil {
		return "", err
	}
	if sum != pkg.SHA256 {
		return "", fmt.Errorf("downloaded %s has SHA-256 %s, the archive index says %s", filepath.Base(debs[0]), sum, pkg.SHA256)
	}
	if err := os.Rename(debs[0], final); err != nil {
		return "", err
	}
	return final, nil
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9.+~_-]`)

func debFileName(p Package) string {
	return unsafeChars.ReplaceAllString(p.Name+"_"+p.Version+"_"+p.Arch, "_") + ".deb"
}

// LocalDeb describes a .deb file given by path (dpkg-deb -f), for builds
// without apt.
func LocalDeb(ctx context.Context, path string) (Package, error) {
	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "dpkg-deb", "-f", path)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return Package{}, fmt.Errorf("dpkg-deb -f %s: %w: %s", path, err, strings.TrimSpace(stderr.String()))
	}
	p, err := parseControl(out.Bytes())
	if err != nil {
		return Package{}, fmt.Errorf("%s: %w", path, err)
	}
	if p.SHA256, _, err = digest.File(ctx, path); err != nil {
		return Package{}, err
	}
	p.Path = path
	return p, nil
}

// Unpack extracts a .deb's files into dir with dpkg-deb -x (no
// maintainer scripts run, nothing is installed).
func Unpack(ctx context.Context, deb, dir string) error {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, dir)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %w: %s", deb, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// kernelImagePackage follows a kernel meta-package
// (linux-image-cloud-amd64) to the versioned package that holds the
// kernel (linux-image-6.1.0-56-cloud-amd64).
func kernelImagePackage(ctx context.Context, src Packages, name string) (meta, kernel Package, err error) {
	p, err := src.Resolve(ctx, name)
	if err != nil {
		return Package{}, Package{}, err
	}
	versioned := regexp.MustCompile(`^linux-image-[0-9]`)
	if versioned.MatchString(p.Name) {
		return p, p, nil
	}
	for _, d := range p.Depends {
		alt, _, _ := strings.Cut(d, "|")
		dep, _, _ := strings.Cut(strings.TrimSpace(alt), " ")
		if versioned.MatchString(dep) {
			k, err := src.Resolve(ctx, dep)
			return p, k, err
		}
	}
	return Package{}, Package{}, fmt.Errorf("package %s is not a kernel image and depends on none (%v)", name, p.Depends)
}
