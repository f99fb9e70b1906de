package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/api"
	"github.com/hearth-vm/hearth/jail"
	"github.com/hearth-vm/hearth/metrics"
	"github.com/spf13/cobra"
)

const defaultSocket = "/run/hearth/hearth.sock"

func socketDefault() string {
	if s := os.Getenv("HEARTH_SOCKET"); s != "" {
		return s
	}
	return defaultSocket
}

func serveCmd(g *globals) *cobra.Command {
	var bf backendFlags
	var group, tcpAddr, tokenFile string
	var stopOnExit bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the hearth daemon",
		Long: `Run the daemon: it owns the state dir and its VMs and serves the JSON/HTTP
API on a unix socket (--socket, $HEARTH_SOCKET, default ` + defaultSocket + `).

On start it reconciles the state dir: VMs whose VMM still runs are adopted,
the others are marked crashed, and host resources no VM owns are removed.
On SIGTERM or SIGINT it stops serving and leaves the VMs running (they are
detached processes); the next start adopts them. --stop-vms-on-exit stops
them instead.

A TCP listener (--tcp) requires a bearer token (--token-file or
$HEARTH_TOKEN); it is refused without one.

The API (JSON over HTTP, versioned under /v1, OpenAPI document at
/v1/openapi.json) is described in docs/api.md.`,
		Example: `  hearth serve --backend firecracker --network netns
  hearth serve --backend qemu --socket /run/hearth/hearth.sock --socket-group hearth
  HEARTH_TOKEN=$(cat /etc/hearth/token) hearth serve --tcp 127.0.0.1:7070`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd.Context(), cmd, g, &bf, group, tcpAddr, tokenFile, stopOnExit)
		},
	}
	bf.register(cmd.Flags(), "auto")
	cmd.Flags().StringVar(&group, "socket-group", "", "group owning the socket (mode 0660); default: the daemon's group")
	cmd.Flags().StringVar(&tcpAddr, "tcp", "", "also listen on this TCP address (host:port), token required")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file holding the bearer token for --tcp ($HEARTH_TOKEN otherwise)")
	cmd.Flags().BoolVar(&stopOnExit, "stop-vms-on-exit", false, "stop every VM when the daemon exits")
	return cmd
}

func runServe(ctx context.Context, cmd *cobra.Command, g *globals, bf *backendFlags, group, tcpAddr, tokenFile string, stopOnExit bool) error {
	bad := func(f string, a ...any) error {
		return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "serve", Err: fmt.Errorf(f, a...)}
	}
	token := os.Getenv("HEARTH_TOKEN")
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return bad("--token-file: %v", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if tcpAddr != "" && token == "" {
		return bad("--tcp needs a bearer token (--token-file or $HEARTH_TOKEN)")
	}
	gid := -1
	if group != "" {
		grp, err := user.LookupGroup(group)
		if err != nil {
			return bad("--socket-group: %v", err)
		}
		gid, _ = strconv.Atoi(grp.Gid)
	}
	backends, def, err := bf.build(g.log)
	if err != nil {
		return err
	}
	netCfg, err := bf.network()
	if err != nil {
		return err
	}
	broker := api.NewBroker()
	// The registry's per-VM collector asks the runtime at every scrape;
	// the runtime feeds the registry its step timings.
	var rtRef atomic.Pointer[hearth.Runtime]
	reg := metrics.NewRegistry(func() []metrics.Source {
		if rt := rtRef.Load(); rt != nil {
			return rt.MetricSources()
		}
		return nil
	})
	rt, err := hearth.Open(ctx, hearth.Config{StateDir: g.stateDir, Backends: backends, DefaultBackend: def,
		Logger: g.log, OnEvent: broker.Publish, ObserveStep: reg.ObserveStep, JailCgroupParent: jail.DefaultCgroupParent,
		Network: netCfg})
	if err != nil {
		return err
	}
	rtRef.Store(rt)
	rep := rt.Reconciled()
	g.log.Info("reconciled state dir", "dir", g.stateDir, "adopted", rep.Adopted, "crashed", rep.Crashed,
		"abandoned", rep.Abandoned, "destroyed", rep.Destroyed, "resumed", rep.Resumed, "reclaimed", rep.Reclaimed)

	l, err := listenUnix(g.socket, gid)
	if err != nil {
		rt.Close()
		return err
	}
	cat, err := openCatalog(g)
	if err != nil {
		l.Close()
		rt.Close()
		return err
	}
	imgs := &api.CatalogImages{Catalog: cat, CacheDir: filepath.Join(g.stateDir, "cache", "debs"), Logger: g.log,
		FindAgent: func() (string, error) { return findAgent("") }}
	srv := api.NewServer(rt, api.Options{Version: version, Logger: g.log, Events: broker, Metrics: reg.Handler(), Images: imgs})
	servers := []*http.Server{{Handler: srv, ReadHeaderTimeout: 10 * time.Second}}
	listeners := []net.Listener{l}
	if tcpAddr != "" {
		tl, err := net.Listen("tcp", tcpAddr)
		if err != nil {
			l.Close()
			rt.Close()
			return bad("--tcp: %v", err)
		}
		servers = append(servers, &http.Server{Handler: api.WithToken(token, srv), ReadHeaderTimeout: 10 * time.Second})
		listeners = append(listeners, tl)
	}
	errc := make(chan error, len(servers))
	for i, s := range servers {
		go func(s *http.Server, l net.Listener) { errc <- s.Serve(l) }(s, listeners[i])
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "hearth %s serving on %s (backend %s, state %s)\n", version, g.socket, def, g.stateDir)
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range servers {
		s.Shutdown(shutCtx)
	}
	os.Remove(g.socket)
	if stopOnExit {
		views, _ := rt.List(shutCtx)
		for _, v := range views {
			if v.Status.HasProcess() {
				if _, serr := rt.Stop(shutCtx, v.ID); serr != nil {
					g.log.Warn("stop on exit", "vm", v.ID, "err", serr)
				}
			}
		}
	}
	if cerr := rt.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// listenUnix binds the API socket with mode 0660. A stale socket left by a
// dead daemon is replaced; a live daemon's socket is not.
func listenUnix(path string, gid int) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, &hearth.Error{Kind: hearth.KindStatePoisoned, Op: "serve", Err: fmt.Errorf("a daemon already listens on %s", path)}
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, err
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}
