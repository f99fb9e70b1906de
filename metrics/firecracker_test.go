package metrics

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fcLine builds a line in Firecracker's documented format (metrics.md and
// the example in Firecracker's logger/metrics.rs): a utc_timestamp_ms and
// one object per group, per-device groups (block_<drive>, net_<iface>),
// latency aggregates nested one level deeper, all values unsigned
// integers.
func fcLine(ts int64, actions, rootfsRead, sumUS, maxUS, startup int) string {
	return fmt.Sprintf(`{"utc_timestamp_ms":%d,`+
		`"api_server":{"process_startup_time_us":%d,"process_startup_time_cpu_us":900,"sync_response_fails":0,"sync_vmm_send_timeout_count":0},`+
		`"balloon":{"activate_fails":0,"inflate_count":0},`+
		`"block":{"activate_fails":0,"cfg_fails":0,"read_bytes":%d,"write_bytes":0,"read_agg":{"min_us":1,"max_us":%d,"sum_us":%d}},`+
		`"block_rootfs":{"read_bytes":%d,"read_count":1},`+
		`"deprecated_api":{"deprecated_http_api_calls":0},`+
		`"get_api_requests":{"instance_info_count":1},`+
		`"i8042":{"reset_count":0},`+
		`"latencies_us":{"load_snapshot":1500,"pause_vm":40},`+
		`"logger":{"missed_metrics_count":0,"metrics_fails":0,"missed_log_count":0},`+
		`"mmds":{"rx_count":0},`+
		`"net":{"rx_bytes_count":10,"tx_bytes_count":20},`+
		`"net_eth0":{"rx_bytes_count":10,"tx_packets_count":2},`+
		`"patch_api_requests":{"drive_count":0},`+
		`"put_api_requests":{"actions_count":%d,"actions_fails":0},`+
		`"rtc":{"error_count":0},`+
		`"seccomp":{"num_faults":0},`+
		`"signals":{"sigbus":0,"sigsegv":0,"sigpipe":1},`+
		`"uart":{"write_count":3},`+
		`"vcpu":{"exit_io_in":4,"exit_io_in_agg":{"min_us":2,"max_us":%d,"sum_us":%d}},`+
		`"vhost_user_block_rootfs":{"init_time_us":77,"activate_fails":0},`+
		`"vmm":{"panic_count":0},`+
		`"vsock":{"rx_bytes_count":0},`+
		`"entropy":{"entropy_bytes":0}}`,
		ts, startup, rootfsRead, maxUS, sumUS, rootfsRead, actions, maxUS, sumUS)
}

func TestFirecrackerAccumulatorSumsDeltas(t *testing.T) {
	a := NewFirecrackerAccumulator()
	lines := []string{
		fcLine(1739000000000, 2, 4096, 30, 20, 5000),
		fcLine(1739000060000, 1, 512, 10, 9, 5000),
		fcLine(1739000120000, 0, 0, 0, 0, 5000),
	}
	for _, l := range lines {
		if err := a.Feed([]byte(l + "\n")); err != nil {
			t.Fatal(err)
		}
	}
	s := a.Snapshot()
	counters := []struct {
		key  string
		want uint64
	}{
		{"put_api_requests.actions_count", 3},
		{"block_rootfs.read_bytes", 4608},
		{"block.read_bytes", 4608},
		{"block.read_agg.sum_us", 40},
		{"vcpu.exit_io_in_agg.sum_us", 40},
		{"vcpu.exit_io_in", 12},
		{"net_eth0.tx_packets_count", 6},
		{"signals.sigpipe", 3},
		{"get_api_requests.instance_info_count", 3},
		{"uart.write_count", 9},
		{"vhost_user_block_rootfs.activate_fails", 0},
	}
	for _, c := range counters {
		got, ok := s.Counters[c.key]
		if !ok || got != c.want {
			t.Errorf("counter %s = %d (present %v), want %d", c.key, got, ok, c.want)
		}
	}
	gauges := []struct {
		key  string
		want uint64
	}{
		{"api_server.process_startup_time_us", 5000}, // stored, not summed
		{"latencies_us.load_snapshot", 1500},
		{"vcpu.exit_io_in_agg.max_us", 0}, // the last interval's max
		{"vcpu.exit_io_in_agg.min_us", 2},
		{"seccomp.num_faults", 0},
		{"signals.sigsegv", 0},
		{"vmm.panic_count", 0},
		{"vhost_user_block_rootfs.init_time_us", 77},
	}
	for _, g := range gauges {
		got, ok := s.Gauges[g.key]
		if !ok || got != g.want {
			t.Errorf("gauge %s = %d (present %v), want %d", g.key, got, ok, g.want)
		}
		if _, dup := s.Counters[g.key]; dup {
			t.Errorf("%s is both a counter and a gauge", g.key)
		}
	}
	for k := range s.Counters {
		if strings.HasPrefix(k, "utc_timestamp_ms") {
			t.Errorf("timestamp treated as a counter: %s", k)
		}
	}
	if s.Lines != 3 || s.ParseErrors != 0 {
		t.Fatalf("lines %d, errors %d", s.Lines, s.ParseErrors)
	}
	if want := time.UnixMilli(1739000120000); !s.LastFlush.Equal(want) {
		t.Fatalf("last flush %v, want %v", s.LastFlush, want)
	}
}

