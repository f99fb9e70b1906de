package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/agent/guestinit"
	"github.com/hearth-vm/hearth/agent/server"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// envChild marks the agent process init supervises.
const envChild = "HEARTH_AGENT_SUPERVISED"

func main() { os.Exit(run(os.Args, os.Stderr)) }

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type options struct {
	listens, lineListens listFlag
	token, tokenFile     string
	noAuth               bool
	envFile, secretsDir  string
	filesRoot            string
	maxFile, maxSecret   int64
	lineNoToken          bool
	initMode             string
	initMount            bool
	cmdline              string
	cmdlineSet           bool
	logLevel             string
	system               string
	version              bool
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("hearth-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(&o.listens, "listen", "agent protocol listener (vsock:PORT, serial:NAME, unix:PATH, fcsim:PORT); repeatable")
	fs.Var(&o.lineListens, "line-listen", "line protocol listener; repeatable")
	fs.StringVar(&o.token, "token", "", "token (else --token-file, else hearth.token= on the kernel command line)")
	fs.StringVar(&o.tokenFile, "token-file", "/run/hearth/token", "token file, read if present and written on rotation")
	fs.BoolVar(&o.noAuth, "no-auth", false, "serve without a token (tests only)")
	fs.StringVar(&o.envFile, "env-file", server.DefaultEnvFile, "env store file")
	fs.StringVar(&o.secretsDir, "secrets-dir", server.DefaultSecretsDir, "secrets directory")
	fs.StringVar(&o.filesRoot, "files-root", "", "confine file operations to this directory")
	fs.Int64Var(&o.maxFile, "max-file-size", server.DefaultMaxFileSize, "largest file upload in bytes")
	fs.Int64Var(&o.maxSecret, "max-secret-size", server.DefaultMaxSecretSize, "largest secret in bytes")
	fs.BoolVar(&o.lineNoToken, "line-allow-no-token", false, "accept line-protocol writes without a token")
	fs.StringVar(&o.initMode, "init", "auto", "act as init: auto (when PID 1), always, never")
	fs.BoolVar(&o.initMount, "init-mount", true, "as init, mount proc, sys, dev, tmp, run")
	fs.StringVar(&o.cmdline, "cmdline", "/proc/cmdline", "kernel command line file")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.system, "system", "auto", "linux (act on the kernel), simulated (log power, clock and entropy requests), auto (simulated under the Firecracker simulator)")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	o.cmdlineSet = set["cmdline"]
	if dir := os.Getenv(server.EnvFcsimGuestDir); dir != "" {
		// A host process playing a simulated guest keeps its state with
		// that guest, not in the host's /run, where every simulated VM
		// would share one token file, env and secrets.
		state := filepath.Join(dir, "hearth-state")
		if !set["token-file"] {
			o.tokenFile = filepath.Join(state, "token")
		}
		if !set["env-file"] {
			o.envFile = filepath.Join(state, "env")
		}
		if !set["secrets-dir"] {
			o.secretsDir = filepath.Join(state, "secrets")
		}
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	switch o.initMode {
	case "auto", "always", "never":
	default:
		return nil, fmt.Errorf("--init %q: want auto, always or never", o.initMode)
	}
	switch o.system {
	case "auto", "linux", "simulated":
	default:
		return nil, fmt.Errorf("--system %q: want auto, linux or simulated", o.system)
	}
	for _, l := range append(append(listFlag{}, o.listens...), o.lineListens...) {
		if _, err := server.ParseListen(l); err != nil {
			return nil, err
		}
	}
	return o, nil
}

func run(argv []string, stderr io.Writer) int {
	o, err := parseFlags(argv[1:], stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "hearth-agent:", err)
		return 2
	}
	if o.version {
		fmt.Fprintln(os.Stdout, "hearth-agent", version)
		return 0
	}
	cl := &guestinit.Cmdline{}
	var clErr error
	if text, ok := kernelCmdline(o); ok {
		cl, clErr = guestinit.ParseCmdline(text)
	}
	level := parseLevel(o.logLevel)
	if cl.Debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})).With("pid", os.Getpid())
	if clErr != nil {
		log.Warn("kernel command line", "err", clErr)
	}

	supervised := os.Getenv(envChild) == "1"
	asInit := !supervised && (o.initMode == "always" || (o.initMode == "auto" && os.Getpid() == 1))
	if asInit {
		return runInit(o, cl, argv, log)
	}
	return serve(o, cl, supervised, log)
}

// envFcsimBootArgs carries the kernel command line to a guest process
// of the Firecracker simulator, which has no /proc/cmdline of its own.
const envFcsimBootArgs = "HEARTH_FCSIM_BOOT_ARGS"

// kernelCmdline returns the command line to read: --cmdline if given,
// else the simulator's boot args when running as its guest, else
// /proc/cmdline.
func kernelCmdline(o *options) (string, bool) {
	if !o.cmdlineSet {
		if v, ok := os.LookupEnv(envFcsimBootArgs); ok && os.Getenv(server.EnvFcsimGuestDir) != "" {
			return v, true
		}
	}
	b, err := os.ReadFile(o.cmdline)
	if err != nil {
		return "", false
	}
	return string(b), true
}

func parseLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}

