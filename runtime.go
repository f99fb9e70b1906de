package hearth

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/firewall"
	"github.com/hearth-vm/hearth/jail"
	"github.com/hearth-vm/hearth/metrics"
	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/snapshot"
	"github.com/hearth-vm/hearth/store"
	"github.com/hearth-vm/hearth/vmm"
)

// Config configures a Runtime.
type Config struct {
	// StateDir holds the store (hearth.db), per-VM directories (vms/) and
	// snapshots (snapshots/). Required.
	StateDir string
	// Backends are the VMM backends VMs may use, by their Name.
	Backends []vmm.Backend
	// DefaultBackend is used when a Spec names none. "" or "auto" picks
	// firecracker when registered, else qemu, else the first backend.
	DefaultBackend string
	// Defaults fill the zero fields of every Spec.
	Defaults Spec
	// Images resolves Spec.Image to files; nil uses the image catalog in
	// <state-dir>/images (see `hearth image`).
	Images ImageResolver
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// OnEvent, when set, is called for every lifecycle event. It must not
	// block or call back into the Runtime synchronously.
	OnEvent func(Event)
	// StopTimeout bounds a graceful stop before the VMM is killed
	// (default 10 s).
	StopTimeout time.Duration
	// AgentTimeout bounds each guest-agent call until the agent answers
	// (an exec until its command has started; the command itself runs as
	// long as it runs), so that a frozen guest fails calls with a
	// KindTimeout error instead of hanging them (default 15 s). A QEMU
	// guest that is still booting gets up to two minutes from its boot
	// for an exec: a TCG boot on a loaded host is slow, not frozen.
	AgentTimeout time.Duration
	// ObserveStep, when set, receives the duration of every create and
	// restore pipeline step (reserve, dir, allocate, rootfs, launch,
	// configure, load, record) with the VM's backend, e.g. for latency
	// histograms (metrics.Registry.ObserveStep).
	ObserveStep func(backend, step string, d time.Duration)
	// Network, when set, gives VMs a network interface behind a per-VM
	// egress firewall (Spec.Network.Disabled opts a VM out).
	Network *NetworkConfig
	// HelperBinary is the hearth binary whose hidden `_uffd` and `_jail`
	// commands run page-fault servers and jails (default: this program
	// when it is hearth, else "hearth" in PATH).
	HelperBinary string
	// JailDir holds the VMs' jails (default <state-dir>/jail). It must
	// belong to hearth alone: reconcile removes what no VM owns.
	JailDir string
	// JailIDs is the range of uids/gids jailed VMs get, one each (default
	// jail.DefaultIDRange); when all are taken, creating a jailed VM fails
	// with a Jailer error wrapping store.ErrFull.
	JailIDs jail.Range
	// JailCgroupParent is the parent cgroup of jailed VMs (default
	// "hearth"); give the Firecracker backend the same ParentCgroup.
	JailCgroupParent string
	// ConsoleMaxBytes caps each VM's console log (default 8 MiB; two
	// rotated generations are kept).
	ConsoleMaxBytes int64
}

// ImageResolver maps a catalog image name to its files.
type ImageResolver interface {
	Resolve(ctx context.Context, name string) (Image, error)
}

// Image is a resolved catalog image.
type Image struct {
	Kernel string
	Initrd string
	Rootfs string
	// RootfsSHA256 is the rootfs digest from the catalog manifest, if
	// known; clones record it.
	RootfsSHA256 string
}

// DefaultBootArgs are the kernel arguments when neither the Spec nor the
// runtime defaults give any: serial console, exit on reboot and panic, and
// the root drive (the first virtio disk) for the image's initramfs.
const DefaultBootArgs = "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda"

// Event is a lifecycle event.
type Event struct {
	Time   time.Time `json:"time"`
	VM     string    `json:"vm"`
	Type   string    `json:"type"`
	Status Status    `json:"status"`
	Detail string    `json:"detail,omitempty"`
}

// ReconcileReport says what Open found.
type ReconcileReport struct {
	// Adopted VMs whose VMM was still running.
	Adopted []string `json:"adopted,omitempty"`
	// Crashed VMs whose VMM was gone.
	Crashed []string `json:"crashed,omitempty"`
	// Abandoned creates (the runtime died mid-pipeline) that were rolled back.
	Abandoned []string `json:"abandoned,omitempty"`
	// Destroyed VMs whose destroy the previous runtime began and this
	// one finished.
	Destroyed []string `json:"destroyed,omitempty"`
	// Resumed VMs that an interrupted snapshot had left paused.
	Resumed []string `json:"resumed,omitempty"`
	// Reclaimed host resources no record owned.
	Reclaimed []string `json:"reclaimed,omitempty"`
}

