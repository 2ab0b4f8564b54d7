package storage

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// GuestBlockDir holds, in the guest, the mount points of the containers'
// block-device root filesystems (outside the virtio-fs share).
const GuestBlockDir = "/run/hull/blockroot"

// blockFSTypes are the file systems a block-device root may have: those
// the guest kernels hull builds and boots mount.
var blockFSTypes = []string{"ext4"}

// BlockRootfs is a container root filesystem that reaches the guest as a
// virtio-blk disk instead of through the shared tree: an image file that
// containerd's mount list asks to loop-mount (the blockfile snapshotter).
type BlockRootfs struct {
	// Source is the image file on the host, as containerd gave it.
	Source string
	// FSType is the file system, from the mount's type (never from the
	// image's bytes).
	FSType string
	// ReadOnly is set when the mount is read-only ("ro" the last of "ro"
	// and "rw"): the disk is then read-only to QEMU and the guest.
	ReadOnly bool
	// Options are the mount options for the guest: containerd's, each
	// comma-separated list split, without "loop", "ro" and "rw", and with
	// "ro" when ReadOnly.
	Options []string
}

// GuestBlockRootfs is the guest path of a container's block-device root
// filesystem.
func GuestBlockRootfs(id string) string {
	return path.Join(GuestBlockDir, id, rootfsName)
}

// isLoop reports whether a mount asks for a loop device.
func isLoop(m Mount) bool {
	for _, o := range m.Options {
		if slices.Contains(strings.Split(o, ","), "loop") {
			return true
		}
	}
	return false
}

// BlockRootfsOf decides how a container's rootfs mounts (containerd's
// list) reach the guest: a single loop mount of an image file with a
// supported file system is a block-device root (returned), anything
// without a loop mount is mounted on the host and shared as before (nil,
// nil). The file system comes from the mount's type. erofs mounts (see
// ErofsRootfsOf, which the caller asks first), mount types with one of
// containerd's transforms ("format/...", "mkfs/..."), and loop mounts of
// other file systems or among several mounts are ErrNotImplemented-class
// errors; a relative or unclean source is ErrInvalidArgument.
func BlockRootfsOf(mounts []Mount) (*BlockRootfs, error) {
	for i, m := range mounts {
		if m.Type == "erofs" || strings.Contains(m.Type, "/") {
			return nil, fmt.Errorf("rootfs mount %d of type %q: hull takes overlayfs, bind, blockfile (ext4) and erofs snapshotter root filesystems: %w",
				i, m.Type, errdefs.ErrNotImplemented)
		}
	}
	loop := slices.IndexFunc(mounts, isLoop)
	if loop < 0 {
		return nil, nil
	}
	if len(mounts) != 1 {
		return nil, fmt.Errorf("rootfs loop mount %d among %d mounts: a block-device root must be the only rootfs mount: %w",
			loop, len(mounts), errdefs.ErrNotImplemented)
	}
	m := mounts[0]
	if !slices.Contains(blockFSTypes, m.Type) {
		return nil, fmt.Errorf("rootfs loop mount of type %q: a block-device root must be one of %s: %w",
			m.Type, strings.Join(blockFSTypes, ", "), errdefs.ErrNotImplemented)
	}
	if !filepath.IsAbs(m.Source) || filepath.Clean(m.Source) != m.Source {
		return nil, fmt.Errorf("rootfs loop mount source %q: want an absolute, clean path: %w", m.Source, errdefs.ErrInvalidArgument)
	}
	b := &BlockRootfs{Source: m.Source, FSType: m.Type}
	for _, o := range m.Options {
		for _, s := range strings.Split(o, ",") {
			switch {
			case s == "" || s == "loop" || s == "defaults":
			case s == "ro":
				b.ReadOnly = true
			case s == "rw":
				b.ReadOnly = false
			case strings.ContainsRune(s, 0):
				return nil, fmt.Errorf("rootfs loop mount option %q: %w", s, errdefs.ErrInvalidArgument)
			default:
				b.Options = append(b.Options, s)
			}
		}
	}
	if b.ReadOnly {
		b.Options = append(b.Options, "ro")
	}
	return b, nil
}

// Open opens the image file for the hypervisor: read-only when b is,
// else read-write. The last component of the path is never followed (a
// symlink is ErrInvalidArgument, as for bind sources), and the file must
// be a regular file.
func (b *BlockRootfs) Open() (*os.File, error) {
	flags := unix.O_RDWR
	if b.ReadOnly {
		flags = unix.O_RDONLY
	}
	fd, err := unix.Open(b.Source, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("rootfs image %s is a symlink: %w", b.Source, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return nil, fmt.Errorf("opening rootfs image %s: %w", b.Source, err)
	}
	f := os.NewFile(uintptr(fd), b.Source)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("stat %s: %w", b.Source, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		_ = f.Close()
		return nil, fmt.Errorf("rootfs image %s is not a regular file (mode %#o): %w", b.Source, st.Mode&unix.S_IFMT, errdefs.ErrInvalidArgument)
	}
	return f, nil
}
