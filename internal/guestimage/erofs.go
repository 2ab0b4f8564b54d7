package guestimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/containerd/errdefs"
)

// Image kinds: what the guest boots from. The manifest records the kind an
// image directory boots by default; image.kind in the configuration may
// pick another kind the directory carries.
const (
	// KindInitrd boots the agent from an initramfs the kernel unpacks into
	// guest memory.
	KindInitrd = "initrd"
	// KindRootfs boots the agent from a read-only root file system image
	// that QEMU maps into the guest through virtio-pmem; the guest mounts it
	// with DAX, so its pages are the host's page cache pages of the image
	// file, shared by every VM that boots it, and no guest copy exists.
	KindRootfs = "rootfs"
)

// RootfsAlign is the size the root file system image is padded to: the
// guest maps a pmem region in 2 MiB subsections (memremap_pages), and QEMU
// places the region in the VM's device memory.
const RootfsAlign = 2 << 20

// erofsUUID is the file system UUID of every image, so that the same
// inputs give the same bytes.
const erofsUUID = "68756c6c-0000-4000-8000-000000000000"

// rootfsSymbols are what a kernel needs built in to boot from a rootfs
// image without an initrd: virtio-pmem on PCI, the pmem block device with
// struct pages for DAX, and erofs.
var rootfsSymbols = []string{
	"PCI", "VIRTIO_PCI", "LIBNVDIMM", "BLK_DEV_PMEM", "VIRTIO_PMEM", "ZONE_DEVICE", "DAX", "FS_DAX", "EROFS_FS",
}

// rootfsMountPoints are the directories the agent mounts tmpfs on when its
// root is read-only (internal/agent/init.go): they must exist in the image.
var rootfsMountPoints = []string{"/etc", "/var"}

// WriteErofs packs t as an erofs image at dst (which must not exist): it
// stages the tree in a temporary directory next to dst, runs mkfs.erofs
// (erofs-utils) with fixed options, and pads the image to RootfsAlign.
//
// Every regular file is stored uncompressed and without inline tail data,
// the only layout erofs maps with DAX. Device nodes are left out: the
// kernel opens the console on its built-in initramfs before it mounts the
// root, and the agent mounts devtmpfs on /dev. Owners are root, timestamps
// 0 and the UUID fixed, so the same tree gives the same bytes.
func WriteErofs(ctx context.Context, dst string, t *tree) error {
	mkfs, err := exec.LookPath("mkfs.erofs")
	if err != nil {
		return fmt.Errorf("mkfs.erofs (Debian package erofs-utils; hack/install-deps.sh installs it): %w", errors.Join(err, errdefs.ErrNotFound))
	}
	stage, err := os.MkdirTemp(filepath.Dir(dst), ".erofs-stage-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(stage) }()
	root := filepath.Join(stage, "root")
	if err := stageTree(root, t); err != nil {
		return fmt.Errorf("staging the root file system: %w", err)
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, mkfs, "--quiet", "-T0", "-U"+erofsUUID, "--all-root", "-x-1",
		"-Enoinline_data", dst, root) //nolint:gosec // G204: a fixed program and options; dst and root are the builder's own paths
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		_ = os.Remove(dst)
		return fmt.Errorf("mkfs.erofs: %w: %s", err, bytes.TrimSpace(out.Bytes()))
	}
	f, err := os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err == nil {
		err = f.Truncate((st.Size() + RootfsAlign - 1) / RootfsAlign * RootfsAlign)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(dst)
		return fmt.Errorf("padding the erofs image: %w", err)
	}
	return nil
}

// stageTree writes t under dir as plain files, directories and symlinks,
// with the tree's permissions (the umask does not apply).
func stageTree(dir string, t *tree) error {
	if err := os.Mkdir(dir, 0o755); err != nil { //nolint:gosec // G301: the guest's root is 0755
		return err
	}
	for _, f := range t.sorted() {
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		switch {
		case f.Mode.IsDir():
			if err := os.Mkdir(p, 0o700); err != nil {
				return err
			}
		case f.Mode&fs.ModeSymlink != 0:
			if err := os.Symlink(f.Target, p); err != nil {
				return err
			}
			continue
		case f.Mode&fs.ModeDevice != 0:
			continue
		default:
			if err := stageFile(p, f); err != nil {
				return err
			}
		}
		if err := os.Chmod(p, f.Mode&(fs.ModePerm|fs.ModeSticky|fs.ModeSetuid|fs.ModeSetgid)); err != nil {
			return err
		}
	}
	return nil
}

func stageFile(p string, f *File) (err error) {
	w, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := w.Close(); err == nil {
			err = cerr
		}
	}()
	if f.Source == "" {
		_, err = w.Write(f.Data)
		return err
	}
	r, err := os.Open(f.Source)
	if err != nil {
		return err
	}
	defer func() { _ = r.Close() }()
	_, err = io.Copy(w, r)
	return err
}

// rootfsTree is the initrd's tree plus the mount points the agent needs on
// a read-only root.
func rootfsTree(ctx context.Context, spec InitrdSpec) (*tree, error) {
	t, _, err := initrdTree(ctx, spec)
	if err != nil {
		return nil, err
	}
	for _, d := range rootfsMountPoints {
		if err := t.add(File{Path: d, Mode: fs.ModeDir | 0o755}); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// checkRootfsKernel checks that a local kernel boots a rootfs image on its
// own: a kernel package has pmem and erofs as modules, which only an
// initrd could load.
func checkRootfsKernel(lk *LocalKernel) error {
	if lk == nil {
		return fmt.Errorf("a rootfs image boots without an initrd, so its kernel needs virtio-pmem, pmem, DAX and erofs built in; "+
			"a kernel package has them as modules: build with the hull kernel (--kernel-vmlinux, --kernel-config): %w", errdefs.ErrNotImplemented)
	}
	for _, s := range rootfsSymbols {
		if v := lk.config.values[s]; v != "y" {
			if v == "" {
				v = "not set"
			}
			return fmt.Errorf("kernel config %s: CONFIG_%s is %s; a rootfs image needs it built in (=y): %w", lk.Config, s, v, errdefs.ErrFailedPrecondition)
		}
	}
	return nil
}
