package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"testing"

	"github.com/hearth-vm/hearth/metrics"
)

// fcMetricsLine is a Firecracker-sized metrics line: ~20 groups of
// counters plus per-device groups, about 4 KiB like the real thing.
func fcMetricsLine() []byte {
	doc := map[string]any{"utc_timestamp_ms": 1739000000000}
	for g := range 24 {
		grp := map[string]any{}
		for c := range 16 {
			grp[fmt.Sprintf("counter_%d_count", c)] = c
		}
		grp["read_agg"] = map[string]any{"min_us": 1, "max_us": 9, "sum_us": 30}
		doc[fmt.Sprintf("group_%d", g)] = grp
	}
	b, _ := json.Marshal(doc)
	return b
}

// BenchmarkFirecrackerFeed measures applying one metrics line to the
// accumulator, against the baseline of only decoding it with
// encoding/json (what "keep the last line" plus a reader would cost).
func BenchmarkFirecrackerFeed(b *testing.B) {
	line := fcMetricsLine()
	b.Run("baseline=json.Unmarshal", func(b *testing.B) {
		b.SetBytes(int64(len(line)))
		for b.Loop() {
			var m map[string]any
			if err := json.Unmarshal(line, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("accumulate", func(b *testing.B) {
		a := metrics.NewFirecrackerAccumulator()
		b.SetBytes(int64(len(line)))
		for b.Loop() {
			if err := a.Feed(line); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkCollectStats measures one VM's stats read (process CPU,
// memory and I/O from /proc, plus the accumulator snapshot), the work of
// one VM at every /metrics scrape.
func BenchmarkCollectStats(b *testing.B) {
	a := metrics.NewFirecrackerAccumulator()
	a.Feed(fcMetricsLine())
	src := metrics.Source{VM: "bench", Backend: "firecracker", Pid: os.Getpid(), Firecracker: a}
	for b.Loop() {
		if st := metrics.Collect(src); st.CPU == nil {
			b.Fatal(st.Errors)
		}
	}
}
