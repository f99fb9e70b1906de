package firecracker

import (
	"errors"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// sockWatch reports, through C, that something was created in the
// directory of the API socket. Polling with backoff alone detects the
// socket up to one backoff interval late (tens of milliseconds once the
// interval has grown), which on a fast VMM start is most of the launch.
type sockWatch struct {
	C <-chan struct{}
	f *os.File
}

// watchSocket starts watching the directory of path. It fails only when
// inotify is unavailable; callers then fall back to polling.
func watchSocket(path string) (*sockWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, err
	}
	if _, err := unix.InotifyAddWatch(fd, filepath.Dir(path), unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ATTRIB); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// A non-blocking fd in an os.File is served by the runtime's poller,
	// so the reader below parks a goroutine, not a thread, and Close
	// wakes it.
	f := os.NewFile(uintptr(fd), "inotify")
	c := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := f.Read(buf); err != nil {
				if errors.Is(err, os.ErrClosed) {
					return
				}
				if !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) {
					return
				}
				continue
			}
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}()
	return &sockWatch{C: c, f: f}, nil
}

// Close stops the watch.
func (w *sockWatch) Close() {
	if w != nil {
		w.f.Close()
	}
}

// events returns the notification channel, nil (never ready) without a
// watch.
func (w *sockWatch) events() <-chan struct{} {
	if w == nil {
		return nil
	}
	return w.C
}
