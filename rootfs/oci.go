package rootfs

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"strings"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// archive gives random access to the members of an image tarball (an OCI
// image layout or `docker save` output), so blobs can be read in the
// order the manifest says without extracting the tarball.
type archive struct {
	f       *os.File
	members map[string]member
}

type member struct {
	off, size int64
	link      string // symlink target (docker save links duplicate layers)
}

// posReader tracks the offset of an io.ReadSeeker so the data offset of
// each tar member is known; it keeps Seek so tar skips data cheaply.
type posReader struct {
	r   io.ReadSeeker
	pos int64
}

func (p *posReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.pos += int64(n)
	return n, err
}

func (p *posReader) Seek(off int64, whence int) (int64, error) {
	n, err := p.r.Seek(off, whence)
	if err == nil {
		p.pos = n
	}
	return n, err
}

// openArchive indexes the tarball at p. A gzip-compressed tarball is
// first decompressed into scratch (a directory the caller removes).
func openArchive(ctx context.Context, p, scratch string) (*archive, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		f.Seek(0, io.SeekStart)
		zr, err := gzip.NewReader(bufio.NewReaderSize(f, 1<<20))
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		plain, err := os.CreateTemp(scratch, "image-*.tar")
		if err != nil {
			f.Close()
			return nil, err
		}
		_, err = io.Copy(plain, &ctxReader{ctx, zr})
		f.Close()
		if err != nil {
			plain.Close()
			return nil, fmt.Errorf("decompress %s: %w", p, err)
		}
		f = plain
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	a := &archive{f: f, members: map[string]member{}}
	pr := &posReader{r: f}
	tr := tar.NewReader(pr)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: not an image tarball: %w", p, err)
		}
		name := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		switch hdr.Typeflag {
		case tar.TypeReg:
			a.members[name] = member{off: pr.pos, size: hdr.Size}
		case tar.TypeSymlink:
			a.members[name] = member{link: hdr.Linkname}
		case tar.TypeLink:
			a.members[name] = member{link: "/" + strings.TrimPrefix(path.Clean("/"+hdr.Linkname), "/")}
		}
	}
	return a, nil
}

func (a *archive) close() { a.f.Close() }

// open returns a reader over a member, following member symlinks.
func (a *archive) open(name string) (*io.SectionReader, error) {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	for hops := 0; hops < 8; hops++ {
		m, ok := a.members[name]
		if !ok {
			return nil, fmt.Errorf("image tarball has no %s", name)
		}
		if m.link == "" {
			return io.NewSectionReader(a.f, m.off, m.size), nil
		}
		if strings.HasPrefix(m.link, "/") {
			name = strings.TrimPrefix(path.Clean(m.link), "/")
		} else {
			name = strings.TrimPrefix(path.Clean("/"+path.Join(path.Dir(name), m.link)), "/")
		}
	}
	return nil, fmt.Errorf("image tarball: too many links resolving %s", name)
}

func (a *archive) readJSON(name string, v any) error {
	r, err := a.open(name)
	if err != nil {
		return err
	}
	if r.Size() > 16<<20 {
		return fmt.Errorf("image tarball: %s is implausibly large (%d bytes)", name, r.Size())
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("image tarball: %s: %w", name, err)
	}
	return nil
}

// ociDescriptor is an OCI content descriptor.
type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
	} `json:"platform,omitempty"`
}

type ociIndex struct {
	MediaType string          `json:"mediaType"`
	Manifests []ociDescriptor `json:"manifests"`
}

type ociManifest struct {
	MediaType string          `json:"mediaType"`
	Config    ociDescriptor   `json:"config"`
	Layers    []ociDescriptor `json:"layers"`
	Manifests []ociDescriptor `json:"manifests"` // set when this is an index
}

type dockerManifest struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

