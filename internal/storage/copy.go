package storage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Copied bind mounts. A sandbox without a shared file system
// (shared_fs = "none") cannot show the guest a host directory: the files a
// container gets by bind mount from the host (CRI's /etc/hosts,
// /etc/hostname, /etc/resolv.conf, /dev/termination-log, secrets,
// configmaps, projected volumes) are read here, bounded, and handed to the
// agent, which writes them below GuestCopyDir. The copy is host to guest
// only and made once, at the container's create.
//
// The source's path is the spec's, resolved as a shared bind resolves it
// (absolute as given and in clean form, relative beneath the bundle with
// openat2 RESOLVE_BENEATH), its last component not followed. Every entry
// is opened as an O_PATH descriptor with O_NOFOLLOW, relative to its
// parent's descriptor; its type, mode and owner are that descriptor's, and
// a regular file or directory is read through it (/proc/self/fd), so a
// path swapped meanwhile for a device or a FIFO is never opened. A
// symbolic link inside a copied directory (which an image or a volume's
// writer may control) is copied as a link, its target text unread on the
// host, never followed. Regular files, directories and links are copied;
// anything else (a device, a socket, a FIFO) is refused, as is anything on
// a kernel file system (procfs, sysfs, cgroup...: the copy reads with the
// runtime's credentials), a source over the limits, and a writable
// directory (its copy would silently drop the container's writes). A
// plain bind (not rbind) shows a mount below its source as an empty
// mount point, and so does its copy.

// GuestCopyDir holds the copied bind sources in the guest, one directory
// per container.
const GuestCopyDir = GuestRuntimeDir + "/copied"

// CopyLimits bounds what CopyContainer reads from the host for one
// container.
type CopyLimits struct {
	// Total is the most bytes of file data, link targets and paths.
	Total int64
	// File is the most bytes of one regular file.
	File int64
	// Entries is the most files, directories and links.
	Entries int
}

// DefaultCopyLimits fit one agent request (ttRPC's 4 MiB message limit)
// with room for the spec: a Kubernetes secret or configmap holds at most
// 1 MiB.
var DefaultCopyLimits = CopyLimits{Total: 3 << 20, File: 1 << 20, Entries: 1024}

// maxCopyDepth bounds the nesting of a copied directory.
const maxCopyDepth = 16

// CopyKind is the kind of a copied entry.
type CopyKind int

// The kinds of copied entries.
const (
	CopyRegular CopyKind = iota
	CopyDirectory
	CopySymlink
)

// CopiedFile is one entry copied from the host for the guest.
type CopiedFile struct {
	// Path is relative to the container's directory in GuestCopyDir.
	Path string
	Kind CopyKind
	// Mode holds the permission bits (0777 at most: no set-ID or sticky
	// bit is copied).
	Mode     uint32
	UID, GID uint32
	Data     []byte
	Link     string
}

// GuestCopyRoot is the guest directory of container id's copied sources.
func GuestCopyRoot(id string) string { return path.Join(GuestCopyDir, id) }

// CopyContainer returns the guest spec of a container whose root is a
// disk (root.path GuestBlockRootfs) and whose bind sources are copied:
// each bind mount's source points to its copy below GuestCopyRoot(id),
// and the copies are returned in order, parents first. Nothing is mounted
// or created on the host. A source that cannot be copied within lim is an
// error naming the mount.
func CopyContainer(id string, spec *specs.Spec, bundle string, guestMounts []int, lim CopyLimits) (*specs.Spec, []CopiedFile, error) {
	if err := ValidateID(id); err != nil {
		return nil, nil, err
	}
	g, vols, err := guestSpec(id, spec, guestMounts)
	if err != nil {
		return nil, nil, fmt.Errorf("container %s: %w", id, err)
	}
	if !filepath.IsAbs(bundle) {
		return nil, nil, fmt.Errorf("container %s: bundle %q is not absolute: %w", id, bundle, errdefs.ErrInvalidArgument)
	}
	g.Root.Path = GuestBlockRootfs(id)
	if len(vols) == 0 {
		return g, nil, nil
	}
	bfd, err := unix.Open(bundle, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("container %s: opening bundle %s: %w", id, bundle, err)
	}
	defer func() { _ = unix.Close(bfd) }()
	c := copier{lim: lim}
	for _, v := range vols {
		if err := c.volume(bfd, v); err != nil {
			return nil, nil, fmt.Errorf("container %s: bind mount %d (%s) from %s: %w", id, v.index, spec.Mounts[v.index].Destination, v.source, err)
		}
		g.Mounts[v.index].Source = path.Join(GuestCopyRoot(id), v.name)
	}
	return g, c.files, nil
}