// runInit readies the guest and supervises the serving agent.
func runInit(o *options, cl *guestinit.Cmdline, argv []string, log *slog.Logger) int {
	log = log.With("role", "init")
	log.Info("hearth-agent starting as init", "version", version)
	// The initramfs hands over a PATH of /bin alone; as init, set the
	// usual one, which everything the agent starts inherits (commands in
	// /sbin and /usr/bin are found by name).
	os.Setenv("PATH", server.DefaultPath)
	if err := guestinit.Prepare(guestinit.PrepareConfig{Cmdline: cl, Mount: o.initMount, Log: log}); err != nil {
		log.Warn("init: preparing the guest", "err", err)
	}
	self := "/proc/self/exe"
	if _, err := os.Stat(self); err != nil {
		self = argv[0]
	}
	in := &guestinit.Init{Path: self, Args: argv, Env: append(os.Environ(), envChild+"=1"), Log: log}
	err := in.Run()
	log.Error("init: final reboot failed", "err", err)
	if os.Getpid() == 1 {
		// Init must never exit: the kernel would panic.
		select {}
	}
	return 1
}

func resolveToken(o *options, cl *guestinit.Cmdline) string {
	if o.token != "" {
		return o.token
	}
	if o.tokenFile != "" {
		if b, err := os.ReadFile(o.tokenFile); err == nil {
			if t := strings.TrimSpace(string(b)); t != "" {
				return t
			}
		}
	}
	return cl.Token
}

func serve(o *options, cl *guestinit.Cmdline, supervised bool, log *slog.Logger) int {
	cfg := server.Config{
		Token:            resolveToken(o, cl),
		TokenFile:        o.tokenFile,
		NoAuth:           o.noAuth,
		EnvFile:          o.envFile,
		SecretsDir:       o.secretsDir,
		FilesRoot:        o.filesRoot,
		MaxFileSize:      o.maxFile,
		MaxSecretSize:    o.maxSecret,
		LineAllowNoToken: o.lineNoToken,
		PID1:             supervised,
		Version:          version,
		Logger:           log,
	}
	var power func(string) error
	if supervised {
		// Power actions go to init, which stops everything cleanly.
		power = func(action string) error {
			sig := syscall.SIGUSR2
			if action == agent.Reboot {
				sig = syscall.SIGTERM
			}
			return syscall.Kill(os.Getppid(), sig)
		}
	}
	simulated := o.system == "simulated" || (o.system == "auto" && os.Getenv(server.EnvFcsimGuestDir) != "")
	if simulated {
		// A host process playing a guest must not set the host's clock
		// or power it off.
		cfg.System = &server.SimulatedSystem{Log: log, PowerFunc: power}
	} else {
		cfg.System = &server.LinuxSystem{PowerFunc: power}
	}
	srv, err := server.New(cfg)
	if err != nil {
		log.Error("hearth-agent cannot start", "err", err)
		return 1
	}
	listens, lineListens := o.listens, o.lineListens
	explicit := len(listens) > 0 || len(lineListens) > 0
	if !explicit {
		listens, lineListens = defaultListens()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	started := 0
	startOne := func(spec string, line bool) {
		ls, _ := server.ParseListen(spec)
		if ls.Kind == server.KindSerial {
			if line {
				log.Warn("the line protocol is not served on serial ports", "listen", spec)
				return
			}
			if !explicit && ls.Path == "" {
				if _, err := server.FindVirtioPort(server.SysVirtioPorts, ls.Name); err != nil {
					log.Debug("no virtio-serial port, skipping", "name", ls.Name)
					return
				}
			}
			open, _ := ls.SerialOpener(server.SysVirtioPorts)
			started++
			wg.Add(1)
			go func() {
				defer wg.Done()
				log.Info("serving on a serial port", "listen", spec)
				_ = srv.ServeSerial(ctx, open)
			}()
			return
		}
		ln, err := ls.Listen()
		if err != nil {
			lvl := slog.LevelWarn
			if !explicit {
				lvl = slog.LevelInfo
			}
			log.Log(ctx, lvl, "listener not available", "listen", spec, "err", err)
			return
		}
		started++
		wg.Add(1)
		go func(ln net.Listener) {
			defer wg.Done()
			var err error
			if line {
				err = srv.ServeLine(ln)
			} else {
				err = srv.Serve(ln)
			}
			if err != nil {
				log.Error("listener failed", "listen", spec, "err", err)
			}
		}(ln)
	}
	for _, l := range listens {
		startOne(l, false)
	}
	for _, l := range lineListens {
		startOne(l, true)
	}
	if started == 0 {
		log.Error("hearth-agent: no listener could be opened")
		srv.Close()
		return 1
	}
	log.Info("hearth-agent ready", "version", version, "pid1", supervised, "listeners", started, "simulated_system", simulated)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	sig := <-sigs
	log.Info("hearth-agent stopping", "signal", sig.String())
	cancel()
	srv.Close()
	wg.Wait()
	return 0
}

func defaultListens() (listens, lineListens []string) {
	if os.Getenv(server.EnvFcsimGuestDir) != "" {
		return []string{fmt.Sprintf("fcsim:%d", agent.DefaultPort)}, []string{fmt.Sprintf("fcsim:%d", agent.DefaultLinePort)}
	}
	return []string{fmt.Sprintf("vsock:%d", agent.DefaultPort), "serial:" + agent.SerialPortName},
		[]string{fmt.Sprintf("vsock:%d", agent.DefaultLinePort)}
}
