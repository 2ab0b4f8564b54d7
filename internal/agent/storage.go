package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/mountopt"
)

// storageRoot is the only tree in which the host may ask for mounts.
const storageRoot = "/run/hull"

// checkGuestPath checks a guest path from the host: absolute and clean
// (no "..", no "//", no trailing slash).
func checkGuestPath(what, p string) error {
	switch {
	case p == "":
		return fmt.Errorf("%s: empty path: %w", what, errdefs.ErrInvalidArgument)
	case !filepath.IsAbs(p):
		return fmt.Errorf("%s %q: not absolute: %w", what, p, errdefs.ErrInvalidArgument)
	case filepath.Clean(p) != p:
		return fmt.Errorf("%s %q: not clean (want %q): %w", what, p, filepath.Clean(p), errdefs.ErrInvalidArgument)
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("%s %q: contains NUL: %w", what, p, errdefs.ErrInvalidArgument)
	}
	return nil
}

// checkMountPoint checks a storage mount point: a guest path strictly
// under root (storageRoot in the guest).
func checkMountPoint(root, p string) error {
	if err := checkGuestPath("mount point", p); err != nil {
		return err
	}
	if !strings.HasPrefix(p, root+"/") {
		return fmt.Errorf("mount point %q: not under %s: %w", p, root, errdefs.ErrInvalidArgument)
	}
	return nil
}

// checkStorage checks a Storage from the host, to be mounted under root.
func checkStorage(root string, s *api.Storage) error {
	if err := checkMountPoint(root, s.GetMountPoint()); err != nil {
		return err
	}
	switch s.GetFstype() {
	case "":
		return fmt.Errorf("storage at %s: no file system type: %w", s.GetMountPoint(), errdefs.ErrInvalidArgument)
	case "bind":
		return fmt.Errorf("storage at %s: bind mounts are not storages: %w", s.GetMountPoint(), errdefs.ErrInvalidArgument)
	}
	src := s.GetSource()
	if serial := s.GetBlockSerial(); serial != "" {
		if src != "" {
			return fmt.Errorf("storage at %s: both a source and a disk serial: %w", s.GetMountPoint(), errdefs.ErrInvalidArgument)
		}
		if !hypervisor.ValidDiskSerial(serial) {
			return fmt.Errorf("storage at %s: disk serial %q: want 1 to 20 letters, digits, '_' or '-': %w", s.GetMountPoint(), serial, errdefs.ErrInvalidArgument)
		}
		src = "/dev/" + serial // stands for the disk in the checks below
	}
	if src == "" {
		return fmt.Errorf("storage at %s: no source: %w", s.GetMountPoint(), errdefs.ErrInvalidArgument)
	}
	if strings.HasPrefix(src, "/") {
		if err := checkGuestPath("storage source", src); err != nil {
			return err
		}
		if !strings.HasPrefix(src, "/dev/") {
			return fmt.Errorf("storage source %q: a path source must be a device under /dev: %w", src, errdefs.ErrInvalidArgument)
		}
	}
	for _, o := range s.GetOptions() {
		if strings.ContainsAny(o, ",\x00") {
			return fmt.Errorf("storage at %s: bad option %q: %w", s.GetMountPoint(), o, errdefs.ErrInvalidArgument)
		}
	}
	if s.GetFstype() == "overlay" {
		if _, err := overlayDirs(root, s); err != nil {
			return err
		}
	}
	return nil
}

// overlayDirs checks the directories an overlay storage names (lowerdir,
// lowerdir+, datadir+, upperdir, workdir): each must be a path under root, so that the
// overlay stacks only what other storages mounted, and lowerdir is
// required. It returns the upper and work directories, which the agent
// makes (on the writable layer's disk) before mounting.
func overlayDirs(root string, s *api.Storage) ([]string, error) {
	var create []string
	lower := false
	for _, o := range s.GetOptions() {
		k, v, _ := strings.Cut(o, "=")
		var dirs []string
		switch k {
		case "lowerdir":
			dirs, lower = strings.Split(v, ":"), true
		case "lowerdir+", "datadir+":
			// One directory each (Linux 6.7), checked as the others.
			dirs = []string{v}
		case "upperdir", "workdir":
			dirs = []string{v}
			create = append(create, v)
		default:
			continue
		}
		for _, d := range dirs {
			if err := checkMountPoint(root, d); err != nil {
				return nil, fmt.Errorf("overlay storage at %s: %s: %w", s.GetMountPoint(), k, err)
			}
		}
	}
	if !lower {
		return nil, fmt.Errorf("overlay storage at %s: no lowerdir: %w", s.GetMountPoint(), errdefs.ErrInvalidArgument)
	}
	return create, nil
}

