package storage

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Kubernetes emptyDir volumes in a sandbox without a shared file system.
// The kubelet makes an emptyDir volume as a host directory (a tmpfs for
// medium Memory) and has the CRI bind it into each of the pod's containers
// that mount it. Without virtio-fs no host directory can be shown to the
// guest, and a writable one cannot be copied; an emptyDir needs no host
// directory, though: it starts empty and lives as long as the pod. Its
// binds are pointed at a directory the agent makes in the guest instead
// (GuestEmptyDir), one per volume name, which every container of the pod
// that binds the volume shares.
//
// A bind is taken for an emptyDir only when its source is, as a string,
// exactly <kubelet root>/pods/<pod UID>/volumes/kubernetes.io~empty-dir/<name>,
// the pod UID the one containerd's CRI wrote on the container, and the
// name a DNS label (Kubernetes' rule for volume names): no "..", no extra
// slash, no other pod's directory. The guest gets the name, which it
// cannot turn into a path anywhere else, and what the host read from the
// kubelet's directory: its mode and owner (the pod's fsGroup) and, for a
// tmpfs (medium Memory), its size. That directory is opened without
// following any link, from / to its end: a kubelet root reached through a
// link is refused; it is only read. The kubelet root is the operator's
// (runtime.kubelet_root_dir), not the pod's.

// DefaultKubeletRootDir is the kubelet's default root directory (its
// --root-dir).
const DefaultKubeletRootDir = "/var/lib/kubelet"

// KubeletPodsDir is where a kubelet whose root directory is root keeps
// its pods' directories.
func KubeletPodsDir(root string) string { return path.Join(root, "pods") }

// emptyDirPlugin is the directory of emptyDir volumes below a pod's
// volumes directory: the plugin's name, kubernetes.io/empty-dir, escaped.
const emptyDirPlugin = "kubernetes.io~empty-dir"

// GuestEmptyDirRoot holds the pod's emptyDir volumes in the guest, one
// tmpfs per volume name.
const GuestEmptyDirRoot = GuestRuntimeDir + "/emptydir"

// GuestEmptyDir is the guest directory of the pod's emptyDir volume name.
func GuestEmptyDir(name string) string { return path.Join(GuestEmptyDirRoot, name) }

