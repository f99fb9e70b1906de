package fcsim

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	pageSize = 4096

	// x86_64 guest memory layout: RAM below the 32-bit MMIO gap, then
	// the rest above 4 GiB, as Firecracker lays it out.
	mmioGapStart = 0xD000_0000 // 3.25 GiB
	above4G      = 1 << 32

	guestMagic = "FCSIMGST"
)

// memRegion is one guest RAM region backed by a host mapping.
type memRegion struct {
	GuestAddr  uint64 `json:"guest_addr"`
	Size       uint64 `json:"size"`
	FileOffset uint64 `json:"file_offset"` // offset in the memory file
	data       []byte
}

// guestMemory is the VM's RAM: anonymous private mappings at boot and for
// Uffd restores, private mappings of the memory file for File restores,
// exactly the kinds of memory Firecracker uses.
type guestMemory struct {
	regions  []*memRegion
	size     uint64
	pageSize uint64 // reported page size (2 MiB with huge_pages 2M)
	dirty    []uint64
	uffd     int // -1 unless restored through userfaultfd
	// handlerConn is the socket to the page-fault handler, held open
	// for the VM's lifetime like Firecracker does.
	handlerConn io.Closer
}

// layout splits size bytes into x86_64 regions.
func layout(size uint64) []*memRegion {
	if size <= mmioGapStart {
		return []*memRegion{{GuestAddr: 0, Size: size}}
	}
	return []*memRegion{
		{GuestAddr: 0, Size: mmioGapStart},
		{GuestAddr: above4G, Size: size - mmioGapStart, FileOffset: mmioGapStart},
	}
}

