package guestbuild

import (
	"fmt"
	"io"
	"path"
	"strings"
)

// File type bits of a cpio "newc" mode field (as in <sys/stat.h>).
const (
	cpioIFDIR = 0o040000
	cpioIFREG = 0o100000
	cpioIFLNK = 0o120000
	cpioIFCHR = 0o020000
)

// CpioWriter writes a SVR4 "newc" cpio archive (magic 070701), the format the
// kernel unpacks as an initramfs. Entries get uid/gid 0, mtime 0 and
// increasing inode numbers, so the output depends only on the input.
// Parents must be added before their children.
type CpioWriter struct {
	w   io.Writer
	ino uint32
	err error
	off int64
}

// NewCpioWriter returns a writer emitting to w; call Close to add the trailer.
func NewCpioWriter(w io.Writer) *CpioWriter { return &CpioWriter{w: w, ino: 1} }

// Dir adds a directory.
func (c *CpioWriter) Dir(name string, perm uint32) error {
	return c.entry(name, cpioIFDIR|perm&0o7777, 2, 0, 0, nil)
}

// File adds a regular file.
func (c *CpioWriter) File(name string, perm uint32, data []byte) error {
	return c.entry(name, cpioIFREG|perm&0o7777, 1, 0, 0, data)
}

// Symlink adds a symbolic link name -> target.
func (c *CpioWriter) Symlink(name, target string) error {
	return c.entry(name, cpioIFLNK|0o777, 1, 0, 0, []byte(target))
}

// CharDev adds a character device node (no root needed: it is only bytes).
func (c *CpioWriter) CharDev(name string, perm, major, minor uint32) error {
	return c.entry(name, cpioIFCHR|perm&0o7777, 1, major, minor, nil)
}

// Close writes the TRAILER!!! entry. It does not close the underlying writer.
func (c *CpioWriter) Close() error {
	if c.err != nil {
		return c.err
	}
	c.ino = 0
	return c.raw("TRAILER!!!", 0, 1, 0, 0, nil)
}

func (c *CpioWriter) entry(name string, mode, nlink, rmaj, rmin uint32, data []byte) error {
	if c.err != nil {
		return c.err
	}
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if name == "" || name == "TRAILER!!!" {
		c.err = fmt.Errorf("cpio: bad entry name %q", name)
		return c.err
	}
	c.ino++
	return c.raw(name, mode, nlink, rmaj, rmin, data)
}

func (c *CpioWriter) raw(name string, mode, nlink, rmaj, rmin uint32, data []byte) error {
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name + "\x00"))
	c.pad()
	c.write(data)
	c.pad()
	return c.err
}

func (c *CpioWriter) write(b []byte) {
	if c.err != nil || len(b) == 0 {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	c.err = err
}

func (c *CpioWriter) pad() {
	if n := c.off % 4; n != 0 {
		c.write(make([]byte, 4-n))
	}
}
