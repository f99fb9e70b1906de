package rootfs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// entry is one member of a test layer.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func file(name, body string) entry {
	return entry{name: name, body: body, typ: tar.TypeReg, mode: 0o644}
}
func dir(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, to string) entry {
	return entry{name: name, link: to, typ: tar.TypeSymlink, mode: 0o777}
}
func hardlink(name, to string) entry {
	return entry{name: name, link: to, typ: tar.TypeLink, mode: 0o644}
}

func layerTar(t testing.TB, es []entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, ModTime: time.Unix(1700000000, 0), Uid: 0, Gid: 0}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return b.Bytes()
}

func gz(b []byte) []byte {
	var out bytes.Buffer
	w := gzip.NewWriter(&out)
	w.Write(b)
	w.Close()
	return out.Bytes()
}

func zst(t testing.TB, b []byte) []byte {
	w, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	return w.EncodeAll(b, nil)
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// outerTar writes the files of an image tarball.
func outerTar(t testing.TB, path string, files map[string][]byte, order []string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, name := range order {
		b := files[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))}); err != nil {
			t.Fatal(err)
		}
		tw.Write(b)
	}
	tw.Close()
}

// ociTarball builds an OCI image layout tarball from layers (each stored
// compressed as compress says).
func ociTarball(t testing.TB, path string, layers [][]entry, compress []string) {
	t.Helper()
	files := map[string][]byte{}
	var order []string
	add := func(name string, b []byte) {
		files[name] = b
		order = append(order, name)
	}
	add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	var descs []map[string]any
	var diffIDs []string
	for i, l := range layers {
		plain := layerTar(t, l)
		diffIDs = append(diffIDs, "sha256:"+sha(plain))
		blob, mt := plain, "application/vnd.oci.image.layer.v1.tar"
		switch compress[i] {
		case "gzip":
			blob, mt = gz(plain), mt+"+gzip"
		case "zstd":
			blob, mt = zst(t, plain), mt+"+zstd"
		}
		add("blobs/sha256/"+sha(blob), blob)
		descs = append(descs, map[string]any{"mediaType": mt, "digest": "sha256:" + sha(blob), "size": len(blob)})
	}
	cfg, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Entrypoint": []string{"/usr/bin/app"}, "Env": []string{"PATH=/usr/bin"}, "WorkingDir": "/srv"},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	add("blobs/sha256/"+sha(cfg), cfg)
	man, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + sha(cfg), "size": len(cfg)},
		"layers": descs,
	})
	add("blobs/sha256/"+sha(man), man)
	idx, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []map[string]any{{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + sha(man), "size": len(man),
			"annotations": map[string]string{"org.opencontainers.image.ref.name": "test:1"}}},
	})
	add("index.json", idx)
	outerTar(t, path, files, order)
}

