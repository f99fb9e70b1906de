package fcsim

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hearth-vm/hearth/internal/fcspec"
)

// vmState is Firecracker's InstanceInfo.state.
type vmState int

const (
	stateNotStarted vmState = iota
	stateRunning
	statePaused
)

func (s vmState) String() string {
	switch s {
	case stateRunning:
		return "Running"
	case statePaused:
		return "Paused"
	}
	return "Not started"
}

// Sim is one simulated Firecracker process.
type Sim struct {
	opts    *Options
	spec    *fcspec.Spec
	faults  *faults
	reqlog  *requestLog
	log     *slog.Logger
	stdout  io.Writer
	metrics *metrics
	started time.Time

	// mu serialises the API (Firecracker has a single API thread) and
	// guards everything below it.
	mu           sync.Mutex
	state        vmState
	booted       bool // InstanceStart succeeded or a snapshot was loaded
	bootSpecific bool // a boot-specific resource was configured
	restored     bool
	boot         *bootSource
	machine      machineConfig
	drives       []drive
	nets         []networkInterface
	vsock        *vsockDevice
	balloon      *balloonConfig
	cpuConfig    json.RawMessage
	mmdsConfig   json.RawMessage
	mmdsData     any
	entropy      json.RawMessage
	memHotplug   json.RawMessage
	pmem         []pmemConfig
	serialPath   string
	console      *consoleWriter
	loggerCfg    *loggerConfig
	// fclog is read by request handling before the API lock is taken.
	fclog       atomic.Pointer[fcLogger]
	metricsCfg  *metricsConfig
	metricsSink *sink
	mem         *guestMemory
	trackDirty  bool
	guest       *guestProcess
	ctrlAltDel  bool
	bootedAt    time.Time

	exitOnce sync.Once
	exitCh   chan int
	done     chan struct{}
	httpSrv  *http.Server
}

// Version is what the simulator reports as its Firecracker version: the
// version of the pinned API it serves.
func Version() string { return fcspec.MustLoad().Version() }

// Main runs a simulated Firecracker, or the simulated jailer when the
// program is named "jailer" or the first argument is "jailer". args is
// os.Args. It returns the process exit code.
func Main(args []string) int {
	if len(args) == 0 {
		args = []string{"firecracker"}
	}
	rest := args[1:]
	if filepath.Base(args[0]) == "jailer" {
		return jailerMain(rest)
	}
	if len(rest) > 0 && rest[0] == "jailer" {
		return jailerMain(rest[1:])
	}
	return firecrackerMain(rest)
}

