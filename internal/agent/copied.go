package agent

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

// copiedDir holds the bind sources the host copied for containers of a
// sandbox without a shared file system, one directory per container
// (storage.GuestCopyDir on the host's side).
const copiedDir = "/run/hull/copied"

// writeCopied writes the copied files of container id below dir/id, a
// directory made for it (an old one of the same ID is removed first). The
// entries come parents first; each path is checked clean and relative, and
// created without following links (O_EXCL, O_NOFOLLOW), so a link copied
// earlier cannot redirect a later entry. It returns the container's
// directory; on error nothing is left.
func writeCopied(dir, id string, files []*api.CopiedFile) (_ string, retErr error) {
	if len(files) == 0 {
		return "", nil
	}
	root := filepath.Join(dir, id)
	// 0700: runc binds the copies as root before the container's
	// process starts; the copies' own modes govern the container's
	// access to them.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.RemoveAll(root); err != nil {
		return "", err
	}
	if err := os.Mkdir(root, 0o700); err != nil {
		return "", err
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(root)
		}
	}()
	for _, f := range files {
		if err := writeCopiedFile(root, f); err != nil {
			return "", fmt.Errorf("copied file %q: %w", f.GetPath(), err)
		}
	}
	return root, nil
}

func writeCopiedFile(root string, f *api.CopiedFile) error {
	p := f.GetPath()
	if p == "" || path.IsAbs(p) || path.Clean(p) != p || p == "." || p == ".." ||
		strings.HasPrefix(p, "../") || strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") {
		return fmt.Errorf("not a clean relative path: %w", errdefs.ErrInvalidArgument)
	}
	if f.GetMode()&^0o777 != 0 {
		return fmt.Errorf("mode %#o: want permission bits only: %w", f.GetMode(), errdefs.ErrInvalidArgument)
	}
	// The parent was made by an earlier entry (or is root): open it
	// without following any link below root.
	parent, name := path.Split(p)
	dirfd, err := unix.Openat2(unix.AT_FDCWD, filepath.Join(root, parent), &unix.OpenHow{
		Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS,
	})
	if err != nil {
		return fmt.Errorf("parent directory: %w", err)
	}
	defer func() { _ = unix.Close(dirfd) }()
	mode, uid, gid := f.GetMode(), int(f.GetUid()), int(f.GetGid())
	switch f.GetKind() {
	case api.CopiedFile_DIRECTORY:
		if err := unix.Mkdirat(dirfd, name, 0o700); err != nil {
			return err
		}
		if err := unix.Fchownat(dirfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		return unix.Fchmodat(dirfd, name, mode, 0)
	case api.CopiedFile_SYMLINK:
		if f.GetLink() == "" {
			return fmt.Errorf("link without a target: %w", errdefs.ErrInvalidArgument)
		}
		if err := unix.Symlinkat(f.GetLink(), dirfd, name); err != nil {
			return err
		}
		return unix.Fchownat(dirfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
	case api.CopiedFile_REGULAR:
		fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		file := os.NewFile(uintptr(fd), name)
		_, werr := file.Write(f.GetData())
		err = errors.Join(werr, file.Chown(uid, gid), file.Chmod(os.FileMode(mode)), file.Close())
		return err
	}
	return fmt.Errorf("kind %v: %w", f.GetKind(), errdefs.ErrInvalidArgument)
}
