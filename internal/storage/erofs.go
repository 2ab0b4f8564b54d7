package storage

import (
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// GuestErofsDir holds, in the guest, the mount points of the disks of the
// containers' erofs root filesystems: the layers and the writable layer.
const GuestErofsDir = "/run/hull/erofs"

// ErofsRootfs is a container root filesystem from containerd's erofs
// snapshotter: read-only erofs layer images, each of which reaches the guest
// as a read-only virtio-blk disk, and, for a writable root, an ext4 image
// (the snapshotter's writable layer when it has a default_size) as a
// read-write disk. The guest mounts every disk and stacks the overlay
// itself; the host mounts nothing and makes no loop device.
type ErofsRootfs struct {
	// Layers are the erofs layer images, in overlay lowerdir order (the
	// uppermost first), each read-only with the file system "erofs".
	Layers []*BlockRootfs
	// Upper is the writable layer's ext4 image, nil for a read-only root.
	// The overlay's upper and work directories are "upper" and "work"
	// on it, as containerd's mount list names them.
	Upper *BlockRootfs
	// OverlayOptions are the overlay options containerd adds to those
	// hull makes (the snapshotter's ovl_mount_options).
	OverlayOptions []string
}

// Disks returns the images that become disks: the layers, then the
// writable layer.
func (e *ErofsRootfs) Disks() []*BlockRootfs {
	d := append([]*BlockRootfs(nil), e.Layers...)
	if e.Upper != nil {
		d = append(d, e.Upper)
	}
	return d
}

// GuestErofsLayer is the guest mount point of layer i of a container's
// erofs root.
func GuestErofsLayer(id string, i int) string {
	return path.Join(GuestErofsDir, id, "layer"+strconv.Itoa(i))
}

// GuestErofsUpper is the guest mount point of a container's writable
// layer.
func GuestErofsUpper(id string) string {
	return path.Join(GuestErofsDir, id, "rw")
}

// templateArg matches the one template form of containerd's mount list
// that names a single mount, "{{ mount N }}", and the range form
// "{{ overlay A B }}".
var (
	mountTemplate   = regexp.MustCompile(`^\{\{ *mount +([0-9]{1,3}) *\}\}$`)
	overlayTemplate = regexp.MustCompile(`^\{\{ *overlay +([0-9]{1,3}) +([0-9]{1,3}) *\}\}$`)
)

// ErofsRootfsOf reads the mount list of containerd's erofs snapshotter:
// nil, nil when no mount is of type erofs. The forms taken:
//
//   - one erofs mount (a view of one layer): a read-only root;
//   - erofs layer mounts then an overlay whose lowerdir is "{{ overlay A B }}"
//     or "{{ mount N }}" over those layers and which has no upper directory:
//     a read-only root;
//   - the same preceded by the writable layer's image (type ext4, "loop",
//     read-write; containerd's mount manager formats it from the
//     snapshotter's "mkfs/ext4" mount), the overlay's upperdir and workdir
//     being "{{ mount 0 }}/upper" and "{{ mount 0 }}/work": a writable root.
//
// The overlay's type may carry containerd's "format/" and "mkdir/"
// transforms, which hull carries out in the guest. ErrNotImplemented-class
// errors: an upper directory on the host (the snapshotter without
// default_size: overlayfs in the guest would need whiteout device nodes and
// trusted xattrs on a virtio-fs directory, which the shared tree refuses),
// dm-verity or multi-device (fsmeta) layers, ID-mapped overlays, an image
// containerd did not format, and any other shape. Paths must be absolute
// and clean (ErrInvalidArgument).
func ErofsRootfsOf(mounts []Mount) (*ErofsRootfs, error) {
	first := -1
	for i, m := range mounts {
		if m.Type == "erofs" {
			first = i
			break
		}
	}
	if first < 0 {
		return nil, nil
	}
	notImpl := func(format string, a ...any) error {
		return fmt.Errorf("erofs rootfs: "+format+": %w", append(a, errdefs.ErrNotImplemented)...)
	}
	e := &ErofsRootfs{}
	if len(mounts) == 1 {
		l, err := erofsLayer(mounts[0])
		if err != nil {
			return nil, err
		}
		e.Layers = []*BlockRootfs{l}
		return e, nil
	}
	if first > 1 {
		return nil, notImpl("%d mounts before the first layer", first)
	}
	if first == 1 {
		up, err := writableLayer(mounts[0])
		if err != nil {
			return nil, err
		}
		e.Upper = up
	}
	last := len(mounts) - 1
	layers := make([]*BlockRootfs, 0, last-first)
	for i := first; i < last; i++ {
		l, err := erofsLayer(mounts[i])
		if err != nil {
			return nil, fmt.Errorf("mount %d: %w", i, err)
		}
		layers = append(layers, l)
	}
	ovl := mounts[last]
	if t := strings.TrimPrefix(strings.TrimPrefix(ovl.Type, "format/"), "mkdir/"); t != "overlay" {
		return nil, notImpl("last mount of type %q: want an overlay over the layers", ovl.Type)
	}
	var (
		lower, upper, work string
		ro                 bool
	)
	for _, o := range splitOptions(ovl.Options) {
		k, v, _ := strings.Cut(o, "=")
		switch {
		case k == "lowerdir":
			lower = v
		case k == "upperdir":
			upper = v
		case k == "workdir":
			work = v
		case o == "ro":
			ro = true
		case o == "rw":
			ro = false
		case o == "" || strings.HasPrefix(o, "X-containerd.mkdir."):
			// The guest makes upper and work on the writable layer.
		case k == "uidmap" || k == "gidmap":
			return nil, notImpl("ID-mapped overlay (%s)", k)
		case strings.HasSuffix(k, "+"):
			// lowerdir+ and datadir+ (Linux 6.7) name directories, which
			// may be relative: only the layers are stacked.
			return nil, notImpl("overlay option %q", o)
		case strings.Contains(o, "{{") || strings.ContainsRune(o, 0) || strings.Contains(v, "/"):
			return nil, notImpl("overlay option %q", o)
		default:
			e.OverlayOptions = append(e.OverlayOptions, o)
		}
	}
	if ro && e.Upper != nil {
		// A read-only mount of a writable root: the overlay is mounted
		// read-only (without an upper directory it is read-only anyway).
		e.OverlayOptions = append(e.OverlayOptions, "ro")
	}
	// lowerdir must name the layers, in order, and nothing else.
	var from, to int
	if m := overlayTemplate.FindStringSubmatch(lower); m != nil {
		from, _ = strconv.Atoi(m[1])
		to, _ = strconv.Atoi(m[2])
	} else if m := mountTemplate.FindStringSubmatch(lower); m != nil {
		from, _ = strconv.Atoi(m[1])
		to = from
	} else {
		return nil, notImpl("overlay lowerdir %q: want the layer mounts", lower)
	}
	if from != first || to != last-1 {
		return nil, notImpl("overlay lowerdir %q: want mounts %d to %d, the layers", lower, first, last-1)
	}
	e.Layers = layers
	switch {
	case e.Upper == nil && upper == "" && work == "":
		if len(layers) == 1 {
			// overlayfs needs two lower layers without an upper one.
			return &ErofsRootfs{Layers: layers}, nil
		}
	case e.Upper == nil:
		return nil, notImpl("the writable layer is the host directory %q: give containerd's erofs snapshotter a default_size, so that it is an image the guest mounts", upper)
	case upper != "{{ mount 0 }}/upper" || work != "{{ mount 0 }}/work":
		return nil, notImpl("overlay upperdir %q and workdir %q: want the writable layer's upper and work", upper, work)
	}
	return e, nil
}

// splitOptions splits comma-joined elements of a mount's options.
func splitOptions(opts []string) []string {
	var out []string
	for _, o := range opts {
		out = append(out, strings.Split(o, ",")...)
	}
	return out
}

// erofsLayer reads one layer mount: type erofs, read-only, loop.
func erofsLayer(m Mount) (*BlockRootfs, error) {
	if m.Type != "erofs" {
		return nil, fmt.Errorf("erofs rootfs: mount of type %q among the layers: %w", m.Type, errdefs.ErrNotImplemented)
	}
	if err := checkImagePath(m.Source); err != nil {
		return nil, err
	}
	ro, loop := false, false
	for _, o := range splitOptions(m.Options) {
		switch {
		case o == "ro":
			ro = true
		case o == "rw":
			ro = false
		case o == "loop":
			loop = true
		case o == "":
		case strings.HasPrefix(o, "X-containerd.dmverity="):
			return nil, fmt.Errorf("erofs layer %s with dm-verity: %w", m.Source, errdefs.ErrNotImplemented)
		case strings.HasPrefix(o, "device="):
			return nil, fmt.Errorf("erofs layer %s with extra devices (a merged fsmeta): %w", m.Source, errdefs.ErrNotImplemented)
		default:
			return nil, fmt.Errorf("erofs layer %s: option %q: %w", m.Source, o, errdefs.ErrNotImplemented)
		}
	}
	if !ro || !loop {
		return nil, fmt.Errorf("erofs layer %s: want a read-only loop mount (options %q): %w", m.Source, m.Options, errdefs.ErrNotImplemented)
	}
	return &BlockRootfs{Source: m.Source, FSType: "erofs", ReadOnly: true, Options: []string{"ro"}}, nil
}

// writableLayer reads the writable layer's mount: its formatted ext4 image,
// read-write, loop.
func writableLayer(m Mount) (*BlockRootfs, error) {
	if strings.HasPrefix(m.Type, "mkfs/") {
		return nil, fmt.Errorf("erofs rootfs: the writable layer %s is not formatted (mount type %q; containerd's mount manager formats it): %w",
			m.Source, m.Type, errdefs.ErrNotImplemented)
	}
	b, err := BlockRootfsOf([]Mount{m})
	if err != nil {
		return nil, fmt.Errorf("erofs rootfs: writable layer: %w", err)
	}
	if b == nil { // not a loop mount
		return nil, fmt.Errorf("erofs rootfs: first mount of type %q: want the writable layer's image: %w", m.Type, errdefs.ErrNotImplemented)
	}
	if b.ReadOnly {
		return nil, fmt.Errorf("erofs rootfs: writable layer %s mounted read-only under an overlay upper: %w", m.Source, errdefs.ErrNotImplemented)
	}
	return b, nil
}

// checkImagePath checks an image file's path from containerd's mount list:
// absolute and clean.
func checkImagePath(p string) error {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsRune(p, 0) {
		return fmt.Errorf("rootfs image %q: want an absolute, clean path: %w", p, errdefs.ErrInvalidArgument)
	}
	return nil
}
