package storage

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// oldMountAPI is set once open_tree turned out unavailable (Linux before
// 5.2, or a seccomp filter); bind then uses mount(2). Tests set it to cover
// that path.
var oldMountAPI atomic.Bool

// errNoNewAPI is returned by bindNew when open_tree is not available.
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
	if b.readOnly {
		setFlags := uint(unix.AT_EMPTY_PATH)
		if b.recursive {
			setFlags |= unix.AT_RECURSIVE
		}
		if err := unix.MountSetattr(fd, "", setFlags, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
			return fmt.Errorf("making %s read-only: %w", b.path, err)
		}
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
// A read-only bind is made and remounted read-only in the private staging
// directory and only then moved to target: a remount changes one mount, not
// the copies that propagation already made of it (in shared/ and in
// virtiofsd's namespace), so remounting at target would leave those
// writable. A read-only rbind is read-only only at its top mount here.
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
	at := target
	if b.readOnly {
		at = filepath.Join(staging, filepath.Base(target))
		defer func() { _ = os.Remove(at) }()
	}
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
	if !b.readOnly {
		return nil
	}
	defer func() {
		if retErr != nil {
			_ = unix.Unmount(at, unix.MNT_DETACH)
		}
	}()
	if err := unix.Mount("", at, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("remounting %s read-only: %w", at, err)
	}
	if err := makeTarget(target, isDir); err != nil {
		return err
	}
	if err := unix.Mount(at, target, "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving %s to %s: %w", at, target, err)
	}
	return nil
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
	var points []string
	sc := bufio.NewScanner(f)
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