// copier gathers the copies of one container within its limits.
type copier struct {
	lim   CopyLimits
	used  int64
	files []CopiedFile
	// mnt is the mount id of the source being copied; recursive whether
	// its bind shows the mounts below it (rbind).
	mnt       uint64
	recursive bool
}

func (c *copier) charge(n int64) error {
	c.used += n
	if c.used > c.lim.Total {
		return fmt.Errorf("more than %d bytes to copy (shared_fs = \"none\" copies bind sources into the guest): %w", c.lim.Total, errdefs.ErrInvalidArgument)
	}
	return nil
}

func (c *copier) add(f CopiedFile) error {
	if len(c.files) >= c.lim.Entries {
		return fmt.Errorf("more than %d files to copy: %w", c.lim.Entries, errdefs.ErrInvalidArgument)
	}
	if err := c.charge(int64(len(f.Path) + len(f.Link) + len(f.Data))); err != nil {
		return err
	}
	c.files = append(c.files, f)
	return nil
}

// volume copies the source of v. The source is opened as an O_PATH
// descriptor without following its last component: an absolute one as
// given (in clean form: a trailing slash or a "." would make the kernel
// follow the last link), a relative one beneath the bundle (openat2
// RESOLVE_BENEATH: ".." or a link out of it is refused). A writable
// directory is refused: its copy would be a throwaway snapshot whose
// writes the host never sees.
func (c *copier) volume(bundle int, v volume) error {
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_MAGICLINKS}
	dirfd, name := unix.AT_FDCWD, v.source
	if filepath.IsAbs(v.source) {
		if filepath.Clean(v.source) != v.source {
			return fmt.Errorf("the source is not in clean form (%q): a copy takes no trailing slash, \".\" or \"..\": %w", filepath.Clean(v.source), errdefs.ErrInvalidArgument)
		}
	} else {
		dirfd, name = bundle, filepath.Clean(v.source)
		how.Resolve |= unix.RESOLVE_BENEATH
	}
	fd, err := unix.Openat2(dirfd, name, &how)
	switch {
	case errors.Is(err, unix.EXDEV) && dirfd == bundle:
		return fmt.Errorf("%q escapes the bundle: %w", v.source, errdefs.ErrInvalidArgument)
	case err != nil:
		return err
	}
	defer func() { _ = unix.Close(fd) }()
	st, err := c.stat(fd, v.name)
	if err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR && !v.readOnly {
		return fmt.Errorf("a writable directory cannot be copied (shared_fs = \"none\" copies bind sources into the guest once, and the host would never see the writes): mount it read-only or use shared_fs = \"virtiofs\": %w", errdefs.ErrNotImplemented)
	}
	c.mnt, c.recursive = st.Mnt_id, v.recursive
	return c.node(fd, st, v.name, 0)
}

// stat returns what the copy needs of the object open at fd: type, mode,
// owner and mount. An object on a kernel file system (procfs, sysfs...)
// is refused: the copy reads with the runtime's credentials, and such
// files show the host's state, not data meant for a pod.
func (c *copier) stat(fd int, rel string) (*unix.Statx_t, error) {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	if n, ok := kernelFS[int64(fs.Type)]; ok { //nolint:unconvert // Type's width differs between architectures
		return nil, fmt.Errorf("%s is on %s, which is not copied: %w", rel, n, errdefs.ErrInvalidArgument)
	}
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE|unix.STATX_MODE|unix.STATX_UID|unix.STATX_GID|unix.STATX_INO|unix.STATX_MNT_ID, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	if st.Mask&unix.STATX_MNT_ID == 0 {
		return nil, fmt.Errorf("%s: the kernel reports no mount id (Linux 5.8 or later is needed): %w", rel, errdefs.ErrNotImplemented)
	}
	return &st, nil
}

// kernelFS are the file systems whose files are never copied, by magic.
var kernelFS = map[int64]string{
	unix.PROC_SUPER_MAGIC:    "procfs",
	unix.SYSFS_MAGIC:         "sysfs",
	unix.DEBUGFS_MAGIC:       "debugfs",
	unix.TRACEFS_MAGIC:       "tracefs",
	unix.SECURITYFS_MAGIC:    "securityfs",
	unix.EFIVARFS_MAGIC:      "efivarfs",
	unix.BPF_FS_MAGIC:        "bpf",
	unix.CGROUP_SUPER_MAGIC:  "cgroup",
	unix.CGROUP2_SUPER_MAGIC: "cgroup2",
	configfsMagic:            "configfs",
	unix.PSTOREFS_MAGIC:      "pstore",
}

// configfsMagic is configfs' magic (linux/magic.h), which x/sys/unix does
// not name.
const configfsMagic = 0x62656570