// openNoFollow opens the directory p, creating missing components, without
// following a symlink in any component: each component is opened relative
// to its parent with O_NOFOLLOW, so a link that a container placed in a
// shared tree fails the call instead of leading the agent elsewhere.
func openNoFollow(p string) (*os.File, error) {
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	for _, c := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if c == "" {
			continue
		}
		if err := unix.Mkdirat(fd, c, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			_ = unix.Close(fd)
			return nil, fmt.Errorf("creating %s: %w", p, err)
		}
		nfd, err := unix.Openat(fd, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		_ = unix.Close(fd)
		if err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				return nil, fmt.Errorf("opening %s: component %q is a symlink or not a directory: %w", p, c, errdefs.ErrInvalidArgument)
			}
			return nil, fmt.Errorf("opening %s: %w", p, err)
		}
		fd = nfd
	}
	return os.NewFile(uintptr(fd), p), nil
}

// mountStorage mounts s, creating its mount point under root.
func mountStorage(ctx context.Context, root string, s *api.Storage) error {
	if err := checkStorage(root, s); err != nil {
		return err
	}
	dir, err := openNoFollow(s.GetMountPoint())
	if err != nil {
		return fmt.Errorf("storage mount point: %w", err)
	}
	defer func() { _ = dir.Close() }()
	flags, data := mountopt.Parse(s.GetOptions())
	// Mount on the opened directory, not on the path: nothing can be
	// swapped in between the checks and the mount.
	target := fmt.Sprintf("/proc/self/fd/%d", dir.Fd())
	if s.GetFstype() == "overlay" {
		dirs, err := overlayDirs(root, s)
		if err != nil {
			return err
		}
		for _, d := range dirs {
			f, err := openNoFollow(d)
			if err != nil {
				return fmt.Errorf("overlay storage at %s: %w", s.GetMountPoint(), err)
			}
			_ = f.Close()
		}
	}
	src := s.GetSource()
	mount := func() error {
		if err := unix.Mount(src, target, s.GetFstype(), flags, data); err != nil {
			return fmt.Errorf("mounting %s (%s) on %s: %w", src, s.GetFstype(), s.GetMountPoint(), err)
		}
		return nil
	}
	if serial := s.GetBlockSerial(); serial != "" {
		mount = func() error {
			var err error
			src, err = mountDisk(ctx, sysBlock, serial, blockWait, func(dev string) error {
				return unix.Mount(dev, target, s.GetFstype(), flags, data)
			})
			if err != nil {
				return fmt.Errorf("storage at %s (%s): %w", s.GetMountPoint(), s.GetFstype(), err)
			}
			return nil
		}
	}
	if err := mount(); err != nil {
		return err
	}
	log.G(ctx).WithFields(log.Fields{"source": src, "fstype": s.GetFstype(), "target": s.GetMountPoint()}).Debug("storage mounted")
	return nil
}

// unmountStorage unmounts what mountStorage mounted at p under root; a
// path that is not mounted (any more) is not an error.
func unmountStorage(ctx context.Context, root, p string) error {
	err := unix.Unmount(p, unix.UMOUNT_NOFOLLOW)
	if errors.Is(err, unix.EBUSY) {
		log.G(ctx).WithField("target", p).Warn("storage busy; detaching it")
		err = unix.Unmount(p, unix.UMOUNT_NOFOLLOW|unix.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting %s: %w", p, err)
	}
	// The mount point and its parent go when empty (a container's
	// /run/hull/blockroot/<id>/rootfs); a non-empty one stays.
	if os.Remove(p) == nil && filepath.Dir(p) != root {
		_ = os.Remove(filepath.Dir(p))
	}
	return nil
}

// mountStorages mounts list in order under root and returns the mount
// points mounted. On error it unmounts what it mounted.
func mountStorages(ctx context.Context, root string, list []*api.Storage) ([]string, error) {
	var done []string
	for _, s := range list {
		if err := mountStorage(ctx, root, s); err != nil {
			_ = unmountStorages(ctx, root, done)
			return nil, err
		}
		done = append(done, s.GetMountPoint())
	}
	return done, nil
}

// unmountStorages unmounts points under root in reverse order.
func unmountStorages(ctx context.Context, root string, points []string) error {
	var errs []error
	for i := len(points) - 1; i >= 0; i-- {
		errs = append(errs, unmountStorage(ctx, root, points[i]))
	}
	return errors.Join(errs...)
}

// moveRoot makes the initramfs root a real mount: pivot_root(2) refuses to
// move a root that is the rootfs, and libcontainer pivots into every
// container's root. The root is bound onto a directory of itself, the bind
// is moved over /, and the agent chroots into it.
func moveRoot() error {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return fmt.Errorf("statfs /: %w", err)
	}
	if st.Type != unix.RAMFS_MAGIC && st.Type != unix.TMPFS_MAGIC {
		return nil
	}
	const dir = "/.root"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("/", dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("binding / on %s: %w", dir, err)
	}
	if err := unix.Chdir(dir); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving the root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	_ = os.Remove(dir) // an empty directory in the new root
	return nil
}
