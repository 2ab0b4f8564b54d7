package storage

import (
	"errors"
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
)

// The mount lists below are those containerd 2.4's erofs snapshotter
// returns (plugins/snapshots/erofs), as containerd's mount manager hands
// them to a runtime that claims the erofs type and the format and mkdir
// transforms: the writable layer's "mkfs/ext4" mount already formatted
// into an "ext4" one.
func TestErofsRootfsOf(t *testing.T) {
	const (
		snaps = "/var/lib/containerd/io.containerd.snapshotter.v1.erofs/snapshots/"
		l1    = snaps + "1/layer.erofs"
		l2    = snaps + "2/layer.erofs"
		rw    = snaps + "3/rwlayer.img"
	)
	layer := func(src string) Mount { return Mount{Type: "erofs", Source: src, Options: []string{"ro", "loop"}} }
	want := func(src string) *BlockRootfs {
		return &BlockRootfs{Source: src, FSType: "erofs", ReadOnly: true, Options: []string{"ro"}}
	}
	upper := Mount{Type: "ext4", Source: rw, Options: []string{"rw", "loop"}}
	blockOverlay := func(lower string, extra ...string) Mount {
		return Mount{Type: "format/mkdir/overlay", Source: "overlay", Options: append([]string{
			"X-containerd.mkdir.path={{ mount 0 }}/upper:0755",
			"X-containerd.mkdir.path={{ mount 0 }}/work:0755",
			"workdir={{ mount 0 }}/work",
			"upperdir={{ mount 0 }}/upper",
			"lowerdir=" + lower,
		}, extra...)}
	}
	tests := []struct {
		name   string
		mounts []Mount
		want   *ErofsRootfs
		class  error
	}{
		{
			name:   "no erofs mount: not an erofs root",
			mounts: []Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/a:/b"}}},
		},
		{
			name:   "blockfile: not an erofs root",
			mounts: []Mount{upper},
		},
		{
			name:   "writable root over two layers",
			mounts: []Mount{upper, layer(l2), layer(l1), blockOverlay("{{ overlay 1 2 }}")},
			want: &ErofsRootfs{Layers: []*BlockRootfs{want(l2), want(l1)},
				Upper: &BlockRootfs{Source: rw, FSType: "ext4"}},
		},
		{
			name:   "writable root over one layer",
			mounts: []Mount{upper, layer(l1), blockOverlay("{{ mount 1 }}")},
			want:   &ErofsRootfs{Layers: []*BlockRootfs{want(l1)}, Upper: &BlockRootfs{Source: rw, FSType: "ext4"}},
		},
		{
			name:   "ovl_mount_options kept",
			mounts: []Mount{upper, layer(l1), blockOverlay("{{ mount 1 }}", "index=off,metacopy=off")},
			want: &ErofsRootfs{Layers: []*BlockRootfs{want(l1)}, Upper: &BlockRootfs{Source: rw, FSType: "ext4"},
				OverlayOptions: []string{"index=off", "metacopy=off"}},
		},
		{
			name:   "view of one layer: the layer, read-only",
			mounts: []Mount{layer(l1)},
			want:   &ErofsRootfs{Layers: []*BlockRootfs{want(l1)}},
		},
		{
			name: "view of two layers: a read-only overlay",
			mounts: []Mount{layer(l2), layer(l1),
				{Type: "format/mkdir/overlay", Source: "overlay", Options: []string{"lowerdir={{ overlay 0 1 }}"}}},
			want: &ErofsRootfs{Layers: []*BlockRootfs{want(l2), want(l1)}},
		},
		{
			name: "a layer's rw in the list loses to a later ro",
			mounts: []Mount{upper, {Type: "erofs", Source: l1, Options: []string{"rw", "loop,ro"}},
				blockOverlay("{{ mount 1 }}")},
			want: &ErofsRootfs{Layers: []*BlockRootfs{want(l1)}, Upper: &BlockRootfs{Source: rw, FSType: "ext4"}},
		},
		{
			name: "writable layer a host directory (no default_size)",
			mounts: []Mount{layer(l1), {Type: "format/mkdir/overlay", Source: "overlay", Options: []string{
				"workdir=" + snaps + "3/work", "upperdir=" + snaps + "3/fs", "lowerdir={{ mount 0 }}"}}},
			class: errdefs.ErrNotImplemented,
		},
		{
			name: "writable layer not formatted",
			mounts: []Mount{{Type: "mkfs/ext4", Source: rw, Options: []string{"X-containerd.mkfs.fs=ext4", "X-containerd.mkfs.size=67108864", "rw", "loop"}},
				layer(l1), blockOverlay("{{ mount 1 }}")},
			class: errdefs.ErrNotImplemented,
		},
		{
			name:   "writable layer read-only",
			mounts: []Mount{{Type: "ext4", Source: rw, Options: []string{"ro", "loop"}}, layer(l1), blockOverlay("{{ mount 1 }}")},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "writable layer not a loop mount",
			mounts: []Mount{{Type: "ext4", Source: rw, Options: []string{"rw"}}, layer(l1), blockOverlay("{{ mount 1 }}")},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "writable layer of another file system",
			mounts: []Mount{{Type: "xfs", Source: rw, Options: []string{"rw", "loop"}}, layer(l1), blockOverlay("{{ mount 1 }}")},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "dm-verity layer",
			mounts: []Mount{{Type: "erofs", Source: l1, Options: []string{"ro", "loop", "X-containerd.dmverity=" + l1 + ".dmverity"}}},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "merged fsmeta with extra devices",
			mounts: []Mount{{Type: "erofs", Source: snaps + "2/fsmeta.erofs", Options: []string{"ro", "loop", "device=" + l1, "device=" + l2}}},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "layer without loop",
			mounts: []Mount{{Type: "erofs", Source: "/dev/vdb", Options: []string{"ro"}}},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "layer not read-only",
			mounts: []Mount{{Type: "erofs", Source: l1, Options: []string{"loop"}}},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "relative layer",
			mounts: []Mount{{Type: "erofs", Source: "snapshots/1/layer.erofs", Options: []string{"ro", "loop"}}},
			class:  errdefs.ErrInvalidArgument,
		},
		{
			name:   "unclean layer",
			mounts: []Mount{{Type: "erofs", Source: snaps + "1/../../x", Options: []string{"ro", "loop"}}},
			class:  errdefs.ErrInvalidArgument,
		},
		{
			name:   "ID-mapped overlay",
			mounts: []Mount{upper, layer(l1), blockOverlay("{{ mount 1 }}", "uidmap=0:1000:65536")},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "lowerdir reaching the writable layer",
			mounts: []Mount{upper, layer(l2), layer(l1), blockOverlay("{{ overlay 0 2 }}")},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "lowerdir leaving a layer out",
			mounts: []Mount{upper, layer(l2), layer(l1), blockOverlay("{{ mount 1 }}")},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "lowerdir a host path",
			mounts: []Mount{upper, layer(l1), blockOverlay("/etc")},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "overlay option with a path",
			mounts: []Mount{upper, layer(l1), blockOverlay("{{ mount 1 }}", "redirect_dir=/x")},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "overlay option naming a relative directory",
			mounts: []Mount{upper, layer(l1), blockOverlay("{{ mount 1 }}", "lowerdir+=etc")},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "overlay data-only layer option",
			mounts: []Mount{upper, layer(l1), blockOverlay("{{ mount 1 }}", "datadir+=x")},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "a read-only overlay over a writable layer stays read-only",
			mounts: []Mount{upper, layer(l1), blockOverlay("{{ mount 1 }}", "rw", "index=off,ro")},
			want: &ErofsRootfs{Layers: []*BlockRootfs{want(l1)}, Upper: &BlockRootfs{Source: rw, FSType: "ext4"},
				OverlayOptions: []string{"index=off", "ro"}},
		},
		{
			name:   "upper elsewhere on the writable layer",
			mounts: []Mount{upper, layer(l1), {Type: "overlay", Source: "overlay", Options: []string{"upperdir={{ mount 0 }}/u", "workdir={{ mount 0 }}/work", "lowerdir={{ mount 1 }}"}}},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "last mount not an overlay",
			mounts: []Mount{layer(l1), {Type: "format/bind", Source: "{{ mount 0 }}", Options: []string{"ro", "rbind"}}},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "another mount among the layers",
			mounts: []Mount{upper, layer(l2), {Type: "bind", Source: "/x", Options: []string{"rbind"}}, blockOverlay("{{ overlay 1 2 }}")},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "two mounts before the layers",
			mounts: []Mount{upper, upper, layer(l1), blockOverlay("{{ mount 2 }}")},
			class:  errdefs.ErrNotImplemented,
		},
		{
			name:   "a single layer without upper stays a lone layer",
			mounts: []Mount{layer(l1), {Type: "overlay", Source: "overlay", Options: []string{"lowerdir={{ mount 0 }}"}}},
			want:   &ErofsRootfs{Layers: []*BlockRootfs{want(l1)}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ErofsRootfsOf(tt.mounts)
			if tt.class != nil {
				if !errors.Is(err, tt.class) {
					t.Fatalf("got %+v, %v; want an error of class %v", got, err, tt.class)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestErofsRootfsDisks(t *testing.T) {
	l := &BlockRootfs{Source: "/l", FSType: "erofs", ReadOnly: true}
	u := &BlockRootfs{Source: "/u", FSType: "ext4"}
	if got := (&ErofsRootfs{Layers: []*BlockRootfs{l}, Upper: u}).Disks(); len(got) != 2 || got[0] != l || got[1] != u {
		t.Errorf("disks %v: want the layer, then the writable layer", got)
	}
	if got := (&ErofsRootfs{Layers: []*BlockRootfs{l}}).Disks(); len(got) != 1 {
		t.Errorf("disks of a read-only root %v: want the layer", got)
	}
	if GuestErofsLayer("c1", 2) != "/run/hull/erofs/c1/layer2" || GuestErofsUpper("c1") != "/run/hull/erofs/c1/rw" {
		t.Errorf("guest paths %s, %s", GuestErofsLayer("c1", 2), GuestErofsUpper("c1"))
	}
}
