package storage

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// oldMountAPI is set once open_tree or mount_setattr turned out
// unavailable (Linux before 5.12, or a seccomp filter); bind then uses
// mount(2). Tests set it to cover
// that path.
var oldMountAPI atomic.Bool

// errNoNewAPI is returned by bindNew when open_tree or mount_setattr is not
// available.
var errNoNewAPI = errors.New("new mount API unavailable")

// bindSpec is one bind mount to make.
type bindSpec struct {
	// dirfd and path name the source as openat does: path is absolute and
	// dirfd ignored, or path is "" and dirfd is an O_PATH descriptor.
	dirfd     int
	path      string
	recursive bool
	readOnly  bool
}

// bind mounts b's source at target, creating target as an empty directory
// or file to match the source. It never follows a symlink in the last
// component of the source path, and rejects a source that is one.
//
// staging is a private mount point the mount(2) fallback works in.
func bind(b bindSpec, target, staging string) error {
	if !oldMountAPI.Load() {
		err := bindNew(b, target)
		if !errors.Is(err, errNoNewAPI) {
			return err
		}
		oldMountAPI.Store(true)
	}
	return bindOld(b, target, staging)
}

func bindNew(b bindSpec, target string) error {
	flags := uint(unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC | unix.AT_SYMLINK_NOFOLLOW)
	if b.path == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	if b.recursive {
		flags |= unix.AT_RECURSIVE
	}
	fd, err := unix.OpenTree(b.dirfd, b.path, flags)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		return errNoNewAPI
	}
	if err != nil {
		return fmt.Errorf("open_tree %s: %w", b.path, err)
	}
	defer func() { _ = unix.Close(fd) }()
	isDir, err := sourceKind(fd, b.path)
	if err != nil {
		return err
	}
	attr := uint64(unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV)
	if b.readOnly {
		attr |= unix.MOUNT_ATTR_RDONLY
	}
	setFlags := uint(unix.AT_EMPTY_PATH)
	if b.recursive {
		setFlags |= unix.AT_RECURSIVE
	}
	err = unix.MountSetattr(fd, "", setFlags, &unix.MountAttr{Attr_set: attr})
	if errors.Is(err, unix.ENOSYS) {
		// open_tree without mount_setattr: Linux 5.2 to 5.11. The
		// detached copy goes away with fd.
		return errNoNewAPI
	}
	if err != nil {
		return fmt.Errorf("setting nosuid,nodev (and ro) on %s: %w", b.path, err)
	}
	if err := makeTarget(target, isDir); err != nil {
		return err
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount to %s: %w", target, err)
	}
	return nil
}

// bindOld binds through /proc/self/fd of an O_PATH|O_NOFOLLOW descriptor.
// The bind is made and remounted nosuid,nodev (and read-only) in the
// private staging directory and only then moved to target: a remount
// changes one mount, not the copies that propagation already made of it (in
// shared/ and in virtiofsd's namespace), so remounting at target would leave
// those without the flags.
func bindOld(b bindSpec, target, staging string) (retErr error) {
	fd := b.dirfd
	if b.path != "" {
		var err error
		fd, err = unix.Open(b.path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening %s: %w", b.path, err)
		}
		defer func() { _ = unix.Close(fd) }()
	}
	isDir, err := sourceKind(fd, b.path)
	if err != nil {
		return err
	}
	at := filepath.Join(staging, filepath.Base(target))
	defer func() { _ = os.Remove(at) }()
	if err := makeTarget(at, isDir); err != nil {
		return err
	}
	flags := uintptr(unix.MS_BIND)
	if b.recursive {
		flags |= unix.MS_REC
	}
	if err := unix.Mount(fmt.Sprintf("/proc/self/fd/%d", fd), at, "", flags, ""); err != nil {
		return fmt.Errorf("bind mounting %s at %s: %w", b.path, at, err)
	}
	defer func() {
		if retErr != nil {
			_ = unix.Unmount(at, unix.MNT_DETACH)
		}
	}()
	// An rbind's submounts are remounted one by one, parents first.
	points, err := mountsUnder(at)
	if err != nil {
		return err
	}
	for _, p := range points {
		if err := unix.Mount("", p, "", remountFlags(p, b.readOnly), ""); err != nil {
			return fmt.Errorf("remounting %s nosuid,nodev: %w", p, err)
		}
	}
	if err := makeTarget(target, isDir); err != nil {
		return err
	}
	if err := unix.Mount(at, target, "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving %s to %s: %w", at, target, err)
	}
	return nil
}

// keptFlags are the per-mount flags a bind remount must repeat to keep:
// MS_REMOUNT|MS_BIND sets them all at once.
const keptFlags = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC |
	unix.MS_NOATIME | unix.MS_NODIRATIME | unix.MS_RELATIME

// remountFlags are the flags that remount the bind at path nosuid,nodev
// (and read-only) and keep what else it had (noexec, atime flags). statfs's
// ST_* values of these flags are the MS_* ones but for relatime
// (ST_RELATIME is 0x1000, MS_BIND's value), which is mapped.
func remountFlags(path string, readOnly bool) uintptr {
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_NOSUID | unix.MS_NODEV)
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err == nil {
		f := uintptr(st.Flags)
		if f&unix.ST_RELATIME != 0 {
			f = f&^unix.ST_RELATIME | unix.MS_RELATIME
		}
		flags |= f & keptFlags
	}
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	return flags
}

// sourceKind reports whether fd is a directory; symlinks and anything but
// directories and regular files are rejected.
func sourceKind(fd int, name string) (isDir bool, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", name, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return true, nil
	case unix.S_IFREG:
		return false, nil
	case unix.S_IFLNK:
		return false, fmt.Errorf("bind source %s is a symlink: %w", name, errdefs.ErrInvalidArgument)
	default:
		return false, fmt.Errorf("bind source %s is neither a directory nor a regular file (mode %#o): %w",
			name, st.Mode&unix.S_IFMT, errdefs.ErrInvalidArgument)
	}
}

// makeTarget creates an empty directory or file at target.
func makeTarget(target string, dir bool) error {
	if dir {
		if err := os.Mkdir(target, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		return nil
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// mountsUnder lists the mount points at or under dir, in the order of
// /proc/self/mountinfo (parents before children, older before newer on the
// same point).
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	return parseMountsUnder(f, dir)
}

// parseMountsUnder is mountsUnder reading mountinfo from r.
func parseMountsUnder(r io.Reader, dir string) ([]string, error) {
	var points []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		p := unescapeMountinfo(fields[4])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			points = append(points, p)
		}
	}
	return points, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for space and so on) of
// /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountAll unmounts every mount at or under dir, newest first. A busy
// mount (virtiofsd may hold files open in its copy) is detached lazily. It
// fails if anything is still mounted afterwards.
func unmountAll(dir string) error {
	dir = filepath.Clean(dir)
	points, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	for i := len(points) - 1; i >= 0; i-- {
		p := points[i]
		err := unix.Unmount(p, unix.UMOUNT_NOFOLLOW)
		if errors.Is(err, unix.EBUSY) {
			err = unix.Unmount(p, unix.UMOUNT_NOFOLLOW|unix.MNT_DETACH)
		}
		// EINVAL and ENOENT: already gone with a lazily detached parent.
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", p, err))
		}
	}
	if left, err := mountsUnder(dir); err != nil {
		errs = append(errs, err)
	} else if len(left) > 0 {
		errs = append(errs, fmt.Errorf("still mounted: %s", strings.Join(left, ", ")))
	}
	return errors.Join(errs...)
}
