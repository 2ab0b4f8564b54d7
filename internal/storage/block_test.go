package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func TestBlockRootfsOf(t *testing.T) {
	const img = "/var/lib/containerd/io.containerd.snapshotter.v1.blockfile/snapshots/7"
	tests := []struct {
		name   string
		mounts []Mount
		want   *BlockRootfs
		class  error
	}{
		{
			name:   "blockfile ext4 with loop, rw",
			mounts: []Mount{{Type: "ext4", Source: img, Options: []string{"loop", "rw"}}},
			want:   &BlockRootfs{Source: img, FSType: "ext4"},
		},
		{
			name:   "blockfile view stays read-only",
			mounts: []Mount{{Type: "ext4", Source: img, Options: []string{"loop", "ro"}}},
			want:   &BlockRootfs{Source: img, FSType: "ext4", ReadOnly: true, Options: []string{"ro"}},
		},
		{
			name:   "configured mount_options kept, comma lists split, last of ro/rw wins",
			mounts: []Mount{{Type: "ext4", Source: img, Options: []string{"noatime,loop", "ro", "data=ordered", "rw"}}},
			want:   &BlockRootfs{Source: img, FSType: "ext4", Options: []string{"noatime", "data=ordered"}},
		},
		{
			name:   "ro hidden in a comma list",
			mounts: []Mount{{Type: "ext4", Source: img, Options: []string{"loop,ro"}}},
			want:   &BlockRootfs{Source: img, FSType: "ext4", ReadOnly: true, Options: []string{"ro"}},
		},
		{
			name:   "overlay: shared as before",
			mounts: []Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/a", "upperdir=/b", "workdir=/c"}}},
		},
		{
			name:   "bind: shared as before",
			mounts: []Mount{{Type: "bind", Source: "/x", Options: []string{"rbind", "rw"}}},
		},
		{
			name:   "devmapper block device without loop: mounted on the host as before",
			mounts: []Mount{{Type: "ext4", Source: "/dev/mapper/snap-1"}},
		},
		{
			name:   "unknown file system type refused",
			mounts: []Mount{{Type: "xfs", Source: img, Options: []string{"loop"}}},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "empty type refused",
			mounts: []Mount{{Source: img, Options: []string{"loop"}}},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "erofs snapshotter: erofs layer and overlay",
			mounts: []Mount{{Type: "erofs", Source: "/s/1/layer.erofs", Options: []string{"ro", "loop"}}, {Type: "overlay", Source: "overlay", Options: []string{"lowerdir={{ mount 0 }}"}}},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "erofs snapshotter: a formatted mount type",
			mounts: []Mount{{Type: "format/mkdir/overlay", Source: "overlay"}},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "loop among several mounts",
			mounts: []Mount{{Type: "ext4", Source: img, Options: []string{"loop"}}, {Type: "bind", Source: "/x", Options: []string{"bind"}}},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "relative source refused",
			mounts: []Mount{{Type: "ext4", Source: "snapshots/7", Options: []string{"loop"}}},
			class:  errdefs.ErrInvalidArgument,
		},
		{
			name:   "unclean source refused",
			mounts: []Mount{{Type: "ext4", Source: "/var/lib/x/../../etc/img", Options: []string{"loop"}}},
			class:  errdefs.ErrInvalidArgument,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := BlockRootfsOf(tc.mounts)
			if tc.class != nil {
				if !errors.Is(err, tc.class) {
					t.Fatalf("got %+v, %v, want class %v", got, err, tc.class)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, %v, want %+v", got, err, tc.want)
			}
		})
	}
}

func TestBlockRootfsOpen(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	if err := os.WriteFile(img, []byte("disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(img, link); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		source   string
		readOnly bool
		// accmode is the access mode of the descriptor.
		accmode int
		class   error
	}{
		{name: "read-write", source: img, accmode: os.O_RDWR},
		{name: "read-only", source: img, readOnly: true, accmode: os.O_RDONLY},
		{name: "symlink refused", source: link, class: errdefs.ErrInvalidArgument},
		{name: "directory refused", source: dir, readOnly: true, class: errdefs.ErrInvalidArgument},
		{name: "missing", source: filepath.Join(dir, "nope"), class: os.ErrNotExist},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := (&BlockRootfs{Source: tc.source, FSType: "ext4", ReadOnly: tc.readOnly}).Open()
			if tc.class != nil {
				if !errors.Is(err, tc.class) {
					t.Fatalf("got %v, want class %v", err, tc.class)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = f.Close() }()
			fl, err := fcntlGetfl(f)
			if err != nil {
				t.Fatal(err)
			}
			if fl&os.O_RDWR|fl&os.O_WRONLY != tc.accmode {
				t.Errorf("access mode %#o, want %#o", fl&(os.O_RDWR|os.O_WRONLY), tc.accmode)
			}
		})
	}
}

func fcntlGetfl(f *os.File) (int, error) {
	return unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
}

// TestAddContainerBlockRootfs: with a block root, nothing is mounted for
// the root on the host, the guest spec's root is the disk's mount point,
// and the volumes are still shared; a loop mount never reaches the host's
// mount(2).
func TestAddContainerBlockRootfs(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	f := newFixture(t)
	s := newShared(t, f.state)
	img := filepath.Join(f.dir, "img")
	writeFile(t, img, "not a file system")
	rootfs := []Mount{{Type: "ext4", Source: img, Options: []string{"loop", "rw"}}}
	g, err := s.AddContainer(ctx, Container{ID: "c", Spec: f.spec(), Bundle: f.bundle, Rootfs: rootfs, BlockRootfs: true})
	if err != nil {
		t.Fatal(err)
	}
	if g.Root.Path != "/run/hull/blockroot/c/rootfs" {
		t.Errorf("guest root.path %q", g.Root.Path)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "c", "rootfs")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a rootfs directory was made in the shared tree: %v", err)
	}
	if readFile(t, filepath.Join(s.Dir(), "c", "volumes", "1-rw", "a")) != "rw volume\n" {
		t.Error("volume not shared")
	}
	if err := s.RemoveContainer(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	// Without the plan, the loop mount is refused before mount(2).
	if _, err := s.AddContainer(ctx, Container{ID: "d", Spec: f.spec(), Bundle: f.bundle, Rootfs: rootfs}); !errors.Is(err, errdefs.ErrNotImplemented) {
		t.Errorf("loop mount on the host: got %v, want class %v", err, errdefs.ErrNotImplemented)
	}
}