// node copies the object open at fd (an O_PATH descriptor, st its
// statx) as rel, recursing into a directory. Type, mode and owner are
// the descriptor's: what a path names can change meanwhile, the object
// open at fd cannot.
func (c *copier) node(fd int, st *unix.Statx_t, rel string, depth int) error {
	f := CopiedFile{Path: rel, Mode: uint32(st.Mode) & 0o777, UID: st.Uid, GID: st.Gid}
	mode := uint32(st.Mode)
	if st.Mnt_id != c.mnt && !c.recursive && mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s is a mount point, which a bind mount (not rbind) does not show: %w", rel, errdefs.ErrInvalidArgument)
	}
	switch mode & unix.S_IFMT {
	case unix.S_IFLNK:
		if depth == 0 {
			return fmt.Errorf("the source is a symbolic link, which a copy does not follow: %w", errdefs.ErrInvalidArgument)
		}
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if n >= len(buf) {
			return fmt.Errorf("%s: link target too long: %w", rel, errdefs.ErrInvalidArgument)
		}
		f.Kind, f.Link = CopySymlink, string(buf[:n])
		return c.add(f)
	case unix.S_IFREG:
		return c.regular(fd, st, f)
	case unix.S_IFDIR:
		return c.dir(fd, st, f, depth)
	default:
		return fmt.Errorf("%s is %s: only regular files, directories and links can be copied: %w", rel, kindName(mode), errdefs.ErrInvalidArgument)
	}
}

func kindName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFIFO:
		return "a FIFO"
	}
	return fmt.Sprintf("of type %#o", mode&unix.S_IFMT)
}

// reopen opens the object at the O_PATH descriptor fd for reading,
// through its /proc/self/fd link (the same inode, never a path looked up
// again), without blocking, and checks it is still st's.
func reopen(fd int, st *unix.Statx_t, flags int, rel string) (*os.File, error) {
	rfd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC|flags, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	file := os.NewFile(uintptr(rfd), rel)
	var got unix.Stat_t
	if err := unix.Fstat(rfd, &got); err != nil {
		_ = file.Close()
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	if got.Ino != st.Ino || unix.Major(got.Dev) != st.Dev_major || unix.Minor(got.Dev) != st.Dev_minor || got.Mode&unix.S_IFMT != uint32(st.Mode)&unix.S_IFMT {
		_ = file.Close()
		return nil, fmt.Errorf("%s changed while copied: %w", rel, errdefs.ErrInvalidArgument)
	}
	return file, nil
}

// regular reads a regular file.
func (c *copier) regular(fd int, st *unix.Statx_t, f CopiedFile) error {
	file, err := reopen(fd, st, 0, f.Path)
	if err != nil {
		return err
	}
	defer func() { _ = file.Close() }()
	limit := min(c.lim.File, c.lim.Total-c.used)
	data, err := io.ReadAll(io.LimitReader(file, limit+1))
	if err != nil {
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	if int64(len(data)) > c.lim.File {
		return fmt.Errorf("%s: larger than %d bytes, the most a copied file may hold: %w", f.Path, c.lim.File, errdefs.ErrInvalidArgument)
	}
	f.Kind, f.Data = CopyRegular, data
	return c.add(f)
}

// dir records a directory, then copies its entries in name order. The
// root of another mount below a plain bind's source is recorded empty, as
// the bind shows it.
func (c *copier) dir(fd int, st *unix.Statx_t, f CopiedFile, depth int) error {
	// depth counts the directories above this one.
	if depth >= maxCopyDepth {
		return fmt.Errorf("%s: nested deeper than %d directories: %w", f.Path, maxCopyDepth, errdefs.ErrInvalidArgument)
	}
	f.Kind = CopyDirectory
	if err := c.add(f); err != nil {
		return err
	}
	if st.Mnt_id != c.mnt && !c.recursive {
		return nil
	}
	d, err := reopen(fd, st, unix.O_DIRECTORY, f.Path)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }()
	var names []string
	for {
		// Read in batches: a directory of more entries than the limit
		// is refused before all its names are held.
		batch, err := d.Readdirnames(256)
		names = append(names, batch...)
		if len(c.files)+len(names) > c.lim.Entries {
			return fmt.Errorf("%s: more than %d files to copy: %w", f.Path, c.lim.Entries, errdefs.ErrInvalidArgument)
		}
		if errors.Is(err, io.EOF) || (err == nil && len(batch) == 0) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", f.Path, err)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		if err := c.child(fd, n, f.Path+"/"+n, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// child copies the entry name of the directory at dirfd.
func (c *copier) child(dirfd int, name, rel string, depth int) error {
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	defer func() { _ = unix.Close(fd) }()
	st, err := c.stat(fd, rel)
	if err != nil {
		return err
	}
	return c.node(fd, st, rel, depth)
}
