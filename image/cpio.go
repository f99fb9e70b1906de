package image

import (
	"fmt"
	"io"
	"strings"
)

// cpioWriter writes a "newc" (SVR4, no CRC) cpio archive, the format the
// kernel unpacks as an initramfs. It is written here rather than by the
// cpio tool so the archive can hold device nodes (/dev/console) without
// root, and so it is byte-for-byte reproducible: fixed inode numbers in
// write order, zero mtimes, root ownership.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	off int64
	err error
}

func newCpio(w io.Writer) *cpioWriter { return &cpioWriter{w: w, ino: 300000} }

const (
	modeDir  = 0o040000
	modeReg  = 0o100000
	modeLink = 0o120000
	modeChr  = 0o020000
)

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// entry writes one header, name and data. Names are relative ("init",
// "bin/busybox").
func (c *cpioWriter) entry(name string, mode uint32, data []byte, major, minor uint32) {
	name = strings.TrimPrefix(name, "/")
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, major, minor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write(append([]byte(name), 0))
	c.pad()
	c.write(data)
	c.pad()
}

func (c *cpioWriter) dir(name string, perm uint32) { c.entry(name, modeDir|perm, nil, 0, 0) }
func (c *cpioWriter) file(name string, perm uint32, data []byte) {
	c.entry(name, modeReg|perm, data, 0, 0)
}
func (c *cpioWriter) symlink(name, target string) {
	c.entry(name, modeLink|0o777, []byte(target), 0, 0)
}
func (c *cpioWriter) chardev(name string, perm, major, minor uint32) {
	c.entry(name, modeChr|perm, nil, major, minor)
}

// close writes the trailer and pads the archive to 512 bytes, as cpio
// does (the kernel does not need it, some tools reading it back do).
func (c *cpioWriter) close() error {
	c.entry("TRAILER!!!", 0, nil, 0, 0)
	if r := c.off % 512; r != 0 {
		c.write(make([]byte, 512-r))
	}
	return c.err
}
