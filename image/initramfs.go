package image

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// initScript is /init of the default initramfs. The Debian cloud kernel
// has its virtio drivers as modules, so before the root disk even exists
// they must be loaded, dependencies first; then the root filesystem is
// mounted and switch_root hands PID 1 to its init (the hearth-agent).
// It understands root=, rootfstype=, rootflags=, ro/rw, init= and
// hearth.rootwait=<seconds>; hearth.initshell drops to a shell on failure
// instead of exiting (exiting panics the kernel, and with panic=1 the VMM
// exits, so a broken image fails fast instead of hanging).
const initScript = `#!/bin/busybox sh
# hearth initramfs: load the virtio drivers, mount the root, switch to it.
bb=/bin/busybox
export PATH=/bin

$bb mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
$bb mount -t proc -o nosuid,nodev,noexec proc /proc
$bb mount -t sysfs -o nosuid,nodev,noexec sysfs /sys

fail() {
	echo "hearth-init: $*"
	case " $($bb cat /proc/cmdline) " in
	*" hearth.initshell "*) exec $bb sh ;;
	esac
	echo "hearth-init: giving up"
	exit 1
}

for m in $($bb cat /etc/hearth/modules); do
	$bb insmod "/lib/modules/$m.ko" || echo "hearth-init: insmod $m failed"
done

root=/dev/vda rootfstype=ext4 rootflags= mode=rw init=/sbin/init wait=10
for arg in $($bb cat /proc/cmdline); do
	case "$arg" in
	root=*) root="${arg#root=}" ;;
	rootfstype=*) rootfstype="${arg#rootfstype=}" ;;
	rootflags=*) rootflags="${arg#rootflags=}" ;;
	ro) mode=ro ;;
	rw) mode=rw ;;
	init=*) init="${arg#init=}" ;;
	hearth.rootwait=*) wait="${arg#hearth.rootwait=}" ;;
	esac
done

case "$root" in
UUID=* | LABEL=* | PARTUUID=*)
	i=0
	until dev=$($bb findfs "$root" 2>/dev/null); do
		i=$((i + 1))
		[ "$i" -gt $((wait * 10)) ] && fail "no device with $root"
		$bb usleep 100000
	done
	root=$dev
	;;
esac
i=0
while [ ! -b "$root" ]; do
	i=$((i + 1))
	[ "$i" -gt $((wait * 10)) ] && fail "root device $root did not appear"
	$bb usleep 100000
done

$bb mount -t "$rootfstype" -o "$mode${rootflags:+,$rootflags}" "$root" /newroot || fail "cannot mount $root"
[ -e "/newroot$init" ] || [ -L "/newroot$init" ] || fail "$init not found on $root"
for d in dev proc sys; do
	if [ -d "/newroot/$d" ]; then
		$bb mount -o move "/$d" "/newroot/$d"
	else
		$bb umount -l "/$d"
	fi
done
exec $bb switch_root /newroot "$init"
`

// InitramfsSpec says what goes into the initramfs.
type InitramfsSpec struct {
	// Busybox is the host path of a static busybox binary.
	Busybox string
	// Modules to load at boot, in load order (ModuleTree.Resolve).
	Modules []Module
}

// WriteInitramfs writes an uncompressed newc initramfs to w: /init, a
// static busybox, /dev/console (the kernel opens it for /init's stdio
// before anything mounts /dev), the modules as /lib/modules/<name>.ko and
// their load order in /etc/hearth/modules. Uncompressed because the
// kernel then has nothing to decompress (noticeable under TCG), and the
// archive is a few MiB.
func WriteInitramfs(w io.Writer, spec InitramfsSpec) error {
	if err := checkOrder(spec.Modules); err != nil {
		return err
	}
	bb, err := os.ReadFile(spec.Busybox)
	if err != nil {
		return fmt.Errorf("initramfs: busybox: %w", err)
	}
	c := newCpio(w)
	for _, d := range []string{"bin", "dev", "etc", "etc/hearth", "lib", "lib/modules", "newroot", "proc", "sys", "tmp"} {
		c.dir(d, 0o755)
	}
	c.chardev("dev/console", 0o600, 5, 1)
	c.chardev("dev/null", 0o666, 1, 3)
	c.file("bin/busybox", 0o755, bb)
	c.symlink("bin/sh", "busybox")
	c.file("init", 0o755, []byte(initScript))
	var order []string
	for _, m := range spec.Modules {
		b, err := ReadModule(m.Path)
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		c.file("lib/modules/"+m.Name+".ko", 0o644, b)
		order = append(order, m.Name)
	}
	c.file("etc/hearth/modules", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	return c.close()
}
