package firecracker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// maxMetricsLine bounds one metrics line; Firecracker's lines are a few
// KiB. A longer line is skipped rather than buffered without limit.
const maxMetricsLine = 1 << 20

// makeFIFO creates the metrics FIFO at path, replacing a stale one.
func makeFIFO(path string, uid, gid int) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale metrics fifo: %w", err)
	}
	if err := unix.Mkfifo(path, 0o600); err != nil {
		return fmt.Errorf("create metrics fifo %s: %w", path, err)
	}
	if uid >= 0 {
		if err := os.Lchown(path, uid, gid); err != nil {
			return fmt.Errorf("chown metrics fifo: %w", err)
		}
	}
	return nil
}

// metricsDrain reads Firecracker's metrics FIFO continuously: when nobody
// reads, the pipe fills and Firecracker drops lines. It keeps the last
// complete line for whoever wants the current numbers.
type metricsDrain struct {
	f    *os.File
	done chan struct{}

	mu   sync.Mutex
	last []byte
}

// openMetricsDrain opens the FIFO read-write and non-blocking. Read-write
// means the open never blocks waiting for a writer and the reader never
// sees EOF when Firecracker closes and reopens its end; non-blocking puts
// the fd in Go's poller, so Close interrupts a pending Read.
func openMetricsDrain(path string, log *slog.Logger) (*metricsDrain, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open metrics fifo %s: %w", path, err)
	}
	d := &metricsDrain{f: os.NewFile(uintptr(fd), path), done: make(chan struct{})}
	go d.run(log)
	return d, nil
}

func (d *metricsDrain) run(log *slog.Logger) {
	defer close(d.done)
	r := bufio.NewReaderSize(d.f, 64<<10)
	var line []byte
	skipping := false
	for {
		chunk, err := r.ReadSlice('\n')
		switch {
		case err == nil:
			if !skipping {
				line = append(line, chunk...)
				if l := bytes.TrimSpace(line); len(l) > 0 {
					d.mu.Lock()
					d.last = append(d.last[:0], l...)
					d.mu.Unlock()
				}
			}
			line, skipping = line[:0], false
		case errors.Is(err, bufio.ErrBufferFull):
			if !skipping {
				line = append(line, chunk...)
				if len(line) > maxMetricsLine {
					log.Warn("firecracker metrics line too long; skipped", "limit", maxMetricsLine)
					line, skipping = line[:0], true
				}
			}
		default:
			if !errors.Is(err, os.ErrClosed) && !errors.Is(err, io.EOF) {
				log.Warn("firecracker metrics fifo read failed", "err", err)
			}
			return
		}
	}
}

// Last returns a copy of the last complete metrics line, or nil.
func (d *metricsDrain) Last() []byte {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.last == nil {
		return nil
	}
	return append([]byte(nil), d.last...)
}

// stop closes the FIFO and waits for the reader to end. Idempotent.
func (d *metricsDrain) stop() {
	if d == nil {
		return
	}
	d.f.Close()
	<-d.done
}