// Runtime manages the VMs of one state dir. Its methods are safe for
// concurrent use: each VM has its own lock, and the VM map is never locked
// across I/O, so operations on different VMs run in parallel.
type Runtime struct {
	cfg      Config
	st       *store.Store
	log      *slog.Logger
	backends map[string]vmm.Backend
	def      string
	report   ReconcileReport
	jails    *jail.Manager
	jailErr  error
	net      *network.Manager
	fw       firewall.Firewall
	snaps    *snapshot.Store

	mu      sync.Mutex
	vms     map[string]*vmEntry
	closed  bool
	closing chan struct{}
	watch   sync.WaitGroup

	// inject makes pipeline steps fail (tests only).
	inject func(step string) error
}

// vmEntry is the in-memory side of one VM. mu serialises operations on the
// VM; view is a lock-free copy of the record for List and Get.
type vmEntry struct {
	mu      sync.Mutex
	rec     store.VM
	machine vmm.Machine
	gone    bool
	view    atomic.Pointer[store.VM]
	// booted is when the guest last booted (unix ns; 0: not by this
	// runtime), for the grace a booting guest's agent gets.
	booted atomic.Int64
	// fcMetrics mirrors the machine's Firecracker counters for readers
	// that must not take mu.
	fcMetrics atomic.Pointer[metrics.FirecrackerAccumulator]

	// agent is the shared guest-agent client (guarded by agentMu, not mu,
	// so that exec does not wait for lifecycle operations).
	agentMu    sync.Mutex
	agent      *agent.Client
	agentToken string
}

// publish makes the record (and the machine's counters) visible to
// lock-free readers; called under mu after every change.
func (e *vmEntry) publish() {
	rec := e.rec
	e.view.Store(&rec)
	var acc *metrics.FirecrackerAccumulator
	if fm, ok := e.machine.(firecrackerMetrics); ok {
		acc = fm.Metrics()
	}
	e.fcMetrics.Store(acc)
}

// Open opens the runtime on cfg.StateDir, locking it against other
// runtimes, and reconciles the records with reality: VMs whose VMM still
// runs are adopted, the others are marked crashed, interrupted creates are
// rolled back and unowned resources are reclaimed (see Reconciled).
func Open(ctx context.Context, cfg Config) (*Runtime, error) {
	const op = "open"
	if cfg.StateDir == "" {
		return nil, invalidArg(op, "", "state dir is required")
	}
	if !filepath.IsAbs(cfg.StateDir) {
		abs, err := filepath.Abs(cfg.StateDir)
		if err != nil {
			return nil, invalidArg(op, "", "state dir: %v", err)
		}
		cfg.StateDir = abs
	}
	if len(cfg.Backends) == 0 {
		return nil, invalidArg(op, "", "at least one VMM backend is required")
	}
	r := &Runtime{cfg: cfg, backends: map[string]vmm.Backend{}, vms: map[string]*vmEntry{}, closing: make(chan struct{})}
	r.log = cfg.Logger
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	for _, b := range cfg.Backends {
		if _, dup := r.backends[b.Name()]; dup {
			return nil, invalidArg(op, "", "backend %q registered twice", b.Name())
		}
		r.backends[b.Name()] = b
	}
	r.def = cfg.DefaultBackend
	if r.def == "" || r.def == "auto" {
		r.def = cfg.Backends[0].Name()
		for _, pref := range []string{"qemu", "firecracker"} {
			if _, ok := r.backends[pref]; ok {
				r.def = pref
			}
		}
	}
	if _, ok := r.backends[r.def]; !ok {
		return nil, invalidArg(op, "", "default backend %q is not registered", r.def)
	}
	if cfg.JailIDs != (jail.Range{}) {
		if err := cfg.JailIDs.Validate(); err != nil {
			return nil, invalidArg(op, "", "jail ids: %v", err)
		}
	}
	if r.cfg.StopTimeout <= 0 {
		r.cfg.StopTimeout = 10 * time.Second
	}
	if r.cfg.AgentTimeout <= 0 {
		r.cfg.AgentTimeout = DefaultAgentTimeout
	}
	if r.cfg.Defaults.BootArgs == "" {
		r.cfg.Defaults.BootArgs = DefaultBootArgs
	}
	if r.cfg.Defaults.VCPUs == 0 {
		r.cfg.Defaults.VCPUs = 1
	}
	if r.cfg.Defaults.MemoryMiB == 0 {
		r.cfg.Defaults.MemoryMiB = 256
	}
	st, err := store.Open(cfg.StateDir)
	if err != nil {
		return nil, newErr(KindStatePoisoned, op, "", err)
	}
	r.st = st
	r.openJails()
	if err := r.openImages(); err != nil {
		st.Close()
		return nil, newErr(KindRootfs, op, "", err)
	}
	if r.snaps, err = snapshot.Open(r.snapshotsDir(), snapshot.Options{Logger: r.log}); err != nil {
		st.Close()
		return nil, newErr(KindStatePoisoned, op, "", err)
	}
	if err := r.openNetwork(); err != nil {
		st.Close()
		return nil, err
	}
	for _, d := range []string{r.vmsDir(), r.snapshotsDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			st.Close()
			return nil, newErr(KindStatePoisoned, op, "", err)
		}
	}
	if err := r.reconcile(ctx); err != nil {
		r.Close()
		return nil, err
	}
	r.watch.Add(1)
	go r.rotateConsoles(5 * time.Second)
	return r, nil
}

