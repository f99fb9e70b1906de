package firecracker

import (
	"testing"
	"time"
)

// TestMetricsAccumulated runs a VM on the simulator and checks that the
// real Firecracker-format lines it flushes reach the accumulator, and
// that per-flush deltas add up across flushes instead of the last line
// replacing the previous ones.
func TestMetricsAccumulated(t *testing.T) {
	e := newEnv(t, Options{})
	m := e.launch(e.spec("metrics-1"))
	ctx := ctxT(t)
	if err := m.Configure(ctx, e.config()); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	acc := m.Metrics()
	if acc == nil {
		t.Fatal("no accumulator")
	}
	waitLines := func(n uint64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for acc.Snapshot().Lines < n && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if got := acc.Snapshot().Lines; got < n {
			t.Fatalf("%d metrics lines applied, want %d", got, n)
		}
	}
	// Each FlushMetrics is itself a PUT /actions, counted in the next
	// line as a delta of 1 (InstanceStart was counted in the first).
	if err := m.FlushMetrics(ctx); err != nil {
		t.Fatal(err)
	}
	waitLines(1)
	first := acc.Counter("put_api_requests.actions_count")
	if first < 1 {
		t.Fatalf("actions_count after one flush = %d", first)
	}
	for range 3 {
		if err := m.FlushMetrics(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitLines(4)
	if got := acc.Counter("put_api_requests.actions_count"); got != first+3 {
		t.Fatalf("actions_count = %d after 3 more flushes, want %d (deltas summed)", got, first+3)
	}
	snap := acc.Snapshot()
	if snap.ParseErrors != 0 || snap.LastFlush.IsZero() {
		t.Fatalf("parse errors %d (%s), last flush %v", snap.ParseErrors, snap.LastError, snap.LastFlush)
	}
	if _, ok := snap.Counters["block_rootfs.read_count"]; !ok {
		t.Fatalf("per-drive block group missing: %d counters", len(snap.Counters))
	}
	if _, ok := snap.Gauges["api_server.process_startup_time_us"]; !ok {
		t.Fatal("store metric not kept as a gauge")
	}
	if m.LastMetrics() == nil {
		t.Fatal("LastMetrics empty")
	}
}
