package looptest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// mkfsArgs are the mkfs invocations per filesystem type; XFS gets reflink
// explicitly because older xfsprogs default it off.
var mkfsArgs = map[string][]string{
	"xfs":   {"mkfs.xfs", "-q", "-f", "-m", "reflink=1"},
	"btrfs": {"mkfs.btrfs", "-q", "-f"},
	"ext4":  {"mkfs.ext4", "-q", "-F"},
}

// Mount creates a size-byte image of fstype, loop-mounts it and returns
// the mount point. The filesystem is removed in tb.Cleanup.
func Mount(tb testing.TB, fstype string, size int64) string {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skipf("needs root to loop-mount a %s filesystem", fstype)
	}
	args, ok := mkfsArgs[fstype]
	if !ok {
		tb.Fatalf("looptest: unknown filesystem type %q", fstype)
	}
	if _, err := exec.LookPath(args[0]); err != nil {
		tb.Skipf("%s not installed (apt-get install -y %s)", args[0], pkgOf(fstype))
	}
	dir := tb.TempDir()
	img := filepath.Join(dir, fstype+".img")
	f, err := os.Create(img)
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		tb.Fatal(err)
	}
	f.Close()
	run(tb, append(args, img)...)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		tb.Fatal(err)
	}
	// mount -o loop sets the loop device to autoclear: unmounting detaches it.
	run(tb, "mount", "-t", fstype, "-o", "loop", img, mnt)
	tb.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			// Lazy unmount as a last resort so the loop device is freed
			// once the last user goes.
			exec.Command("umount", "-l", mnt).Run()
			tb.Errorf("umount %s: %v: %s", mnt, err, out)
		}
		if out, _ := exec.Command("losetup", "-j", img).Output(); len(bytes.TrimSpace(out)) > 0 {
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if dev, _, ok := strings.Cut(line, ":"); ok {
					exec.Command("losetup", "-d", dev).Run()
				}
			}
			tb.Errorf("loop device still attached to %s after umount: %s", img, out)
		}
	})
	return mnt
}

func pkgOf(fstype string) string {
	switch fstype {
	case "xfs":
		return "xfsprogs"
	case "btrfs":
		return "btrfs-progs"
	}
	return "e2fsprogs"
}

func run(tb testing.TB, args ...string) {
	tb.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}
