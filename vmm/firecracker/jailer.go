package firecracker

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hearth-vm/hearth/jail"
)

// JailedAPISocket is the API socket path as the jailed Firecracker sees
// it (the jailer's documented default).
const JailedAPISocket = "/run/firecracker.socket"

// JailerCommand describes one invocation of Firecracker's jailer. Args
// turns it into the command line; it does no I/O.
type JailerCommand struct {
	// ID is the VM id (alphanumerics and '-', at most 64 bytes).
	ID string
	// ExecFile is the absolute path of the Firecracker binary.
	ExecFile      string
	UID, GID      int
	ChrootBaseDir string
	// CgroupVersion is 1 or 2 (the jailer defaults to 1; hearth always
	// says which).
	CgroupVersion int
	// ParentCgroup is the cgroup the VM's cgroup is created under; empty
	// leaves the jailer's default (the exec file's name).
	ParentCgroup string
	// CPUQuota is the share of one CPU (1.5 = 150 %); 0 = unlimited.
	CPUQuota float64
	// MemoryMax is in bytes; 0 = unlimited.
	MemoryMax int64
	// PidsMax is the task limit; 0 = unlimited.
	PidsMax int64
	// NetNS is the path of a network namespace to join; empty = none.
	NetNS string
	// NoFile and FSize are --resource-limit values; 0 leaves the jailer's
	// default (no-file 2048, fsize unlimited).
	NoFile uint64
	FSize  uint64
	// FirecrackerArgs follow "--" and go to Firecracker unchanged.
	FirecrackerArgs []string
}