type imageConfigFile struct {
	Config struct {
		Entrypoint []string `json:"Entrypoint"`
		Cmd        []string `json:"Cmd"`
		Env        []string `json:"Env"`
		WorkingDir string   `json:"WorkingDir"`
		User       string   `json:"User"`
	} `json:"config"`
	RootFS struct {
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// layerRef is one layer to apply: a member of the tarball and the digests
// that vouch for it (either may be empty when the format has none).
type layerRef struct {
	member     string
	digest     string // of the blob as stored (compressed)
	diffID     string // of the uncompressed tar
	mediaType  string
	sourceDesc string
}

// imagePlan is what an image tarball says to do.
type imagePlan struct {
	kind   string // "oci" or "docker"
	ref    string // the tag chosen, if any
	layers []layerRef
	config *ImageConfig
}

// planImage reads the tarball's manifests and picks the image to import:
// the one tagged tag, or the only one (for OCI indexes, the linux/amd64
// entry of a multi-platform image).
func planImage(a *archive, tag string) (*imagePlan, error) {
	if _, ok := a.members["manifest.json"]; ok {
		return planDocker(a, tag)
	}
	if _, ok := a.members["index.json"]; ok {
		return planOCI(a, tag)
	}
	return nil, errors.New("image tarball has neither manifest.json (docker save) nor index.json (OCI layout)")
}

func planDocker(a *archive, tag string) (*imagePlan, error) {
	var ms []dockerManifest
	if err := a.readJSON("manifest.json", &ms); err != nil {
		return nil, err
	}
	var pick *dockerManifest
	var tags []string
	for i := range ms {
		tags = append(tags, ms[i].RepoTags...)
		for _, t := range ms[i].RepoTags {
			if tag != "" && (t == tag || strings.TrimPrefix(t, "docker.io/library/") == tag) {
				pick = &ms[i]
			}
		}
	}
	switch {
	case pick != nil:
	case tag != "":
		return nil, fmt.Errorf("image tarball has no image tagged %q (it has %s)", tag, strings.Join(tags, ", "))
	case len(ms) == 1:
		pick = &ms[0]
	default:
		return nil, fmt.Errorf("image tarball holds %d images; choose one by tag (%s)", len(ms), strings.Join(tags, ", "))
	}
	plan := &imagePlan{kind: "docker", ref: tag}
	if tag == "" && len(pick.RepoTags) > 0 {
		plan.ref = pick.RepoTags[0]
	}
	var cfg imageConfigFile
	if err := a.readJSON(pick.Config, &cfg); err != nil {
		return nil, err
	}
	plan.config = configOf(cfg)
	for i, l := range pick.Layers {
		ref := layerRef{member: l, sourceDesc: l, digest: blobDigest(l)}
		if i < len(cfg.RootFS.DiffIDs) {
			ref.diffID = cfg.RootFS.DiffIDs[i]
		}
		plan.layers = append(plan.layers, ref)
	}
	return plan, nil
}

// blobDigest returns the digest a member name of the form
// blobs/sha256/<hex> implies ("" for other names).
func blobDigest(member string) string {
	if h, ok := strings.CutPrefix(member, "blobs/sha256/"); ok && len(h) == 64 {
		return "sha256:" + h
	}
	return ""
}

func blobPath(d string) (string, error) {
	alg, h, ok := strings.Cut(d, ":")
	if !ok || alg != "sha256" || len(h) != 64 {
		return "", fmt.Errorf("unsupported digest %q (want sha256:<hex>)", d)
	}
	return "blobs/sha256/" + h, nil
}

func planOCI(a *archive, tag string) (*imagePlan, error) {
	var idx ociIndex
	if err := a.readJSON("index.json", &idx); err != nil {
		return nil, err
	}
	desc, err := pickManifest(idx.Manifests, tag)
	if err != nil {
		return nil, err
	}
	plan := &imagePlan{kind: "oci", ref: desc.Annotations["org.opencontainers.image.ref.name"]}
	if plan.ref == "" {
		plan.ref = desc.Annotations["io.containerd.image.name"]
	}
	// Nested indexes (multi-platform images) down to one manifest.
	for depth := 0; ; depth++ {
		if depth > 4 {
			return nil, errors.New("image tarball: index nesting too deep")
		}
		p, err := blobPath(desc.Digest)
		if err != nil {
			return nil, err
		}
		var m ociManifest
		if err := readVerifiedJSON(a, p, desc.Digest, &m); err != nil {
			return nil, err
		}
		if len(m.Manifests) > 0 || strings.Contains(desc.MediaType, "index") || strings.Contains(desc.MediaType, "manifest.list") {
			if desc, err = pickManifest(m.Manifests, ""); err != nil {
				return nil, err
			}
			continue
		}
		cp, err := blobPath(m.Config.Digest)
		if err != nil {
			return nil, err
		}
		var cfg imageConfigFile
		if err := readVerifiedJSON(a, cp, m.Config.Digest, &cfg); err != nil {
			return nil, err
		}
		plan.config = configOf(cfg)
		for i, l := range m.Layers {
			lp, err := blobPath(l.Digest)
			if err != nil {
				return nil, err
			}
			if strings.Contains(l.MediaType, "nondistributable") || strings.Contains(l.MediaType, "foreign") {
				return nil, fmt.Errorf("layer %s is foreign (%s) and not in the tarball", l.Digest, l.MediaType)
			}
			ref := layerRef{member: lp, digest: l.Digest, mediaType: l.MediaType, sourceDesc: l.Digest}
			if i < len(cfg.RootFS.DiffIDs) {
				ref.diffID = cfg.RootFS.DiffIDs[i]
			}
			plan.layers = append(plan.layers, ref)
		}
		return plan, nil
	}
}

func pickManifest(ds []ociDescriptor, tag string) (ociDescriptor, error) {
	var names []string
	for _, d := range ds {
		n := d.Annotations["org.opencontainers.image.ref.name"]
		if n == "" {
			n = d.Annotations["io.containerd.image.name"]
		}
		if tag != "" && (n == tag || strings.HasSuffix(n, ":"+tag)) {
			return d, nil
		}
		if n != "" {
			names = append(names, n)
		}
	}
	if tag != "" {
		return ociDescriptor{}, fmt.Errorf("image tarball has no image named %q (it has %s)", tag, strings.Join(names, ", "))
	}
	if len(ds) == 1 {
		return ds[0], nil
	}
	var amd64 []ociDescriptor
	for _, d := range ds {
		if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == "amd64" {
			amd64 = append(amd64, d)
		}
	}
	if len(amd64) == 1 {
		return amd64[0], nil
	}
	if len(ds) == 0 {
		return ociDescriptor{}, errors.New("image tarball index lists no manifests")
	}
	return ociDescriptor{}, fmt.Errorf("image tarball holds %d images; choose one by name (%s)", len(ds), strings.Join(names, ", "))
}

func readVerifiedJSON(a *archive, member, want string, v any) error {
	r, err := a.open(member)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(io.LimitReader(r, 16<<20))
	if err != nil {
		return err
	}
	if got := "sha256:" + hexSum(b); got != want {
		return fmt.Errorf("image tarball: %s has digest %s, expected %s", member, got, want)
	}
	return json.Unmarshal(b, v)
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func configOf(c imageConfigFile) *ImageConfig {
	ic := &ImageConfig{Entrypoint: c.Config.Entrypoint, Cmd: c.Config.Cmd, Env: c.Config.Env, WorkingDir: c.Config.WorkingDir, User: c.Config.User}
	if ic.Entrypoint == nil && ic.Cmd == nil && ic.Env == nil && ic.WorkingDir == "" && ic.User == "" {
		return nil
	}
	return ic
}

// applyImage applies every layer of plan to t, in order, verifying each
// layer's digests as it streams.
func applyImage(ctx context.Context, t *tree, a *archive, plan *imagePlan, progress func(string)) error {
	for i, l := range plan.layers {
		progress(fmt.Sprintf("applying layer %d/%d (%s)", i+1, len(plan.layers), shortDigest(l.sourceDesc)))
		if err := applyLayerRef(ctx, t, a, l); err != nil {
			return fmt.Errorf("layer %d (%s): %w", i+1, l.sourceDesc, err)
		}
	}
	return t.finish()
}

func shortDigest(d string) string {
	if _, h, ok := strings.Cut(d, ":"); ok && len(h) > 12 {
		return h[:12]
	}
	return d
}

func applyLayerRef(ctx context.Context, t *tree, a *archive, l layerRef) error {
	sr, err := a.open(l.member)
	if err != nil {
		return err
	}
	blobHash := sha256.New()
	br := bufio.NewReaderSize(io.TeeReader(&ctxReader{ctx, sr}, blobHash), 1<<20)
	magic, _ := br.Peek(4)
	var plain io.Reader = br
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		defer zr.Close()
		plain = zr
	case len(magic) == 4 && bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return err
		}
		defer zr.Close()
		plain = zr
	}
	diffHash := sha256.New()
	tee := io.TeeReader(plain, diffHash)
	if err := applyLayer(t, tee); err != nil {
		return err
	}
	// Digests cover the whole stream, past tar's end-of-archive blocks.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return err
	}
	if err := checkDigest("blob", l.digest, blobHash); err != nil {
		return err
	}
	return checkDigest("uncompressed layer", l.diffID, diffHash)
}

