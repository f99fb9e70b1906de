//go:build linux

package uffd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
)

// Page sizes the server serves. Firecracker backs guest memory with 4 KiB
// pages or, with huge_pages "2M", with 2 MiB hugetlbfs pages.
const (
	PageSize4K = 4 << 10
	PageSize2M = 2 << 20
)

// maxRegions bounds the work a hostile or broken handshake can cause;
// Firecracker sends one region per guest memory slot (a handful).
const maxRegions = 1024

// Region is one element of the JSON array a VMM sends with the
// userfaultfd: guest memory at [BaseHostVirtAddr, +Size) in the VMM holds
// the bytes at [Offset, +Size) of the memory file.
type Region struct {
	BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
	Size             uint64 `json:"size"`
	Offset           uint64 `json:"offset"`
	// PageSize is in bytes.
	PageSize uint64 `json:"page_size"`
	// PageSizeKiB is deprecated: despite its name Firecracker fills it
	// with bytes too. Older senders used KiB; both readings are accepted
	// when PageSize is absent.
	PageSizeKiB uint64 `json:"page_size_kib"`
}

// ErrRegions is wrapped by every rejection of a region list.
var ErrRegions = errors.New("invalid guest memory regions")

// ParseRegions decodes the region array of a handshake and validates it
// against a memory file of fileSize bytes (see ValidateRegions). Unknown
// fields are ignored so that newer VMMs can add some.
func ParseRegions(data []byte, fileSize uint64) ([]Region, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty message (want a JSON array of regions)", ErrRegions)
	}
	if data[0] != '[' {
		return nil, fmt.Errorf("%w: message is not a JSON array (starts with %q)", ErrRegions, truncate(data, 16))
	}
	var rs []Region
	if err := json.Unmarshal(data, &rs); err != nil {
		return nil, fmt.Errorf("%w: decode JSON: %w", ErrRegions, err)
	}
	return ValidateRegions(rs, fileSize)
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// ValidateRegions checks that every region has a supported page size, is
// aligned to it, lies inside the memory file, and that no two regions
// overlap in the VMM's address space or in the file. It returns a copy with
// PageSize resolved (from PageSizeKiB when needed).
func ValidateRegions(in []Region, fileSize uint64) ([]Region, error) {
	if len(in) == 0 {
		return nil, fmt.Errorf("%w: the list is empty", ErrRegions)
	}
	if len(in) > maxRegions {
		return nil, fmt.Errorf("%w: %d regions, at most %d are accepted", ErrRegions, len(in), maxRegions)
	}
	rs := make([]Region, len(in))
	for i, r := range in {
		ps, err := resolvePageSize(r)
		if err != nil {
			return nil, fmt.Errorf("%w: region %d: %w", ErrRegions, i, err)
		}
		r.PageSize = ps
		if err := checkRegion(r, fileSize); err != nil {
			return nil, fmt.Errorf("%w: region %d: %w", ErrRegions, i, err)
		}
		rs[i] = r
	}
	// Overlap checks on sorted copies: in the VMM's address space two
	// regions would make a fault ambiguous; in the file they would mean
	// two guest ranges share backing bytes, which no snapshot produces.
	idx := make([]int, len(rs))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return rs[idx[a]].BaseHostVirtAddr < rs[idx[b]].BaseHostVirtAddr })
	for k := 1; k < len(idx); k++ {
		p, q := rs[idx[k-1]], rs[idx[k]]
		if p.BaseHostVirtAddr+p.Size > q.BaseHostVirtAddr {
			return nil, fmt.Errorf("%w: regions %d and %d overlap in the VMM's address space ([%#x, %#x) and [%#x, %#x))",
				ErrRegions, idx[k-1], idx[k], p.BaseHostVirtAddr, p.BaseHostVirtAddr+p.Size, q.BaseHostVirtAddr, q.BaseHostVirtAddr+q.Size)
		}
	}
	sort.Slice(idx, func(a, b int) bool { return rs[idx[a]].Offset < rs[idx[b]].Offset })
	for k := 1; k < len(idx); k++ {
		p, q := rs[idx[k-1]], rs[idx[k]]
		if p.Offset+p.Size > q.Offset {
			return nil, fmt.Errorf("%w: regions %d and %d overlap in the memory file ([%#x, %#x) and [%#x, %#x))",
				ErrRegions, idx[k-1], idx[k], p.Offset, p.Offset+p.Size, q.Offset, q.Offset+q.Size)
		}
	}
	return rs, nil
}

func supportedPageSize(ps uint64) bool { return ps == PageSize4K || ps == PageSize2M }

// resolvePageSize reads page_size, falling back to the deprecated
// page_size_kib, which Firecracker fills with bytes and older senders with
// KiB. The two readings cannot be confused: no supported size in bytes is
// a supported size in KiB times 1024 of a different size.
func resolvePageSize(r Region) (uint64, error) {
	ps, kib := r.PageSize, r.PageSizeKiB
	if ps == 0 {
		switch {
		case kib == 0:
			return 0, errors.New("no page size (page_size and page_size_kib are both absent or 0)")
		case supportedPageSize(kib):
			ps = kib
		case kib <= math.MaxUint64/1024 && supportedPageSize(kib*1024):
			ps = kib * 1024
		default:
			return 0, fmt.Errorf("page_size_kib %d is neither a supported page size in bytes nor in KiB (want 4096 or 2097152 bytes)", kib)
		}
	} else if kib != 0 && kib != ps && (kib > math.MaxUint64/1024 || kib*1024 != ps) {
		return 0, fmt.Errorf("page_size %d and page_size_kib %d disagree", ps, kib)
	}
	if !supportedPageSize(ps) {
		return 0, fmt.Errorf("page size %d is not supported (want 4096 or 2097152)", ps)
	}
	return ps, nil
}

func checkRegion(r Region, fileSize uint64) error {
	ps := r.PageSize
	switch {
	case r.Size == 0:
		return errors.New("size is 0")
	case r.BaseHostVirtAddr%ps != 0:
		return fmt.Errorf("base_host_virt_addr %#x is not aligned to the page size %d", r.BaseHostVirtAddr, ps)
	case r.Size%ps != 0:
		return fmt.Errorf("size %#x is not a multiple of the page size %d", r.Size, ps)
	case r.Offset%ps != 0:
		return fmt.Errorf("offset %#x is not aligned to the page size %d", r.Offset, ps)
	case r.BaseHostVirtAddr > math.MaxUint64-r.Size:
		return fmt.Errorf("base_host_virt_addr %#x + size %#x overflows", r.BaseHostVirtAddr, r.Size)
	case r.Offset > fileSize || r.Size > fileSize-r.Offset:
		return fmt.Errorf("file range at offset %#x of size %#x extends beyond the memory file (%d bytes)", r.Offset, r.Size, fileSize)
	}
	return nil
}
