// Command probeagent stands in for hearth-agent in the default-image boot
// test: as PID 1 it reports what the initramfs left it (mounts, loaded
// modules, a writable root) on the console and powers the VM off.
package main

import (
	"fmt"
	"os"
	"syscall"
)

func main() {
	fmt.Printf("PROBE-AGENT pid %d\n", os.Getpid())
	if b, err := os.ReadFile("/proc/mounts"); err == nil {
		fmt.Printf("PROBE-MOUNTS\n%sPROBE-END\n", b)
	}
	if b, err := os.ReadFile("/proc/modules"); err == nil {
		fmt.Printf("PROBE-MODULES\n%sPROBE-END\n", b)
	}
	if err := os.WriteFile("/root/probe", []byte("x"), 0o644); err == nil {
		fmt.Println("PROBE-ROOT-WRITABLE")
	}
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
}
