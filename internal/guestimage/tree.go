package guestimage

import (
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
)

// File is one entry of the guest file tree.
type File struct {
	// Path is the absolute path in the guest.
	Path string
	// Mode holds the type (none for a regular file, fs.ModeDir,
	// fs.ModeSymlink, fs.ModeDevice|fs.ModeCharDevice, fs.ModeDevice) and
	// the permission bits. Zero permissions on a regular file mean 0644.
	Mode fs.FileMode
	// Source is the host file with the content of a regular file.
	Source string
	// Data is the content of a regular file when Source is empty.
	Data []byte
	// Target is a symlink's target.
	Target string
	// Major and Minor are a device node's numbers.
	Major, Minor uint32
}

// tree is the guest file tree, assembled once and handed to a packer (the
// cpio writer today; an erofs or ext4 writer for root filesystem images).
// Parents are created as directories on demand; the same directory may be
// added twice, any other path only once.
type tree struct {
	files map[string]*File
}

func newTree() *tree {
	return &tree{files: map[string]*File{"/": {Path: "/", Mode: fs.ModeDir | 0o755}}}
}

// add puts f in the tree, creating its parent directories with mode 0755.
func (t *tree) add(f File) error {
	if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || strings.ContainsRune(f.Path, 0) {
		return fmt.Errorf("guest path %q must be absolute and clean: %w", f.Path, errdefs.ErrInvalidArgument)
	}
	switch {
	case f.Mode.IsRegular():
		if f.Mode.Perm() == 0 {
			f.Mode |= 0o644
		}
	case f.Mode.IsDir(), f.Mode&fs.ModeSymlink != 0, f.Mode&fs.ModeDevice != 0:
		if f.Source != "" || len(f.Data) > 0 {
			return fmt.Errorf("%s: only regular files have content: %w", f.Path, errdefs.ErrInvalidArgument)
		}
	default:
		return fmt.Errorf("%s: unsupported file type %v: %w", f.Path, f.Mode.Type(), errdefs.ErrInvalidArgument)
	}
	if f.Mode&fs.ModeSymlink != 0 && f.Target == "" {
		return fmt.Errorf("%s: symlink without target: %w", f.Path, errdefs.ErrInvalidArgument)
	}
	if prev, ok := t.files[f.Path]; ok {
		if prev.Mode.IsDir() && f.Mode.IsDir() {
			prev.Mode = f.Mode
			return nil
		}
		return fmt.Errorf("%s added twice: %w", f.Path, errdefs.ErrAlreadyExists)
	}
	if dir := path.Dir(f.Path); dir != f.Path {
		if p, ok := t.files[dir]; ok && !p.Mode.IsDir() {
			return fmt.Errorf("%s: parent %s is not a directory: %w", f.Path, dir, errdefs.ErrConflict)
		} else if !ok {
			if err := t.add(File{Path: dir, Mode: fs.ModeDir | 0o755}); err != nil {
				return err
			}
		}
	}
	t.files[f.Path] = &f
	return nil
}

// sorted returns the entries by path, so every directory comes before its
// contents. The root itself is left out.
func (t *tree) sorted() []*File {
	out := make([]*File, 0, len(t.files))
	for p, f := range t.files {
		if p != "/" {
			out = append(out, f)
		}
	}
	slices.SortFunc(out, func(a, b *File) int { return strings.Compare(a.Path, b.Path) })
	return out
}
