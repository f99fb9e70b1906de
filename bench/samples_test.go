package bench

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// EnvSamples names a directory where benchmarks leave their raw latency
// samples (one JSON file per benchmark: series name → milliseconds), for
// bench/report's distribution chart. Unset, nothing is written.
const EnvSamples = "HEARTH_BENCH_SAMPLES"

// saveSamples writes series for the running benchmark.
func saveSamples(b *testing.B, series map[string][]time.Duration) {
	dir := os.Getenv(EnvSamples)
	if dir == "" {
		return
	}
	out := map[string]any{"bench": b.Name(), "unit": "ms"}
	s := map[string][]float64{}
	for k, v := range series {
		f := make([]float64, len(v))
		for i, d := range v {
			f[i] = float64(d.Microseconds()) / 1000
		}
		s[k] = f
	}
	out["series"] = s
	buf, err := json.Marshal(out)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(b.Name()) + ".json"
	if err := os.WriteFile(filepath.Join(dir, name), buf, 0o644); err != nil {
		b.Fatal(err)
	}
}
