package fcsim

import (
	"encoding/json"
	"sort"
	"sync"
	"time"
)

// metricGroups lists the groups and counters of a Firecracker metrics line
// (see metrics.md). Firecracker emits every group even for absent devices,
// so the simulator does too. Counters are deltas since the previous flush
// (Firecracker's SharedIncMetric); names in storeMetrics are absolute
// values (SharedStoreMetric).
var metricGroups = map[string][]string{
	"api_server":         {"process_startup_time_us", "process_startup_time_cpu_us", "sync_response_fails", "sync_vmm_send_timeout_count"},
	"balloon":            {"activate_fails", "inflate_count", "stats_updates_count", "stats_update_fails", "deflate_count", "event_fails"},
	"block":              blockMetrics,
	"deprecated_api":     {"deprecated_http_api_calls", "deprecated_cmd_line_api_calls"},
	"entropy":            {"activate_fails", "entropy_event_fails", "entropy_event_count", "entropy_bytes", "host_rng_fails", "entropy_rate_limiter_throttled", "rate_limiter_event_count"},
	"get_api_requests":   {"instance_info_count", "machine_cfg_count", "mmds_count", "vmm_version_count", "vm_config_count", "balloon_count"},
	"i8042":              {"error_count", "missed_read_count", "missed_write_count", "read_count", "reset_count", "write_count"},
	"latencies_us":       {"full_create_snapshot", "diff_create_snapshot", "load_snapshot", "pause_vm", "resume_vm", "vmm_full_create_snapshot", "vmm_diff_create_snapshot", "vmm_load_snapshot", "vmm_pause_vm", "vmm_resume_vm"},
	"logger":             {"missed_metrics_count", "metrics_fails", "missed_log_count", "log_fails"},
	"mmds":               {"rx_accepted", "rx_accepted_err", "rx_accepted_unusual", "rx_bad_eth", "rx_invalid_token", "rx_no_token", "rx_count", "tx_bytes", "tx_count", "tx_errors", "tx_frames", "connections_created", "connections_destroyed"},
	"net":                netMetrics,
	"patch_api_requests": {"drive_count", "drive_fails", "network_count", "network_fails", "machine_cfg_count", "machine_cfg_fails", "mmds_count", "mmds_fails", "balloon_count", "balloon_fails", "vm_count", "vm_fails"},
	"put_api_requests":   {"actions_count", "actions_fails", "boot_source_count", "boot_source_fails", "drive_count", "drive_fails", "logger_count", "logger_fails", "machine_cfg_count", "machine_cfg_fails", "cpu_cfg_count", "cpu_cfg_fails", "metrics_count", "metrics_fails", "network_count", "network_fails", "mmds_count", "mmds_fails", "vsock_count", "vsock_fails", "balloon_count", "balloon_fails", "snapshot_create_count", "snapshot_create_fails", "snapshot_load_count", "snapshot_load_fails", "entropy_count", "entropy_fails", "serial_count", "serial_fails", "pmem_count", "pmem_fails", "hotplug_memory_count", "hotplug_memory_fails"},
	"seccomp":            {"num_faults"},
	"signals":            {"sigbus", "sigsegv", "sigxfsz", "sigxcpu", "sigpipe", "sighup", "sigill"},
	"uart":               {"error_count", "flush_count", "missed_read_count", "missed_write_count", "read_count", "write_count"},
	"vcpu":               {"exit_io_in", "exit_io_out", "exit_mmio_read", "exit_mmio_write", "failures", "kvmclock_ctrl_fails"},
	"vmm":                {"device_events", "panic_count"},
	"vsock":              {"activate_fails", "cfg_fails", "rx_queue_event_fails", "tx_queue_event_fails", "ev_queue_event_fails", "muxer_event_fails", "conn_event_fails", "rx_queue_event_count", "tx_queue_event_count", "rx_bytes_count", "tx_bytes_count", "rx_packets_count", "tx_packets_count", "conns_added", "conns_killed", "conns_removed", "killq_resync", "tx_flush_fails", "tx_write_fails", "rx_read_fails"},
	// Not a Firecracker group: what the simulator itself did, so that
	// tests can see the real work (uffd faults, guest pages written).
	"fcsim": {"uffd_handshakes", "uffd_pages_faulted", "guest_ticks", "guest_dirty_pages", "snapshot_pages_written"},
}

var blockMetrics = []string{"activate_fails", "cfg_fails", "no_avail_buffer", "event_fails", "execute_fails", "invalid_reqs_count", "flush_count", "queue_event_count", "rate_limiter_event_count", "update_count", "update_fails", "read_bytes", "write_bytes", "read_count", "write_count", "rate_limiter_throttled_events", "io_engine_throttled_events"}

var netMetrics = []string{"activate_fails", "cfg_fails", "mac_address_updates", "no_rx_avail_buffer", "no_tx_avail_buffer", "event_fails", "rx_queue_event_count", "rx_event_rate_limiter_count", "rx_tap_event_count", "rx_bytes_count", "rx_packets_count", "rx_fails", "rx_count", "tap_read_fails", "tap_write_fails", "tx_bytes_count", "tx_malformed_frames", "tx_fails", "tx_count", "tx_packets_count", "tx_queue_event_count", "tx_rate_limiter_event_count", "tx_rate_limiter_throttled", "tx_spoofed_mac_count"}

var storeMetrics = map[string]bool{
	"api_server.process_startup_time_us":     true,
	"api_server.process_startup_time_cpu_us": true,
	"fcsim.guest_dirty_pages":                true,
}

func init() {
	for _, k := range metricGroups["latencies_us"] {
		storeMetrics["latencies_us."+k] = true
	}
}

type metricValue struct{ total, flushed uint64 }

// metrics is the simulator's metric registry.
type metrics struct {
	mu     sync.Mutex
	vals   map[string]*metricValue // "group.name"
	groups map[string][]string     // includes per-device groups
}

func newMetrics() *metrics {
	m := &metrics{vals: map[string]*metricValue{}, groups: map[string][]string{}}
	for g, names := range metricGroups {
		m.addGroup(g, names)
	}
	return m
}

func (m *metrics) addGroup(group string, names []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.groups[group]; ok {
		return
	}
	m.groups[group] = names
	for _, n := range names {
		m.vals[group+"."+n] = &metricValue{}
	}
}

func (m *metrics) add(key string, n uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.vals[key]; ok {
		v.total += n
	}
}

func (m *metrics) inc(key string) { m.add(key, 1) }

func (m *metrics) set(key string, n uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.vals[key]; ok {
		v.total = n
	}
}

// line renders one metrics line and starts a new interval.
func (m *metrics) line(id string, emitID bool, props map[string]string) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]any{"utc_timestamp_ms": time.Now().UnixMilli()}
	if emitID {
		out["id"] = id
	}
	if len(props) > 0 {
		out["properties"] = props
	}
	groups := make([]string, 0, len(m.groups))
	for g := range m.groups {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	for _, g := range groups {
		vals := map[string]uint64{}
		for _, n := range m.groups[g] {
			key := g + "." + n
			v := m.vals[key]
			if storeMetrics[key] {
				vals[n] = v.total
				continue
			}
			vals[n] = v.total - v.flushed
			v.flushed = v.total
		}
		out[g] = vals
	}
	b, _ := json.Marshal(out)
	return append(b, '\n')
}
