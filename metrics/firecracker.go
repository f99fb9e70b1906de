package metrics

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrMalformedLine is wrapped by Feed's error for a line that is not a
// Firecracker metrics document.
var ErrMalformedLine = errors.New("malformed firecracker metrics line")

// FirecrackerAccumulator turns Firecracker's per-flush metrics lines into
// cumulative counters. Feed it every line read from the metrics FIFO, in
// order. It is safe for concurrent use.
//
// Keys are the JSON paths of the numeric leaves joined with '.', e.g.
// "block_rootfs.read_bytes" or "vcpu.exit_io_in_agg.sum_us". Top-level
// "utc_timestamp_ms" is the flush time, not a metric; "id" and
// "properties" (optional, operator-defined) are ignored.
type FirecrackerAccumulator struct {
	mu          sync.Mutex
	counters    map[string]uint64
	gauges      map[string]uint64
	lines       uint64
	parseErrors uint64
	lastFlush   time.Time
	lastErr     string
}

// NewFirecrackerAccumulator returns an empty accumulator.
func NewFirecrackerAccumulator() *FirecrackerAccumulator {
	return &FirecrackerAccumulator{counters: map[string]uint64{}, gauges: map[string]uint64{}}
}

// FirecrackerMetrics is a copy of an accumulator's state.
type FirecrackerMetrics struct {
	// Counters are sums of the per-flush deltas since the VMM started
	// (or since hearth adopted it: deltas flushed while no one read the
	// FIFO are lost).
	Counters map[string]uint64 `json:"counters"`
	// Gauges are the last value of Firecracker's absolute metrics.
	Gauges map[string]uint64 `json:"gauges"`
	// Lines is the number of lines applied; ParseErrors the number
	// rejected.
	Lines       uint64 `json:"lines"`
	ParseErrors uint64 `json:"parse_errors"`
	// LastFlush is the utc_timestamp_ms of the last applied line.
	LastFlush time.Time `json:"last_flush,omitzero"`
	LastError string    `json:"last_error,omitempty"`
}

// Feed applies one line. A malformed line changes nothing but the parse
// error count, and the error says why (callers log it; it is not fatal).
// Blank lines are ignored.
func (a *FirecrackerAccumulator) Feed(line []byte) error {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return nil
	}
	ts, leaves, err := parseFirecrackerLine(line)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.parseErrors++
		a.lastErr = err.Error()
		return err
	}
	a.lines++
	if ts > 0 {
		a.lastFlush = time.UnixMilli(ts)
	}
	for _, l := range leaves {
		if isFirecrackerGauge(l.key) {
			a.gauges[l.key] = l.val
		} else {
			a.counters[l.key] += l.val
		}
	}
	return nil
}

// Snapshot returns a copy of the accumulated state.
func (a *FirecrackerAccumulator) Snapshot() FirecrackerMetrics {
	a.mu.Lock()
	defer a.mu.Unlock()
	return FirecrackerMetrics{
		Counters:    maps.Clone(a.counters),
		Gauges:      maps.Clone(a.gauges),
		Lines:       a.lines,
		ParseErrors: a.parseErrors,
		LastFlush:   a.lastFlush,
		LastError:   a.lastErr,
	}
}

// Counter returns one cumulative counter (0 when never seen).
func (a *FirecrackerAccumulator) Counter(key string) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.counters[key]
}

// Gauge returns the last value of one absolute metric.
func (a *FirecrackerAccumulator) Gauge(key string) (uint64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.gauges[key]
	return v, ok
}

// ParseErrors returns the number of rejected lines.
func (a *FirecrackerAccumulator) ParseErrors() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.parseErrors
}

type leaf struct {
	key string
	val uint64
}

// parseFirecrackerLine returns the flush timestamp and the numeric
// leaves of one line. The whole line is rejected when it is not one JSON
// object, so a torn line (a FIFO write interleaved or cut) never applies
// half its deltas.
func parseFirecrackerLine(line []byte) (int64, []leaf, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return 0, nil, fmt.Errorf("%w: %w", ErrMalformedLine, err)
	}
	if dec.More() {
		return 0, nil, fmt.Errorf("%w: trailing data after the JSON object", ErrMalformedLine)
	}
	if doc == nil {
		return 0, nil, fmt.Errorf("%w: not a JSON object", ErrMalformedLine)
	}
	var ts int64
	if v, ok := doc["utc_timestamp_ms"]; ok {
		n, ok := v.(json.Number)
		if !ok {
			return 0, nil, fmt.Errorf("%w: utc_timestamp_ms is %T, not a number", ErrMalformedLine, v)
		}
		t, err := n.Int64()
		if err != nil {
			return 0, nil, fmt.Errorf("%w: utc_timestamp_ms: %w", ErrMalformedLine, err)
		}
		ts = t
	}
	var out []leaf
	for k, v := range doc {
		switch k {
		case "utc_timestamp_ms", "id", "properties":
			continue
		}
		out = flatten(out, k, v)
	}
	return ts, out, nil
}

// flatten appends the non-negative integer leaves under v. Other leaves
// (strings, booleans, null, arrays, fractions) are not Firecracker
// metrics and are skipped rather than failing the line, so a newer
// Firecracker that adds a field of another type keeps working.
func flatten(out []leaf, key string, v any) []leaf {
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			out = flatten(out, key+"."+k, c)
		}
	case json.Number:
		if n, err := strconv.ParseUint(x.String(), 10, 64); err == nil {
			out = append(out, leaf{key, n})
		}
	}
	return out
}

// isFirecrackerGauge reports whether key is one of Firecracker's absolute
// metrics (SharedStoreMetric), whose flushed value is the current value
// and must not be summed. Everything else is a SharedIncMetric: a delta
// since the previous flush.
func isFirecrackerGauge(key string) bool {
	group, rest, _ := strings.Cut(key, ".")
	switch {
	case group == "latencies_us":
		return true
	case key == "api_server.process_startup_time_us", key == "api_server.process_startup_time_cpu_us":
		return true
	case key == "seccomp.num_faults", key == "vmm.panic_count":
		return true
	case group == "signals":
		// Fatal signals can only be 0 or 1, so Firecracker stores them;
		// SIGPIPE is the one it counts.
		return rest != "sigpipe"
	case strings.HasPrefix(group, "vhost_user_"):
		switch rest {
		case "init_time_us", "activate_time_us", "config_change_time_us":
			return true
		}
	}
	// Latency aggregates ({…}_agg): min_us and max_us are stored per
	// interval, sum_us is a delta.
	if strings.HasSuffix(key, "_agg.min_us") || strings.HasSuffix(key, "_agg.max_us") {
		return true
	}
	return false
}
