package network

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/hearth-vm/hearth/proc"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// CreateNS creates a new, empty network namespace and pins it by a bind
// mount at path (the iproute2 convention is /run/netns/<name>). The
// namespace lives until DeleteNS, whoever holds it open.
func CreateNS(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create netns dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("create netns file: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread is left in the new namespace and never unlocked:
		// when this goroutine returns, the runtime kills the thread, so
		// no other goroutine ever runs in the wrong namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// DeleteNS unpins the namespace at path and removes the file. Deleting a
// namespace that does not exist is not an error. The kernel frees the
// namespace (and the links inside it) once nothing holds it any more.
func DeleteNS(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// InNS runs fn on an OS thread that has joined the namespace ns. Sockets
// fn creates belong to ns for their whole life, so fn may dial or listen
// and hand the connection back. If the thread cannot be returned to its
// original namespace it is discarded rather than reused.
func InNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return // thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// InNSPath is InNS for a namespace given by path.
func InNSPath(path string, fn func() error) error {
	return proc.InNetNS(path, fn)
}

// setSysctls writes sysctls (keys like "net/ipv4/ip_forward") inside ns.
// /proc/sys/net resolves against the writing thread's namespace, so the
// values land in ns and nowhere else.
func setSysctls(ns netns.NsHandle, kv ...string) error {
	return InNS(ns, func() error {
		for i := 0; i+1 < len(kv); i += 2 {
			p := "/proc/sys/" + strings.TrimPrefix(kv[i], "/")
			if err := os.WriteFile(p, []byte(kv[i+1]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", kv[i], kv[i+1], err)
			}
		}
		return nil
	})
}
