package rootfs

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// mke2fsConf pins the ext4 features of images hearth makes, whatever the
// host's /etc/mke2fs.conf says: newer e2fsprogs turn on features (e.g.
// orphan_file, 1.47) that the 5.10 and 6.1 guest kernels Firecracker
// supports cannot mount.
const mke2fsConf = `[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
`

// treeUsage estimates the bytes and inodes a tree needs on ext4.
func treeUsage(root string) (bytes int64, inodes int64, err error) {
	const block = 4096
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		inodes++
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.Mode().IsRegular():
			// Hard links share blocks; count them once.
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
				bytes += (fi.Size() + block - 1) / block * block / int64(st.Nlink)
			} else {
				bytes += (fi.Size() + block - 1) / block * block
			}
		case fi.IsDir():
			bytes += block
		case fi.Mode()&fs.ModeSymlink != 0 && fi.Size() >= 60:
			bytes += block // longer targets do not fit in the inode
		}
		return nil
	})
	return bytes, inodes, err
}

// defaultSize is the image size for a tree: its content plus a fifth,
// plus room for inode tables and the journal, rounded up to 16 MiB and at
// least 64 MiB. The file is sparse, so the slack costs no disk until the
// guest writes.
func defaultSize(content, inodes int64) int64 {
	const mib = 1 << 20
	size := content + content/5 + inodes*256 + 48*mib
	size = (size + 16*mib - 1) / (16 * mib) * (16 * mib)
	return max(size, 64*mib)
}

// makeExt4 creates the ext4 image out (size bytes, sparse) holding tree,
// with mkfs.ext4 -d. Inodes are sized for the tree so trees of many small
// files fit.
func makeExt4(ctx context.Context, mkfs, tree, out string, size, inodes int64, scratch string) error {
	if mkfs == "" {
		mkfs = "mkfs.ext4"
	}
	conf := filepath.Join(scratch, "mke2fs.conf")
	if err := os.WriteFile(conf, []byte(mke2fsConf), 0o644); err != nil {
		return err
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	n := max(size/16384, inodes+inodes/2+1024)
	args := []string{"-q", "-F", "-t", "ext4", "-N", fmt.Sprint(n), "-L", "rootfs", "-E", "root_owner=0:0", "-d", tree, out}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, mkfs, args...)
	cmd.Env = append(os.Environ(), "MKE2FS_CONFIG="+conf)
	cmd.Stderr, cmd.Stdout = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %v: %w: %s", mkfs, args, err, bytes.TrimSpace(stderr.Bytes()))
	}
	// mke2fs writes through the page cache; the image must be on disk
	// before its manifest says it exists.
	f, err = os.Open(out)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// CheckAgent verifies that path is a hearth-agent the guest can run: an
// x86-64 ELF executable that is statically linked (the guest rootfs need
// not have a C library; build it with CGO_ENABLED=0).
func CheckAgent(path string) error {
	if path == "" {
		return fmt.Errorf("%w: no path given (build one with: CGO_ENABLED=0 go build -o hearth-agent ./cmd/hearth-agent)", ErrAgent)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrAgent, path, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Class != elf.ELFCLASS64 {
		return fmt.Errorf("%w: %s is %v/%v, the guest is x86-64", ErrAgent, path, f.Class, f.Machine)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%w: %s is not an executable (%v)", ErrAgent, path, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%w: %s is dynamically linked; rebuild it with CGO_ENABLED=0", ErrAgent, path)
		}
	}
	return nil
}