// dockerTarball builds legacy `docker save` output (plain layer tars under
// <id>/layer.tar, manifest.json, config <hex>.json).
func dockerTarball(t testing.TB, path string, layers [][]entry) {
	t.Helper()
	files := map[string][]byte{}
	var order []string
	var paths, diffIDs []string
	for i, l := range layers {
		plain := layerTar(t, l)
		diffIDs = append(diffIDs, "sha256:"+sha(plain))
		p := strings.Repeat(string(rune('a'+i)), 64) + "/layer.tar"
		files[p] = plain
		order = append(order, p)
		paths = append(paths, p)
	}
	cfg, _ := json.Marshal(map[string]any{"config": map[string]any{"Cmd": []string{"sh"}}, "rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs}})
	files[sha(cfg)+".json"] = cfg
	man, _ := json.Marshal([]map[string]any{{"Config": sha(cfg) + ".json", "RepoTags": []string{"test:latest"}, "Layers": paths}})
	files["manifest.json"] = man
	order = append(order, sha(cfg)+".json", "manifest.json")
	outerTar(t, path, files, order)
}

// The two layers of the import tests: the second deletes a file, hides a
// directory's lower content (opaque), modifies a file, and writes through
// an absolute symlink, which must stay inside the image.
var twoLayers = [][]entry{
	{
		dir("etc/"), file("etc/keep.conf", "v1\n"), file("etc/gone.conf", "bye\n"),
		dir("data/"), file("data/old1", "1"), file("data/old2", "2"), dir("data/sub/"), file("data/sub/old3", "3"),
		dir("usr/"), dir("usr/bin/"), entry{name: "usr/bin/app", body: "#!/bin/sh\n", typ: tar.TypeReg, mode: 0o755},
		hardlink("usr/bin/app-again", "usr/bin/app"),
		symlink("esc", "/"),
		symlink("sbin", "usr/sbin"), dir("usr/sbin/"),
	},
	{
		file("etc/.wh.gone.conf", ""),
		file("data/new", "n"),
		file("data/.wh..wh..opq", ""),
		file("etc/keep.conf", "v2\n"),
		file("esc/escaped", "inside"),
		file(".wh..wh.plnk", ""),
	},
}

func TestImportOCIAndDocker(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs", "e2fsck")
	ctx := context.Background()
	agent := fakeAgent(t, t.TempDir())
	kernel := testKernel(t)
	cases := []struct {
		name, kind string
		build      func(p string)
		gzipOuter  bool
	}{
		{"oci gzip+zstd", "oci", func(p string) { ociTarball(t, p, twoLayers, []string{"gzip", "zstd"}) }, false},
		{"oci plain", "oci", func(p string) { ociTarball(t, p, twoLayers, []string{"", ""}) }, false},
		{"docker save", "docker", func(p string) { dockerTarball(t, p, twoLayers) }, false},
		{"docker save gzipped", "docker", func(p string) { dockerTarball(t, p, twoLayers) }, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cat, _ := OpenCatalog(t.TempDir(), CatalogOptions{})
			p := filepath.Join(t.TempDir(), "image.tar")
			c.build(p)
			if c.gzipOuter {
				b, _ := os.ReadFile(p)
				os.WriteFile(p, gz(b), 0o644)
			}
			im, err := cat.ImportOCI(ctx, "app", p, Input{Kernel: kernel, Agent: agent})
			if err != nil {
				t.Fatal(err)
			}
			if im.Source.Kind != c.kind || im.Config == nil {
				t.Errorf("source %+v config %+v", im.Source, im.Config)
			}
			img := filepath.Join(im.Dir, RootfsFile)
			e2fsckClean(t, img)
			want := map[string]string{
				"/etc/keep.conf":     "v2\n",
				"/data/new":          "n",
				"/usr/bin/app-again": "#!/bin/sh\n",
				"/escaped":           "inside",
			}
			for f, body := range want {
				if got, ok := ext4Cat(t, img, f); !ok || got != body {
					t.Errorf("%s = %q (exists %v), want %q", f, got, ok, body)
				}
			}
			for _, gone := range []string{"/etc/gone.conf", "/data/old1", "/data/old2", "/data/sub", "/.wh..wh.plnk", "/etc/.wh.gone.conf", "/data/.wh..wh..opq"} {
				if _, ok := ext4Stat(t, img, gone); ok {
					t.Errorf("%s survived its whiteout", gone)
				}
			}
			// The agent went through the /sbin symlink into usr/sbin.
			if _, ok := ext4Stat(t, img, "/usr/sbin/hearth-agent"); !ok {
				t.Error("agent not installed at /usr/sbin/hearth-agent (via /sbin link)")
			}
			if st, _ := ext4Stat(t, img, "/usr/bin/app"); !strings.Contains(st, "Links: 2") {
				t.Errorf("hard link lost:\n%s", st)
			}
		})
	}
	if _, err := os.Stat("/escaped"); err == nil {
		t.Fatal("an archive symlink wrote /escaped on the host")
	}
}

func TestImportRejectsBadArchives(t *testing.T) {
	ctx := context.Background()
	cat, _ := OpenCatalog(t.TempDir(), CatalogOptions{})
	agent := fakeAgent(t, t.TempDir())
	kernel := testKernel(t)
	outside := t.TempDir()
	cases := []struct {
		name  string
		build func(p string)
		want  string
	}{
		{"climbs out", func(p string) {
			ociTarball(t, p, [][]entry{{file("../../"+filepath.Base(outside)+"/evil", "x")}}, []string{"gzip"})
		}, "climbs out"},
		{"not a tarball", func(p string) { os.WriteFile(p, []byte("hello"), 0o644) }, "not an image tarball"},
		{"no manifest", func(p string) { outerTar(t, p, map[string][]byte{"x": []byte("y")}, []string{"x"}) }, "neither manifest.json"},
		{"corrupt layer digest", func(p string) {
			ociTarball(t, p, [][]entry{{file("a", "payload-original")}}, []string{""})
			b, _ := os.ReadFile(p)
			os.WriteFile(p, bytes.Replace(b, []byte("payload-original"), []byte("payload-tampered"), 1), 0o644)
		}, "digest"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "image.tar")
			c.build(p)
			_, err := cat.ImportOCI(ctx, "bad", p, Input{Kernel: kernel, Agent: agent})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("import error = %v, want one mentioning %q", err, c.want)
			}
			if _, err := cat.Get(ctx, "bad"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("failed import left an image: %v", err)
			}
			if _, err := os.Stat(filepath.Join(outside, "evil")); err == nil {
				t.Fatal("archive wrote outside the tree")
			}
			assertNoTemporaries(t, cat.Dir())
		})
	}
}

// Layer semantics on a plain directory, no mkfs needed: whiteouts only
// hide lower layers, wherever the marker sits in the tar.
func TestApplyLayerWhiteoutOrder(t *testing.T) {
	root := t.TempDir()
	tr, err := openTree(root)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.close()
	apply := func(es []entry) {
		t.Helper()
		if err := applyLayer(tr, bytes.NewReader(layerTar(t, es))); err != nil {
			t.Fatal(err)
		}
	}
	apply([]entry{dir("d/"), file("d/lower", "l"), file("f", "lower f"), file("g", "lower g")})
	// Opaque marker after this layer's own entry; whiteout after a
	// re-creation of the same name in this layer.
	apply([]entry{file("d/upper", "u"), file("d/.wh..wh..opq", ""), file("f", "upper f"), file(".wh.f", ""), file(".wh.g", ""), file(".wh.never-existed", "")})
	if err := tr.finish(); err != nil {
		t.Fatal(err)
	}
	check := func(p string, want string, exists bool) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, p))
		if exists != (err == nil) || (exists && string(b) != want) {
			t.Errorf("%s = %q, %v; want %q exists=%v", p, b, err, want, exists)
		}
	}
	check("d/upper", "u", true)
	check("d/lower", "", false)
	check("f", "upper f", true)
	check("g", "", false)
}
