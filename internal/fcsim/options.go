package fcsim

import (
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"
)

// Environment variables the simulator reads (see doc.go).
const (
	EnvFailAt          = "HEARTH_FCSIM_FAIL_AT"
	EnvRequestLog      = "HEARTH_FCSIM_REQUEST_LOG"
	EnvRequestLogFD    = "HEARTH_FCSIM_REQUEST_LOG_FD"
	EnvGuestCmd        = "HEARTH_FCSIM_GUEST_CMD"
	EnvGuestVsockDir   = "HEARTH_FCSIM_GUEST_VSOCK_DIR"
	EnvMetricsInterval = "HEARTH_FCSIM_METRICS_INTERVAL"
	EnvUffdTimeout     = "HEARTH_FCSIM_UFFD_TIMEOUT"
	EnvUffdVerify      = "HEARTH_FCSIM_UFFD_VERIFY"
	EnvFifoOpenTimeout = "HEARTH_FCSIM_FIFO_OPEN_TIMEOUT"
	EnvTickInterval    = "HEARTH_FCSIM_TICK"
	EnvHangAt          = "HEARTH_FCSIM_HANG_AT"
)

// Firecracker's exit codes (FcExitCode) that the simulator uses.
const (
	exitOK               = 0
	exitGeneric          = 1
	exitBadConfiguration = 152
	exitArgParsing       = 153
	exitCrash            = 137 // what a SIGKILLed process reports
)

// Options is the Firecracker command line plus the simulator's own knobs.
type Options struct {
	APISock         string
	ID              string
	ConfigFile      string
	NoAPI           bool
	Level           string
	LogPath         string
	MetricsPath     string
	BootTimer       bool
	ShowLevel       bool
	ShowLogOrigin   bool
	StartTimeUs     int64
	StartTimeCPUUs  int64
	ParentCPUTimeUs int64
	MaxPayload      int64
	Version         bool

	// Simulator-only.
	FailAt          string
	HangAt          string
	RequestLog      string
	MetricsInterval time.Duration
	UffdTimeout     time.Duration
	UffdVerify      string // "all" or "written"
	FifoOpenTimeout time.Duration
	TickInterval    time.Duration
}

var idRE = regexp.MustCompile(`^[a-zA-Z0-9-]{1,64}$`)

// parseOptions parses Firecracker's arguments. Go's flag package accepts
// both --name value and --name=value, as Firecracker's parser does.
func parseOptions(args []string, stderr io.Writer) (*Options, error) {
	o := &Options{}
	fs := flag.NewFlagSet("firecracker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.APISock, "api-sock", "/run/firecracker.socket", "path to the API unix socket")
	fs.StringVar(&o.ID, "id", "anonymous-instance", "microVM id")
	fs.StringVar(&o.ConfigFile, "config-file", "", "JSON configuration applied at startup; boots the microVM")
	fs.BoolVar(&o.NoAPI, "no-api", false, "do not serve the API (requires --config-file)")
	fs.StringVar(&o.Level, "level", "", "log level (Error, Warning, Info, Debug, Trace, Off)")
	fs.StringVar(&o.LogPath, "log-path", "", "file or FIFO for the log")
	fs.StringVar(&o.MetricsPath, "metrics-path", "", "file or FIFO for metrics")
	fs.BoolVar(&o.BootTimer, "boot-timer", false, "log guest boot time")
	fs.BoolVar(&o.ShowLevel, "show-level", false, "show the level in log lines")
	fs.BoolVar(&o.ShowLogOrigin, "show-log-origin", false, "show the origin in log lines")
	fs.Int64Var(&o.StartTimeUs, "start-time-us", 0, "process start time (set by the jailer)")
	fs.Int64Var(&o.StartTimeCPUUs, "start-time-cpu-us", 0, "process start CPU time (set by the jailer)")
	fs.Int64Var(&o.ParentCPUTimeUs, "parent-cpu-time-us", 0, "parent CPU time (set by the jailer)")
	fs.Int64Var(&o.MaxPayload, "http-api-max-payload-size", 51200, "maximum API request body size")
	fs.BoolVar(&o.Version, "version", false, "print the version and exit")
	// Accepted and ignored: seccomp cannot be simulated usefully, and the
	// rest do not change what the API does.
	var ignoredS string
	var ignoredB bool
	fs.StringVar(&ignoredS, "seccomp-level", "", "ignored")
	fs.StringVar(&ignoredS, "seccomp-filter", "", "ignored")
	fs.BoolVar(&ignoredB, "no-seccomp", false, "ignored")
	fs.StringVar(&ignoredS, "mmds-size-limit", "", "ignored")
	fs.StringVar(&ignoredS, "module", "", "ignored")
	fs.BoolVar(&ignoredB, "enable-pci", false, "ignored")

	fs.StringVar(&o.FailAt, "fail-at", "", "fault injection (comma-separated; see doc.go)")
	fs.StringVar(&o.HangAt, "hang-at", os.Getenv(EnvHangAt), `requests accepted and never answered: "METHOD /path" entries (comma-separated), or @FILE to read them from FILE on every request (see doc.go)`)
	fs.StringVar(&o.RequestLog, "request-log", "", "append one JSON line per API request to this file")
	fs.DurationVar(&o.MetricsInterval, "metrics-interval", envDuration(EnvMetricsInterval, 60*time.Second), "periodic metrics flush interval")
	fs.DurationVar(&o.UffdTimeout, "uffd-timeout", envDuration(EnvUffdTimeout, 10*time.Second), "how long a Uffd restore may take to fault in guest memory")
	fs.StringVar(&o.UffdVerify, "uffd-verify", envString(EnvUffdVerify, "all"), "pages a Uffd restore faults in and checks: all, or written (only the non-zero pages of the snapshot, keeping the restore lazy)")
	fs.DurationVar(&o.FifoOpenTimeout, "fifo-open-timeout", envDuration(EnvFifoOpenTimeout, 2*time.Second), "how long to retry opening a FIFO that has no reader")
	fs.DurationVar(&o.TickInterval, "guest-tick", envDuration(EnvTickInterval, 100*time.Millisecond), "interval of the simulated guest's work")

	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if !idRE.MatchString(o.ID) && o.ID != "anonymous-instance" {
		return nil, fmt.Errorf("invalid instance ID %q: it must be 1-64 characters of [a-zA-Z0-9-]", o.ID)
	}
	if o.UffdVerify != "all" && o.UffdVerify != "written" {
		return nil, fmt.Errorf("--uffd-verify must be all or written, not %q", o.UffdVerify)
	}
	if o.NoAPI && o.ConfigFile == "" {
		return nil, fmt.Errorf("--no-api requires --config-file")
	}
	if v := os.Getenv(EnvFailAt); v != "" {
		o.FailAt = strings.Trim(o.FailAt+","+v, ",")
	}
	if o.RequestLog == "" {
		o.RequestLog = os.Getenv(EnvRequestLog)
	}
	return o, nil
}

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			return d
		}
	}
	return def
}

