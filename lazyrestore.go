package hearth

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hearth-vm/hearth/metrics"
	"github.com/hearth-vm/hearth/proc"
	"github.com/hearth-vm/hearth/store"
	"github.com/hearth-vm/hearth/uffd"
	"golang.org/x/sys/unix"
)

// resProcess is a helper process a VM owns (its page-fault server),
// identified by pid and start time; releasing it stops the process.
const resProcess = "process"

// Files of a uffd restore.
const (
	uffdSocket = "uffd.sock"
	uffdStatus = "uffd.status"
	uffdLog    = "uffd.log"
	snapTrace  = "trace"
)

// helperBinary is the hearth binary that provides the `_uffd` and
// `_jail` helper commands.
func (r *Runtime) helperBinary() (string, error) {
	if r.cfg.HelperBinary != "" {
		return r.cfg.HelperBinary, nil
	}
	if self, err := os.Executable(); err == nil && filepath.Base(self) == "hearth" {
		return self, nil
	}
	p, err := exec.LookPath("hearth")
	if err != nil {
		return "", fmt.Errorf("no hearth binary for helper processes (set Config.HelperBinary): %w", err)
	}
	return p, nil
}

// uffdStep starts the page-fault server of a lazy restore. It runs as its
// own detached process, so the VM keeps its memory server when the
// daemon restarts.
func (r *Runtime) uffdStep(p *createPlan) step {
	return step{
		name: "uffd",
		do: func(ctx context.Context) error {
			if p.rspec.MemoryBackend != "uffd" {
				return nil
			}
			bin, err := r.helperBinary()
			if err != nil {
				return newErr(KindUffd, p.op, p.id, err)
			}
			dir := r.vmDir(p.entry.rec.Key)
			srv, err := uffd.Launch(ctx, uffd.LaunchSpec{
				Options: uffd.Options{
					Socket:     filepath.Join(dir, uffdSocket),
					MemFile:    filepath.Join(p.restore.Dir, snapMem),
					TraceFile:  filepath.Join(p.restore.Dir, snapTrace),
					Prefetch:   p.rspec.Prefetch,
					StatusFile: filepath.Join(dir, uffdStatus),
				},
				Binary:  bin,
				LogFile: filepath.Join(dir, uffdLog),
			})
			if err != nil {
				return newErr(KindUffd, p.op, p.id, err)
			}
			id := srv.Identity()
			srv.Release() // supervised through its record, like the VMM
			p.entry.rec.Resources = append(p.entry.rec.Resources, store.Resource{Kind: resProcess, Name: "uffd",
				Data: map[string]string{"pid": strconv.Itoa(id.Pid), "start_time": strconv.FormatUint(id.StartTime, 10)}})
			return r.persistCreating(p)
		},
		undo: func(ctx context.Context) error {
			return r.releaseProcesses(p.entry.rec.Resources)
		},
	}
}

// prefetchWaitPoll is how often a prefetch wait reads the server's
// status file.
const prefetchWaitPoll = 2 * time.Millisecond

// prefetchWaitStep resumes a VM that was loaded paused so that its
// working set could be prefetched first (RestoreSpec.PrefetchWaitMs): it
// waits until the page-fault server has replayed the trace, or the wait
// is over, whichever comes first, then resumes the vCPUs. A wait that
// runs out is not an error: the guest then races the rest of the
// prefetch, as without a wait.
func (r *Runtime) prefetchWaitStep(p *createPlan) step {
	return step{
		name: "prefetch-wait",
		do: func(ctx context.Context) error {
			if p.rspec.PrefetchWaitMs <= 0 {
				return nil
			}
			t0 := time.Now()
			wctx, cancel := context.WithTimeout(ctx, time.Duration(p.rspec.PrefetchWaitMs)*time.Millisecond)
			st, err := uffd.AwaitPrefetch(wctx, filepath.Join(r.vmDir(p.entry.rec.Key), uffdStatus), prefetchWaitPoll)
			cancel()
			if ctx.Err() != nil {
				return vmmErr(p.op, p.id, KindUffd, ctx.Err())
			}
			r.log.Info("prefetch wait over; resuming", "vm", p.id, "waited", time.Since(t0).Round(time.Microsecond),
				"complete", err == nil, "trace", st.Trace, "prefetched_pages", st.PrefetchedPages)
			if err := p.entry.machine.Resume(ctx); err != nil {
				return vmmErr(p.op, p.id, KindUnsupported, err)
			}
			return nil
		},
	}
}

// uffdServer returns the record of the VM's page-fault server, when it
// was restored through one.
func uffdServer(res []store.Resource) (store.Resource, bool) {
	for _, x := range res {
		if x.Kind == resProcess && x.Name == "uffd" {
			return x, true
		}
	}
	return store.Resource{}, false
}

