package guestimage

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/containerd/errdefs"
)

// The newc ("new ASCII") cpio format the kernel's initramfs unpacker reads:
// a 110-byte header of "070701" and 13 eight-digit hex fields, the
// NUL-terminated name, padding to 4 bytes, the data, padding to 4 bytes;
// the archive ends with an entry named TRAILER!!!.
//
// This is a small writer of its own rather than
// github.com/cavaliergopher/cpio because that library never writes the
// rdevmajor/rdevminor fields (so /dev/console could not be a 5:1 device
// node) and assigns inode numbers behind the caller's back.
const (
	newcMagic   = "070701"
	newcTrailer = "TRAILER!!!"
)

// Unix file type bits as cpio stores them.
const (
	sIFDIR = 0o040000
	sIFCHR = 0o020000
	sIFBLK = 0o060000
	sIFREG = 0o100000
	sIFLNK = 0o120000
)

// newcHeader is one newc header; unset fields (owner, mtime, dev, check)
// stay zero, which is what makes archives reproducible.
type newcHeader struct {
	ino, mode, nlink, size, rdevMajor, rdevMinor uint32
	name                                         string
}

func writeNewcHeader(w io.Writer, h newcHeader) error {
	fields := []uint32{
		h.ino, h.mode, 0 /*uid*/, 0 /*gid*/, h.nlink, 0, /*mtime*/
		h.size, 0 /*devmajor*/, 0 /*devminor*/, h.rdevMajor, h.rdevMinor,
		uint32(len(h.name) + 1), 0, /*check*/
	}
	var b strings.Builder
	b.WriteString(newcMagic)
	for _, f := range fields {
		fmt.Fprintf(&b, "%08x", f)
	}
	b.WriteString(h.name)
	b.WriteByte(0)
	b.WriteString(pad4(b.Len()))
	_, err := io.WriteString(w, b.String())
	return err
}

func pad4(n int) string { return "\x00\x00\x00"[:(4-n%4)%4] }

// cpioMode converts a file mode to cpio's Unix mode.
func cpioMode(m fs.FileMode) uint32 {
	perm := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		perm |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		perm |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		perm |= 0o1000
	}
	switch {
	case m.IsDir():
		return sIFDIR | perm
	case m&fs.ModeSymlink != 0:
		return sIFLNK | perm
	case m&fs.ModeCharDevice != 0:
		return sIFCHR | perm
	case m&fs.ModeDevice != 0:
		return sIFBLK | perm
	default:
		return sIFREG | perm
	}
}

// writeCPIO packs the tree as a newc archive. Names carry no leading slash;
// inode numbers count up from 1 in path order.
func writeCPIO(ctx context.Context, w io.Writer, t *tree) error {
	for i, f := range t.sorted() {
		if err := ctx.Err(); err != nil {
			return err
		}
		h := newcHeader{ino: uint32(i + 1), mode: cpioMode(f.Mode), nlink: 1, name: strings.TrimPrefix(f.Path, "/")}
		if f.Mode.IsDir() {
			h.nlink = 2
		}
		if f.Mode&fs.ModeDevice != 0 {
			h.rdevMajor, h.rdevMinor = f.Major, f.Minor
		}
		if err := writeEntry(w, h, f); err != nil {
			return fmt.Errorf("writing %s to the archive: %w", f.Path, err)
		}
	}
	return writeNewcHeader(w, newcHeader{nlink: 1, name: newcTrailer})
}

// writeEntry writes a header and, for regular files and symlinks, the data.
func writeEntry(w io.Writer, h newcHeader, f *File) error {
	switch {
	case f.Mode&fs.ModeSymlink != 0:
		return writeData(w, h, strings.NewReader(f.Target), int64(len(f.Target)))
	case !f.Mode.IsRegular():
		return writeNewcHeader(w, h)
	case f.Source == "":
		return writeData(w, h, strings.NewReader(string(f.Data)), int64(len(f.Data)))
	}
	src, err := os.Open(f.Source)
	if err != nil {
		return err
	}
	defer func() { _ = src.Close() }()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("source %s is not a regular file: %w", f.Source, errdefs.ErrInvalidArgument)
	}
	return writeData(w, h, src, st.Size())
}

func writeData(w io.Writer, h newcHeader, r io.Reader, size int64) error {
	if size > 1<<32-1 {
		return fmt.Errorf("%d bytes is too large for cpio: %w", size, errdefs.ErrOutOfRange)
	}
	h.size = uint32(size)
	if err := writeNewcHeader(w, h); err != nil {
		return err
	}
	n, err := io.Copy(w, io.LimitReader(r, size))
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("source shrank from %d to %d bytes while packing: %w", size, n, errdefs.ErrDataLoss)
	}
	if pad := pad4(int(size)); pad != "" {
		// Never write zero bytes: the lz4 legacy writer fails on them.
		_, err = io.WriteString(w, pad)
	}
	return err
}
