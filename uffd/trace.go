//go:build linux

package uffd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
)

// A trace is the working set of one restore: the runs of memory-file pages
// the VMM faulted in, in the order it faulted them. It is written next to
// the snapshot by the first restore and replayed by the prefetcher of later
// ones (the REAP technique). Offsets are kept in units of 4 KiB of the
// file, so one format serves both page sizes.
//
// Encoding (all integers varint, little-endian CRC):
//
//	magic "HTHTRACE" | version 1 | file size | unit (4096) | run count |
//	runs: zigzag(start - previous run's end), length |  CRC-32C of all before
//
// Runs are delta-encoded because a working set is mostly local, which
// keeps a trace of thousands of runs to a few kilobytes.
type trace struct {
	fileSize uint64
	runs     []run
}

// run is count units starting at unit start.
type run struct {
	start, count uint64
}

const (
	traceMagic   = "HTHTRACE"
	traceVersion = 1
	traceUnit    = PageSize4K
	// maxTraceRuns bounds a recording; a guest faulting more distinct
	// runs than this in the recording window is not worth replaying in
	// full anyway.
	maxTraceRuns = 1 << 20
)

var errTrace = errors.New("invalid prefetch trace")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (t *trace) pages() uint64 {
	var n uint64
	for _, r := range t.runs {
		n += r.count
	}
	return n
}

func (t *trace) marshal() []byte {
	b := make([]byte, 0, 32+4*len(t.runs))
	b = append(b, traceMagic...)
	b = binary.AppendUvarint(b, traceVersion)
	b = binary.AppendUvarint(b, t.fileSize)
	b = binary.AppendUvarint(b, traceUnit)
	b = binary.AppendUvarint(b, uint64(len(t.runs)))
	var prev uint64
	for _, r := range t.runs {
		b = binary.AppendVarint(b, int64(r.start-prev))
		b = binary.AppendUvarint(b, r.count)
		prev = r.start + r.count
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func unmarshalTrace(b []byte) (*trace, error) {
	if len(b) < len(traceMagic)+4 || string(b[:len(traceMagic)]) != traceMagic {
		return nil, fmt.Errorf("%w: bad magic", errTrace)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("%w: checksum mismatch", errTrace)
	}
	r := bytes.NewReader(body[len(traceMagic):])
	next := func(what string) (uint64, error) {
		v, err := binary.ReadUvarint(r)
		if err != nil {
			return 0, fmt.Errorf("%w: %s: %w", errTrace, what, err)
		}
		return v, nil
	}
	ver, err := next("version")
	if err != nil {
		return nil, err
	}
	if ver != traceVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", errTrace, ver, traceVersion)
	}
	t := &trace{}
	if t.fileSize, err = next("file size"); err != nil {
		return nil, err
	}
	unit, err := next("unit")
	if err != nil {
		return nil, err
	}
	if unit != traceUnit {
		return nil, fmt.Errorf("%w: unit %d, want %d", errTrace, unit, traceUnit)
	}
	n, err := next("run count")
	if err != nil {
		return nil, err
	}
	// Every run takes at least two bytes, which bounds the allocation by
	// the input size whatever the header claims.
	if n > maxTraceRuns || n > uint64(r.Len())/2 {
		return nil, fmt.Errorf("%w: %d runs in %d bytes", errTrace, n, r.Len())
	}
	units := t.fileSize / traceUnit
	t.runs = make([]run, 0, n)
	var prev uint64
	for i := uint64(0); i < n; i++ {
		d, err := binary.ReadVarint(r)
		if err != nil {
			return nil, fmt.Errorf("%w: run %d: %w", errTrace, i, err)
		}
		c, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, fmt.Errorf("%w: run %d: %w", errTrace, i, err)
		}
		start := prev + uint64(d)
		if c == 0 || start >= units || c > units-start {
			return nil, fmt.Errorf("%w: run %d [%d, +%d) is empty or outside the %d-unit file", errTrace, i, start, c, units)
		}
		t.runs = append(t.runs, run{start, c})
		prev = start + c
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errTrace, r.Len())
	}
	return t, nil
}

// readTrace loads the trace at path for a memory file of fileSize bytes. A
// missing file returns (nil, nil); a trace of another file size (the
// snapshot was replaced) is an error, so the caller re-records.
func readTrace(path string, fileSize uint64) (*trace, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read trace: %w", err)
	}
	t, err := unmarshalTrace(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if t.fileSize != fileSize {
		return nil, fmt.Errorf("%s: %w: recorded for a %d-byte memory file, this one has %d bytes", path, errTrace, t.fileSize, fileSize)
	}
	return t, nil
}

// writeTrace replaces path atomically, so concurrent restores of one
// snapshot (each recording) leave one whole trace and a reader never sees
// half of one.
func writeTrace(path string, t *trace) error {
	return writeFileAtomic(path, t.marshal(), 0o644)
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