func checkDigest(what, want string, h hash.Hash) error {
	if want == "" {
		return nil
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if !strings.HasPrefix(want, "sha256:") {
		return nil // another algorithm: nothing to compare against
	}
	if got != want {
		return fmt.Errorf("%s digest is %s, the image says %s", what, got, want)
	}
	return nil
}

// Whiteout markers of the OCI image spec (and docker's AUFS heritage).
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	whiteoutMeta   = ".wh..wh."
)

// applyLayer applies one uncompressed layer tar to t: ".wh.<name>" deletes
// <name> from the lower layers, ".wh..wh..opq" in a directory hides
// everything lower layers put there, and every other entry is created or
// replaces what was there.
func applyLayer(t *tree, r io.Reader) error {
	tr := tar.NewReader(r)
	// created holds what this layer made (and their parents), which an
	// opaque marker — whatever its position in the tar — must not hide.
	created := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		rel, err := cleanRel(hdr.Name)
		if err != nil {
			return err
		}
		base, dir := path.Base(rel), path.Dir(rel)
		if dir == "." {
			dir = ""
		}
		switch {
		case base == whiteoutOpaque:
			if err := t.opaque(dir, created); err != nil {
				return fmt.Errorf("opaque whiteout in /%s: %w", dir, err)
			}
			continue
		case strings.HasPrefix(base, whiteoutMeta):
			continue // AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs)
		case strings.HasPrefix(base, whiteoutPrefix):
			target := path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix))
			if created[target] {
				continue // whiteouts hide lower layers, not this one
			}
			if err := t.whiteout(target); err != nil {
				return fmt.Errorf("whiteout /%s: %w", rel, err)
			}
			continue
		}
		for p := rel; p != "" && p != "."; p = path.Dir(p) {
			created[p] = true
		}
		if err := t.applyHeader(rel, hdr, tr); err != nil {
			return fmt.Errorf("/%s: %w", rel, err)
		}
	}
	return nil
}

// whiteout removes guest path rel if it exists.
func (t *tree) whiteout(rel string) error {
	if rel == "" {
		return errors.New("cannot white out the root")
	}
	d, err := t.dir(path.Dir(rel), false)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil // nothing below a missing or non-directory parent
	}
	if err != nil {
		return err
	}
	return removeEntry(d + "/" + path.Base(rel))
}

// opaque empties directory rel of everything this layer did not create.
func (t *tree) opaque(rel string, created map[string]bool) error {
	d, err := t.dir(rel, true)
	if err != nil {
		return err
	}
	ents, err := os.ReadDir(d)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if created[path.Join(rel, e.Name())] {
			continue
		}
		if err := removeEntry(d + "/" + e.Name()); err != nil {
			return err
		}
	}
	return nil
}

// ctxReader fails reads once ctx is done, so long imports can be cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
