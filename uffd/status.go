//go:build linux

package uffd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/hearth-vm/hearth/proc"
)

// State is the phase of a page-fault server, as recorded in its status
// file.
type State string

const (
	// StateStarting: the process runs but is not listening yet.
	StateStarting State = "starting"
	// StateListening: the socket accepts the VMM's connection.
	StateListening State = "listening"
	// StateServing: the handshake is done and faults are being served.
	StateServing State = "serving"
	// StateExited: the VMM went away (or the server was stopped before
	// one connected); the server ended normally.
	StateExited State = "exited"
	// StateDetached: the server was asked to stop while the VMM ran; it
	// populated all remaining memory and unregistered it, so the VMM runs
	// on without a server.
	StateDetached State = "detached"
	// StateFailed: the server ended with an error (Error says which); if a
	// VMM was connected it was killed (VMMKilled).
	StateFailed State = "failed"
)

// Trace states.
const (
	TraceOff       = "off"       // no trace file configured
	TraceRecording = "recording" // recording this restore's working set
	TraceRecorded  = "recorded"  // the working set was written
	TraceReplaying = "replaying" // prefetching a recorded working set
	TraceReplayed  = "replayed"  // the whole recorded working set was prefetched
	TraceIgnored   = "ignored"   // a trace exists but prefetch is off
)

// Status is the content of the server's status file, rewritten atomically
// every StatusInterval and at every change of State. Counters are totals
// since the handshake.
type Status struct {
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"start_time"` // of Pid, for proc.Adopt
	State     State  `json:"state"`
	Error     string `json:"error,omitempty"`
	// ExitCode is the process's exit code once the state is final.
	ExitCode  int       `json:"exit_code"`
	VMMPid    int       `json:"vmm_pid,omitempty"`
	VMMKilled bool      `json:"vmm_killed,omitempty"`
	Socket    string    `json:"socket"`
	MemFile   string    `json:"mem_file"`
	MemBytes  uint64    `json:"mem_bytes"`
	Regions   int       `json:"regions,omitempty"`
	PageSize  uint64    `json:"page_size,omitempty"`
	Started   time.Time `json:"started"`
	Updated   time.Time `json:"updated"`

	// Faults is the number of page faults served on demand;
	// FaultBytes what they copied (including fault-around).
	Faults     uint64 `json:"faults"`
	FaultBytes uint64 `json:"fault_bytes"`
	// ZeroPages were served with zeros (after a REMOVE or UNMAP event).
	ZeroPages uint64 `json:"zero_pages"`
	// BackgroundPages were copied between events, after the fault that
	// asked for them had been served: a sequential stream's readahead and
	// the rest of fault-around blocks (see Options.FaultAround).
	BackgroundPages uint64 `json:"background_pages,omitempty"`
	// PrefetchedPages/Bytes were copied eagerly from a trace.
	PrefetchedPages uint64 `json:"prefetched_pages"`
	PrefetchedBytes uint64 `json:"prefetched_bytes"`
	// PrefetchMS is how long the replay took from the handshake (set when
	// it is complete).
	PrefetchMS float64 `json:"prefetch_ms,omitempty"`
	// ExistingPages were already present when a copy reached them
	// (EEXIST: raced by another fault or the prefetcher); benign.
	ExistingPages uint64 `json:"existing_pages"`
	// Fault service latency: from reading the fault to the copy that
	// woke the faulting thread.
	MaxFaultLatencyUS  float64 `json:"max_fault_latency_us"`
	MeanFaultLatencyUS float64 `json:"mean_fault_latency_us"`
	// Errors counts transient errors that were retried or skipped; a
	// fatal one ends the server and is in Error.
	Errors uint64 `json:"errors"`
	Events Events `json:"events"`

	Trace      string `json:"trace"`
	TraceFile  string `json:"trace_file,omitempty"`
	TracePages uint64 `json:"trace_pages,omitempty"` // 4 KiB units recorded or to replay
}

// Events counts the non-cooperative userfaultfd events received.
type Events struct {
	Remove uint64 `json:"remove"`
	Unmap  uint64 `json:"unmap"`
	Remap  uint64 `json:"remap"`
	Fork   uint64 `json:"fork"`
}

// Identity names the server process for proc.Adopt after a daemon
// restart.
func (s Status) Identity() proc.Identity { return proc.Identity{Pid: s.Pid, StartTime: s.StartTime} }

// Final reports whether the server has ended.
func (s Status) Final() bool {
	return s.State == StateExited || s.State == StateDetached || s.State == StateFailed
}

// ReadStatus reads a server's status file.
func ReadStatus(path string) (Status, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Status{}, fmt.Errorf("read uffd status: %w", err)
	}
	var s Status
	if err := json.Unmarshal(b, &s); err != nil {
		return Status{}, fmt.Errorf("decode uffd status %s: %w", path, err)
	}
	return s, nil
}

// writeStatus replaces the status file atomically so that a reader never
// sees a torn one. It is not fsynced: it is rewritten every second and
// only describes a process that a host crash ends anyway.
func writeStatus(path string, s *Status) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode status: %w", err)
	}
	return writeFileAtomic(path, append(b, '\n'), 0o644)
}

// AwaitPrefetch waits until the server whose status file is path is no
// longer replaying a trace: the working set is in, there was nothing to
// replay, or the server ended. It polls the file every poll and returns
// the last status read, with ctx's error when ctx ends first. A runtime
// that holds a restored VM's vCPUs until its working set is in memory
// (REAP) calls it between loading the snapshot and resuming.
func AwaitPrefetch(ctx context.Context, path string, poll time.Duration) (Status, error) {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		st, err := ReadStatus(path)
		// Until the server has set up, its trace state is not decided.
		if err == nil && (st.Final() || (st.State != StateStarting && st.Trace != TraceReplaying)) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-t.C:
		}
	}
}