func TestFirecrackerAccumulatorMalformed(t *testing.T) {
	good := fcLine(1739000000000, 1, 1, 1, 1, 1)
	cases := []struct {
		name string
		line string
		ok   bool
	}{
		{"good", good, true},
		{"blank", "   ", true},
		{"optional id and properties", `{"utc_timestamp_ms":1,"id":"vm-1","properties":{"customer":"1234","n":5},"vmm":{"device_events":2}}`, true},
		{"unknown types skipped", `{"utc_timestamp_ms":1,"x":{"s":"str","b":true,"n":null,"f":1.5,"neg":-3,"arr":[1,2]}}`, true},
		{"torn line", good[:len(good)/2], false},
		{"two objects", good + good, false},
		{"array", `[1,2,3]`, false},
		{"string", `"hello"`, false},
		{"null", `null`, false},
		{"bad timestamp", `{"utc_timestamp_ms":"soon","vmm":{"device_events":1}}`, false},
		{"garbage", `not json at all`, false},
	}
	a := NewFirecrackerAccumulator()
	wantErrs, wantLines := uint64(0), uint64(0)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := a.Snapshot()
			err := a.Feed([]byte(c.line))
			if (err == nil) != c.ok {
				t.Fatalf("err = %v, want ok=%v", err, c.ok)
			}
			if !c.ok {
				wantErrs++
				if !errors.Is(err, ErrMalformedLine) {
					t.Fatalf("error %v does not wrap ErrMalformedLine", err)
				}
				after := a.Snapshot()
				if len(after.Counters) != len(before.Counters) || after.Counters["put_api_requests.actions_count"] != before.Counters["put_api_requests.actions_count"] {
					t.Fatal("a rejected line changed counters")
				}
			} else if strings.TrimSpace(c.line) != "" {
				wantLines++
			}
			if s := a.Snapshot(); s.ParseErrors != wantErrs || s.Lines != wantLines {
				t.Fatalf("parse errors %d lines %d, want %d %d", s.ParseErrors, s.Lines, wantErrs, wantLines)
			}
		})
	}
	if a.Counter("vmm.device_events") != 2 {
		t.Fatalf("vmm.device_events = %d", a.Counter("vmm.device_events"))
	}
	if _, ok := a.Snapshot().Counters["properties.n"]; ok {
		t.Fatal("operator properties treated as metrics")
	}
	if a.Snapshot().LastError == "" {
		t.Fatal("last error not kept")
	}
}

func TestFirecrackerAccumulatorConcurrent(t *testing.T) {
	a := NewFirecrackerAccumulator()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				a.Feed([]byte(`{"utc_timestamp_ms":1,"uart":{"write_count":1}}`))
				a.Snapshot()
			}
		})
	}
	wg.Wait()
	if got := a.Counter("uart.write_count"); got != 200 {
		t.Fatalf("write_count %d, want 200", got)
	}
}

func TestIsFirecrackerGauge(t *testing.T) {
	cases := map[string]bool{
		"latencies_us.full_create_snapshot":        true,
		"api_server.process_startup_time_cpu_us":   true,
		"api_server.sync_response_fails":           false,
		"signals.sigsegv":                          true,
		"signals.sigpipe":                          false,
		"block_data.write_agg.max_us":              true,
		"block_data.write_agg.sum_us":              false,
		"net_eth0.tap_read_agg.min_us":             true,
		"vhost_user_block_x.config_change_time_us": true,
		"vhost_user_block_x.cfg_fails":             false,
		"seccomp.num_faults":                       true,
		"vmm.panic_count":                          true,
		"vmm.device_events":                        false,
		"block.read_bytes":                         false,
	}
	for k, want := range cases {
		if got := isFirecrackerGauge(k); got != want {
			t.Errorf("%s: gauge=%v, want %v", k, got, want)
		}
	}
}