// faults is the parsed HEARTH_FCSIM_FAIL_AT / --fail-at list, with the
// HEARTH_FCSIM_HANG_AT / --hang-at entries.
type faults struct {
	start, ready, enospc bool
	api, crash, hang     map[string]bool // "METHOD path"
	// hangAt are "METHOD /path" entries; hangFile, when set, holds them
	// instead and is read on every request.
	hangAt   []string
	hangFile string
}

// parseHangAt parses the --hang-at value into f.
func (f *faults) parseHangAt(spec string) error {
	if file, ok := strings.CutPrefix(spec, "@"); ok {
		if file == "" {
			return fmt.Errorf("--hang-at @FILE needs a file name")
		}
		f.hangFile = file
		return nil
	}
	for _, e := range splitHangEntries(spec) {
		m, p, ok := strings.Cut(e, " ")
		if !ok || m == "" || !strings.HasPrefix(strings.TrimSpace(p), "/") {
			return fmt.Errorf(`bad hang entry %q: want "METHOD /path" (METHOD may be *, a path ending in * matches a prefix)`, e)
		}
		f.hangAt = append(f.hangAt, e)
	}
	return nil
}

func splitHangEntries(s string) []string {
	var out []string
	for _, e := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' }) {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// hangs reports whether the request must never be answered. A hang file
// that does not exist (or cannot be read) hangs nothing.
func (f *faults) hangs(method, path string) bool {
	entries := f.hangAt
	if f.hangFile != "" {
		b, err := os.ReadFile(f.hangFile)
		if err != nil {
			return false
		}
		entries = splitHangEntries(string(b))
	}
	for _, e := range entries {
		m, p, _ := strings.Cut(e, " ")
		p = strings.TrimSpace(p)
		if m != "*" && !strings.EqualFold(m, method) {
			continue
		}
		if pre, ok := strings.CutSuffix(p, "*"); ok && strings.HasPrefix(path, pre) || p == path {
			return true
		}
	}
	return false
}

func parseFaults(spec string) (*faults, error) {
	f := &faults{api: map[string]bool{}, crash: map[string]bool{}, hang: map[string]bool{}}
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		switch item {
		case "start":
			f.start = true
			continue
		case "ready":
			f.ready = true
			continue
		case "snapshot-enospc":
			f.enospc = true
			continue
		}
		kind, rest, ok := strings.Cut(item, ":")
		method, path, ok2 := strings.Cut(rest, ":")
		if !ok || !ok2 || method == "" || !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("bad fault %q: want start, ready, snapshot-enospc, or api|crash|hang:METHOD:/path", item)
		}
		key := strings.ToUpper(method) + " " + path
		switch kind {
		case "api":
			f.api[key] = true
		case "crash":
			f.crash[key] = true
		case "hang":
			f.hang[key] = true
		default:
			return nil, fmt.Errorf("bad fault kind %q in %q", kind, item)
		}
	}
	return f, nil
}

// match reports whether set holds method+path; a key ending in * matches a
// path prefix.
func (f *faults) match(set map[string]bool, method, path string) bool {
	key := method + " " + path
	if set[key] {
		return true
	}
	for k := range set {
		if p, ok := strings.CutSuffix(k, "*"); ok && strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}
