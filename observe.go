package hearth

import (
	"context"
	"io"
	"path/filepath"
	"time"

	"github.com/hearth-vm/hearth/console"
)

// consoleLog returns the console log of the VM with directory key.
func (r *Runtime) consoleLog(key string) console.Log {
	return console.Log{Path: filepath.Join(r.vmDir(key), "console.log"), MaxBytes: r.cfg.ConsoleMaxBytes}
}

// ConsoleTail returns the last n lines of a VM's console (guest serial
// output and VMM stderr). It works for crashed and stopped VMs too: the
// log stays until the VM is destroyed.
func (r *Runtime) ConsoleTail(ctx context.Context, id string, n int) ([]string, error) {
	rec, err := r.record("console", id)
	if err != nil {
		return nil, err
	}
	lines, err := r.consoleLog(rec.Key).Tail(n)
	if err != nil {
		return nil, newErr(KindUnsupported, "console", id, err)
	}
	return lines, nil
}

// ConsoleFollow copies what the VM's console receives to w until ctx
// ends.
func (r *Runtime) ConsoleFollow(ctx context.Context, id string, w io.Writer) error {
	rec, err := r.record("console", id)
	if err != nil {
		return err
	}
	if err := r.consoleLog(rec.Key).Follow(ctx, w, false, 200*time.Millisecond); err != nil {
		return newErr(KindUnsupported, "console", id, err)
	}
	return nil
}

// record returns the published record of a VM without waiting for an
// operation in progress.
func (r *Runtime) record(op, id string) (recView, error) {
	r.mu.Lock()
	e := r.vms[id]
	r.mu.Unlock()
	if e == nil {
		return recView{}, newErr(KindVMNotFound, op, id, nil)
	}
	rec := e.view.Load()
	if rec == nil || rec.ID != id {
		return recView{}, newErr(KindVMNotFound, op, id, nil)
	}
	return recView{Key: rec.Key}, nil
}

type recView struct{ Key string }

// rotateConsoles caps every VM's console log until the runtime closes.
func (r *Runtime) rotateConsoles(every time.Duration) {
	defer r.watch.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-r.closing:
			return
		case <-t.C:
		}
		r.mu.Lock()
		keys := make([]string, 0, len(r.vms))
		for _, e := range r.vms {
			if rec := e.view.Load(); rec != nil {
				keys = append(keys, rec.Key)
			}
		}
		r.mu.Unlock()
		for _, k := range keys {
			if _, err := r.consoleLog(k).Rotate(); err != nil {
				r.log.Warn("rotate console log", "key", k, "err", err)
			}
		}
	}
}