// pageFaultStats reads a page-fault server's counters for the metrics.
func pageFaultStats(status string) (metrics.PageFaultStats, error) {
	st, err := uffd.ReadStatus(status)
	if err != nil {
		return metrics.PageFaultStats{}, err
	}
	return metrics.PageFaultStats{
		State: string(st.State), Faults: st.Faults, FaultBytes: st.FaultBytes,
		BackgroundBytes: st.BackgroundPages * uffd.PageSize4K, PrefetchedBytes: st.PrefetchedBytes,
		ZeroBytes:         st.ZeroPages * max(st.PageSize, uffd.PageSize4K),
		MaxFaultLatencyUS: st.MaxFaultLatencyUS, MeanFaultLatencyUS: st.MeanFaultLatencyUS,
		Trace: st.Trace, PrefetchMS: st.PrefetchMS, Errors: st.Errors,
	}, nil
}

// releaseProcesses stops every helper process in res.
func (r *Runtime) releaseProcesses(res []store.Resource) error {
	var errs []error
	for _, x := range res {
		if x.Kind == resProcess {
			errs = append(errs, r.release(x))
		}
	}
	return errors.Join(errs...)
}

func processIdentity(res store.Resource) (proc.Identity, error) {
	pid, err1 := strconv.Atoi(res.Data["pid"])
	st, err2 := strconv.ParseUint(res.Data["start_time"], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return proc.Identity{}, fmt.Errorf("process resource %q: %w", res.Name, err)
	}
	return proc.Identity{Pid: pid, StartTime: st}, nil
}

// stopProcess stops a recorded helper process; one that is gone (or
// whose pid now belongs to another process) is left alone.
func stopProcess(ctx context.Context, res store.Resource) error {
	id, err := processIdentity(res)
	if err != nil {
		return err
	}
	p, err := proc.Adopt(id)
	if errors.Is(err, proc.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer p.Release()
	return p.Kill()
}

// watchUffd kills the VM's VMM when its page-fault server dies with an
// error: the guest would otherwise hang on its next fault.
func (r *Runtime) watchUffd(e *vmEntry) {
	res, ok := uffdServer(e.rec.Resources)
	if !ok {
		return
	}
	id, err := processIdentity(res)
	if err != nil {
		return
	}
	p, err := proc.Adopt(id)
	if err != nil {
		return // already exited: its status says whether it failed
	}
	status := filepath.Join(r.vmDir(e.rec.Key), uffdStatus)
	r.watch.Add(1)
	go func() {
		defer r.watch.Done()
		defer p.Release()
		select {
		case <-p.Done():
		case <-r.closing:
			return
		}
		// A server that ended on its own terms says so; any other
		// end (failed, or killed mid-"serving") leaves the guest
		// without anyone to serve its faults.
		st, err := uffd.ReadStatus(status)
		if err == nil && (st.State == uffd.StateExited || st.State == uffd.StateDetached) {
			return
		}
		e.mu.Lock()
		m := e.machine
		e.mu.Unlock()
		if m == nil {
			return
		}
		r.log.Error("page-fault server died; killing the VM it served", "vm", e.rec.ID, "status_err", st.Error, "read_err", err)
		// Killed behind the machine's back, so that its exit watcher
		// sees an unexpected exit and marks the VM crashed.
		if h := m.Handle(); h.Pid > 0 {
			if vp, err := proc.Adopt(proc.Identity{Pid: h.Pid, StartTime: h.StartTime}); err == nil {
				vp.Signal(unix.SIGKILL)
				vp.Release()
			}
		}
	}()
}

// uffdFailure says why the VM's page-fault server failed, or "" when it
// did not (or the VM has none): its own recorded error, or that it is
// gone while its status still says it was serving (killed). A VMM that
// dies for that reason is recorded crashed with it, not with a bare
// signal.
func (r *Runtime) uffdFailure(e *vmEntry) string {
	res, ok := uffdServer(e.rec.Resources)
	if !ok {
		return ""
	}
	st, err := uffd.ReadStatus(filepath.Join(r.vmDir(e.rec.Key), uffdStatus))
	if err != nil {
		return ""
	}
	if st.State == uffd.StateFailed || st.Error != "" {
		return fmt.Sprintf("page-fault server (pid %d) failed: %s", st.Pid, st.Error)
	}
	if st.State == uffd.StateExited || st.State == uffd.StateDetached {
		return ""
	}
	id, err := processIdentity(res)
	if err != nil {
		return ""
	}
	p, err := proc.Adopt(id)
	if err == nil {
		p.Release()
		return "" // still there: it did not take the VM down
	}
	return fmt.Sprintf("page-fault server (pid %d) died while %s", st.Pid, st.State)
}