// Reconciled reports what Open adopted, marked crashed and reclaimed.
func (r *Runtime) Reconciled() ReconcileReport { return r.report }

// Close stops supervising the VMs and releases the state dir. VMs keep
// running; a later Open adopts them.
func (r *Runtime) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	close(r.closing)
	entries := make([]*vmEntry, 0, len(r.vms))
	for _, e := range r.vms {
		entries = append(entries, e)
	}
	r.mu.Unlock()
	for _, e := range entries {
		e.mu.Lock() // waits for the VM's in-flight operation
		if e.machine != nil {
			e.machine.Release()
			e.machine = nil
		}
		e.mu.Unlock()
		// A guest channel that takes one connection at a time (QEMU's
		// virtio-serial chardev) must be free for the next runtime.
		e.closeAgent()
	}
	r.watch.Wait()
	if r.net != nil {
		r.net.Close() // slots stay for the next runtime
	}
	return r.st.Close()
}

func (r *Runtime) vmsDir() string       { return filepath.Join(r.cfg.StateDir, "vms") }
func (r *Runtime) snapshotsDir() string { return filepath.Join(r.cfg.StateDir, "snapshots") }
func (r *Runtime) vmDir(key string) string {
	return filepath.Join(r.vmsDir(), key)
}

func (r *Runtime) emit(vm, typ string, s Status, detail string) {
	r.log.Info("vm "+typ, "vm", vm, "status", s, "detail", detail)
	if r.cfg.OnEvent != nil {
		r.cfg.OnEvent(Event{Time: time.Now().UTC(), VM: vm, Type: typ, Status: s, Detail: detail})
	}
}

func (r *Runtime) checkOpen(op string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return newErr(KindStatePoisoned, op, "", errors.New("runtime is closed"))
	}
	return nil
}

// lockVM finds the VM and locks it. The lock is re-checked after it is
// taken, because the VM may have been destroyed or renamed meanwhile.
func (r *Runtime) lockVM(op, id string) (*vmEntry, error) {
	r.mu.Lock()
	e, closed := r.vms[id], r.closed
	r.mu.Unlock()
	if closed {
		return nil, newErr(KindStatePoisoned, op, id, errors.New("runtime is closed"))
	}
	if e == nil {
		return nil, newErr(KindVMNotFound, op, id, nil)
	}
	e.mu.Lock()
	if e.gone || e.rec.ID != id {
		e.mu.Unlock()
		return nil, newErr(KindVMNotFound, op, id, nil)
	}
	return e, nil
}

// save persists e.rec and publishes it to readers.
func (r *Runtime) save(op string, e *vmEntry) error {
	e.rec.UpdatedAt = time.Now().UTC()
	if err := r.st.PutVM(e.rec); err != nil {
		return newErr(KindStatePoisoned, op, e.rec.ID, err)
	}
	e.publish()
	return nil
}

func (r *Runtime) backendFor(name string) (vmm.Backend, error) {
	if name == "" || name == "auto" {
		name = r.def
	}
	b, ok := r.backends[name]
	if !ok {
		names := make([]string, 0, len(r.backends))
		for n := range r.backends {
			names = append(names, n)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("backend %q is not available (have %v)", name, names)
	}
	return b, nil
}

func newKey() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b[:])
}

// vmmErr classifies an error from a backend: a refusal by the VMM is
// KindVMM, a call that found no answer within its deadline KindTimeout,
// anything else keeps fallback.
func vmmErr(op, vm string, fallback Kind, err error) error {
	if err == nil {
		return nil
	}
	var re *vmm.RequestError
	if errors.As(err, &re) {
		return newErr(KindVMM, op, vm, err)
	}
	if isTimeout(err) {
		return asHearth(KindTimeout, op, vm, err)
	}
	return asHearth(fallback, op, vm, err)
}