func firecrackerMain(args []string) int {
	opts, err := parseOptions(args, os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(os.Stderr, "Arguments parsing error: %v\n", err)
		return exitArgParsing
	}
	if opts.Version {
		fmt.Printf("Firecracker v%s\n", Version())
		return exitOK
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("vm", opts.ID, "pid", os.Getpid())
	f, err := parseFaults(opts.FailAt)
	if err == nil {
		err = f.parseHangAt(opts.HangAt)
	}
	if err != nil {
		log.Error("bad fault injection", "err", err)
		return exitArgParsing
	}
	spec, err := fcspec.Load()
	if err != nil {
		log.Error("load API spec", "err", err)
		return exitGeneric
	}
	s := &Sim{
		opts:    opts,
		spec:    spec,
		faults:  f,
		log:     log,
		stdout:  os.Stdout,
		metrics: newMetrics(),
		started: time.Now(),
		machine: defaultMachineConfig(),
		exitCh:  make(chan int, 1),
		done:    make(chan struct{}),
	}
	s.console = &consoleWriter{w: os.Stdout}
	return s.run()
}

func (s *Sim) run() int {
	reqlog, err := openRequestLog(s.opts.RequestLog)
	if err != nil {
		s.log.Error("request log", "err", err)
		return exitGeneric
	}
	s.reqlog = reqlog
	defer s.reqlog.close()

	if s.faults.start {
		s.log.Error("injected failure: exiting at start")
		s.reqlog.write(requestLogLine{Event: "fail-at-start", ID: s.opts.ID})
		return exitGeneric
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	go func() {
		select {
		case sig := <-sigs:
			s.log.Info("signal received, shutting down", "signal", sig.String())
			s.exit(exitOK)
		case <-s.done:
		}
	}()

	s.metrics.set("api_server.process_startup_time_us", uint64(time.Since(s.started).Microseconds())+uint64(max(s.opts.StartTimeUs, 0)))
	s.metrics.set("api_server.process_startup_time_cpu_us", uint64(max(s.opts.StartTimeCPUUs, 0)))

	if s.opts.LogPath != "" {
		cfg := loggerConfig{LogPath: &s.opts.LogPath, ShowLevel: &s.opts.ShowLevel, ShowLogOrigin: &s.opts.ShowLogOrigin}
		if s.opts.Level != "" {
			cfg.Level = &s.opts.Level
		}
		if err := s.configureLogger(cfg); err != nil {
			s.log.Error("configure logger from command line", "err", err)
			return exitArgParsing
		}
	}
	if s.opts.MetricsPath != "" {
		if err := s.configureMetrics(metricsConfig{MetricsPath: s.opts.MetricsPath}); err != nil {
			s.log.Error("configure metrics from command line", "err", err)
			return exitArgParsing
		}
	}
	s.logf(3, "main", "Running Firecracker v%s", Version())
	go s.metricsLoop()
	go s.guestLoop()

	if s.opts.ConfigFile != "" {
		if err := s.applyConfigFile(s.opts.ConfigFile); err != nil {
			s.log.Error("configuration file", "err", err)
			s.logf(1, "main", "Building VMM configured from cmdline json failed: %v", err)
			return s.shutdown(exitBadConfiguration)
		}
	}

	switch {
	case s.opts.NoAPI:
		s.log.Info("API disabled (--no-api)")
	case s.faults.ready:
		s.log.Warn("injected failure: never creating the API socket")
	default:
		ln, err := net.Listen("unix", s.opts.APISock)
		if err != nil {
			// Firecracker does not remove a stale socket either: the
			// manager must clean up before starting a new process.
			s.log.Error("Failed to open the API socket", "path", s.opts.APISock, "err", err)
			s.logf(1, "fc_api", "Error creating the HTTP server: %v", err)
			return s.shutdown(exitGeneric)
		}
		s.httpSrv = &http.Server{Handler: s, ReadHeaderTimeout: 30 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
		go func() {
			if err := s.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("API server", "err", err)
				s.exit(exitGeneric)
			}
		}()
		s.log.Info("API server listening", "socket", s.opts.APISock)
	}
	return s.shutdown(<-s.exitCh)
}

// exit asks the process to end with code; the first request wins.
func (s *Sim) exit(code int) {
	s.exitOnce.Do(func() {
		s.exitCh <- code
	})
}

// shutdown tears everything down and returns the exit code.
func (s *Sim) shutdown(code int) int {
	close(s.done)
	if s.httpSrv != nil {
		_ = s.httpSrv.Close()
		if err := os.Remove(s.opts.APISock); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("remove API socket", "err", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.guest != nil {
		s.guest.kill()
	}
	if s.vsock != nil {
		s.vsock.close()
	}
	s.flushMetricsLocked()
	if s.metricsSink != nil {
		s.metricsSink.close()
	}
	s.logf(3, "main", "Firecracker exiting with code %d", code)
	if l := s.fclog.Load(); l != nil && l.sink != nil {
		l.sink.close()
	}
	if s.mem != nil {
		s.mem.close()
		s.mem = nil
	}
	s.log.Info("exiting", "code", code)
	return code
}

// logf writes to Firecracker's log (if configured) and to stderr.
func (s *Sim) logf(level int, thread, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if l := s.fclog.Load(); l != nil && !l.log(level, thread, msg) {
		s.metrics.inc("logger.missed_log_count")
	}
}

func (s *Sim) metricsLoop() {
	t := time.NewTicker(s.opts.MetricsInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.mu.Lock()
			s.flushMetricsLocked()
			s.mu.Unlock()
		}
	}
}

func (s *Sim) flushMetricsLocked() {
	if s.metricsSink == nil {
		return
	}
	if s.mem != nil {
		s.metrics.set("fcsim.guest_dirty_pages", uint64(s.mem.dirtyCount()))
	}
	line := s.metrics.line(s.opts.ID, s.metricsCfg.EmitID, s.metricsCfg.Properties)
	ok, err := s.metricsSink.writeLine(line)
	switch {
	case err != nil && errors.Is(err, syscall.EAGAIN):
		s.metrics.inc("logger.missed_metrics_count")
	case err != nil:
		s.metrics.inc("logger.metrics_fails")
		s.log.Warn("write metrics", "err", err)
	case !ok:
		s.metrics.inc("logger.missed_metrics_count")
	}
}

// guestLoop is the simulated guest's vCPU: while the VM runs it does a
// unit of work per tick, and it carries out a pending Ctrl+Alt+Del.
func (s *Sim) guestLoop() {
	t := time.NewTicker(s.opts.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		s.mu.Lock()
		if s.state == stateRunning && s.mem != nil {
			s.mem.guestTick()
			s.metrics.inc("fcsim.guest_ticks")
			s.metrics.inc("vcpu.exit_mmio_write")
			if s.ctrlAltDel {
				s.ctrlAltDel = false
				s.console.printf("reboot: Restarting system\n")
				s.logf(3, "fc_vcpu 0", "Received KVM_EXIT_SHUTDOWN signal")
				s.exit(exitOK)
			}
		}
		s.mu.Unlock()
	}
}

// consoleWriter is the serial console: stdout, or serial_out_path.
type consoleWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (c *consoleWriter) printf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.w, format, args...)
}