// newAnonMemory maps size bytes of anonymous private memory. MAP_NORESERVE
// mirrors Firecracker: untouched guest pages cost nothing.
func newAnonMemory(size uint64, hugePages string) (*guestMemory, error) {
	m := &guestMemory{size: size, pageSize: pageSize, uffd: -1}
	if hugePages == "2M" {
		m.pageSize = 2 << 20
	}
	for _, r := range layout(size) {
		data, err := unix.Mmap(-1, 0, int(r.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			m.close()
			return nil, fmt.Errorf("mmap %d bytes of guest memory: %w", r.Size, err)
		}
		r.data = data
		m.regions = append(m.regions, r)
	}
	m.dirty = make([]uint64, (m.pages()+63)/64)
	return m, nil
}

// newFileMemory maps the snapshot memory file MAP_PRIVATE, as Firecracker's
// File backend does: pages load on demand from the page cache and guest
// writes go to private copies.
func newFileMemory(path string, size uint64, hugePages string) (*guestMemory, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open memory file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat memory file: %w", err)
	}
	if uint64(st.Size()) < size {
		return nil, fmt.Errorf("memory file %s is %d bytes, the snapshot needs %d", path, st.Size(), size)
	}
	m := &guestMemory{size: size, pageSize: pageSize, uffd: -1}
	if hugePages == "2M" {
		m.pageSize = 2 << 20
	}
	for _, r := range layout(size) {
		data, err := unix.Mmap(int(f.Fd()), int64(r.FileOffset), int(r.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_NORESERVE)
		if err != nil {
			m.close()
			return nil, fmt.Errorf("mmap memory file: %w", err)
		}
		r.data = data
		m.regions = append(m.regions, r)
	}
	m.dirty = make([]uint64, (m.pages()+63)/64)
	return m, nil
}

func (m *guestMemory) close() {
	if m == nil {
		return
	}
	for _, r := range m.regions {
		if r.data != nil {
			_ = unix.Munmap(r.data)
			r.data = nil
		}
	}
	if m.uffd >= 0 {
		unix.Close(m.uffd)
		m.uffd = -1
	}
	if m.handlerConn != nil {
		m.handlerConn.Close()
		m.handlerConn = nil
	}
}

func (m *guestMemory) pages() uint64 { return m.size / pageSize }

// page returns the bytes of page index i (in memory-file order).
func (m *guestMemory) page(i uint64) []byte {
	off := i * pageSize
	for _, r := range m.regions {
		if off >= r.FileOffset && off < r.FileOffset+r.Size {
			o := off - r.FileOffset
			return r.data[o : o+pageSize]
		}
	}
	return nil
}

func (m *guestMemory) markDirty(i uint64) { m.dirty[i/64] |= 1 << (i % 64) }

func (m *guestMemory) isDirty(i uint64) bool { return m.dirty[i/64]&(1<<(i%64)) != 0 }

func (m *guestMemory) clearDirty() { clear(m.dirty) }

func (m *guestMemory) dirtyCount() int {
	n := 0
	for i := uint64(0); i < m.pages(); i++ {
		if m.isDirty(i) {
			n++
		}
	}
	return n
}

// residentPages is the mincore view Firecracker uses for Diff snapshots
// without dirty-page tracking.
func (m *guestMemory) residentPages() ([]bool, error) {
	out := make([]bool, 0, m.pages())
	for _, r := range m.regions {
		vec, err := mincore(r.data, pageSize)
		if err != nil {
			return nil, err
		}
		for _, v := range vec {
			out = append(out, v&1 != 0)
		}
	}
	return out, nil
}

var zeroPage = make([]byte, pageSize)

// memDigest describes guest memory so that a restore can prove it got the
// same bytes back: a SHA-256 over all of memory in file order plus a CRC of
// every non-zero page, which pinpoints the first page that differs.
type memDigest struct {
	SHA256       string      `json:"sha256"`
	NonZeroPages [][2]uint64 `json:"nonzero_pages"` // [page index, crc32c]
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// touchSink keeps touchAll's loads alive: the compiler drops loads whose
// value is unused.
var touchSink atomic.Uint32

// touchAll reads one byte of every page with plain Go loads. On a Uffd
// restore each read is a real page fault served by the handler process.
// Plain loads (not assembly, such as the SHA-256 code) keep the goroutine
// asynchronously preemptible while it waits in a fault, so a stuck handler
// cannot stall the runtime's stop-the-world phases.
//
//go:noinline
func (m *guestMemory) touchAll(progress *atomic.Uint64) {
	var acc byte
	for _, r := range m.regions {
		for off := uint64(0); off < r.Size; off += pageSize {
			acc ^= r.data[off]
			if progress != nil {
				progress.Add(1)
			}
		}
	}
	touchSink.Store(uint32(acc))
}

func (m *guestMemory) digest() memDigest {
	// Zero pages are skipped (memcmp is far cheaper than SHA-256) and each
	// non-zero page is hashed with its index, which identifies memory just
	// as well.
	h := sha256.New()
	d := memDigest{NonZeroPages: [][2]uint64{}}
	var idx [8]byte
	for i := uint64(0); i < m.pages(); i++ {
		p := m.page(i)
		if bytes.Equal(p, zeroPage) {
			continue
		}
		binary.LittleEndian.PutUint64(idx[:], i)
		h.Write(idx[:])
		h.Write(p)
		d.NonZeroPages = append(d.NonZeroPages, [2]uint64{i, uint64(crc32.Checksum(p, castagnoli))})
	}
	d.SHA256 = hex.EncodeToString(h.Sum(nil))
	return d
}

// touchPages faults in the listed pages only (see touchAll).
//
//go:noinline
func (m *guestMemory) touchPages(pages [][2]uint64, progress *atomic.Uint64) {
	var acc byte
	for _, p := range pages {
		if pg := m.page(p[0]); pg != nil {
			acc ^= pg[0]
			progress.Add(1)
		}
	}
	touchSink.Store(uint32(acc))
}

// verifyPages checks only the pages the snapshot says are non-zero, so
// that the never-written rest of memory is not faulted in.
func (m *guestMemory) verifyPages(want memDigest) error {
	for _, p := range want.NonZeroPages {
		pg := m.page(p[0])
		if pg == nil || uint64(crc32.Checksum(pg, castagnoli)) != p[1] {
			return fmt.Errorf("guest memory differs from the snapshot: page %d (offset %#x) has other contents", p[0], p[0]*pageSize)
		}
	}
	return nil
}

// verify compares memory with a digest taken at snapshot time.
func (m *guestMemory) verify(want memDigest) error {
	got := m.digest()
	if got.SHA256 == want.SHA256 {
		return nil
	}
	wantCRC := map[uint64]uint64{}
	for _, p := range want.NonZeroPages {
		wantCRC[p[0]] = p[1]
	}
	for _, p := range got.NonZeroPages {
		w, ok := wantCRC[p[0]]
		if !ok {
			return fmt.Errorf("guest memory differs from the snapshot: page %d (offset %#x) should be zero", p[0], p[0]*pageSize)
		}
		if w != p[1] {
			return fmt.Errorf("guest memory differs from the snapshot: page %d (offset %#x) has other contents", p[0], p[0]*pageSize)
		}
		delete(wantCRC, p[0])
	}
	for idx := range wantCRC {
		return fmt.Errorf("guest memory differs from the snapshot: page %d (offset %#x) is zero but should not be", idx, idx*pageSize)
	}
	return errors.New("guest memory differs from the snapshot (sha256 mismatch)")
}

// writeMemoryFile writes guest memory to path. Full snapshots write every
// non-zero page into a file truncated to the memory size (holes read as
// zeros). Diff snapshots write exactly the selected pages, zero or not,
// because a merge copies only the data ranges of the diff over its base.
// failAfter >= 0 simulates a full disk after that many pages.
func (m *guestMemory) writeMemoryFile(path string, selected func(i uint64) bool, diff bool, failAfter int) (int, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("open memory file: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(int64(m.size)); err != nil {
		return 0, fmt.Errorf("size memory file: %w", err)
	}
	written := 0
	for i := uint64(0); i < m.pages(); i++ {
		p := m.page(i)
		if diff {
			if !selected(i) {
				continue
			}
		} else if bytes.Equal(p, zeroPage) {
			continue
		}
		if failAfter >= 0 && written >= failAfter {
			return written, fmt.Errorf("write memory file: %w", unix.ENOSPC)
		}
		if _, err := f.WriteAt(p, int64(i*pageSize)); err != nil {
			return written, fmt.Errorf("write memory file: %w", err)
		}
		written++
	}
	if err := f.Sync(); err != nil {
		return written, fmt.Errorf("sync memory file: %w", err)
	}
	return written, nil
}

// Guest content. The simulated guest writes a header page and a pattern in
// a few pages spread over memory at boot, then keeps a counter ticking
// while it runs, so memory has recognisable, verifiable contents.

const (
	hdrMagicOff   = 0
	hdrIDOff      = 16 // 64 bytes: VM id at first boot
	hdrBootOff    = 80 // unix nanoseconds of first boot
	hdrCounterOff = 88
	hdrSeedOff    = 96
	patternPages  = 8
)

func patternPage(total uint64, k int) uint64 {
	return 1 + uint64(k)*(total-1)/patternPages
}

func (m *guestMemory) guestBoot(id string) {
	hdr := m.page(0)
	copy(hdr[hdrMagicOff:], guestMagic)
	copy(hdr[hdrIDOff:hdrIDOff+64], id)
	binary.LittleEndian.PutUint64(hdr[hdrBootOff:], uint64(time.Now().UnixNano()))
	seed := uint64(crc32.Checksum([]byte(id), castagnoli)) | 1
	binary.LittleEndian.PutUint64(hdr[hdrSeedOff:], seed)
	m.markDirty(0)
	total := m.pages()
	for k := 0; k < patternPages; k++ {
		idx := patternPage(total, k)
		if idx >= total {
			continue
		}
		p := m.page(idx)
		x := seed ^ idx
		for w := 0; w < pageSize; w += 8 {
			// xorshift64: cheap, deterministic, never all zero.
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			binary.LittleEndian.PutUint64(p[w:], x)
		}
		m.markDirty(idx)
	}
}

// guestTick is one unit of guest work: bump the counter and write it into a
// rotating work page, dirtying both.
func (m *guestMemory) guestTick() uint64 {
	hdr := m.page(0)
	c := binary.LittleEndian.Uint64(hdr[hdrCounterOff:]) + 1
	binary.LittleEndian.PutUint64(hdr[hdrCounterOff:], c)
	m.markDirty(0)
	total := m.pages()
	if total > 32 {
		idx := 2 + (c%16)*(total-3)/16
		binary.LittleEndian.PutUint64(m.page(idx)[8*(c%512):], c)
		m.markDirty(idx)
	}
	return c
}

// guestHeader reads what the guest wrote into its header page.
func (m *guestMemory) guestHeader() (id string, counter uint64, ok bool) {
	hdr := m.page(0)
	if string(hdr[:len(guestMagic)]) != guestMagic {
		return "", 0, false
	}
	id = string(bytes.TrimRight(hdr[hdrIDOff:hdrIDOff+64], "\x00"))
	return id, binary.LittleEndian.Uint64(hdr[hdrCounterOff:]), true
}

// uffdRegions describes the mappings for the page-fault handler.
func (m *guestMemory) uffdRegions() []GuestRegionUffdMapping {
	out := make([]GuestRegionUffdMapping, 0, len(m.regions))
	for _, r := range m.regions {
		out = append(out, GuestRegionUffdMapping{
			BaseHostVirtAddr: uint64(uintptrOf(r.data)),
			Size:             r.Size,
			Offset:           r.FileOffset,
			PageSize:         m.pageSize,
			PageSizeKiB:      m.pageSize / 1024,
		})
	}
	return out
}