// isTimeout reports whether err is a deadline that passed (a call's own
// or its context's).
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// Get returns one VM.
func (r *Runtime) Get(ctx context.Context, id string) (View, error) {
	r.mu.Lock()
	e := r.vms[id]
	r.mu.Unlock()
	if e == nil {
		return View{}, newErr(KindVMNotFound, "get", id, nil)
	}
	rec := e.view.Load()
	if rec == nil || rec.ID != id {
		return View{}, newErr(KindVMNotFound, "get", id, nil)
	}
	return viewOf(*rec), nil
}

// List returns every VM, sorted by id. It never waits for an operation in
// progress.
func (r *Runtime) List(ctx context.Context) ([]View, error) {
	r.mu.Lock()
	out := make([]View, 0, len(r.vms))
	for _, e := range r.vms {
		if rec := e.view.Load(); rec != nil {
			out = append(out, viewOf(*rec))
		}
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func viewOf(rec store.VM) View {
	v := View{ID: rec.ID, Status: Status(rec.Status), Backend: rec.Backend, CreatedAt: rec.CreatedAt,
		UpdatedAt: rec.UpdatedAt, RestoredFrom: rec.RestoredFrom, Exit: rec.Exit}
	if len(rec.Spec) > 0 {
		_ = json.Unmarshal(rec.Spec, &v.Spec)
	}
	if rec.Handle != nil && Status(rec.Status).HasProcess() {
		v.Pid = rec.Handle.Pid
	}
	return v
}

// ViewsFromRecords turns store records into views, for tools that read a
// store without opening a Runtime.
func ViewsFromRecords(recs []store.VM) []View {
	out := make([]View, 0, len(recs))
	for _, r := range recs {
		out = append(out, viewOf(r))
	}
	return out
}

// resources held by a VM, recorded in store.Resource.Kind.
const (
	resDir   = "dir"
	resAlloc = "alloc"
)

// Pools and ranges of the allocations a VM holds.
const (
	poolCID   = "vsock-cid"
	cidFirst  = 3 // 0-2 are reserved by virtio-vsock
	cidLast   = 1<<32 - 2
	cidFileNm = "vsock.sock"
)

func allocValue(res store.Resource) (string, uint64, bool) {
	v, err := strconv.ParseUint(res.Data["value"], 10, 64)
	return res.Name, v, err == nil
}

// release frees one resource; a missing resource is not an error, so
// release is idempotent and safe to repeat after a crash.
func (r *Runtime) release(res store.Resource) error {
	switch res.Kind {
	case resDir:
		if err := removeDir(res.Name); err != nil {
			return fmt.Errorf("remove %s: %w", res.Name, err)
		}
	case resProcess:
		if err := stopProcess(context.Background(), res); err != nil {
			return fmt.Errorf("stop %s server: %w", res.Name, err)
		}
	case resNetwork, resFirewall:
		if err := r.releaseNetwork(res); err != nil {
			return err
		}
	case resJail:
		if err := r.teardownJail(res.Name); err != nil {
			return fmt.Errorf("tear down jail %s: %w", res.Name, err)
		}
	case resAlloc:
		pool, v, ok := allocValue(res)
		if !ok {
			return fmt.Errorf("alloc resource %q has no value", res.Name)
		}
		if err := r.st.Release(pool, v); err != nil {
			return fmt.Errorf("release %s %d: %w", pool, v, err)
		}
	default:
		return fmt.Errorf("unknown resource kind %q", res.Kind)
	}
	return nil
}

// releaseAll frees resources in reverse order of acquisition and returns
// those it could not free.
func (r *Runtime) releaseAll(res []store.Resource) ([]store.Resource, error) {
	var errs []error
	var left []store.Resource
	for i := len(res) - 1; i >= 0; i-- {
		if err := r.release(res[i]); err != nil {
			errs = append(errs, err)
			left = append([]store.Resource{res[i]}, left...)
		}
	}
	return left, errors.Join(errs...)
}

func findAlloc(res []store.Resource, pool string) (uint64, bool) {
	for _, x := range res {
		if x.Kind == resAlloc && x.Name == pool {
			_, v, ok := allocValue(x)
			return v, ok
		}
	}
	return 0, false
}

// Backends returns the names of the registered backends, sorted.
func (r *Runtime) Backends() []string {
	names := make([]string, 0, len(r.backends))
	for n := range r.backends {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// DefaultBackend returns the backend used when a Spec names none.
func (r *Runtime) DefaultBackend() string { return r.def }

// StateDir returns the runtime's state directory.
func (r *Runtime) StateDir() string { return r.cfg.StateDir }

// removeDir removes a VM directory. A process of the VM that is still
// going away (a guest helper dying with its VMM) can create a file while
// the tree is being removed, so a non-empty directory is retried briefly.
func removeDir(dir string) error {
	var err error
	for i := 0; i < 20; i++ {
		if err = os.RemoveAll(dir); err == nil || !errors.Is(err, syscall.ENOTEMPTY) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}
