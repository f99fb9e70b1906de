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

	"github.com/hearth-vm/hearth/metrics"
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
// reads, the pipe fills and Firecracker drops lines. Every line feeds an
// accumulator that sums Firecracker's per-flush deltas into cumulative
// counters; the last complete line is kept too, raw.
type metricsDrain struct {
	f    *os.File
	done chan struct{}
	acc  *metrics.FirecrackerAccumulator

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
	d := &metricsDrain{f: os.NewFile(uintptr(fd), path), done: make(chan struct{}), acc: metrics.NewFirecrackerAccumulator()}
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
					if err := d.acc.Feed(l); err != nil {
						// Counted by the accumulator; log the first and
						// then every power of two, not every flush.
						if n := d.acc.ParseErrors(); n&(n-1) == 0 {
							log.Warn("firecracker metrics line not understood", "errors", n, "err", err)
						}
					}
				}
			}
			line, skipping = line[:0], false
		case errors.Is(err, bufio.ErrBufferFull):
			if !skipping {
				line = append(line, chunk...)
				if len(line) > maxMetricsLine {
					log.Warn("firecracker metrics line too long; skipped", "limit", maxMetricsLine)
					d.acc.Feed([]byte("oversized line")) // counted as a parse error
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

// Accumulator returns the drain's accumulator, or nil for no drain.
func (d *metricsDrain) Accumulator() *metrics.FirecrackerAccumulator {
	if d == nil {
		return nil
	}
	return d.acc
}

// Metrics returns the cumulative Firecracker counters of this VMM (fed by
// the metrics FIFO drain), for metrics.Source.Firecracker. It is nil when
// the FIFO is not drained (an adopted VMM whose FIFO is gone). Counters
// start at zero when the drain starts: after an adoption, deltas flushed
// while no one read are lost, which Prometheus sees as a counter reset.
// The accumulator stays readable after the VMM exits.
func (m *Machine) Metrics() *metrics.FirecrackerAccumulator { return m.metrics.Accumulator() }

// stop closes the FIFO and waits for the reader to end. Idempotent.
func (d *metricsDrain) stop() {
	if d == nil {
		return
	}
	d.f.Close()
	<-d.done
}
