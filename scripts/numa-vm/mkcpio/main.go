// Command mkcpio writes an initramfs: an uncompressed cpio archive in the
// kernel's "newc" format, holding the directories a test guest needs, a
// /dev/console node (the kernel opens it for /init's stdio before /init can
// mount devtmpfs) and the files named on the command line:
//
//	mkcpio -o initramfs.cpio /init=./guestinit /tests/01-memclass/test=./memclass.test \
//		/tests/01-memclass/testdata=./memclass/testdata
//
// A directory is packed with everything under it. Files are stored with mode
// 0755 and owned by root.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

func main() {
	out := flag.String("o", "initramfs.cpio", "output file")
	flag.Parse()
	if err := run(*out, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "mkcpio:", err)
		os.Exit(1)
	}
}

const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeChr  = 0o020000
)

type writer struct {
	w    *bufio.Writer
	ino  int
	dirs map[string]bool
}

func run(out string, specs []string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	cw := &writer{w: bufio.NewWriter(f), ino: 1, dirs: map[string]bool{}}
	for _, d := range []string{"dev", "proc", "sys", "tmp", "tests"} {
		if err := cw.dir(d); err != nil {
			return err
		}
	}
	if err := cw.entry("dev/console", modeChr|0o600, 5, 1, nil, 0); err != nil {
		return err
	}
	for _, s := range specs {
		dst, src, ok := strings.Cut(s, "=")
		if !ok {
			return fmt.Errorf("%q: want /path/in/guest=host-file", s)
		}
		dst = strings.TrimPrefix(path.Clean(dst), "/")
		if err := cw.dir(path.Dir(dst)); err != nil {
			return err
		}
		if err := cw.tree(dst, src); err != nil {
			return err
		}
	}
	if err := cw.entry("TRAILER!!!", 0, 0, 0, nil, 0); err != nil {
		return err
	}
	if err := cw.w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

// dir writes d and its parents once each.
func (c *writer) dir(d string) error {
	if d == "." || d == "" || c.dirs[d] {
		return nil
	}
	if err := c.dir(path.Dir(d)); err != nil {
		return err
	}
	c.dirs[d] = true
	return c.entry(d, modeDir|0o755, 0, 0, nil, 0)
}

// tree writes src as dst: a file, or a directory with everything under it.
func (c *writer) tree(dst, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return c.file(dst, src)
	}
	if err := c.dir(dst); err != nil {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := c.tree(path.Join(dst, e.Name()), filepath.Join(src, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func (c *writer) file(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	return c.entry(dst, modeFile|0o755, 0, 0, in, st.Size())
}

// entry writes one newc header, the name and the data, each padded to four
// bytes.
func (c *writer) entry(name string, mode uint32, rmaj, rmin int, data io.Reader, size int64) error {
	c.ino++
	nlink := 1
	if mode&modeDir != 0 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, rmaj, rmin, len(name)+1, 0)
	if _, err := c.w.WriteString(hdr + name + "\x00"); err != nil {
		return err
	}
	if err := c.pad(len(hdr) + len(name) + 1); err != nil {
		return err
	}
	if data == nil {
		return nil
	}
	n, err := io.Copy(c.w, data)
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("%s: copied %d of %d bytes", name, n, size)
	}
	return c.pad(int(size))
}

func (c *writer) pad(n int) error {
	if r := n % 4; r != 0 {
		_, err := c.w.WriteString(strings.Repeat("\x00", 4-r))
		return err
	}
	return nil
}