var (
	// podUIDPattern bounds a pod UID (the kubelet's are UUIDs, or 32 hex
	// digits for a static pod).
	podUIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,63}$`)
	// volumeNamePattern is a DNS label (RFC 1123), which Kubernetes
	// requires of a volume's name.
	volumeNamePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

// ValidEmptyDirName reports whether name can name an emptyDir volume: a
// DNS label, so never ".", ".." nor anything with a "/".
func ValidEmptyDirName(name string) bool { return volumeNamePattern.MatchString(name) }

// EmptyDirName returns the volume name when source is exactly the
// kubelet's directory of an emptyDir volume of pod podUID in podsDir.
func EmptyDirName(podsDir, source, podUID string) (string, bool) {
	if !podUIDPattern.MatchString(podUID) {
		return "", false
	}
	name, ok := strings.CutPrefix(source, podsDir+"/"+podUID+"/volumes/"+emptyDirPlugin+"/")
	if !ok || !ValidEmptyDirName(name) {
		return "", false
	}
	return name, true
}

// EmptyDir is an emptyDir volume for the agent to make in the guest.
type EmptyDir struct {
	// Name is the volume's name (ValidEmptyDirName).
	Name string
	// Mode holds the permission bits, set-group-ID included (the
	// kubelet sets it with an fsGroup).
	Mode     uint32
	UID, GID uint32
	// Size bounds the guest tmpfs, in bytes; 0 for the guest kernel's
	// default.
	Size uint64
}

// LocalEmptyDirs points the binds of spec that name an emptyDir volume of
// pod podUID (as kept below podsDir) at the volume's guest directory. It
// returns a copy of spec with those sources changed (spec itself is not
// modified), guestMounts with their indices added, and the volumes to make,
// one per name. Without a pod UID (a container outside a CRI pod) nothing
// is an emptyDir. Nothing on the host is created or changed.
func LocalEmptyDirs(podsDir string, spec *specs.Spec, podUID string, guestMounts []int) (*specs.Spec, []int, []EmptyDir, error) {
	if spec == nil || podUID == "" {
		return spec, guestMounts, nil, nil
	}
	inGuest := map[int]bool{}
	for _, i := range guestMounts {
		inGuest[i] = true
	}
	var (
		out  *specs.Spec
		gm   = guestMounts
		dirs []EmptyDir
		seen = map[string]bool{}
	)
	for i, m := range spec.Mounts {
		if inGuest[i] || !IsBind(m) {
			continue
		}
		name, ok := EmptyDirName(podsDir, m.Source, podUID)
		if !ok {
			continue
		}
		if out == nil {
			c := *spec
			c.Mounts = append([]specs.Mount(nil), spec.Mounts...)
			out = &c
			gm = append([]int(nil), guestMounts...)
		}
		out.Mounts[i].Source = GuestEmptyDir(name)
		gm = append(gm, i)
		if seen[name] {
			continue
		}
		seen[name] = true
		d, err := statEmptyDir(podsDir, podUID, name)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("bind mount %d (%s): emptyDir volume %q: %w", i, m.Destination, name, err)
		}
		dirs = append(dirs, d)
	}
	if out == nil {
		return spec, guestMounts, nil, nil
	}
	return out, gm, dirs, nil
}

// statEmptyDir reads the kubelet's directory of emptyDir volume name of
// pod podUID: its mode and owner, and its size when it is a tmpfs. podsDir
// (an absolute path) is opened with no link followed, nor is the rest of
// the path, resolved beneath it: a link anywhere, in the operator's
// kubelet root or in the pod's directories, is an error, not a way
// elsewhere. A directory that does not exist (the kubelet's root
// misconfigured, or the pod's volume gone) is a not-found error.
func statEmptyDir(podsDir, podUID, name string) (EmptyDir, error) {
	noLinks := func(dir int, p string, resolve uint64) (int, error) {
		return unix.Openat2(dir, p, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
			Resolve: resolve | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
	}
	classify := func(p string, err error) error {
		switch {
		case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.EXDEV):
			return fmt.Errorf("%s: a link or not a directory on the way: %w", p, errdefs.ErrInvalidArgument)
		case errors.Is(err, unix.ENOENT):
			return fmt.Errorf("%s: %w: %w", p, err, errdefs.ErrNotFound)
		default:
			return fmt.Errorf("opening %s: %w", p, err)
		}
	}
	root, err := noLinks(unix.AT_FDCWD, podsDir, 0)
	if err != nil {
		return EmptyDir{}, fmt.Errorf("the kubelet's pods directory (runtime.kubelet_root_dir): %w", classify(podsDir, err))
	}
	defer func() { _ = unix.Close(root) }()
	rel := podUID + "/volumes/" + emptyDirPlugin + "/" + name
	fd, err := noLinks(root, rel, unix.RESOLVE_BENEATH)
	if err != nil {
		return EmptyDir{}, classify(podsDir+"/"+rel, err)
	}
	defer func() { _ = unix.Close(fd) }()
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE|unix.STATX_MODE|unix.STATX_UID|unix.STATX_GID, &st); err != nil {
		return EmptyDir{}, fmt.Errorf("%s/%s: %w", podsDir, rel, err)
	}
	d := EmptyDir{Name: name, Mode: uint32(st.Mode) & 0o7777, UID: st.Uid, GID: st.Gid}
	// Medium Memory: the kubelet mounts a tmpfs on the directory, sized
	// by the volume's sizeLimit (or the pod's memory). A directory that
	// merely sits on a tmpfs (a kubelet root on one) says nothing of a
	// size. Any other file system mounted there (hugetlbfs, medium
	// HugePages) is a medium a guest tmpfs would not give: refused.
	if st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 || st.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return d, nil
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return EmptyDir{}, fmt.Errorf("%s/%s: %w", podsDir, rel, err)
	}
	if fs.Type != unix.TMPFS_MAGIC {
		return EmptyDir{}, fmt.Errorf("%s/%s: a mount of file system type %#x, not a tmpfs (medium HugePages?): only the default and Memory media are made in the guest with shared_fs = \"none\": %w",
			podsDir, rel, fs.Type, errdefs.ErrNotImplemented)
	}
	d.Size = fs.Blocks * uint64(fs.Bsize) //nolint:gosec // a block size is positive
	return d, nil
}