// validInstanceID follows Firecracker's rule for --id (jailer and VMM
// alike): ASCII alphanumerics and '-', 1–64 bytes.
func validInstanceID(s string) bool {
	if s == "" || len(s) > maxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// CgroupArgs returns the --cgroup values for the limits, with the file
// names of the given cgroup version (see jail.Limits.Files: v1 splits the
// CPU quota into period and quota files and calls the memory limit
// memory.limit_in_bytes; v2 has cpu.max and memory.max).
func CgroupArgs(version int, cpuQuota float64, memoryMax, pidsMax int64) []string {
	var out []string
	for _, f := range (jail.Limits{CPUQuota: cpuQuota, MemoryMax: memoryMax, PidsMax: pidsMax}).Files(version) {
		out = append(out, f.String())
	}
	return out
}

// cgroupControllers lists the v1 controllers CgroupArgs uses, for cleanup.
var cgroupControllers = []string{"cpu", "memory", "pids"}

// Validate checks the command's inputs.
func (j JailerCommand) Validate() error {
	var errs []error
	if !validInstanceID(j.ID) {
		errs = append(errs, invalid("vmid", "%q must be 1–64 characters of [A-Za-z0-9-] under the jailer", j.ID))
	}
	if !filepath.IsAbs(j.ExecFile) {
		errs = append(errs, invalid("binary", "the jailer needs an absolute exec file, got %q", j.ExecFile))
	} else if !strings.Contains(filepath.Base(j.ExecFile), "firecracker") {
		// The jailer refuses any other exec file name.
		errs = append(errs, invalid("binary", "the jailer only runs a file whose name contains \"firecracker\", got %q", filepath.Base(j.ExecFile)))
	}
	if j.UID < 0 || j.GID < 0 {
		errs = append(errs, invalid("jail.uid", "uid %d / gid %d must not be negative", j.UID, j.GID))
	}
	if !filepath.IsAbs(j.ChrootBaseDir) {
		errs = append(errs, invalid("jail.chroot_base_dir", "must be an absolute path, got %q", j.ChrootBaseDir))
	}
	if j.CgroupVersion != 1 && j.CgroupVersion != 2 {
		errs = append(errs, invalid("jail.cgroup_version", "%d is neither 1 nor 2", j.CgroupVersion))
	}
	if j.CPUQuota < 0 || math.IsNaN(j.CPUQuota) || math.IsInf(j.CPUQuota, 0) {
		errs = append(errs, invalid("jail.cpu_quota", "%v is not a non-negative number", j.CPUQuota))
	}
	if j.MemoryMax < 0 {
		errs = append(errs, invalid("jail.memory_max", "%d is negative", j.MemoryMax))
	}
	if j.PidsMax < 0 {
		errs = append(errs, invalid("jail.pids_max", "%d is negative", j.PidsMax))
	}
	if j.NetNS != "" && !filepath.IsAbs(j.NetNS) {
		errs = append(errs, invalid("netns", "must be an absolute path, got %q", j.NetNS))
	}
	return errors.Join(errs...)
}

// Args returns the jailer's arguments (without argv[0]). The order is
// fixed so the command line can be golden-tested.
func (j JailerCommand) Args() ([]string, error) {
	if err := j.Validate(); err != nil {
		return nil, err
	}
	args := []string{
		"--id", j.ID,
		"--exec-file", j.ExecFile,
		"--uid", strconv.Itoa(j.UID),
		"--gid", strconv.Itoa(j.GID),
		"--chroot-base-dir", j.ChrootBaseDir,
		"--cgroup-version", strconv.Itoa(j.CgroupVersion),
	}
	if j.ParentCgroup != "" {
		args = append(args, "--parent-cgroup", j.ParentCgroup)
	}
	for _, c := range CgroupArgs(j.CgroupVersion, j.CPUQuota, j.MemoryMax, j.PidsMax) {
		args = append(args, "--cgroup", c)
	}
	if j.NetNS != "" {
		args = append(args, "--netns", j.NetNS)
	}
	if j.NoFile > 0 {
		args = append(args, "--resource-limit", "no-file="+strconv.FormatUint(j.NoFile, 10))
	}
	if j.FSize > 0 {
		args = append(args, "--resource-limit", "fsize="+strconv.FormatUint(j.FSize, 10))
	}
	// A new pid namespace makes Firecracker its init: when it dies every
	// process it might have left dies with it. The jailer then exits and
	// leaves Firecracker's pid in <chroot>/<exec name>.pid.
	args = append(args, "--new-pid-ns", "--")
	return append(args, j.FirecrackerArgs...), nil
}

// JailDir is the jailer's per-VM directory <base>/<exec name>/<id>; the
// chroot is its "root" subdirectory.
func (j JailerCommand) JailDir() string {
	return filepath.Join(j.ChrootBaseDir, filepath.Base(j.ExecFile), j.ID)
}

// Chroot is the directory the jailed Firecracker sees as "/".
func (j JailerCommand) Chroot() string { return filepath.Join(j.JailDir(), "root") }

// PidFile is where the jailer records Firecracker's pid.
func (j JailerCommand) PidFile() string {
	return filepath.Join(j.Chroot(), filepath.Base(j.ExecFile)+".pid")
}

// cgroupDirs lists the cgroup directories the jailer creates for this VM,
// under root (normally /sys/fs/cgroup), so they can be removed once the
// VM is gone.
func (j JailerCommand) cgroupDirs(root string) []string {
	parent := j.ParentCgroup
	if parent == "" {
		parent = filepath.Base(j.ExecFile)
	}
	if j.CgroupVersion == 2 {
		return []string{filepath.Join(root, parent, j.ID)}
	}
	var dirs []string
	for _, c := range cgroupControllers {
		dirs = append(dirs, filepath.Join(root, c, parent, j.ID))
	}
	return dirs
}

// The jail's staging helpers are shared with package jail (hearth's own
// jail for other VMMs), so both stage files the same way.

// linkOrCopy hard-links src to dst, copying across filesystems.
func linkOrCopy(src, dst string) error { return jail.LinkOrCopy(src, dst) }

// copyFile copies src to a new file dst; a partial dst is removed.
func copyFile(src, dst string, perm os.FileMode) error { return jail.CopyFile(src, dst, perm) }

// moveFile renames src to dst, copying across filesystems.
func moveFile(src, dst string) error { return jail.MoveFile(src, dst) }
